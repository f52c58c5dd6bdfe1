"""The innostream archive (docs/FORMAT.md) and xbstream interop: writers, readers, format detection.

One job per module: :mod:`.types` (results and limits every reader shares), :mod:`.codec` (how payloads are
stored), :mod:`.frames` (one pass over the frames), :mod:`.writer`, :mod:`.reader`, :mod:`.xbstream` (both ways)
and :mod:`.detect` (which format a stream is). This package re-exports the public API; its own modules import each
other directly, never this ``__init__``.
"""

from __future__ import annotations

from innostream.archive.codec import Codec, FrameContext, PlainCodec, ZstdCodec
from innostream.archive.frames import Frame, FrameReader
from innostream.archive.reader import ArchiveReader, read_archive
from innostream.archive.types import (
    MAX_OPEN_FILES,
    ArchiveSummary,
    FileResult,
    Observer,
    ObserverFactory,
    read_exact,
)
from innostream.archive.writer import ArchiveWriter
from innostream.sink import NullSink, Sink

__all__ = [
    "MAX_OPEN_FILES",
    "ArchiveReader",
    "ArchiveSummary",
    "ArchiveWriter",
    "Codec",
    "FileResult",
    "Frame",
    "FrameContext",
    "FrameReader",
    "NullSink",
    "Observer",
    "ObserverFactory",
    "PlainCodec",
    "Sink",
    "ZstdCodec",
    "read_archive",
    "read_exact",
]
