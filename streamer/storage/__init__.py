"""Where an archive lives: ``-`` (stdin/stdout), a file path, or an object ``s3://bucket/key``.

:func:`parse_location` tells them apart; :func:`open_read` and :func:`open_write` give a binary file object for any of
them, so the archive reader and writers stay unaware of object storage (docs/STORAGE.md). An object written through
:func:`open_write` appears only when :meth:`~innostream.storage.s3.S3Writer.close` completes it; call
:meth:`~innostream.storage.s3.S3Writer.abort` on failure (the multipart upload and its parts are deleted).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from innostream.errors import InnostreamError, SourceError, TargetError

if TYPE_CHECKING:
    from innostream.storage.s3 import S3Options, S3Writer

SCHEME = "s3://"


@dataclass(frozen=True)
class ObjectLocation:
    """``s3://bucket/key``."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def is_object_location(location: str) -> bool:
    return location.startswith(SCHEME)


def parse_location(location: str, *, prefix_ok: bool = False,
                   error: type[InnostreamError] = SourceError) -> ObjectLocation:
    """Split ``s3://bucket/key``; the key may be empty or end in ``/`` only with ``prefix_ok`` (a listing)."""
    if not is_object_location(location):
        raise error(f"not an object location: {location!r}", hint="write s3://BUCKET/KEY")
    bucket, _, key = location[len(SCHEME):].partition("/")
    if not bucket or ((not key or key.endswith("/")) and not prefix_ok):
        raise error(f"object location without a bucket or key: {location!r}", hint="write s3://BUCKET/KEY")
    return ObjectLocation(bucket, key)


def open_read(location: str, options: S3Options | None = None) -> io.BufferedReader:
    """A sequential, buffered binary reader of the object at ``s3://bucket/key`` (resumes with ranged GETs on
    errors; :class:`~innostream.storage.s3.S3Reader` underneath)."""
    from innostream.storage.s3 import S3Options, open_stream

    return open_stream(parse_location(location), options or S3Options())


def open_write(location: str, options: S3Options | None = None, *, resume: bool = False) -> S3Writer:
    """A binary writer to ``s3://bucket/key`` (a multipart upload, completed by ``close()``); ``resume``: continue
    the latest unfinished upload of that key, reusing each stored part whose checksum matches the input."""
    from innostream.storage.s3 import S3Options, S3Writer

    return S3Writer(parse_location(location, error=TargetError), options or S3Options(), resume=resume)
