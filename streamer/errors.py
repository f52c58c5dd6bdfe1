"""Errors of the engine: the branches of the tree in :mod:`formats.errors` that need the outside world."""

from __future__ import annotations

from innostream.formats.errors import (
    EXIT_INTERRUPTED,
    EXIT_PREPARE,
    EXIT_REDO_LOST,
    EXIT_SOURCE,
    EXIT_TARGET,
    BadMagic,
    ChecksumMismatch,
    Corrupt,
    FormatError,
    InnostreamError,
    Truncated,
    UnsupportedVersion,
)

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_PREPARE",
    "EXIT_REDO_LOST",
    "EXIT_SOURCE",
    "EXIT_TARGET",
    "BadMagic",
    "ChecksumMismatch",
    "Corrupt",
    "FileExistsInTarget",
    "FormatError",
    "InnostreamError",
    "Interrupted",
    "PrepareError",
    "RedoOverwritten",
    "SourceError",
    "TargetError",
    "Truncated",
    "UnsafePath",
    "UnsupportedVersion",
]


class SourceError(InnostreamError):
    """The server or its data directory cannot be read, connected to or locked."""

    exit_code = EXIT_SOURCE


class RedoOverwritten(SourceError):
    """The server reused redo space before the log copier read it: the backup cannot be consistent."""

    exit_code = EXIT_REDO_LOST


class TargetError(InnostreamError):
    """The target directory or stream cannot be written."""

    exit_code = EXIT_TARGET


class FileExistsInTarget(TargetError):
    """A file to be written exists already; like xtrabackup we never overwrite (errno 17)."""


class UnsafePath(TargetError):
    """An archive member would land outside the target directory or is not a regular file."""


class PrepareError(InnostreamError):
    """Crash recovery on the backup did not complete as required."""

    exit_code = EXIT_PREPARE


class Interrupted(InnostreamError):
    """Cancelled by a signal or a closed output pipe."""

    exit_code = EXIT_INTERRUPTED
