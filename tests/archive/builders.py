"""Builders for archive tests: real archives from the real writer, and hand-made frames with valid checksums."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

from innostream.archive import ArchiveWriter
from innostream.formats import archive as fa

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def sample_files(seed: int = 1) -> dict[str, bytes]:
    """A small set of files: random, compressible, with zero pages inside and at the end, empty, metadata."""
    rnd = __import__("random").Random(seed)
    page = 16384
    pages = []
    for i in range(24):
        kind = i % 4
        if kind == 0:
            pages.append(bytes(page))
        elif kind == 1:
            pages.append(rnd.randbytes(page))
        else:
            pages.append((b"row %06d " % i) * (page // 11) + bytes(page - (page // 11) * 11))
    return {
        "ibdata1": b"".join(pages),
        "db1/t1.ibd": rnd.randbytes(100_000) + bytes(70_000) + b"tail",
        "db1/empty.ibd": b"",
        "xtrabackup_logfile": b"redo" * 3000,
        "xtrabackup_checkpoints": b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 42\n",
        "backup-my.cnf": b"[mysqld]\ninnodb_page_size=16384\n",
    }


def make_archive(files: dict[str, bytes], *, meta: dict | None = None, compress: bool = True,
                 trailer: dict | None = None, piece: int = 50_000, index: bool = False) -> bytes:
    """Write ``files`` with the real writer, each in ``piece``-sized writes; without the seekable index unless
    ``index`` (the tests that take frames apart test the one-pass format; tests/archive/test_index*.py the index)."""
    out = io.BytesIO()
    w = ArchiveWriter(out, meta=meta if meta is not None else {"flavor": "mariadb"}, compress=compress, index=index)
    for name, data in files.items():
        fid = w.begin_file(name)
        for off in range(0, len(data), piece):
            w.write(fid, off, data[off : off + piece])
        w.end_file(fid, len(data))
    w.close(trailer if trailer is not None else {"from_lsn": 1, "to_lsn": 42})
    return out.getvalue()


def split_frames(blob: bytes) -> tuple[bytes, list[bytes]]:
    """(stream header, [frame bytes, ...]) of a well-formed archive."""
    meta_len = struct.unpack_from("<I", blob, 20)[0]
    pos = fa.STREAM_HEADER_SIZE + meta_len
    head = blob[:pos]
    frames = []
    end_at = len(blob) - 32 if blob.endswith(b"INNOSEND", len(blob) - 32, len(blob) - 24) else len(blob)
    while pos < end_at:  # an indexed archive's end locator is not a frame
        h = fa.unpack_frame_header(blob[pos : pos + fa.FRAME_HEADER_SIZE])
        end = pos + fa.FRAME_HEADER_SIZE + h.stored_len
        frames.append(blob[pos:end])
        pos = end
    return head, frames


def frame(ftype: int, file_id: int, seq: int, payload: bytes, *, offset: int = 0, flags: int = 0,
          raw_len: int | None = None) -> bytes:
    """A frame with correct checksums (for hostile-but-well-formed archives)."""
    header = fa.build_frame_header(ftype, flags, file_id, seq, offset, len(payload) if raw_len is None else raw_len,
                                   payload)
    return header + payload


def reseq(head: bytes, frames: list[bytes]) -> bytes:
    """Renumber frames 0.. and re-checksum them (to build archives that only differ semantically)."""
    out = [head]
    for seq, fr in enumerate(frames):
        h = fa.unpack_frame_header(fr[: fa.FRAME_HEADER_SIZE])
        out.append(frame(h.type, h.file_id, seq, fr[fa.FRAME_HEADER_SIZE :], offset=h.offset, flags=h.flags,
                         raw_len=h.raw_len))
    return b"".join(out)


def run_cli(args: list[str], stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``innostream`` CLI in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([PY, "-m", "innostream", *args], input=stdin, capture_output=True, cwd=cwd, env=env,
                          timeout=600)


def tree(root: Path) -> dict[str, bytes]:
    """{relative path: content} of every regular file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Dribble(io.RawIOBase):
    """A pipe that returns short reads of random sizes."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.pos, self.sizes, self.i = data, 0, sizes or [1], 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self.data)
        step = min(n, self.sizes[self.i % len(self.sizes)])
        self.i += 1
        out = self.data[self.pos : self.pos + step]
        self.pos += len(out)
        return out
