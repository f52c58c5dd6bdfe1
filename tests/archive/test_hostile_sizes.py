"""Declared sizes are bounded by --max-size and by what the archive plausibly carries (issue 14).

Before: a 400-byte archive declaring a member of 2^48 bytes of holes made ``verify`` hash zeros for about an hour and
``extract`` create a 256 TiB sparse file; an xbstream seek chunk did the same. Now: exit 3 at once, nothing big made.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import xxhash
from innostream.formats import archive as fa
from innostream.formats import xbstream as fx

from tests.archive.builders import PY, REPO, frame, make_archive, run_cli, split_frames
from tests.archive.test_corruption import build

HEAD, _ = split_frames(make_archive({}))
DATA = b"page zero" * 20


def _archive(size: int, *, data: bytes = DATA, offset: int = 0) -> bytes:
    """One member declaring ``size`` bytes and carrying ``data`` at ``offset``, and a trailer (the digest is left
    wrong: a reader that hashes the hole first would only find out after the hour)."""
    frames = [
        frame(fa.FRAME_FILE_BEGIN, 1, 0, fa.build_file_begin("db/t.ibd", 0o640)),
        frame(fa.FRAME_DATA, 1, 1, data, offset=offset),
        frame(fa.FRAME_FILE_END, 1, 2, fa.build_file_end(size, 1, xxhash.xxh3_128_digest(b"not it"))),
    ]
    return build(frames, HEAD)


def _xbstream_seek(to: int) -> bytes:
    """A MariaDB xbstream: a seek chunk far away, one byte, end of file."""
    path = b"db/t.ibd"
    seek = (struct.pack("<8sBBI", fx.XB_STREAM_CHUNK_MAGIC, 0, fx.XB_CHUNK_TYPE_SEEK, len(path)) + path
            + struct.pack("<Q", to))
    return seek + fx.build_payload_header(path, to, b"x", zlib.crc32(b"x")) + b"x" + fx.build_eof_chunk(path)


def _cli(args: list[str], blob: bytes, timeout: float = 600):
    import subprocess

    return subprocess.run([PY, "-m", "innostream", *args], input=blob, capture_output=True, cwd=REPO,
                          timeout=timeout)


@pytest.mark.parametrize("command", ["verify", "list", "extract"])
def test_2_48_bytes_of_holes_are_refused_at_once(tmp_path: Path, command: str):
    blob = _archive(fa.MAX_FILE_SIZE)
    assert len(blob) < 1024  # the archive was 382 bytes
    args = [command, "-"] + (["-C", str(tmp_path / "t")] if command == "extract" else [])
    r = _cli(args, blob)  # before the fix: verify hashed zeros for about an hour (TimeoutExpired here)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "exceeds --max-size" in lines[0]
    assert "raise --max-size" in lines[0]
    if command == "extract":
        big = [p for p in (tmp_path / "t").rglob("*") if p.is_file() and p.stat().st_size > 1 << 20]
        assert big == []


def test_holes_out_of_proportion_are_refused_below_max_size():
    # 1 TiB (under the 16 TiB default) declared by a few hundred bytes: the hole budget refuses it
    r = _cli(["verify", "-"], _archive(1 << 40))
    assert r.returncode == 3, r.stderr
    assert "bytes of holes" in r.stderr.decode()
    # a hole in the middle (a DATA frame far out) is counted the same way
    r = _cli(["verify", "-"], _archive(2 << 40, offset=(2 << 40) - len(DATA)))
    assert r.returncode == 3, r.stderr
    assert "bytes of holes" in r.stderr.decode()


def test_max_size_option_lowers_the_bound():
    r = _cli(["list", "--max-size", "1M", "-"], _archive(2 << 20))
    assert r.returncode == 3, r.stderr
    assert "exceeds --max-size 1048576" in r.stderr.decode()
    bad = _cli(["list", "--max-size", "lots", "-"], _archive(2 << 20))
    assert bad.returncode == 2


def test_real_sparse_files_pass(tmp_path: Path):
    """A preallocated, mostly empty tablespace (2 GiB, a page of data) is what real servers have: accepted (the
    hole floor at the default --max-size is 64 GiB)."""
    size = 2 << 30
    blob = make_archive({"ibdata1": DATA}, piece=1 << 20)
    # re-declare the file as 2 GiB with the real digest of DATA + zeros
    digest = xxhash.xxh3_128(DATA)
    zeros = bytes(1 << 20)
    left = size - len(DATA)
    while left:
        n = min(left, len(zeros))
        digest.update(zeros[:n])
        left -= n
    head, frames = split_frames(blob)
    sparse = [frames[0], frames[1],
              frame(fa.FRAME_FILE_END, 1, 2, fa.build_file_end(size, 1, digest.digest()))]
    info = {"files": [["ibdata1", size, digest.hexdigest()]]}
    archive = build(sparse, head, info=info)
    r = run_cli(["extract", "-C", str(tmp_path / "t"), "-"], stdin=archive)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t/ibdata1").stat().st_size == size
    assert (tmp_path / "t/ibdata1").stat().st_blocks * 512 < 1 << 20  # still a hole


@pytest.mark.parametrize("command", ["verify", "extract"])
def test_xbstream_seek_far_away_is_refused(tmp_path: Path, command: str):
    blob = _xbstream_seek(1 << 50)
    args = [command, "--xbstream-dialect", "mariadb", "-"] + (["-C", str(tmp_path / "t")] if command == "extract"
                                                               else [])
    r = _cli(args, blob)  # before the fix: verify said OK, extract tried a 1 PiB file
    assert r.returncode == 3, r.stderr
    assert "exceeds --max-size" in r.stderr.decode()
    if command == "extract":
        assert not (tmp_path / "t/db/t.ibd").exists() or (tmp_path / "t/db/t.ibd").stat().st_size == 0
