"""The one exception tree of innostream.

It lives in ``formats`` because the format parsers raise it and ``formats`` may not import ``streamer``;
``innostream.errors`` re-exports it and adds the engine's branches. Every error carries where it happened
(file, page, offset, LSN) and an ``exit_code``; only the CLI turns it into a message and an exit status.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

#: Exit codes, documented in README.md ("Exit codes").
EXIT_ERROR = 1  # anything not more specific
EXIT_USAGE = 2  # bad command line (click's own code)
EXIT_CORRUPT = 3  # corrupt or truncated input: archive, page, redo block
EXIT_SOURCE = 4  # the server or its data directory cannot be read or locked
EXIT_REDO_LOST = 5  # the server overwrote redo before it was copied
EXIT_TARGET = 6  # the target cannot be written: file exists, unsafe path, disk full
EXIT_PREPARE = 7  # prepare/restore failed
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM / closed pipe


@dataclass(frozen=True)
class Where:
    """Where an error happened: every field optional, all typed. Rendered as ``[file …, page …, …]``."""

    file: str | None = None
    page: int | None = None
    offset: int | None = None
    lsn: int | None = None
    frame: int | None = None
    space_id: int | None = None

    def __str__(self) -> str:
        parts = [f"{f.name.replace('_', ' ')} {v}" for f in fields(self) if (v := getattr(self, f.name)) is not None]
        return f" [{', '.join(parts)}]" if parts else ""


class InnostreamError(Exception):
    """Base of every error a user can meet. The message says what happened; ``hint`` says what to do.

    Location comes as a :class:`Where` (``where=``), as keyword fields (``file=``, ``offset=``, ...), or both: the
    keywords fill in or override the fields of ``where``.
    """

    exit_code = EXIT_ERROR

    def __init__(
        self,
        message: str,
        *,
        where: Where | None = None,
        file: str | None = None,
        page: int | None = None,
        offset: int | None = None,
        lsn: int | None = None,
        frame: int | None = None,
        space_id: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        w = where or Where()
        self.where = Where(
            file=w.file if file is None else file,
            page=w.page if page is None else page,
            offset=w.offset if offset is None else offset,
            lsn=w.lsn if lsn is None else lsn,
            frame=w.frame if frame is None else frame,
            space_id=w.space_id if space_id is None else space_id,
        )
        self.hint = hint

    @property
    def file(self) -> str | None:
        return self.where.file

    @file.setter
    def file(self, value: str | None) -> None:
        self.where = replace(self.where, file=value)

    @property
    def page(self) -> int | None:
        return self.where.page

    @property
    def offset(self) -> int | None:
        return self.where.offset

    @property
    def lsn(self) -> int | None:
        return self.where.lsn

    def __str__(self) -> str:
        text = self.message + str(self.where)
        if self.hint:
            text += f"; {self.hint}"
        return text


class FormatError(InnostreamError):
    """Bytes that do not follow the format they claim to be."""

    exit_code = EXIT_CORRUPT


class BadMagic(FormatError):
    """The magic number or format word is not the expected one."""


class UnsupportedVersion(FormatError):
    """A known structure in a version or with features we do not support."""


class ChecksumMismatch(FormatError):
    """A stored checksum does not match the data."""


class Truncated(FormatError):
    """Input ended before a structure did."""


class Corrupt(FormatError):
    """A field holds a value that cannot be right (length over its cap, offset out of range, ...)."""
