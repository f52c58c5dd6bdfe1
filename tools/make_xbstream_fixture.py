"""Make the small xbstream samples in fixtures/xbstream/ (see fixtures/README.md, "xbstream/").

* ``mbstream-10.11-c-three-files.xb.gz``: the real ``mbstream -c`` (MariaDB 10.11) archiving three files (one
  with a 4 KiB zero block, one empty, one in a subdirectory);
* ``mariadb-seek-chunk.xb.gz``: P "ab", MariaDB SEEK to 4, P "ZZ", E for ``f1``; checked here with the real
  ``mbstream -x`` to extract as ``ab\\0\\0ZZ``;
* ``percona-sparse-chunk.xb.gz``: a Percona 8.0 sparse chunk built from the layout in percona-xtrabackup
  ``xbstream_write.cc`` (map [(0, 2), (2, 2)] over payload "abZZ" = ``ab\\0\\0ZZ``); no Percona binary here to
  produce one, and mbstream cannot read it (its 'S' means seek).

Usage: python tools/make_xbstream_fixture.py [OUTDIR]
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from innostream.formats import xbstream as fx

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "fixtures" / "xbstream"


def save(name: str, data: bytes) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_bytes(gzip.compress(data, 9, mtime=0))
    print(f"{OUT / name}: {len(data)} bytes")


def real_mbstream_c() -> bytes:
    with tempfile.TemporaryDirectory(prefix="mkxb-") as tmp:
        src = Path(tmp)
        (src / "a.txt").write_bytes(b"abc")
        (src / "sub").mkdir()
        (src / "sub" / "zero.bin").write_bytes(b"head" + bytes(4096) + b"x")
        (src / "empty").write_bytes(b"")
        return subprocess.run(["mbstream", "-c", "a.txt", "sub/zero.bin", "empty"], cwd=src, check=True,
                              capture_output=True).stdout


def mariadb_seek() -> bytes:
    path = b"f1"
    seek = struct.pack("<8sBBI", fx.XB_STREAM_CHUNK_MAGIC, 0, fx.XB_CHUNK_TYPE_SEEK, 2) + path + struct.pack("<Q", 4)
    data = (fx.build_payload_header(path, 0, b"ab") + b"ab" + seek + fx.build_payload_header(path, 4, b"ZZ") + b"ZZ"
            + fx.build_eof_chunk(path))
    with tempfile.TemporaryDirectory(prefix="mkxb-") as tmp:
        subprocess.run(["mbstream", "-x"], input=data, cwd=tmp, check=True, capture_output=True)
        got = (Path(tmp) / "f1").read_bytes()
    assert got == b"ab\0\0ZZ", got
    return data


def percona_sparse() -> bytes:
    path = b"f1"
    smap = struct.pack("<II", 0, 2) + struct.pack("<II", 2, 2)
    payload = b"abZZ"
    crc = zlib.crc32(payload, zlib.crc32(smap))
    head = struct.pack("<8sBBI", fx.XB_STREAM_CHUNK_MAGIC, 0, fx.XB_CHUNK_TYPE_SPARSE, len(path)) + path
    return head + struct.pack("<IQQI", 2, len(payload), 0, crc) + smap + payload + fx.build_eof_chunk(path)


if __name__ == "__main__":
    save("mbstream-10.11-c-three-files.xb.gz", real_mbstream_c())
    save("mariadb-seek-chunk.xb.gz", mariadb_seek())
    save("percona-sparse-chunk.xb.gz", percona_sparse())
