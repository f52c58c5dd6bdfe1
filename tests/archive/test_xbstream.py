"""xbstream interop with the real MariaDB tools: mbstream -x, mbstream -c and mariadb-backup --stream=xbstream."""

from __future__ import annotations

import gzip
import io
import random
import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from innostream.archive import NullSink
from innostream.archive.xbstream import XbstreamWriter, read_xbstream
from innostream.errors import FileExistsInTarget, UnsafePath
from innostream.extract import extract, list_archive
from innostream.formats import xbstream as fx
from innostream.formats.errors import BadMagic, ChecksumMismatch, Corrupt, Truncated, UnsupportedVersion

from tests.archive.builders import PY, REPO, Dribble, make_archive, run_cli, tree

FIXTURES = REPO / "fixtures" / "xbstream"


def fixture(name: str) -> bytes:
    return gzip.decompress((FIXTURES / name).read_bytes())


def mbstream_x(stream: bytes, target: Path) -> subprocess.CompletedProcess:
    target.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mbstream", "-x"], input=stream, cwd=target, capture_output=True)


def p_chunk(path: bytes, offset: int, data: bytes, *, crc: int | None = None) -> bytes:
    return fx.build_payload_header(path, offset, data, crc) + data


def test_real_mbstream_c_fixture_extracts_like_mbstream(tmp_path: Path):
    stream = fixture("mbstream-10.11-c-three-files.xb.gz")
    assert mbstream_x(stream, tmp_path / "ref").returncode == 0
    summary = extract(io.BytesIO(stream), tmp_path / "ours")
    assert tree(tmp_path / "ours") == tree(tmp_path / "ref")
    assert tree(tmp_path / "ours")["sub/zero.bin"] == b"head" + bytes(4096) + b"x"
    assert summary.format == "xbstream"
    assert sorted(f.name for f in summary.files) == ["a.txt", "empty", "sub/zero.bin"]


@pytest.mark.parametrize("dialect", ["auto", "mariadb"])
def test_mariadb_seek_chunk(tmp_path: Path, dialect: str):
    stream = fixture("mariadb-seek-chunk.xb.gz")
    extract(io.BytesIO(stream), tmp_path / "t", dialect=dialect)
    assert (tmp_path / "t/f1").read_bytes() == b"ab\0\0ZZ"
    assert mbstream_x(stream, tmp_path / "ref").returncode == 0
    assert tree(tmp_path / "ref") == tree(tmp_path / "t")


@pytest.mark.parametrize("dialect", ["auto", "percona"])
def test_percona_sparse_chunk(tmp_path: Path, dialect: str):
    extract(io.BytesIO(fixture("percona-sparse-chunk.xb.gz")), tmp_path / "t", dialect=dialect)
    assert (tmp_path / "t/f1").read_bytes() == b"ab\0\0ZZ"


def test_percona_sparse_read_as_mariadb_is_an_error(tmp_path: Path):
    r = run_cli(["extract", "--xbstream-dialect", "mariadb", "-C", str(tmp_path / "t")],
                stdin=fixture("percona-sparse-chunk.xb.gz"))
    assert r.returncode == 3
    assert b"Traceback" not in r.stderr
    assert r.stderr.startswith(b"innostream: error:")


def write_xbstream(files: dict[str, tuple[list[tuple[int, bytes]], int]], chunk: int) -> bytes:
    out = io.BytesIO()
    w = XbstreamWriter(out, chunk_size=chunk)
    for name, (writes, size) in files.items():
        fid = w.begin_file(name)
        for off, data in writes:
            w.write(fid, off, data)
        w.end_file(fid, size)
    w.close({"to_lsn": 1})
    return out.getvalue()


def test_our_xbstream_extracts_with_real_mbstream(tmp_path: Path):
    rnd = random.Random(3)
    files = {
        "ibdata1": ([(0, rnd.randbytes(300_000)), (500_000, rnd.randbytes(10_000))], 600_000),  # hole + tail
        "db/t1.ibd": ([(0, rnd.randbytes(70_000))], 70_000),
        "db/empty.ibd": ([], 0),
        "xtrabackup_checkpoints": ([(0, b"backup_type = full-backuped\n")], 28),
    }
    stream = write_xbstream(files, chunk=64 * 1024)
    r = mbstream_x(stream, tmp_path / "ref")
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    ref = tree(tmp_path / "ref")
    for name, (writes, size) in files.items():
        expect = bytearray(size)
        for off, data in writes:
            expect[off : off + len(data)] = data
        assert ref[name] == bytes(expect), name
    extract(io.BytesIO(stream), tmp_path / "ours")
    assert tree(tmp_path / "ours") == ref
    # the zeros of the hole (300 000..500 000) and of the tail came as data but are not written: holes again
    assert (tmp_path / "ours/ibdata1").stat().st_blocks * 512 <= 600_000 - 180_000


