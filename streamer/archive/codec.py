"""How a frame's payload is stored: the one place that compresses and decompresses archive frames.

A codec turns the raw bytes of a DATA or TRAILER frame into the stored payload plus the frame flags that say how,
and back. The writer and the reader each take one codec object, so a second codec (encryption) slots in without
touching either. Both directions receive the frame's identity (type, seq, file_id, offset: a :class:`FrameContext`
when writing, the parsed header when reading, same field names) so that a codec can bind a payload to its place in
the stream, as the associated data of an AEAD cipher would; zstd ignores it. python-zstandard releases the GIL and
its contexts are not thread-safe, so each codec keeps one per thread and reuses it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import zstandard
from innostream.formats import archive as fa
from innostream.formats.errors import Corrupt, Where

if TYPE_CHECKING:
    from innostream.archive.frames import Frame

#: the trailer is written once and read once: a better level costs nothing, and below 4 KiB it is not worth a frame
TRAILER_LEVEL = 3
TRAILER_MIN_COMPRESS = 4096


class FrameContext(NamedTuple):
    """Where a payload goes: what an encoder may bind it to (the reader sees the same fields in the header)."""

    type: int
    seq: int
    file_id: int
    offset: int


class Codec(Protocol):
    """Turns raw frame bytes into the stored payload and flags, and back."""

    #: required stream features (stream header) that this codec's frames need
    features: int

    def stream_header(self, meta: dict[str, Any] | None) -> bytes:
        """The stream header with its metadata (an encrypting codec seals the metadata and adds its key slots)."""

    def encode(self, raw: bytes | memoryview, ctx: FrameContext) -> tuple[bytes, int]:
        """Return the stored payload and the frame flags for ``raw``."""

    def decode(self, frame: Frame) -> bytes:
        """Return the raw bytes of a verified frame (payload checksum already passed).

        Raises:
            Corrupt: the payload does not decode to the ``raw_len`` of its header.
        """


class PlainCodec:
    """``--compress=none``: payloads stored as they are. Reads every frame the format defines, plain or zstd."""

    features = 0

    def __init__(self) -> None:
        self._tls = threading.local()

    def stream_header(self, meta: dict[str, Any] | None) -> bytes:
        """The plain stream header: JSON metadata as it is."""
        return fa.build_stream_header(meta, self.features)

    def encode(self, raw: bytes | memoryview, ctx: FrameContext) -> tuple[bytes, int]:
        """Store ``raw`` unchanged."""
        return bytes(raw), 0

    def decode(self, frame: Frame) -> bytes:
        """Decompress a zstd payload only after its declared size matched the header's ``raw_len``."""
        h = frame.header
        if not h.flags & fa.FLAG_ZSTD:
            return frame.payload
        return zstd_decode(self._tls, frame.payload, h.raw_len, frame.where)


def zstd_decode(tls: threading.local, payload: bytes | memoryview, raw_len: int, where: Where) -> bytes:
    """Decompress one zstd frame only after it declared exactly ``raw_len`` bytes (``tls``: the calling codec's
    per-thread state, which keeps one decompression context per thread)."""
    try:
        size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise Corrupt(f"bad zstd frame: {exc}", where=where) from None
    if size != raw_len:
        raise Corrupt(f"zstd frame declares {size} bytes, the header {raw_len}", where=where)
    dctx = getattr(tls, "dctx", None)
    if dctx is None:
        dctx = tls.dctx = zstandard.ZstdDecompressor()
    try:
        raw: bytes = dctx.decompress(payload, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise Corrupt(f"zstd frame does not decompress: {exc}", where=where) from None
    if len(raw) != raw_len:
        raise Corrupt(f"zstd frame gave {len(raw)} bytes, expected {raw_len}", where=where)
    return raw


class ZstdCodec(PlainCodec):
    """zstd at ``level`` (``--compress=zstd``); a payload that does not shrink is stored as it is."""

    features = fa.FEATURE_ZSTD

    def __init__(self, level: int = 1) -> None:
        super().__init__()
        self.level = level

    def encode(self, raw: bytes | memoryview, ctx: FrameContext) -> tuple[bytes, int]:
        """Compress ``raw`` (DATA and TRAILER; FILE_BEGIN/FILE_END are tiny); keep it raw (flags 0) if that is not
        smaller."""
        if ctx.type in (fa.FRAME_FILE_BEGIN, fa.FRAME_FILE_END):
            return bytes(raw), 0
        if ctx.type == fa.FRAME_TRAILER:
            if len(raw) <= TRAILER_MIN_COMPRESS:
                return bytes(raw), 0
            comp = zstandard.ZstdCompressor(level=TRAILER_LEVEL, write_content_size=True).compress(raw)
        else:
            cctx = getattr(self._tls, "cctx", None)
            if cctx is None:
                cctx = self._tls.cctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
            comp = cctx.compress(raw)
        if len(comp) < len(raw):
            return comp, fa.FLAG_ZSTD
        return bytes(raw), 0
