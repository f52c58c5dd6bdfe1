"""What the archive writer and both readers share: results, limits, and the two byte helpers every reader needs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from innostream.formats import archive as fa
from innostream.formats.errors import Truncated

ZERO_CHUNK = bytes(fa.CHUNK_SIZE)
MAX_OPEN_FILES = 1024  # a reader refuses more files begun and not ended (each holds a descriptor when extracting)


class Readable(Protocol):
    """The one method a reader needs from its input (a pipe, a file, a detection wrapper)."""

    def read(self, n: int, /) -> bytes | None: ...


def read_exact(stream: Readable, n: int, *, offset: int, what: str) -> bytes:
    """Read exactly ``n`` bytes from a pipe or file; the only loop over short reads.

    A buffered pipe returns all ``n`` bytes in one call (one copy, kernel to the result). Only a short read (a raw
    stream, the end of a detection prefix) takes the slow path: the rest is read into one preallocated buffer with
    ``readinto`` where the stream has it, rather than gathered in pieces and concatenated.

    Raises:
        Truncated: the input ended first (``offset`` = where the structure started, ``what`` names it).
    """
    data = stream.read(n)
    if data is None:
        data = b""
    got = len(data)
    if got == n:
        return data
    buf = bytearray(n)
    buf[:got] = data
    view = memoryview(buf)
    readinto = getattr(stream, "readinto", None)
    while got < n:
        if readinto is not None:
            try:
                k = readinto(view[got:]) or 0
            except NotImplementedError:  # io.RawIOBase subclasses that implement only read()
                readinto = None
                continue
        else:
            more = stream.read(n - got) or b""
            k = len(more)
            view[got : got + k] = more
        if not k:
            raise Truncated(f"archive ends inside {what} ({got} of {n} bytes)", offset=offset)
        got += k
    view.release()
    return bytes(buf)


def hash_zeros(hasher: Any, count: int) -> None:
    """Feed ``count`` zero bytes (a hole) to a hash."""
    while count > 0:
        step = min(count, fa.CHUNK_SIZE)
        hasher.update(ZERO_CHUNK[:step] if step < fa.CHUNK_SIZE else ZERO_CHUNK)
        count -= step


def completed(value: Any) -> Future[Any]:
    """A future that is already done: a frame or step with nothing to compute still queues in order."""
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


@dataclass
class FileResult:
    """What the archive said about one file, after verification."""

    name: str
    mode: int
    size: int = -1
    data_frames: int = 0
    stored_bytes: int = 0
    digest: str = ""  # xxh3_128 of the whole file, hex


@dataclass
class ArchiveSummary:
    """Result of reading a whole archive."""

    format: str
    meta: dict[str, Any]
    files: list[FileResult]
    trailer: dict[str, Any]
    frames: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    archive_bytes: int = 0
    skipped_frames: int = 0
    warnings: list[str] = field(default_factory=list)


class Observer(Protocol):
    """Sees one file's bytes in file order (page validation); holes are gaps between offsets."""

    def feed(self, offset: int, raw: bytes) -> None: ...

    def finish(self, size: int) -> None: ...


#: ``factory(name, meta)`` -> an observer for that file, or None to leave it unobserved.
ObserverFactory = Callable[[str, dict[str, Any]], Observer | None]