def test_xbstream_writer_through_a_real_pipe_into_mbstream(tmp_path: Path):
    script = (
        "import sys; from innostream.archive.xbstream import XbstreamWriter\n"
        "w = XbstreamWriter(sys.stdout.buffer)\n"
        "f = w.begin_file('big.bin')\n"
        "for i in range(30): w.write(f, i * (1 << 20), bytes([i]) * (1 << 20))\n"
        "w.end_file(f, 31 << 20); w.close()\n"
    )
    (tmp_path / "ref").mkdir()
    r = subprocess.run(["bash", "-o", "pipefail", "-c", f"cd {REPO} && {PY} -c \"{script}\" | "
                        f"(cd {tmp_path / 'ref'} && mbstream -x)"], capture_output=True)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "ref/big.bin").read_bytes()
    assert data == b"".join(bytes([i]) * (1 << 20) for i in range(30)) + bytes(1 << 20)


@pytest.fixture(scope="module")
def real_stream(mariadb10, tmp_path_factory) -> bytes:
    """A real `mariadb-backup --backup --stream=xbstream` of the MariaDB 10.11 test server."""
    mariadb10.execute("CREATE DATABASE IF NOT EXISTS xbtest")
    mariadb10.execute("CREATE TABLE IF NOT EXISTS xbtest.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(200))")
    mariadb10.execute("INSERT INTO xbtest.t (v) SELECT REPEAT(CHAR(65 + seq % 26), 150) FROM xbtest.seq_1_to_3000")
    tmp = tmp_path_factory.mktemp("mbtmp")
    r = subprocess.run(
        ["mariadb-backup", "--backup", "--stream=xbstream", f"--socket={mariadb10.socket}", "--user=root",
         f"--datadir={mariadb10.datadir}", f"--target-dir={tmp / 'mbtmp'}", "--parallel=2"],
        capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_real_mariadb_backup_stream_extracts_like_mbstream(real_stream: bytes, tmp_path: Path):
    stream = real_stream
    assert stream.startswith(fx.XB_STREAM_CHUNK_MAGIC)
    assert mbstream_x(stream, tmp_path / "ref").returncode == 0
    ref = tree(tmp_path / "ref")
    assert "xbtest/t.frm" in ref  # the .ibd may come as xbtest/t.new (DDL since the last checkpoint)
    assert any(n.startswith("xbtest/t.") and len(ref[n]) >= 65536 for n in ref)
    assert "xtrabackup_checkpoints" in ref
    # from a pipe, through the CLI, and zstd-compressed (the `| zstd -1` path)
    pipe = subprocess.run(["bash", "-o", "pipefail", "-c",
                           f"cd {REPO} && {PY} -m innostream extract -C {tmp_path / 'ours'} --parallel 2"],
                          input=stream, capture_output=True)
    assert pipe.returncode == 0, pipe.stderr
    assert tree(tmp_path / "ours") == ref
    extract(io.BytesIO(zstandard.ZstdCompressor(level=1).compress(stream)), tmp_path / "ours-zst")
    assert tree(tmp_path / "ours-zst") == ref
    listing = run_cli(["list", "-"], stdin=stream)
    assert listing.returncode == 0
    assert sorted(line.split()[-1].decode() for line in listing.stdout.splitlines()) == sorted(ref)
    # verify checks every CRC; a cut inside the last chunk is caught
    assert run_cli(["verify", "-"], stdin=stream).returncode == 0
    checked = run_cli(["verify", "--flavor", "mariadb", "-"], stdin=stream)
    assert checked.returncode == 0, checked.stderr
    assert int(re.search(rb"(\d+) InnoDB pages checked", checked.stderr).group(1)) > 50
    assert run_cli(["verify", "-"], stdin=stream[:-3]).returncode == 3


GOOD = p_chunk(b"f", 0, b"hello") + fx.build_eof_chunk(b"f")


@pytest.mark.parametrize(
    ("stream", "error", "text"),
    [
        (p_chunk(b"f", 0, b"hello"), Truncated, "without the end-of-file chunk of 1 file"),
        (p_chunk(b"f", 0, b"hello", crc=1) + fx.build_eof_chunk(b"f"), ChecksumMismatch, "invalid checksum"),
        (p_chunk(b"f", 0, b"he") + p_chunk(b"f", 5, b"llo"), Corrupt, "out-of-order chunk"),
        (p_chunk(b"file", 0, b"x")[:16], Truncated, "chunk path"),
        (GOOD[:20], Truncated, "ends inside"),
        (GOOD[:10], Truncated, "chunk header"),
        (b"XBSTCK02" + GOOD[8:], BadMagic, "not an innostream archive nor an xbstream"),
        (GOOD + b"junk" * 4, BadMagic, "wrong chunk magic at offset 0x"),
        (p_chunk(b"../evil", 0, b"x"), UnsafePath, "refusing archive member '../evil'"),
        (p_chunk(b"/etc/evil", 0, b"x"), UnsafePath, "absolute path"),
        (struct.pack("<8sBBI", fx.XB_STREAM_CHUNK_MAGIC, 0, ord("P"), 1 << 30), Corrupt, "path length"),
        (struct.pack("<8sBBI", fx.XB_STREAM_CHUNK_MAGIC, 0, ord("P"), 1) + b"f"
         + struct.pack("<QQI", 1 << 62, 0, 0), Corrupt, "exceeds the cap"),
        (GOOD + GOOD, Corrupt, "duplicate file"),
        (struct.pack("<8sBBI", fx.XB_STREAM_CHUNK_MAGIC, 0, ord("Z"), 1) + b"f", UnsupportedVersion, "unknown chunk"),
    ],
    ids=["no-eof", "crc", "out-of-order", "cut-path", "cut-payload", "cut-header", "magic", "trailing-junk",
         "dotdot", "absolute", "path-len", "payload-len", "duplicate", "unknown-type"],
)
def test_bad_xbstreams(tmp_path: Path, stream: bytes, error, text):
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(error, match=text):
        extract(io.BytesIO(stream), tmp_path / "t")
    assert list(outside.iterdir()) == []
    assert not Path("/etc/evil").exists()
    r = run_cli(["extract", "-C", str(tmp_path / "cli")], stdin=stream)
    assert r.returncode in (3, 6)
    assert b"Traceback" not in r.stderr
    assert r.stderr.count(b"\n") == 1


def test_list_xbstream_and_crc_is_zlib():
    summary = list_archive(io.BytesIO(GOOD))
    assert [(f.name, f.size) for f in summary.files] == [("f", 5)]
    assert GOOD[31:35] == struct.pack("<I", zlib.crc32(b"hello"))
    s = read_xbstream(io.BytesIO(GOOD), NullSink())
    assert s.raw_bytes == 5


def test_verify_validates_real_innodb_pages(real_stream: bytes, tmp_path: Path):
    """Re-archive a real backup in our format: verify checks its pages, and names a corrupted one."""
    extract(io.BytesIO(real_stream), tmp_path / "b")
    files = tree(tmp_path / "b")
    blob = make_archive(files, meta={"flavor": "mariadb"})
    r = run_cli(["verify", "-"], stdin=blob)
    assert r.returncode == 0, r.stderr
    pages = int(re.search(rb"(\d+) InnoDB pages checked", r.stderr).group(1))
    from innostream.datadir import is_tablespace

    nonzero = sum(1 for n, d in files.items() if is_tablespace(n) for i in range(0, len(d), 16384)
                  if d[i : i + 16384].strip(b"\0"))
    assert pages >= nonzero > 50  # every stored page was checked (zero pages in holes need no check)
    bad = dict(files)
    name = "mysql/innodb_index_stats.ibd"
    page = bytearray(bad[name])
    page[3 * 16384 + 1000] ^= 0x55  # inside page 3 (the clustered index root)
    bad[name] = bytes(page)
    r = run_cli(["verify", "-"], stdin=make_archive(bad, meta={"flavor": "mariadb"}))
    assert r.returncode == 3
    assert f"[file {name}, page 3]".encode() in r.stderr
    assert b"Traceback" not in r.stderr


XB_SAMPLE = fixture("mbstream-10.11-c-three-files.xb.gz") + write_xbstream(
    {"big": ([(0, bytes(range(256)) * 5000)], 1_300_000)}, chunk=100_000)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 50_000), min_size=1, max_size=16))
