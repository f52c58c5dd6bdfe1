"""Round trips: real writer -> (pipe) -> real reader/extractor, holes, threads, read sizes and chunking."""

from __future__ import annotations

import io
import itertools
import os
import random
import threading
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from innostream.archive import ArchiveWriter, NullSink, read_archive
from innostream.extract import extract, verify
from innostream.formats import archive as fa
from innostream.formats.errors import Truncated

from tests.archive.builders import PY, REPO, Dribble, make_archive, run_cli, sample_files, split_frames, tree


def test_extract_round_trip_and_sparse(tmp_path: Path):
    files = sample_files()
    blob = make_archive(files)
    summary = extract(io.BytesIO(blob), tmp_path / "t")
    assert tree(tmp_path / "t") == files
    assert summary.trailer["to_lsn"] == 42
    assert [f.name for f in summary.files] == list(files)
    assert all(f.digest == xxhash.xxh3_128_hexdigest(files[f.name]) for f in summary.files)
    # 6 of 24 pages of ibdata1 are zero: they are not stored and stay holes
    st = (tmp_path / "t/ibdata1").stat()
    assert st.st_blocks * 512 <= st.st_size - 6 * 16384 + 4096  # + an extent-tree block ext4 adds once synced
    assert len(blob) < sum(map(len, files.values()))


def test_zero_pages_are_not_stored():
    data = bytes(1 << 20) + b"x" * 4096 + bytes(3 << 20)
    blob = make_archive({"a": data}, compress=False, piece=1 << 22)
    _, frames = split_frames(blob)
    data_frames = [fa.unpack_frame_header(f[:56]) for f in frames if f[4] == fa.FRAME_DATA]
    assert [(h.offset, h.raw_len) for h in data_frames] == [(1 << 20, 4096)]
    end = fa.parse_file_end(frames[2][56:])
    assert end[0] == len(data)
    assert end[2] == xxhash.xxh3_128_digest(data)


def test_frames_never_cross_chunk_boundaries():
    data = os.urandom(3 * fa.CHUNK_SIZE + 5000)
    blob = make_archive({"a": data}, compress=False, piece=777_777)
    _, frames = split_frames(blob)
    for f in frames:
        h = fa.unpack_frame_header(f[:56])
        if h.type == fa.FRAME_DATA:
            assert h.offset // fa.CHUNK_SIZE == (h.offset + h.raw_len - 1) // fa.CHUNK_SIZE


def test_concurrent_writers_interleave(tmp_path: Path):
    rnd = random.Random(7)
    rounds, step = 6, 300_000
    files = {f"db/t{i}.ibd": rnd.randbytes(rounds * step - i * 1000) for i in range(6)}
    out = io.BytesIO()
    w = ArchiveWriter(out, meta={"flavor": "mysql"}, threads=2, max_inflight=3)
    barrier = threading.Barrier(len(files))

    def copy(name: str, data: bytes) -> None:
        fid = w.begin_file(name)
        for off in range(0, len(data), step):
            barrier.wait()  # lockstep: every round has one write of every file
            w.write(fid, off, memoryview(bytearray(data[off : off + step])))
        w.end_file(fid, len(data))

    threads = [threading.Thread(target=copy, args=item) for item in files.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close({"to_lsn": 9})
    _, frames = split_frames(out.getvalue())
    ids = [fa.unpack_frame_header(f[:56]).file_id for f in frames[:-1]]
    switches = sum(1 for a, b in itertools.pairwise(ids) if a != b)
    assert switches >= rounds * (len(files) - 1)  # really interleaved
    extract(io.BytesIO(out.getvalue()), tmp_path / "t", parallel=3)
    assert tree(tmp_path / "t") == files


def test_metadata_files_are_written_last(tmp_path: Path):
    files = sample_files()
    blob = make_archive(files)
    cut = blob[: len(blob) - 10]  # the trailer is incomplete
    with pytest.raises(Truncated):
        extract(io.BytesIO(cut), tmp_path / "t")
    got = tree(tmp_path / "t")
    assert "ibdata1" in got
    assert not {"xtrabackup_checkpoints", "backup-my.cnf"} & set(got)


def test_cli_round_trip_through_a_real_pipe(tmp_path: Path):
    files = sample_files(3)
    src = tmp_path / "src"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    writer = (
        "import sys, pathlib; from innostream.archive import ArchiveWriter\n"
        "src = pathlib.Path(sys.argv[1]); w = ArchiveWriter(sys.stdout.buffer, meta={'flavor': 'mariadb'})\n"
        "for p in sorted(src.rglob('*')):\n"
        "    if p.is_file():\n"
        "        d = p.read_bytes(); f = w.begin_file(p.relative_to(src).as_posix()); w.write(f, 0, d)\n"
        "        w.end_file(f, len(d))\n"
        "w.close({'to_lsn': 1})\n"
    )
    target = tmp_path / "out dir"
    cmd = f"cd {REPO} && {PY} -c \"{writer}\" {src} | {PY} -m innostream extract -C '{target}' --parallel 3"
    r = __import__("subprocess").run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert tree(target) == files
    listing = run_cli(["list", "-"], stdin=make_archive(files))
    assert listing.returncode == 0
    assert [line.split()[-1] for line in listing.stdout.decode().splitlines()] == list(files)
    # no flavor in the metadata: no page validation of the (synthetic) ibdata1
    assert run_cli(["verify", "-"], stdin=make_archive(files, meta={})).returncode == 0
    # with a flavor, verify validates the pages of ibdata1: synthetic random pages are reported corrupt
    bad = run_cli(["verify", "-"], stdin=make_archive(files, meta={"flavor": "mariadb"}))
    assert bad.returncode == 3
    assert b"corrupt page(s)" in bad.stderr
    # the synthetic ibdata1 starts with a zero page: InnoDB refuses such a file, so that is the first finding
    assert b"page 0 is all zero" in bad.stderr
    assert b"[file ibdata1, page 0]" in bad.stderr
    assert b"Traceback" not in bad.stderr


BLOB = make_archive(sample_files(5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=20))
def test_any_read_sizes(sizes):
    summary = read_archive(Dribble(BLOB, sizes), NullSink(), parallel=2)  # type: ignore[arg-type]
    assert [f.name for f in summary.files] == list(sample_files(5))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 200_000), max_size=12), threads=st.integers(1, 3), compress=st.booleans(),
       tail=st.integers(0, 20_000))
