"""Damaged and hostile archives: every cut, flipped field, dropped/duplicated/reordered frame, traversal and absurd
length gives its own clear error (never a traceback), and nothing outside the target changes."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
import xxhash
import zstandard
from innostream.archive import NullSink, read_archive
from innostream.errors import FileExistsInTarget, InnostreamError, UnsafePath
from innostream.extract import extract
from innostream.formats import archive as fa
from innostream.formats.errors import BadMagic, ChecksumMismatch, Corrupt, FormatError, Truncated, UnsupportedVersion

from tests.archive.builders import frame, make_archive, run_cli, sample_files, split_frames

FILES = sample_files(11)
BLOB = make_archive(FILES)
HEAD, FRAMES = split_frames(BLOB)


def read(blob: bytes):
    return read_archive(io.BytesIO(blob), NullSink())


def build(frames: list[bytes], head: bytes = HEAD, *, trailer: bool = True, info: dict | None = None) -> bytes:
    """An archive of hand-made frames (seq already set) with a consistent trailer."""
    digest = xxhash.xxh3_128(head)
    stored = raw = 0
    nfiles = 0
    for fr in frames:
        h = fa.unpack_frame_header(fr[:56])
        digest.update(fr[:56])
        stored += h.stored_len
        raw += h.raw_len if h.type == fa.FRAME_DATA else 0
        nfiles += h.type == fa.FRAME_FILE_BEGIN
    out = head + b"".join(frames)
    if trailer:
        payload = fa.build_trailer(len(frames), nfiles, raw, stored, digest.digest(), info or {"files": []})
        out += frame(fa.FRAME_TRAILER, 0, len(frames), payload)
    return out


def one_file(name: str, data: bytes, *, mode: int = 0o640, file_id: int = 1, seq: int = 0) -> list[bytes]:
    return [
        frame(fa.FRAME_FILE_BEGIN, file_id, seq, fa.build_file_begin(name, mode)),
        frame(fa.FRAME_DATA, file_id, seq + 1, data),
        frame(fa.FRAME_FILE_END, file_id, seq + 2, fa.build_file_end(len(data), 1, xxhash.xxh3_128_digest(data))),
    ]


def test_handmade_archive_is_valid(tmp_path: Path):
    files = one_file("a/b", b"hello")
    blob = build(files, info={"files": [["a/b", 5, xxhash.xxh3_128_hexdigest(b"hello")]]})
    extract(io.BytesIO(blob), tmp_path / "t")
    assert (tmp_path / "t/a/b").read_bytes() == b"hello"


def boundaries() -> list[int]:
    pos = [len(HEAD)]
    for fr in FRAMES:
        pos.append(pos[-1] + len(fr))
    return pos


def test_truncation_at_every_frame_boundary():
    ends = boundaries()
    assert ends[-1] == len(BLOB)
    for i, cut in enumerate(ends[:-1]):
        with pytest.raises(Truncated, match=f"ends after frame {i - 1} without a trailer") as exc:
            read(BLOB[:cut])
        assert exc.value.offset == cut


def test_truncation_inside_every_frame():
    ends = boundaries()
    for i, (start, end) in enumerate(itertools.pairwise(ends)):
        for cut in sorted({start + 1, start + 30, start + 55, start + 56 + (end - start - 56) // 2, end - 1}):
            if not start < cut < end or cut == start + 56:
                continue
            where = "header" if cut < start + 56 else "payload"
            with pytest.raises(Truncated, match=f"inside the {where} of frame {i}"):
                read(BLOB[:cut])
    for cut in (0, 5, 31, 40):
        with pytest.raises((Truncated, BadMagic)):
            read(BLOB[:cut])


DATA_INDEX = next(i for i, f in enumerate(FRAMES) if f[4] == fa.FRAME_DATA and f[5] == 0)

FIELDS = [  # (field, byte to flip, bit, error, text)
    ("magic", 0, 0x01, BadMagic, "frame magic"),
    ("type", 4, 0x10, ChecksumMismatch, "type 0x12 is unknown"),
    ("flags", 5, 0x04, ChecksumMismatch, "flags 0x4 has unknown bits"),
    ("reserved1", 6, 0x01, ChecksumMismatch, "reserved field"),
    ("file_id", 8, 0x40, ChecksumMismatch, "file_id"),
    ("stored_len", 15, 0x80, ChecksumMismatch, "over the cap"),
    ("raw_len", 19, 0x80, ChecksumMismatch, "over the cap"),
    ("reserved2", 20, 0x01, ChecksumMismatch, "reserved field"),
    ("seq", 24, 0x01, ChecksumMismatch, "seq is"),
    ("offset", 39, 0x80, ChecksumMismatch, "offset"),
    ("low offset bit", 33, 0x01, ChecksumMismatch, "header checksum mismatch"),
    ("payload_xxh3", 40, 0x01, ChecksumMismatch, "header checksum mismatch"),
    ("header_xxh3", 50, 0x01, ChecksumMismatch, "header checksum mismatch"),
]


@pytest.mark.parametrize(("field", "byte", "bit", "error", "text"), FIELDS, ids=[f[0] for f in FIELDS])
def test_each_flipped_header_field(field, byte, bit, error, text):
    pos = boundaries()[DATA_INDEX] + byte
    bad = bytearray(BLOB)
    bad[pos] ^= bit
    with pytest.raises(error, match=text) as exc:
        read(bytes(bad))
    assert exc.value.where.frame == DATA_INDEX
    assert exc.value.offset == boundaries()[DATA_INDEX]


def test_flipped_bit_in_every_frame_payload_and_the_stream_header():
    ends = boundaries()
    for i, (start, end) in enumerate(itertools.pairwise(ends)):
        if end - start == 56:
            continue
        bad = bytearray(BLOB)
        bad[start + 56 + (end - start - 56) // 2] ^= 0x20
        with pytest.raises(ChecksumMismatch, match=f"payload checksum mismatch in frame {i}"):
            read(bytes(bad))
    for pos in range(len(HEAD)):
        bad = bytearray(BLOB)
        bad[pos] ^= 0x02
        with pytest.raises(FormatError):
            read(bytes(bad))


def test_dropped_duplicated_reordered_frames():
    with pytest.raises(Corrupt, match="frame 3 missing"):
        read(HEAD + b"".join(FRAMES[:3] + FRAMES[4:]))
    with pytest.raises(Corrupt, match="frame 3 duplicated"):
        read(HEAD + b"".join(FRAMES[:4] + FRAMES[3:]))
    with pytest.raises(Corrupt, match=r"frame 3 missing|frame 4 out of order"):
        read(HEAD + b"".join([*FRAMES[:3], FRAMES[4], FRAMES[3], *FRAMES[5:]]))
    # reordered across files: the FILE_END of the first file swapped with the FILE_BEGIN of the second
    k = next(i for i, f in enumerate(FRAMES) if f[4] == fa.FRAME_FILE_END)
    assert FRAMES[k + 1][4] == fa.FRAME_FILE_BEGIN
    with pytest.raises(Corrupt, match=f"frame {k} missing"):
        read(HEAD + b"".join([*FRAMES[:k], FRAMES[k + 1], FRAMES[k], *FRAMES[k + 2 :]]))
    with pytest.raises(Corrupt, match="frame 0 out of order"):
        read(HEAD + b"".join([*FRAMES[:5], FRAMES[0], *FRAMES[5:]]))
    with pytest.raises(Corrupt, match="data after the trailer"):
        read(BLOB + FRAMES[0])
    with pytest.raises(BadMagic, match="not an innostream"):
        read(b"\0" * 100)


def test_trailer_disagreements():
    # a trailer whose counts or digest disagree (well-formed frame, wrong content)
    body = one_file("f", b"x")
    good = build(body, info={"files": [["f", 1, xxhash.xxh3_128_hexdigest(b"x")]]})
    read(good)
    with pytest.raises(Corrupt, match="file list"):
        read(build(body, info={"files": [["f", 2, xxhash.xxh3_128_hexdigest(b"x")]]}))
    _, frames = split_frames(good)
    h = fa.unpack_frame_header(frames[-1][:56])
    fr, nf, rb, sb, dg, info = fa.parse_trailer(frames[-1][56:])
    forged = frame(fa.FRAME_TRAILER, 0, h.seq, fa.build_trailer(fr, nf, rb, sb, b"\0" * 16, info))
    with pytest.raises(ChecksumMismatch, match="stream digest"):
        read(HEAD + b"".join(frames[:-1]) + forged)
    forged = frame(fa.FRAME_TRAILER, 0, h.seq, fa.build_trailer(fr + 1, nf, rb, sb, dg, info))
    with pytest.raises(Corrupt, match="trailer counts 4 frames"):
        read(HEAD + b"".join(frames[:-1]) + forged)
    with pytest.raises(Corrupt, match="without FILE_END"):
        read(build(body[:2]))


def test_file_digest_and_frame_count_are_checked():
    data = b"payload"
    wrong = [
        frame(fa.FRAME_FILE_BEGIN, 1, 0, fa.build_file_begin("f", 0o640)),
        frame(fa.FRAME_DATA, 1, 1, data),
        frame(fa.FRAME_FILE_END, 1, 2, fa.build_file_end(len(data), 1, xxhash.xxh3_128_digest(b"other"))),
    ]
    with pytest.raises(ChecksumMismatch, match="file digest"):
        read(build(wrong))
    wrong[2] = frame(fa.FRAME_FILE_END, 1, 2, fa.build_file_end(len(data), 2, xxhash.xxh3_128_digest(data)))
    with pytest.raises(Corrupt, match="counts 2 data frames"):
        read(build(wrong))


@pytest.mark.parametrize(
    ("frames", "error", "text"),
    [
        (one_file("../evil", b"x"), UnsafePath, "refusing archive member '../evil'"),
        (one_file("/tmp/evil", b"x"), UnsafePath, "absolute path"),
        (one_file("a/../../evil", b"x"), UnsafePath, "'..'"),
        (one_file("link", b"/etc/passwd", mode=0o120777), Corrupt, "symlink"),
        (one_file("a", b"x") + one_file("a", b"y", file_id=2, seq=3), Corrupt, "duplicate file"),
        (one_file("a", b"x", file_id=2), Corrupt, "FILE_BEGIN with file_id 2, expected 1"),
        ([frame(fa.FRAME_DATA, 1, 0, b"x")], Corrupt, "DATA for file_id 1, which is not open"),
        ([frame(0x06, 0, 0, b"")], UnsupportedVersion, "frame type 0x6 is unknown"),
        ([frame(fa.FRAME_FILE_BEGIN, 1, 0, b"\0\0\0\0\xff\x0fab")], Corrupt, "name length"),
        ([frame(fa.FRAME_FILE_BEGIN, 1, 0, fa.build_file_begin("a", 0)),
          frame(fa.FRAME_DATA, 1, 1, b"xxxx", offset=100), frame(fa.FRAME_DATA, 1, 2, b"yy", offset=102)],
         Corrupt, "overlaps the previous frame"),
        ([frame(fa.FRAME_FILE_BEGIN, 1, 0, fa.build_file_begin("a", 0)),
          frame(fa.FRAME_DATA, 1, 1, b"xxxx", offset=fa.MAX_FILE_SIZE)], Corrupt, "cap"),
        ([frame(fa.FRAME_FILE_BEGIN, 1, 0, fa.build_file_begin("a", 0)),
          frame(fa.FRAME_DATA, 1, 1, zstandard.ZstdCompressor().compress(bytes(10 << 20)), flags=fa.FLAG_ZSTD,
                raw_len=100)], Corrupt, "zstd frame declares 10485760 bytes, the header 100"),
        ([frame(fa.FRAME_FILE_BEGIN, 1, 0, fa.build_file_begin("a", 0)),
          frame(fa.FRAME_DATA, 1, 1, b"\x28\xb5\x2f\xfdjunk", flags=fa.FLAG_ZSTD, raw_len=100)], Corrupt, "zstd"),
    ],
    ids=["dotdot", "absolute", "inner-dotdot", "symlink", "duplicate", "bad-id", "data-unopened", "unknown-type",
         "name-len", "overlap", "offset-cap", "zstd-bomb", "zstd-junk"],
)
def test_hostile_archives(tmp_path: Path, frames, error, text):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=text):
        extract(io.BytesIO(build(frames)), tmp_path / "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == before + (["t"] if "t" not in before else [])
    assert [p.name for p in outside.iterdir()] == ["keep"]
    assert not Path("/tmp/evil").exists()


def test_absurd_lengths_are_refused_before_allocating():
    # a DATA frame declaring 2 GiB with a valid header checksum: refused on the header alone
    hdr = fa.build_frame_header(fa.FRAME_DATA, 0, 1, 1, 0, 1 << 31, b"")
    hdr = hdr[:12] + (1 << 31).to_bytes(4, "little") + hdr[16:48]
    hdr += xxhash.xxh3_64_intdigest(hdr).to_bytes(8, "little")
    begin = frame(fa.FRAME_FILE_BEGIN, 1, 0, fa.build_file_begin("a", 0))
    with pytest.raises(Corrupt, match="exceeds the cap 16777216"):
        read(HEAD + begin + hdr)
    meta_huge = bytearray(HEAD[:32])
    meta_huge[20:24] = (1 << 31).to_bytes(4, "little")
    with pytest.raises(Corrupt, match="stream metadata length"):
        read(bytes(meta_huge))


def test_optional_frames_are_skipped():
    body = one_file("f", b"x")
    opt = frame(0x85, 0, 3, b"some future extension")
    summary = read(build([*body, opt], info={"files": [["f", 1, xxhash.xxh3_128_hexdigest(b"x")]]}))
    assert summary.skipped_frames == 1
    assert [f.name for f in summary.files] == ["f"]


def test_existing_files_and_symlinks_in_target(tmp_path: Path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "db1").mkdir()
    (target / "db1" / "t1.ibd").write_bytes(b"precious")
    with pytest.raises(FileExistsInTarget, match=r"File exists \(errno 17\).*db1/t1.ibd") as exc:
        extract(io.BytesIO(BLOB), target)
    assert exc.value.exit_code == 6
    assert (target / "db1" / "t1.ibd").read_bytes() == b"precious"
    assert not (target / "xtrabackup_checkpoints").exists()
    # a symlink inside the target pointing outside is never followed
    outside = tmp_path / "outside"
    outside.mkdir()
    t2 = tmp_path / "t2"
    t2.mkdir()
    (t2 / "db1").symlink_to(outside)
    with pytest.raises(UnsafePath, match="symlink"):
        extract(io.BytesIO(BLOB), t2)
    assert list(outside.iterdir()) == []
    # existing but unrelated files are fine (an existing non-empty target), metadata collisions are caught early
    t3 = tmp_path / "t3"
    t3.mkdir()
    (t3 / "xtrabackup_checkpoints").write_text("old")
    with pytest.raises(FileExistsInTarget, match="xtrabackup_checkpoints"):
        extract(io.BytesIO(BLOB), t3)
    assert (t3 / "xtrabackup_checkpoints").read_text() == "old"


@pytest.mark.parametrize(
    ("blob", "code", "text"),
    [
        (BLOB[:-7], 3, b"innostream: error: archive ends inside the payload of frame"),
        (BLOB[: len(HEAD) + len(FRAMES[0])], 3, b"without a trailer"),
        (b"hello world", 3, b"not an innostream archive nor an xbstream"),
        (b"", 3, b"empty input"),
        (build(one_file("../x", b"x")), 6, b"refusing archive member '../x'"),
    ],
    ids=["cut-payload", "cut-boundary", "garbage", "empty", "traversal"],
)
def test_cli_errors_are_one_line(tmp_path: Path, blob, code, text):
    r = run_cli(["extract", "-C", str(tmp_path / "t")], stdin=blob)
    assert r.returncode == code
    assert text in r.stderr
    assert b"Traceback" not in r.stderr
    assert r.stderr.count(b"innostream: error:") == 1
    assert r.stdout == b""
    if not blob.startswith(fa.STREAM_MAGIC):  # unrecognised input: the target is not even created
        assert not (tmp_path / "t").exists()


def test_errors_carry_context():
    bad = bytearray(BLOB)
    bad[boundaries()[DATA_INDEX] + 60] ^= 1
    with pytest.raises(InnostreamError) as exc:
        read(bytes(bad))
    assert f"offset {boundaries()[DATA_INDEX]}" in str(exc.value)
    assert f"frame {DATA_INDEX}" in str(exc.value)


def test_too_many_open_files_is_refused(tmp_path: Path):
    from innostream.archive import MAX_OPEN_FILES

    begins = [frame(fa.FRAME_FILE_BEGIN, i + 1, i, fa.build_file_begin(f"f{i}", 0o640))
              for i in range(MAX_OPEN_FILES + 1)]
    with pytest.raises(Corrupt, match=f"more than {MAX_OPEN_FILES} files open at once"):
        extract(io.BytesIO(build(begins, trailer=False)), tmp_path / "t")


def test_many_directories_with_fsync(tmp_path: Path):
    from innostream.target import MAX_DIR_FDS

    files = {f"db{i}/t.ibd": b"x%d" % i for i in range(MAX_DIR_FDS + 50)}
    extract(io.BytesIO(make_archive(files)), tmp_path / "t", fsync=True)
    assert all((tmp_path / "t" / n).read_bytes() == d for n, d in files.items())