def test_xbstream_any_read_sizes(sizes):
    summary = read_xbstream(Dribble(XB_SAMPLE, sizes), NullSink())  # type: ignore[arg-type]
    assert [(f.name, f.size) for f in summary.files] == [("a.txt", 3), ("sub/zero.bin", 4101), ("empty", 0),
                                                         ("big", 1_300_000)]


def r_chunk(old: bytes, new: bytes) -> bytes:
    head = struct.pack("<8sBBI", fx.XB_STREAM_CHUNK_MAGIC, 0, ord("R"), len(old))
    return head + old + struct.pack("<I", len(new)) + new


def d_chunk(path: bytes) -> bytes:
    return struct.pack("<8sBBI", fx.XB_STREAM_CHUNK_MAGIC, 0, ord("D"), len(path)) + path


def whole(path: bytes, data: bytes) -> bytes:
    return p_chunk(path, 0, data) + fx.build_eof_chunk(path)


RENAMES = {
    "rename": whole(b"a.txt", b"abc") + r_chunk(b"a.txt", b"b.txt"),
    "remove": whole(b"a.txt", b"abc") + whole(b"k", b"keep") + d_chunk(b"a.txt"),
    "rename-then-new": whole(b"a.txt", b"abc") + r_chunk(b"a.txt", b"b.txt") + whole(b"a.txt", b"new"),
    "rename-onto-member": whole(b"a.txt", b"abc") + whole(b"b.txt", b"zz") + r_chunk(b"a.txt", b"b.txt"),
    "rename-missing": whole(b"k", b"keep") + r_chunk(b"x.txt", b"y.txt") + d_chunk(b"q"),
    "metadata": whole(b"xtrabackup_info", b"i") + r_chunk(b"xtrabackup_info", b"xtrabackup_info.old"),
}


