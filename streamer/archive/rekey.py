"""``rekey``: rewrap an encrypted archive's data key under a new user key, rewriting no data (docs/FORMAT.md §9).

A file is rewritten in place, two slot writes each synced (crash-safe by the two key slots). An ``s3://`` object is
immutable: it is replaced by a multipart upload of the same key whose first part is the new header plus the bytes up
to 8 MiB (uploaded), and whose other parts are server-side copies of the old object's unchanged ranges
(UploadPartCopy, conditional on its ETag); until the upload completes, the old object stands whole.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from innostream.archive.crypt import rekey_header, slot_offset
from innostream.archive.types import read_exact
from innostream.errors import InnostreamError, SourceError, TargetError, Truncated
from innostream.fileio import pwrite_all
from innostream.formats import archive as fa
from innostream.formats import archive_crypt as fc
from innostream.log import log

#: an object rekey uploads this much (the new header and what follows it) and copies the rest server-side
FIRST_PART = 8 << 20
#: server-side copy parts: at least this, more for huge objects (at most 10,000 parts of at most 5 GiB)
COPY_PART = 1 << 30
MAX_COPY_PART = 5 << 30
MAX_PARTS = 10_000


def rekey_file(path: str, old_key: bytes, new_key: bytes, *, fsync: bool = True) -> tuple[str, str]:
    """Rewrap the data key of the archive file ``path`` under ``new_key``, in place; nothing else is rewritten.

    Crash-safe by the two key slots: the new slot is written into the free one and synced, then the old key's slot
    is cleared and synced. A crash in the first write leaves the old slot intact (the old key still opens the
    archive); after it, both keys open it until the second write (run rekey again); each slot has its own checksum,
    so a torn slot is detected, never mistaken. Returns the old and new key ids (hex).

    Raises:
        SourceError: the file cannot be opened or is not a regular file; TargetError: it cannot be written.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise SourceError(f"cannot open the archive for rekey: {exc.strerror}", file=path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError("rekey rewrites an archive file in place: this is not a regular file", file=path)
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            fixed = read_exact(f, fa.STREAM_HEADER_SIZE, offset=0, what="the stream header")
            _, _, _, meta_len, _ = fa.parse_stream_header_fixed(fixed)
            blob = read_exact(f, meta_len, offset=fa.STREAM_HEADER_SIZE, what="the stream metadata")
        header = fa.parse_stream_header(fixed, blob)
        new_index, slot, old_index = rekey_header(header, fixed, old_key, new_key)
        try:
            pwrite_all(fd, slot, slot_offset(new_index))
            if fsync:
                os.fsync(fd)
            pwrite_all(fd, fc.EMPTY_SLOT, slot_offset(old_index))
            if fsync:
                os.fsync(fd)
        except OSError as exc:
            raise TargetError(f"cannot rewrite the key slot: {exc.strerror}", file=path) from None
    finally:
        os.close(fd)
    return fc.key_id(old_key).hex(), fc.key_id(new_key).hex()


def rekey_object(location: str, options: Any, old_key: bytes, new_key: bytes) -> tuple[str, str]:
    """Rewrap the data key of the encrypted archive object ``s3://bucket/key`` under ``new_key``: the object is
    replaced by one that differs only in its key slots, the data copied server-side. Returns the key ids (hex).

    Raises:
        SourceError: the object cannot be read; TargetError: the new one cannot be written (the old one stays).
    """
    from innostream.storage import parse_location
    from innostream.storage.s3 import make_client

    loc = parse_location(location, error=TargetError)
    client = make_client(options)

    def call(what: str, fn: Any, error: type[InnostreamError] = TargetError) -> Any:
        try:
            return fn()
        except InnostreamError:
            raise
        except Exception as exc:
            raise error(f"object storage: cannot {what} {loc} for rekey: {exc}") from None

    head = call("read", lambda: client.head_object(Bucket=loc.bucket, Key=loc.key), SourceError)
    size, etag = int(head["ContentLength"]), head["ETag"]

    def get(start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        data = call("read", lambda: client.get_object(Bucket=loc.bucket, Key=loc.key, IfMatch=etag,
                                                      Range=f"bytes={start}-{start + length - 1}")["Body"].read(),
                    SourceError)
        if len(data) != min(length, size - start):
            raise Truncated(f"object ends inside its first {start + length} bytes", offset=start)
        return bytes(data)

    fixed = get(0, fa.STREAM_HEADER_SIZE)
    if len(fixed) < fa.STREAM_HEADER_SIZE:
        raise Truncated("archive ends inside the stream header", offset=0)
    _, _, _, meta_len, _ = fa.parse_stream_header_fixed(fixed)
    blob = get(fa.STREAM_HEADER_SIZE, meta_len)
    header = fa.parse_stream_header(fixed, blob)
    new_index, slot, old_index = rekey_header(header, fixed, old_key, new_key)
    new = bytearray(fixed + blob)
    for index, data in ((new_index, slot), (old_index, fc.EMPTY_SLOT)):
        new[slot_offset(index) : slot_offset(index) + fc.KEY_SLOT_SIZE] = data
    first = min(size, FIRST_PART)
    body = bytes(new) + get(len(new), first - len(new))
    if size <= FIRST_PART:  # small: one PUT replaces it
        call("write", lambda: client.put_object(Bucket=loc.bucket, Key=loc.key, Body=body))
    else:
        upload = call("start the upload of", lambda: client.create_multipart_upload(Bucket=loc.bucket,
                                                                                     Key=loc.key))["UploadId"]
        try:
            part = call("upload the first part of", lambda: client.upload_part(
                Bucket=loc.bucket, Key=loc.key, UploadId=upload, PartNumber=1, Body=body))
            parts = [{"PartNumber": 1, "ETag": part["ETag"]}]
            step = min(MAX_COPY_PART, max(COPY_PART, -(-(size - first) // (MAX_PARTS - 1))))
            for number, start in enumerate(range(first, size, step), start=2):
                end = min(size, start + step) - 1
                copied = call("copy a range of", lambda start=start, end=end, number=number: client.upload_part_copy(
                    Bucket=loc.bucket, Key=loc.key, UploadId=upload, PartNumber=number,
                    CopySource={"Bucket": loc.bucket, "Key": loc.key}, CopySourceIfMatch=etag,
                    CopySourceRange=f"bytes={start}-{end}"))
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            call("complete the rekeyed", lambda: client.complete_multipart_upload(
                Bucket=loc.bucket, Key=loc.key, UploadId=upload, MultipartUpload={"Parts": parts}))
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=loc.bucket, Key=loc.key, UploadId=upload)
            except Exception as exc:
                log.warning("object storage: could not abort the rekey upload of %s: %s", loc, exc)
            raise
    return fc.key_id(old_key).hex(), fc.key_id(new_key).hex()
