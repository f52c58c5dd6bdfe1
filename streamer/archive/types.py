"""What the archive writer and both readers share: results, limits, and the two byte helpers every reader needs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from innostream.formats import archive as fa
from innostream.formats.errors import Corrupt, Truncated, Where

ZERO_CHUNK = bytes(fa.CHUNK_SIZE)
MAX_OPEN_FILES = 1024  # a reader refuses more files begun and not ended (each holds a descriptor when extracting)
#: default of ``--max-size``: the largest member size a reader accepts (InnoDB's largest tablespace is 64 TiB at
#: 64 KiB pages, 16 TiB at the default 16 KiB)
DEFAULT_MAX_SIZE = 16 << 40
#: holes (bytes a member declares but the archive does not carry) allowed for each byte of data it does carry, on
#: top of a floor of ``max_size // HOLE_FLOOR_DIVISOR``: a 10 GiB preallocated ibdata1 with 10 MiB of pages is fine;
#: a 400-byte archive declaring a 256 TiB file is not (it would hash zeros for an hour and create the file).
HOLE_RATIO = 4096
HOLE_FLOOR_DIVISOR = 256


class SizeLimits:
    """Bounds on what an archive may declare, checked before anything big is hashed, written or created.

    Every member's declared size and data end must stay within ``max_size`` (``--max-size``), and the holes of the
    whole archive (declared sizes beyond the data it carries) within ``max_size // HOLE_FLOOR_DIVISOR`` plus
    ``HOLE_RATIO`` times the data bytes read: real sparse files (preallocated system tablespaces, punched holes) pass,
    an archive cannot make the reader do work out of all proportion to its own size.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self.max_size = min(max_size, fa.MAX_FILE_SIZE)
        self.hole_floor = self.max_size // HOLE_FLOOR_DIVISOR
        self.data = 0
        self.holes = 0

    def _refuse(self, what: str, name: str, where: Where | None, offset: int | None) -> Corrupt:
        return Corrupt(f"{what}; refused", where=where, file=name, offset=offset,
                       hint="the archive is damaged or hostile; if the source really had such files, raise "
                            "--max-size")

    def extent(self, name: str, end: int, *, where: Where | None = None, offset: int | None = None) -> None:
        """A member reaches ``end`` bytes (its declared size, or the end of a piece of data)."""
        if end > self.max_size:
            raise self._refuse(f"member size {end} exceeds --max-size {self.max_size}", name, where, offset)

    def carry(self, name: str, data: int, holes: int, *, where: Where | None = None,
              offset: int | None = None) -> None:
        """Account for ``data`` bytes carried and ``holes`` bytes declared but not carried."""
        self.data += data
        if holes <= 0:
            return
        self.holes += holes
        allowed = self.hole_floor + HOLE_RATIO * self.data
        if self.holes > allowed:
            raise self._refuse(f"the archive declares {self.holes} bytes of holes for {self.data} bytes of data "
                               f"(at most {allowed} with --max-size {self.max_size})", name, where, offset)


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


def shown(name: str, limit: int = 120) -> str:
    """A member name for an error line: quoted with escapes (``repr``), cut to ``limit`` characters."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(name)} characters)"


_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
              "\\": "\\\\"}


def tar_escape(name: str) -> str:
    """A member name as GNU tar lists it (its default ``escape`` quoting style): C escapes for the usual control
    characters and the backslash, ``\\ooo`` octal for every byte of any other character that is not printable
    (C0/C1 controls, DEL, line and paragraph separators, bidirectional overrides); printable text as it is. So a
    name can never forge a line, a column or a terminal sequence in a listing."""
    if name.isprintable() and "\\" not in name:
        return name
    out = []
    for c in name:
        esc = _C_ESCAPES.get(c)
        if esc is not None:
            out.append(esc)
        elif c.isprintable():
            out.append(c)
        else:
            out.extend(f"\\{b:03o}" for b in c.encode("utf-8", "surrogateescape"))
    return "".join(out)


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
    #: an encrypted archive: True when read with its key (every byte authenticated), False without (structure
    #: only); None for an archive that is not encrypted
    authenticated: bool | None = None


class Observer(Protocol):
    """Sees one file's bytes in file order (page validation); holes are gaps between offsets."""

    def feed(self, offset: int, raw: bytes) -> None: ...

    def finish(self, size: int) -> None: ...


#: ``factory(name, meta)`` -> an observer for that file, or None to leave it unobserved.
ObserverFactory = Callable[[str, dict[str, Any]], Observer | None]
