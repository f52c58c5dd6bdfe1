"""The one exception tree of innostream.

It lives in ``formats`` because the format parsers raise it and ``formats`` may not import ``streamer``;
``innostream.errors`` re-exports it and adds the engine's branches. Every error carries where it happened
(file, page, offset, LSN) and an ``exit_code``; only the CLI turns it into a message and an exit status.
"""

from __future__ import annotations

from typing import Any

#: Exit codes, documented in README.md ("Exit codes").
EXIT_ERROR = 1  # anything not more specific
EXIT_USAGE = 2  # bad command line (click's own code)
EXIT_CORRUPT = 3  # corrupt or truncated input: archive, page, redo block
EXIT_SOURCE = 4  # the server or its data directory cannot be read or locked
EXIT_REDO_LOST = 5  # the server overwrote redo before it was copied
EXIT_TARGET = 6  # the target cannot be written: file exists, unsafe path, disk full
EXIT_PREPARE = 7  # prepare/restore failed
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM / closed pipe


class InnostreamError(Exception):
    """Base of every error a user can meet. The message says what happened; ``hint`` says what to do."""

    exit_code = EXIT_ERROR

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        page: int | None = None,
        offset: int | None = None,
        lsn: int | None = None,
        hint: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.page = page
        self.offset = offset
        self.lsn = lsn
        self.hint = hint
        self.context = context

    def where(self) -> str:
        """Return the ``[file …, page …, offset …, lsn …]`` suffix, or an empty string."""
        parts = []
        if self.file is not None:
            parts.append(f"file {self.file}")
        if self.page is not None:
            parts.append(f"page {self.page}")
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        if self.lsn is not None:
            parts.append(f"lsn {self.lsn}")
        parts.extend(f"{k} {v}" for k, v in self.context.items())
        return f" [{', '.join(parts)}]" if parts else ""

    def __str__(self) -> str:
        text = self.message + self.where()
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
