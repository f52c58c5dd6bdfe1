"""The seekable index (docs/FORMAT.md §10) on local files: layout, random-access extract, damage, encryption, pipes,
archives without an index."""

from __future__ import annotations

import io
import random
import re
import threading
from pathlib import Path

import pytest
import xxhash
from innostream.archive import ArchiveWriter, NullSink, read_archive
from innostream.archive.codec import ZstdCodec
from innostream.archive.crypt import new_codec
from innostream.archive.index import RUN_GAP, IndexBuilder
from innostream.archive.seekable import LocalFileSource, PrefetchStream, open_indexed, read_tail
from innostream.extract import extract
from innostream.formats import archive as fa
from innostream.formats import archive_index as fi
from innostream.formats.archive_crypt import AuthenticationFailed
from innostream.formats.errors import ChecksumMismatch, Corrupt

from tests.archive.builders import REPO, make_archive, run_cli, split_frames, tree

KEY = bytes(range(32))
META = ("xtrabackup_checkpoints", b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 42\n")


def _files() -> dict[str, bytes]:
    """Six 2 MiB tables of random bytes (incompressible: the archive is as big as the data), a sparse one, an
    empty one and the metadata."""
    rnd = random.Random(7)
    files = {f"db/t{i}.ibd": rnd.randbytes(2 << 20) for i in range(6)}
    files["db/sparse.ibd"] = rnd.randbytes(16384) + bytes(1 << 20) + rnd.randbytes(16384)
    files["db/empty.ibd"] = b""
    files["ibdata1"] = rnd.randbytes(300_000)
    files[META[0]] = META[1]
    return files


def _write(path: Path, files: dict[str, bytes], *, index: bool = True, codec=None, compress: bool = True) -> bytes:
    """The files written by two threads at once, 256 KiB at a time, so that the members' frames interleave as
    a backup's copiers make them."""
    out = io.BytesIO()
    w = ArchiveWriter(out, meta={"flavor": "mariadb"}, index=index, codec=codec, compress=compress, threads=2)
    names = list(files)

    def copy(part: list[str]) -> None:
        for name in part:
            data = files[name]
            fid = w.begin_file(name)
            for off in range(0, len(data), 256 << 10):
                w.write(fid, off, data[off : off + (256 << 10)])
            w.end_file(fid, len(data))

    threads = [threading.Thread(target=copy, args=(names[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close({"from_lsn": 0, "to_lsn": 42, "backup_type": "full-backuped", "flavor": "mariadb"})
    blob = out.getvalue()
    path.write_bytes(blob)
    return blob


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    files = _files()
    path = tmp_path_factory.mktemp("index") / "a.isa"
    _write(path, files)
    return path, files


def test_structs_agree_with_fast_paths():
    loc = fi.build_locator(1000, 200, 300)
    parsed = fi.END_LOCATOR.parse(loc)
    assert (parsed.index_offset, parsed.index_size, parsed.trailer_size) == (1000, 200, 300)
    assert parsed.locator_xxh3 == xxhash.xxh3_64_intdigest(loc[:24])
    assert fi.parse_locator(loc, 1532) == fi.Locator(1000, 200, 300)
    member = fi.Member(1, "db/t.ibd", 0o640, 5, bytes(range(16)), [fi.Run(52, 100, 0, 3), fi.Run(400, 56, 9, 1)])
    raw = fi.build_index([member])
    head = fi.INDEX_HEADER.parse(raw)
    assert (head.members, head.runs) == (1, 2)
    m = fi.MEMBER.parse(raw[fi.INDEX_HEADER_SIZE :])
    assert (m.file_id, m.mode, m.size, m.runs, m.name_len, m.xxh3_128) == (1, 0o640, 5, 2, 8, bytes(range(16)))
    run = fi.RUN.parse(raw[fi.INDEX_HEADER_SIZE + fi.MEMBER_SIZE + 8 :])
    assert (run.offset, run.length, run.first_seq, run.frames) == (52, 100, 0, 3)
    assert fi.parse_index(raw) == [member]
    assert len(raw) == fi.index_size(1, 2, 8)
    for cut in (raw[:-1], raw + b"\0", raw[:20]):
        with pytest.raises(Corrupt):
            fi.parse_index(cut)
    with pytest.raises(ChecksumMismatch):
        fi.parse_locator(loc[:-1] + bytes([loc[-1] ^ 1]), 1532)
    with pytest.raises(Corrupt, match="does not end"):
        fi.parse_locator(loc, 1533)


def test_single_member_reads_a_fraction_and_equals_a_full_extract(archive, tmp_path: Path):
    path, files = archive
    full = extract(io.BytesIO(path.read_bytes()), tmp_path / "full", fsync=False)
    assert len(full.files) == len(files)
    src = LocalFileSource(path)
    try:
        extract(io.BytesIO(b""), tmp_path / "one", fsync=False, include=["db/t3.ibd"], source=src)
    finally:
        src.close()
    got = tree(tmp_path / "one")
    assert got["db/t3.ibd"] == files["db/t3.ibd"] == (tmp_path / "full/db/t3.ibd").read_bytes()
    assert "db/t2.ibd" not in got
    assert "db/t4.ibd" not in got
    assert got["ibdata1"] == files["ibdata1"]
    assert got[META[0]] == META[1]
    assert "innostream_partial.json" in got
    size = path.stat().st_size
    # t3 (2 MiB) and ibdata1 (0.3 MiB) of a 13 MiB archive; the head and tail reads add at most 320 KiB
    assert src.bytes_read < 3.2 * (1 << 20), (src.bytes_read, size)
    assert src.bytes_read < size / 4, (src.bytes_read, size)


def test_cli_include_on_a_file_seeks(archive, tmp_path: Path):
    path, files = archive
    r = run_cli(["extract", "--no-fsync", "--include", "db/t1.*", "--include", "db/sparse.ibd", "-C",
                 str(tmp_path / "t"), str(path)])
    assert r.returncode == 0, r.stderr
    got = tree(tmp_path / "t")
    assert got["db/t1.ibd"] == files["db/t1.ibd"]
    assert got["db/sparse.ibd"] == files["db/sparse.ibd"]
    assert "db/t0.ibd" not in got
    m = re.search(rb"reading (\d+) of its (\d+) bytes", r.stderr)
    assert m, r.stderr
    assert int(m[1]) < int(m[2]) / 3, r.stderr


def test_pipe_reads_front_to_back_and_checks_the_index(archive, tmp_path: Path):
    path, files = archive
    r = run_cli(["extract", "--no-fsync", "--include", "db/t1.*", "-C", str(tmp_path / "t"), "-"],
                stdin=path.read_bytes())
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "t")["db/t1.ibd"] == files["db/t1.ibd"]
    summary = read_archive(io.BytesIO(path.read_bytes()), NullSink())
    assert [f.name for f in summary.files] == list(_names(path))
    listed = run_cli(["list", "-"], stdin=path.read_bytes())  # checks the index too, decompressing nothing else
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[-1] for line in listed.stdout.decode().splitlines()} == set(files)


def test_prefetch_stream_joins_ranges_in_order(archive):
    path, _ = archive
    blob = path.read_bytes()
    src = LocalFileSource(path)
    ranges = [(0, 52), (1000, 3 << 20), (5 << 20, 10), (len(blob) - 32, 32)]
    try:
        stream = PrefetchStream(src, ranges, window=1 << 20, inflight=3)
        assert src.requests == 0  # nothing fetched before the first read
        got = b"".join(iter(lambda: stream.read(100_000), b""))
        stream.close()
    finally:
        src.close()
    assert got == b"".join(blob[o : o + n] for o, n in ranges)
    assert src.requests == 1 + 3 + 1 + 1  # the 3 MiB range in three 1 MiB windows


def _names(path: Path) -> list[str]:
    src = LocalFileSource(path)
    try:
        indexed = open_indexed(src)
        assert indexed is not None
        return [m.name for m in indexed.members]
    finally:
        src.close()


def test_runs_follow_the_gap_rule_when_members_interleave(archive):
    path, _ = archive
    src = LocalFileSource(path)
    try:
        indexed = open_indexed(src)
    finally:
        src.close()
    assert indexed is not None
    big = [m for m in indexed.members if m.name.startswith("db/t")]
    assert all(m.size == 2 << 20 and m.frames == 10 for m in big)  # begin, eight 256 KiB writes, end
    # the runs are what the rule makes of where the frames are: a gap of more than RUN_GAP bytes of other members'
    # frames starts a new run, a smaller one is absorbed
    head, frames = split_frames(path.read_bytes())
    where: dict[int, list[tuple[int, int, int]]] = {}
    pos = len(head)
    for seq, fr in enumerate(frames):
        h = fa.unpack_frame_header(fr[: fa.FRAME_HEADER_SIZE])
        if h.file_id:
            where.setdefault(h.file_id, []).append((pos, len(fr), seq))
        pos += len(fr)
    for m in indexed.members:
        expect: list[fi.Run] = []
        for at, size, seq in where[m.file_id]:
            if expect and at - expect[-1].end <= RUN_GAP:
                last = expect[-1]
                expect[-1] = fi.Run(last.offset, at + size - last.offset, last.first_seq, last.frames + 1)
            else:
                expect.append(fi.Run(at, size, seq, 1))
        assert m.runs == expect, m.name


def test_old_archive_without_index_still_extracts(tmp_path: Path):
    files = _files()
    blob = _write(tmp_path / "old.isa", files, index=False)
    assert not blob.endswith(fi.LOCATOR_MAGIC + blob[-24:])
    head, _ = split_frames(blob)
    assert not fa.parse_stream_header(head[:32], head[32:]).required_features & fa.FEATURE_INDEX
    r = run_cli(["extract", "--no-fsync", "--include", "db/t2.ibd", "-C", str(tmp_path / "t"),
                 str(tmp_path / "old.isa")])
    assert r.returncode == 0, r.stderr
    assert b"has no index" in r.stderr
    assert tree(tmp_path / "t")["db/t2.ibd"] == files["db/t2.ibd"]


def _damaged(path: Path, tmp_path: Path, at: int, name: str) -> Path:
    bad = bytearray(path.read_bytes())
    bad[at] ^= 0x10
    out = tmp_path / name
    out.write_bytes(bytes(bad))
    return out


def _index_span(blob: bytes) -> tuple[int, int]:
    loc = fi.parse_locator(blob[-32:], len(blob))
    return loc.index_offset, loc.index_size


def test_damaged_locator_or_index_exits_3_and_writes_no_table(archive, tmp_path: Path):
    path, _ = archive
    blob = path.read_bytes()
    index_at, index_size = _index_span(blob)
    src = LocalFileSource(path)
    try:
        indexed = open_indexed(src)
    finally:
        src.close()
    assert indexed is not None
    t1 = next(m for m in indexed.members if m.name == "db/t1.ibd")
    cases = {
        "member-data": (_first_data(blob, t1.file_id) + fa.FRAME_HEADER_SIZE + 100, "payload checksum mismatch"),
        "locator": (len(blob) - 20, "end locator checksum mismatch"),
        "locator-magic": (len(blob) - 31, "end locator magic"),
        "index-header": (index_at + 30, "frame header checksum mismatch"),
        "index-payload": (index_at + index_size - 5, "payload checksum mismatch"),
    }
    for name, (at, text) in cases.items():
        bad = _damaged(path, tmp_path, at, name)
        r = run_cli(["extract", "--no-fsync", "--include", "db/t1.ibd", "-C", str(tmp_path / f"t-{name}"), str(bad)])
        assert r.returncode == 3, (name, r.stderr)
        assert text in r.stderr.decode(), (name, r.stderr)
        assert not (tmp_path / f"t-{name}" / META[0]).exists()  # the commit point: never written
        if name != "member-data":  # damage found before any member is fetched: nothing was written
            assert not (tmp_path / f"t-{name}/db/t1.ibd").exists()
        # a pipe reader meets the same damage
        r = run_cli(["verify", "-"], stdin=bad.read_bytes())
        assert r.returncode == 3, (name, r.stderr)


def _first_data(blob: bytes, file_id: int) -> int:
    """Where the first DATA frame of member ``file_id`` begins."""
    head, frames = split_frames(blob)
    pos = len(head)
    for fr in frames:
        h = fa.unpack_frame_header(fr[: fa.FRAME_HEADER_SIZE])
        if h.type == fa.FRAME_DATA and h.file_id == file_id:
            return pos
        pos += len(fr)
    raise AssertionError(f"member {file_id} has no DATA frame")


def _rebuild_index(blob: bytes, change) -> bytes:
    """``blob`` (uncompressed, indexed) with its INDEX payload changed by ``change(members)`` and every checksum
    that covers it recomputed: the index frame, the trailer's stream digest, the locator. Damage only the index
    itself reveals."""
    head, frames = split_frames(blob)
    *body, index, trailer = frames
    members = fi.parse_index(index[fa.FRAME_HEADER_SIZE :])
    change(members)
    raw = fi.build_index(members)
    h = fa.unpack_frame_header(index[: fa.FRAME_HEADER_SIZE])
    index = fa.build_frame_header(fa.FRAME_INDEX, 0, 0, h.seq, 0, len(raw), raw) + raw
    digest = xxhash.xxh3_128(head)
    for fr in [*body, index]:
        digest.update(fr[: fa.FRAME_HEADER_SIZE])
    th = fa.unpack_frame_header(trailer[: fa.FRAME_HEADER_SIZE])
    nframes, nfiles, raw_bytes, stored, _, info = fa.parse_trailer(trailer[fa.FRAME_HEADER_SIZE :])
    stored += len(raw) - h.stored_len
    traw = fa.build_trailer(nframes, nfiles, raw_bytes, stored, digest.digest(), info)
    trailer = fa.build_frame_header(fa.FRAME_TRAILER, 0, 0, th.seq, 0, len(traw), traw) + traw
    at = len(head) + sum(map(len, body))
    return b"".join([head, *body, index, trailer, fi.build_locator(at, len(index), len(trailer))])


def test_an_index_that_lies_with_valid_checksums_is_caught(tmp_path: Path):
    files = _files()
    blob = _write(tmp_path / "plain.isa", files, compress=False)

    def shift_run(members: list[fi.Member]) -> None:  # t1's first run now starts at t0's
        t0 = next(m for m in members if m.name == "db/t0.ibd")
        t1 = next(m for m in members if m.name == "db/t1.ibd")
        t1.runs[0] = fi.Run(t0.runs[0].offset, t1.runs[0].length, t1.runs[0].first_seq, t1.runs[0].frames)

    def swap_names(members: list[fi.Member]) -> None:
        members[0].name, members[1].name = members[1].name, members[0].name

    for name, change, text in [("shift", shift_run, "the index places frame"),
                                ("swap", swap_names, "does not match the index")]:
        bad = tmp_path / f"{name}.isa"
        bad.write_bytes(_rebuild_index(blob, change))
        r = run_cli(["extract", "--no-fsync", "--include", "db/t1.ibd", "-C", str(tmp_path / f"t-{name}"), str(bad)])
        assert r.returncode == 3, (name, r.stderr)
        assert text in r.stderr.decode(), (name, r.stderr)
        # a pipe reader, which sees every frame, holds the index against them (the trailer's digest agrees)
        r = run_cli(["verify", "-"], stdin=bad.read_bytes())
        assert r.returncode == 3, (name, r.stderr)
        assert "index" in r.stderr.decode(), (name, r.stderr)
    # the rebuild itself is faithful: unchanged, it reads
    good = tmp_path / "same.isa"
    good.write_bytes(_rebuild_index(blob, lambda members: None))
    assert run_cli(["verify", str(good)]).returncode == 0


def test_encrypted_archive_include_authenticates_frames_read_out_of_order(tmp_path: Path):
    files = _files()
    path = tmp_path / "enc.isa"
    blob = _write(path, files, codec=new_codec(ZstdCodec(1), KEY))
    assert b"db/t" not in blob  # the index is sealed like every payload: names stay secret
    key = tmp_path / "key"
    key.write_bytes(KEY.hex().encode())
    key.chmod(0o600)
    r = run_cli(["extract", "--no-fsync", "--include", "db/t4.ibd", "--decrypt-key-file", str(key), "-C",
                 str(tmp_path / "t"), str(path)])
    assert r.returncode == 0, r.stderr
    got = tree(tmp_path / "t")
    assert got["db/t4.ibd"] == files["db/t4.ibd"]
    assert "db/t3.ibd" not in got
    # read front to back, with the key (the sealed index is opened and checked) and without (structure only)
    for args in (["verify", "--decrypt-key-file", str(key)], ["list", "--decrypt-key-file", str(key)], ["verify"]):
        r = run_cli([*args, str(path)])
        assert r.returncode == 0, (args, r.stderr)
    src = LocalFileSource(path)
    try:
        with pytest.raises(AuthenticationFailed, match="no key was given"):
            open_indexed(src)
        with pytest.raises(AuthenticationFailed, match="wrong key"):
            open_indexed(src, key=bytes(32))
    finally:
        src.close()
    # a DATA frame of t4 changed, its checksums recomputed: it no longer authenticates at its place
    head, frames = split_frames(blob)
    src = LocalFileSource(path)
    try:
        indexed = open_indexed(src, key=KEY)
    finally:
        src.close()
    assert indexed is not None
    t4 = next(m for m in indexed.members if m.name == "db/t4.ibd")
    pos, i = len(head), 0
    while pos != t4.runs[0].offset:
        pos += len(frames[i])
        i += 1
    while (h := fa.unpack_frame_header(frames[i][: fa.FRAME_HEADER_SIZE])).type != fa.FRAME_DATA or (
            h.file_id != t4.file_id):
        i += 1  # t4's first DATA frame (another member's frames may come between)
    payload = bytearray(frames[i][fa.FRAME_HEADER_SIZE :])
    payload[100] ^= 1
    frames[i] = fa.build_frame_header(h.type, h.flags, h.file_id, h.seq, h.offset, h.raw_len,
                                      bytes(payload)) + bytes(payload)
    bad = tmp_path / "bad.isa"
    bad.write_bytes(b"".join([head, *frames, blob[-32:]]))
    r = run_cli(["extract", "--no-fsync", "--include", "db/t4.ibd", "--decrypt-key-file", str(key), "-C",
                 str(tmp_path / "t2"), str(bad)])
    assert r.returncode == 3, r.stderr
    assert "does not authenticate" in r.stderr.decode()
    assert not (tmp_path / "t2/db/t4.ibd").exists()


def test_read_tail_gives_the_trailer_from_the_last_bytes(archive):
    path, files = archive
    blob = path.read_bytes()
    info = read_tail(blob[-(64 << 10) :], len(blob))
    assert info is not None
    assert info.trailer is not None
    assert (info.trailer["to_lsn"], info.files) == (42, len(files))
    assert read_tail(blob[-100:], len(blob)) is None  # the trailer does not fit: the caller reads more
    assert read_tail(make_archive({"a": b"x"})[-4096:], 10_000) is None  # no index


def test_format_md_index_example_is_what_the_writer_writes():
    """docs/FORMAT.md §10's worked example is byte for byte the writer's output."""
    text = (REPO / "docs/FORMAT.md").read_text()
    example = text[text.index("### Worked example", text.index("## 10.")) :]
    hexdump = "".join(line.replace(" ", "") for line in example.splitlines() if re.fullmatch(r"[0-9a-f ]+", line))
    out = io.BytesIO()
    w = ArchiveWriter(out, meta={"flavor": "mariadb"}, compress=False)
    f = w.begin_file("a")
    w.write(f, 0, b"hello, world!\n")
    w.end_file(f, 14)
    w.close({"to_lsn": 42})
    blob = out.getvalue()
    assert bytes.fromhex(hexdump) == blob
    assert f"total {len(blob)} bytes" in example
    loc = fi.parse_locator(blob[-32:], len(blob))
    members = fi.parse_index(blob[loc.index_offset + fa.FRAME_HEADER_SIZE : loc.trailer_offset])
    assert [(m.name, m.size, m.runs) for m in members] == [("a", 14, [fi.Run(52, 221, 0, 3)])]


def test_an_index_over_its_cap_joins_runs_and_keeps_every_frame():
    """Two members whose frames alternate (every frame its own run): with a cap that fits only one run each, the
    builder joins each member's runs across the other's frames; the frame counts stay."""
    b = IndexBuilder(52)
    seq = 0
    for _ in range(50):
        for file_id in (1, 2):
            b.add(fa.build_frame_header(fa.FRAME_DATA, 0, file_id, seq, 0, 1, b"x" * 100_000), 56 + 100_000)
            seq += 1
    files = [("a", 0o640, 1, bytes(16)), ("b", 0o640, 1, bytes(16))]
    fine = fi.parse_index(b.build(files))
    assert [len(m.runs) for m in fine] == [50, 50]
    coarse = fi.parse_index(b.build(files, cap=fi.index_size(2, 2, 2)))
    assert [len(m.runs) for m in coarse] == [1, 1]
    assert [m.frames for m in coarse] == [50, 50]
    assert coarse[0].runs[0] == fi.Run(52, 99 * 100_056, 0, 50)


def test_an_index_larger_than_the_tail_read_costs_one_more_read(archive, monkeypatch):
    path, _ = archive
    monkeypatch.setattr("innostream.archive.seekable.TAIL_READ", 64)
    src = LocalFileSource(path)
    try:
        indexed = open_indexed(src)
    finally:
        src.close()
    assert indexed is not None
    assert [m.name for m in indexed.members] == list(_names(path))
    assert src.requests == 3  # the head, the last 64 bytes (the locator), then the index and trailer
