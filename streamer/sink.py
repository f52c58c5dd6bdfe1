"""Where files go: the one :class:`Sink` interface of the backup engine and the archive reader, and :class:`NullSink`.

The engine talks to one interface (``begin_file``/``write``/``end_file``/``add_bytes``/``close``/``abort``) and
does not care whether the bytes become files in a directory (:class:`innostream.target.TargetDir`, the one safe
directory writer) or members of the stream on stdout (:class:`innostream.archive.ArchiveWriter`,
:class:`innostream.archive.xbstream.XbstreamWriter`).
"""

from __future__ import annotations

from typing import Any, Protocol


class Sink(Protocol):
    """Where files go, one interface for every writer: a target directory (:class:`innostream.target.TargetDir`),
    an archive stream (:class:`innostream.archive.ArchiveWriter`, :class:`innostream.archive.xbstream.XbstreamWriter`)
    or nowhere (:class:`NullSink`). The backup engine writes to it; so does the archive reader when extracting.

    ``write`` may be called from any thread, in any order of offsets; gaps are holes. ``close`` is the commit
    point (metadata files last); ``abort`` leaves nothing that looks complete.
    """

    def begin_file(self, name: str, *, mode: int = 0o640) -> Any: ...

    def write(self, handle: Any, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def end_file(self, handle: Any, size: int) -> None: ...

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None: ...

    def close(self, trailer: dict[str, Any] | None = None) -> None: ...

    def abort(self) -> None: ...


class NullSink:
    """A sink that writes nothing (verify, list)."""

    def begin_file(self, name: str, *, mode: int = 0o640) -> Any:
        return name

    def write(self, handle: Any, offset: int, data: bytes | bytearray | memoryview) -> None:
        return None

    def end_file(self, handle: Any, size: int) -> None:
        return None

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        return None

    def close(self, trailer: dict[str, Any] | None = None) -> None:
        return None

    def abort(self) -> None:
        return None
