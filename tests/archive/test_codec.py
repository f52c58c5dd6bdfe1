"""The codec seam: one object stores payloads for the writer and reads them back for the reader, seeing each frame's
identity both ways (what an AEAD cipher binds as associated data), and the reader objects behind the functions."""

from __future__ import annotations

import io

import pytest
from innostream.archive import (
    ArchiveReader,
    ArchiveWriter,
    Frame,
    FrameContext,
    NullSink,
    PlainCodec,
    ZstdCodec,
    read_archive,
)
from innostream.archive.xbstream import XbstreamReader, XbstreamWriter, read_xbstream
from innostream.formats import archive as fa
from innostream.formats.errors import FormatError

from tests.archive.builders import make_archive, sample_files, split_frames


class Scramble:
    """A toy keyed codec: XOR with a byte derived from the frame's identity, so decoding needs the same context."""

    features = 0

    def __init__(self) -> None:
        self.encoded: list[tuple[int, int, int, int]] = []
        self.decoded: list[tuple[int, int, int, int]] = []

    def stream_header(self, meta: dict | None) -> bytes:
        return fa.build_stream_header(meta, self.features)

    @staticmethod
    def _xor(data: bytes | memoryview, ctx: tuple[int, int, int, int]) -> bytes:
        key = (sum(ctx) * 131 + 7) % 255 + 1
        return (int.from_bytes(data, "little") ^ int.from_bytes(bytes([key]) * len(data), "little")).to_bytes(
            len(data), "little")

    def encode(self, raw: bytes | memoryview, ctx: FrameContext) -> tuple[bytes, int]:
        self.encoded.append(tuple(ctx))
        return self._xor(raw, tuple(ctx)), 0

    def decode(self, frame: Frame) -> bytes:
        h = frame.header
        ctx = (h.type, h.seq, h.file_id, h.offset)
        self.decoded.append(ctx)
        return self._xor(frame.payload, ctx)


def _write(files: dict[str, bytes], **kw: object) -> bytes:
    out = io.BytesIO()
    w = ArchiveWriter(out, meta={"flavor": "mariadb"}, threads=2, **kw)  # type: ignore[arg-type]
    for name, data in files.items():
        fid = w.begin_file(name)
        w.write(fid, 0, data)
        w.end_file(fid, len(data))
    w.close({"to_lsn": 42})
    return out.getvalue()


class Collect(NullSink):
    """A sink that keeps what it is given, to compare with the files written."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}

    def begin_file(self, name: str, *, mode: int = 0o640) -> str:
        self.files[name] = bytearray()
        return name

    def write(self, handle: str, offset: int, data: bytes | bytearray | memoryview) -> None:
        buf = self.files[handle]
        if len(buf) < offset + len(data):
            buf.extend(bytes(offset + len(data) - len(buf)))
        buf[offset : offset + len(data)] = data

    def end_file(self, handle: str, size: int) -> None:
        buf = self.files[handle]
        buf.extend(bytes(size - len(buf)))


def test_one_codec_object_writes_and_reads_with_the_frame_context():
    files = sample_files()
    codec = Scramble()
    blob = _write(files, codec=codec)
    sink = Collect()
    summary = read_archive(io.BytesIO(blob), sink, codec=codec)
    assert {k: bytes(v) for k, v in sink.files.items()} == files
    assert summary.trailer["to_lsn"] == 42
    # every frame went through the codec (an encrypting codec seals names and sizes too), with the same identity
    # both ways
    assert sorted(codec.decoded) == sorted(codec.encoded)
    assert {c[0] for c in codec.encoded} == {fa.FRAME_FILE_BEGIN, fa.FRAME_DATA, fa.FRAME_FILE_END, fa.FRAME_INDEX,
                                             fa.FRAME_TRAILER}
    _, frames = split_frames(blob)
    assert len(codec.encoded) == len(frames)
    # the stored bytes are not the raw ones: without the codec the archive does not read
    with pytest.raises(FormatError):
        read_archive(io.BytesIO(blob), NullSink())


def test_level_and_compress_choose_the_default_codec():
    files = sample_files()
    assert _write(files) == _write(files, codec=ZstdCodec(1))
    assert _write(files, level=5) == _write(files, codec=ZstdCodec(5))
    plain = _write(files, compress=False)
    assert plain == _write(files, codec=PlainCodec())
    head, frames = split_frames(plain)
    header = fa.parse_stream_header(head[: fa.STREAM_HEADER_SIZE], head[fa.STREAM_HEADER_SIZE :])
    assert header.required_features == fa.FEATURE_INDEX  # no zstd, no encryption
    assert not any(fa.unpack_frame_header(f[: fa.FRAME_HEADER_SIZE]).flags for f in frames)
    # a plain codec still reads compressed frames: the reader takes whatever the stream holds
    assert read_archive(io.BytesIO(_write(files)), NullSink(), codec=PlainCodec()).raw_bytes > 0


def test_reader_objects_match_the_functions():
    files = sample_files()
    blob = make_archive(files)
    by_function = read_archive(io.BytesIO(blob), NullSink())
    by_object = ArchiveReader(io.BytesIO(blob), NullSink()).read()
    assert by_object == by_function
    out = io.BytesIO()
    w = XbstreamWriter(out)
    for name, data in files.items():
        w.add_bytes(name, data)
    w.close()
    xb = out.getvalue()
    assert XbstreamReader(io.BytesIO(xb), NullSink()).read() == read_xbstream(io.BytesIO(xb), NullSink())