@pytest.mark.parametrize("name", list(RENAMES))
def test_mariadb_rename_and_remove_chunks_like_mbstream(tmp_path: Path, name: str):
    stream = RENAMES[name]
    r = mbstream_x(stream, tmp_path / "ref")
    assert r.returncode == 0
    summary = extract(io.BytesIO(stream), tmp_path / "ours")
    assert tree(tmp_path / "ours") == tree(tmp_path / "ref")
    assert sorted(f.name for f in summary.files) == sorted(tree(tmp_path / "ref"))


def test_rename_and_remove_never_touch_files_the_stream_did_not_write(tmp_path: Path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "mine").write_text("precious")
    extract(io.BytesIO(whole(b"a", b"x") + r_chunk(b"mine", b"stolen") + d_chunk(b"mine")), target)
    assert (target / "mine").read_text() == "precious"
    assert not (target / "stolen").exists()
    with pytest.raises(FileExistsInTarget):
        extract(io.BytesIO(whole(b"b", b"x") + r_chunk(b"b", b"mine")), target)
    assert (target / "mine").read_text() == "precious"
    with pytest.raises(UnsafePath):
        extract(io.BytesIO(whole(b"c", b"x") + r_chunk(b"c", b"../escape")), target)
    assert not (tmp_path / "escape").exists()
    with pytest.raises(Corrupt, match="open file"):
        extract(io.BytesIO(p_chunk(b"d", 0, b"x") + r_chunk(b"d", b"e")), target)


def _flip_in_xbstream(stream: bytes, name: bytes, at: int) -> bytes:
    """Flip one byte at file offset ``at`` of member ``name`` inside a real MariaDB xbstream, CRC kept valid."""
    out = bytearray(stream)
    pos = 0
    while pos < len(out):
        _, _, ctype, path_len = fx.unpack_prefix(bytes(out[pos : pos + fx.CHUNK_HEADER_CONSTANT_LEN]))
        path = bytes(out[pos + 14 : pos + 14 + path_len])
        tail = pos + 14 + path_len
        if ctype == fx.XB_CHUNK_TYPE_EOF:
            pos = tail
        elif ctype == fx.XB_CHUNK_TYPE_SEEK:
            pos = tail + fx.SEEK_TAIL_LEN
        elif ctype == fx.XB_CHUNK_TYPE_PAYLOAD:
            length, offset, _ = fx.unpack_payload_tail(bytes(out[tail : tail + fx.PAYLOAD_TAIL_LEN]))
            data = tail + fx.PAYLOAD_TAIL_LEN
            if path == name and offset <= at < offset + length:
                out[data + at - offset] ^= 0x55
                crc = zlib.crc32(out[data : data + length])
                out[tail + 16 : tail + 20] = struct.pack("<I", crc)
                return bytes(out)
            pos = data + length
        else:
            raise AssertionError(f"chunk type {ctype:#x} in a mariadb-backup stream")
    raise AssertionError(f"{name!r} offset {at} not in the stream")


def test_verify_checks_the_pages_of_a_real_mariadb_backup_xbstream(real_stream: bytes):
    """An xbstream does not say its server family: verify learns it from the pages (MariaDB's full_crc32 flags)
    and checks every page, as the README promises. Before: "0 InnoDB pages checked; OK", also over a damaged page."""
    r = run_cli(["verify", "-"], stdin=real_stream)
    assert r.returncode == 0, r.stderr
    pages = int(re.search(rb"(\d+) InnoDB pages checked", r.stderr).group(1))
    flavored = run_cli(["verify", "--flavor", "mariadb", "-"], stdin=real_stream)
    assert pages == int(re.search(rb"(\d+) InnoDB pages checked", flavored.stderr).group(1)) > 50
    name = "mysql/innodb_index_stats.ibd"
    bad = _flip_in_xbstream(real_stream, name.encode(), 3 * 16384 + 1000)  # inside page 3 (the index root)
    assert run_cli(["list", "-"], stdin=bad).returncode == 0  # every chunk CRC still matches
    r = run_cli(["verify", "-"], stdin=bad)
    assert r.returncode == 3, r.stderr
    assert f"[file {name}, page 3]".encode() in r.stderr
    assert b"Traceback" not in r.stderr
