"""Tell an innostream archive from an xbstream (plain or zstd-compressed) by its first bytes, and read either."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from innostream.archive.reader import read_archive
from innostream.archive.types import ArchiveSummary, FileResult, ObserverFactory, SizeLimits
from innostream.archive.xbstream import read_xbstream
from innostream.formats import archive as fa
from innostream.formats import xbstream as fx
from innostream.formats.archive_crypt import AuthenticationFailed
from innostream.formats.errors import BadMagic
from innostream.sink import Sink

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class PrefixedInput:
    """A binary input with some already-read bytes in front (format detection on a pipe).

    Reads never concatenate: while prefix bytes remain, a read returns only those (a short read, which every
    consumer loops over, as on a raw pipe); afterwards reads go straight to the input.
    """

    def __init__(self, prefix: bytes, inp: BinaryIO) -> None:
        self._prefix = prefix
        self._inp = inp

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            if n < 0:
                data, self._prefix = self._prefix + self._inp.read(), b""
                return data
            head, self._prefix = self._prefix[:n], self._prefix[n:]
            return head
        return self._inp.read(n) or b""

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Fill ``buf`` from the prefix first, then from the input; return the count (0 at the end)."""
        if self._prefix:
            k = min(len(buf), len(self._prefix))
            buf[:k] = self._prefix[:k]
            self._prefix = self._prefix[k:]
            return k
        readinto = getattr(self._inp, "readinto", None)
        if readinto is not None:
            try:
                return readinto(buf) or 0
            except NotImplementedError:  # io.RawIOBase subclasses that implement only read()
                pass
        data = self._inp.read(len(buf)) or b""
        buf[: len(data)] = data
        return len(data)


def detect(inp: BinaryIO) -> tuple[str, BinaryIO]:
    """Tell innostream from xbstream (and a zstd-compressed xbstream) by the first bytes."""
    head = inp.read(8) or b""
    while len(head) < 8:
        more = inp.read(8 - len(head))
        if not more:
            break
        head += more
    stream: BinaryIO = PrefixedInput(head, inp)  # type: ignore[assignment]
    if head == fa.STREAM_MAGIC:
        return "innostream", stream
    if head == fx.XB_STREAM_CHUNK_MAGIC:
        return "xbstream", stream
    if head[:4] == ZSTD_MAGIC:
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True, closefd=False)
        kind, inner = detect(reader)
        if kind != "xbstream":
            raise BadMagic("zstd-compressed input is not an xbstream", offset=0)
        return "xbstream.zst", inner
    if not head:
        raise BadMagic("empty input: not an archive", offset=0)
    raise BadMagic(f"not an innostream archive nor an xbstream (starts with {head.hex()})", offset=0)


def read_any(
    inp: BinaryIO,
    sink: Sink | Callable[[], Sink],
    *,
    parallel: int = 2,
    fmt: str = "auto",
    dialect: str = "auto",
    verify_data: bool = True,
    observer_factory: ObserverFactory | None = None,
    on_file_done: Callable[[FileResult], None] | None = None,
    limits: SizeLimits | None = None,
    key: bytes | None = None,
    require_key: bool = True,
) -> ArchiveSummary:
    """Read an innostream archive or an xbstream (detected unless ``fmt`` says) into ``sink``.

    ``limits`` bounds declared member sizes and holes (``--max-size``).

    ``sink`` may be a factory, called only once the input was recognised (so that garbage on stdin, or a wrong key,
    does not leave an empty target directory behind).

    ``key`` (32 bytes): the archive must be an encrypted innostream archive and authenticate under it; an xbstream
    or a plain archive is then refused (:class:`AuthenticationFailed`). Without a key an encrypted archive is refused
    unless not ``require_key`` (verify: its structure only).
    """
    kind, stream = detect(inp)
    if fmt != "auto" and not kind.startswith(fmt):
        raise BadMagic(f"input is {kind}, not {fmt}", offset=0)
    if kind == "innostream":
        return read_archive(stream, sink, parallel=parallel, verify_data=verify_data,
                            observer_factory=observer_factory, on_file_done=on_file_done, limits=limits, key=key,
                            require_key=require_key)
    if key is not None:
        raise AuthenticationFailed(f"the input is {kind}, which has no authenticated encryption, but a key was "
                                   "given: refusing contents that are not authenticated", offset=0)
    if callable(sink):
        sink = sink()
    return read_xbstream(stream, sink, dialect=dialect, on_file_done=on_file_done,
                         observer_factory=observer_factory if verify_data else None, limits=limits)