def test_any_chunking(tmp_path_factory, cuts, threads, compress, tail):
    rnd = random.Random(len(cuts))
    data = rnd.randbytes(60_000) + bytes(50_000) + b"ab" * 45_000 + rnd.randbytes(1000)
    bounds = sorted({c % len(data) for c in cuts} | {0})
    out = io.BytesIO()
    w = ArchiveWriter(out, threads=threads, compress=compress)
    fid = w.begin_file("f")
    for a, b in zip(bounds, [*bounds[1:], len(data)], strict=True):
        if data[a:b].strip(b"\0"):  # skip all-zero writes entirely: a gap is a hole
            w.write(fid, a, data[a:b])
    w.end_file(fid, len(data) + tail)
    w.close()
    target = tmp_path_factory.mktemp("x")
    extract(io.BytesIO(out.getvalue()), target / "t")
    assert (target / "t/f").read_bytes() == data + bytes(tail)


def test_verify_reports_a_clean_archive():
    summary = verify(io.BytesIO(BLOB))
    assert summary.format == "innostream"
    assert summary.frames == len(split_frames(BLOB)[1])


def test_abort_never_writes_a_trailer(tmp_path: Path):
    out = io.BytesIO()
    w = ArchiveWriter(out, threads=2, max_inflight=2)
    fid = w.begin_file("db/t.ibd")
    for i in range(20):
        w.write(fid, i << 20, os.urandom(1 << 20))
    w.abort()
    w.abort()  # idempotent
    from innostream.errors import Interrupted

    with pytest.raises(Interrupted):
        w.write(fid, 21 << 20, b"x")
    with pytest.raises(Interrupted):
        w.close()
    blob = out.getvalue()
    assert b"ISFR\x04" not in blob
    with pytest.raises(Truncated, match="without a trailer"):
        read_archive(io.BytesIO(blob), NullSink())


def test_reader_going_away_stops_the_writer_with_one_line(tmp_path: Path):
    """`innostream ... | head -c 1000`: the writer sees a broken pipe and reports it, without hanging."""
    script = (
        "import os, sys; from innostream.archive import ArchiveWriter\n"
        "from innostream.cli import main\n"
        "w = ArchiveWriter(sys.stdout.buffer, threads=2)\n"
        "f = w.begin_file('x')\n"
        "try:\n"
        "    for i in range(200): w.write(f, i << 20, os.urandom(1 << 20))\n"
        "    w.end_file(f, 200 << 20); w.close()\n"
        "except Exception as e:\n"
        "    w.abort(); print(type(e).__name__, e, file=sys.stderr); sys.exit(7)\n"
    )
    import subprocess

    r = subprocess.run(["bash", "-c", f"cd {REPO} && {PY} -c \"{script}\" | head -c 1000 > /dev/null; "
                        "echo ${{PIPESTATUS[0]}}".replace("{{", "{").replace("}}", "}")],
                       capture_output=True, timeout=120)
    assert r.stdout.strip() == b"7", r.stderr
    assert b"Interrupted output pipe closed by the reader" in r.stderr


def test_fsync_option_and_existing_empty_target(tmp_path: Path):
    (tmp_path / "t").mkdir()
    r = run_cli(["extract", "--fsync", "--target-dir", str(tmp_path / "t")], stdin=BLOB)
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "t") == sample_files(5)


def test_small_writes_are_gathered_into_large_frames(tmp_path: Path):
    """The redo copier writes 512-byte blocks: they become ~1 MiB frames, not thousands of tiny ones."""
    rnd = random.Random(9)
    data = rnd.randbytes(3 * fa.CHUNK_SIZE + 1000)
    out = io.BytesIO()
    w = ArchiveWriter(out)
    fid = w.begin_file("ib_logfile0")
    for off in range(0, len(data), 512):
        w.write(fid, off, data[off : off + 512])
    big = w.begin_file("x")
    w.write(big, 0, data)
    w.end_file(big, len(data))
    w.end_file(fid, len(data))
    w.close()
    _, frames = split_frames(out.getvalue())
    sizes = [fa.unpack_frame_header(f[:56]).raw_len for f in frames if f[4] == fa.FRAME_DATA]
    assert sizes == [fa.CHUNK_SIZE] * 6 + [1000, 1000]  # the small file's tail goes out at end_file
    extract(io.BytesIO(out.getvalue()), tmp_path / "t")
    assert (tmp_path / "t/ib_logfile0").read_bytes() == data


def test_abort_while_copiers_are_blocked(tmp_path: Path):
    """abort() from another thread while copiers wait on a full queue: they all stop with Interrupted."""
    from innostream.errors import Interrupted

    class Slow(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            import time

            time.sleep(0.01)
            return len(b)

    w = ArchiveWriter(Slow(), threads=1, max_inflight=1)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def copier(n: int) -> None:
        fid = w.begin_file(f"f{n}")
        try:
            for i in range(200):
                w.write(fid, i << 20, random.Random(i).randbytes(1 << 20))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=copier, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    import time

    time.sleep(0.3)
    w.abort()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 3
    assert all(isinstance(e, Interrupted) for e in errors)
