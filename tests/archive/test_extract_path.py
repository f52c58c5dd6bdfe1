"""The fast extraction path: short reads filled in place, batches of hole-split frames, digest checks per batch."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import xxhash
from innostream.archive import NullSink, read_archive, read_exact
from innostream.archive.detect import PrefixedInput
from innostream.extract import extract
from innostream.formats import archive as fa
from innostream.formats.errors import ChecksumMismatch, Truncated

from tests.archive.builders import Dribble, make_archive, split_frames


class ReadintoOnly(io.RawIOBase):
    """A raw stream that gives at most ``step`` bytes per readinto (and read() through RawIOBase's default)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def,override]
        n = min(len(b), self.step, len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("stream_kind", ["readinto", "read-only", "prefixed-readinto", "prefixed-read-only"])
def test_read_exact_fills_short_reads(stream_kind: str):
    data = os.urandom(100_000)
    prefixed = stream_kind.startswith("prefixed")
    body = data[5:] if prefixed else data
    inner: io.RawIOBase = Dribble(body, [7, 3000, 1]) if stream_kind.endswith("read-only") else ReadintoOnly(body, 999)
    stream = PrefixedInput(data[:5], inner) if prefixed else inner
    got = read_exact(stream, 60_000, offset=0, what="x")  # type: ignore[arg-type]
    assert isinstance(got, bytes)
    assert got == data[:60_000]
    assert read_exact(stream, 40_000, offset=0, what="x") == data[60_000:]  # type: ignore[arg-type]
    with pytest.raises(Truncated, match="archive ends inside x \\(0 of 1 bytes\\)"):
        read_exact(stream, 1, offset=0, what="x")  # type: ignore[arg-type]


def test_prefixed_input_never_concatenates():
    p = PrefixedInput(b"abcdefgh", io.BytesIO(b"ijkl"))
    assert p.read(3) == b"abc"
    assert p.read(10) == b"defgh"  # the rest of the prefix alone: a short read
    buf = bytearray(10)
    assert p.readinto(buf) == 4
    assert buf[:4] == b"ijkl"
    assert p.readinto(buf) == 0
    assert p.read(5) == b""


def holey(n_pages: int, seed: int) -> bytes:
    """A file whose 16 KiB pages have their last 4 KiB zero: the writer cuts one small frame per page."""
    rnd = __import__("random").Random(seed)
    return b"".join(rnd.randbytes(12288) + bytes(4096) for _ in range(n_pages))


@pytest.mark.parametrize("compress", [False, True])
def test_many_small_frames_of_interleaved_files(tmp_path: Path, compress: bool):
    files = {"a.ibd": holey(300, 1), "b.ibd": holey(200, 2), "c": b"tail" * 5}
    blob = make_archive(files, compress=compress, piece=3 * 16384)
    _, frames = split_frames(blob)
    data_frames = [fa.unpack_frame_header(f[:56]) for f in frames if f[4] == fa.FRAME_DATA]
    assert len(data_frames) >= 500  # several batches per file
    assert max(h.raw_len for h in data_frames) == 12288
    summary = extract(io.BytesIO(blob), tmp_path / "t", parallel=3)
    for name, data in files.items():
        assert (tmp_path / "t" / name).read_bytes() == data
    assert {f.name: f.digest for f in summary.files} == {n: xxhash.xxh3_128_hexdigest(d) for n, d in files.items()}
    st = (tmp_path / "t/a.ibd").stat()
    # the 4 KiB tails stayed holes (the slack: extent-tree blocks ext4 allocates once extract fsyncs the file)
    assert st.st_blocks * 512 <= st.st_size - 300 * 4096 + 4 * 4096


def test_wrong_digest_after_batched_frames_is_caught():
    data = holey(100, 3)
    blob = make_archive({"f": data}, compress=False, piece=16384)
    head, frames = split_frames(blob)
    end = next(i for i, f in enumerate(frames) if f[4] == fa.FRAME_FILE_END)
    h = fa.unpack_frame_header(frames[end][:56])
    size, nframes, digest = fa.parse_file_end(frames[end][56:])
    assert nframes == 100
    bad_digest = bytes([digest[0] ^ 1]) + digest[1:]
    forged = fa.build_file_end(size, nframes, bad_digest)
    forged_frame = fa.build_frame_header(fa.FRAME_FILE_END, 0, h.file_id, h.seq, 0, len(forged), forged) + forged
    with pytest.raises(ChecksumMismatch, match="file digest"):
        read_archive(io.BytesIO(head + b"".join(frames[:end]) + forged_frame + b"".join(frames[end + 1 :])),
                     NullSink())
