"""S3-compatible object storage on boto3 (docs/STORAGE.md says why boto3 and how the upload is bounded).

* :class:`S3Writer` -- a binary file object that streams into a multipart upload: parts of :func:`part_size_for`
  bytes, up to ``inflight`` parts uploading at once (memory about ``(inflight + 1) x part size``), each part's CRC32C
  sent as ``x-amz-checksum-crc32c`` so the server checks it, and the object created only by ``close()``
  (CompleteMultipartUpload). ``abort()`` (or any failure) deletes the upload and its parts.
* :class:`S3Reader` -- a sequential binary reader of one object; a dropped connection resumes with a ranged GET of
  the same object version (``If-Match`` its ETag).
* :func:`list_objects` -- the objects under a prefix.

Every request is retried on throttling, 5xx and connection errors with exponential backoff and full jitter, for at
most ``retry_seconds`` in total per request; then the error is one line (:class:`TargetError` when writing,
:class:`SourceError` when reading). Credentials and the endpoint come the AWS way (environment, shared config and
credentials files, ``profile``) unless ``endpoint_url``/``region`` say otherwise; nothing secret is ever logged.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import crc32c
from innostream.errors import InnostreamError, SourceError, TargetError
from innostream.log import log
from innostream.storage import ObjectLocation

T = TypeVar("T")

MIB = 1 << 20
#: S3's limits: 10,000 parts, each 5 MiB..5 GiB (the last part may be smaller)
MAX_PARTS = 10_000
MIN_PART = 5 * MIB
MAX_PART = 5 << 30
DEFAULT_PART = 8 * MIB
#: the part size doubles every this many parts, so 10,000 parts hold more than 5 TiB from any start >= 5 MiB
DOUBLE_EVERY = 900
DEFAULT_INFLIGHT = 4
DEFAULT_RETRY_SECONDS = 300.0

_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "RequestTimeout", "InternalError", "ServiceUnavailable", "OperationAborted"}


@dataclass(frozen=True)
class S3Options:
    """How to reach the store and how to upload; None means "the AWS default" (environment, config files)."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    part_size: int = DEFAULT_PART
    inflight: int = DEFAULT_INFLIGHT
    retry_seconds: float = DEFAULT_RETRY_SECONDS


def part_size_for(part_number: int, base: int = DEFAULT_PART) -> int:
    """Size of part ``part_number`` (1-based): ``base``, doubling every :data:`DOUBLE_EVERY` parts, at most 5 GiB.

    From 8 MiB (the default), parts 1-900 hold 7 GiB; from 5 MiB (the smallest S3 allows), 10,000 parts hold
    9 TiB > 5 TiB (S3's largest object). A stream's size is not known in advance, so the parts grow instead of
    being sized up front.
    """
    return min(MAX_PART, base << ((part_number - 1) // DOUBLE_EVERY))


def _crc32c_b64(data: bytes | memoryview) -> str:
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


# ---------------------------------------------------------------------------------------------------------------
# client, errors, retries


def make_client(options: S3Options) -> Any:
    """A boto3 S3 client; botocore's own retries are off (:func:`_retry` does them, with a total time bound)."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    timeout = max(5.0, min(60.0, options.retry_seconds))
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=timeout,
                    read_timeout=timeout, max_pool_connections=max(10, options.inflight * 2 + 2),
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    try:
        session = boto3.Session(profile_name=options.profile)
        return session.client("s3", endpoint_url=options.endpoint_url, region_name=options.region, config=config)
    except botocore.exceptions.ProfileNotFound as exc:
        raise SourceError(f"object storage: {exc}", hint="name a profile of ~/.aws/config") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise SourceError(f"object storage: {exc}") from None


def _status(exc: BaseException) -> tuple[int, str]:
    response = getattr(exc, "response", None) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(response.get("Error", {}).get("Code") or "")
    return status, code


def _retryable(exc: BaseException) -> bool:
    import botocore.exceptions

    if isinstance(exc, botocore.exceptions.ClientError):
        status, code = _status(exc)
        return status >= 500 or status == 429 or code in _THROTTLE_CODES
    import urllib3.exceptions

    # A body cut short: botocore's IncompleteReadError / ResponseStreamingError, or urllib3's own errors.
    return isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.ResponseStreamingError
                      | botocore.exceptions.IncompleteReadError | urllib3.exceptions.HTTPError)


def _describe(exc: BaseException) -> str:
    """One line for an error from boto3, without anything secret (it never holds the keys)."""
    import botocore.exceptions

    if isinstance(exc, botocore.exceptions.ClientError):
        status, code = _status(exc)
        message = str(exc.response.get("Error", {}).get("Message") or "")
        return f"{code or status}{': ' + message if message else ''}"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no credentials found"
    return str(exc) or type(exc).__name__


def _hint(exc: BaseException) -> str | None:
    import botocore.exceptions

    status, code = _status(exc)
    if isinstance(exc, botocore.exceptions.NoCredentialsError) or status == 403 or code in {
            "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}:
        return ("check the credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or --profile")
    if code == "NoSuchBucket":
        return "create the bucket or fix its name"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        return "check --endpoint-url (or AWS_ENDPOINT_URL) and that the store is up"
    return None


def _retry(what: str, fn: Callable[[], T], retry_seconds: float, cancelled: threading.Event | None = None) -> T:
    """``fn()``, retried on retryable errors with exponential backoff and full jitter for ``retry_seconds`` at
    most; the last error propagates."""
    deadline = time.monotonic() + retry_seconds
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            attempt += 1
            delay = random.uniform(0, min(20.0, 0.2 * 2 ** attempt))
            if not _retryable(exc) or time.monotonic() + delay > deadline or (cancelled and cancelled.is_set()):
                raise
            log.warning("object storage: %s failed (%s); retry %d in %.1fs", what, _describe(exc), attempt, delay)
            if cancelled is not None:
                if cancelled.wait(delay):
                    raise
            else:
                time.sleep(delay)


# ---------------------------------------------------------------------------------------------------------------
# writing


class S3Writer(io.RawIOBase):
    """A binary file object whose bytes become the object ``location`` once :meth:`close` succeeds."""

    def __init__(self, location: ObjectLocation, options: S3Options, client: Any = None, *,
                 resume: bool = False) -> None:
        super().__init__()
        if options.part_size < MIN_PART or options.part_size > MAX_PART:
            raise TargetError(f"part size {options.part_size} out of range", hint="give 5 MiB to 5 GiB")
        self.location = location
        self.options = options
        self.client = client if client is not None else make_client(options)
        self.bytes_written = 0
        self._base = options.part_size
        #: resume: the parts already stored, number -> (size, ETag, CRC32C or None)
        self._stored: dict[int, tuple[int, str, str | None]] = {}
        self.reused = 0
        self._buf = bytearray()
        self._part = 1
        self._parts: dict[int, Future[dict[str, Any]]] = {}
        self._slots = threading.BoundedSemaphore(options.inflight)
        self._pool = ThreadPoolExecutor(options.inflight, thread_name_prefix="s3-part")
        self._failed: BaseException | None = None
        self._cancel = threading.Event()
        self._done = False
        self._resumed = resume
        if resume:
            self.upload_id = self._find_upload()
            return
        self.upload_id = self._call("start the upload", lambda: self.client.create_multipart_upload(
            Bucket=location.bucket, Key=location.key, ChecksumAlgorithm="CRC32C"))["UploadId"]
        log.debug("object storage: multipart upload of %s started", location)

    def _find_upload(self) -> str:
        """The latest unfinished upload of this key, with its stored parts (which fix the part size)."""
        loc = self.location
        uploads = self._call("find the upload to resume", lambda: self.client.list_multipart_uploads(
            Bucket=loc.bucket, Prefix=loc.key)).get("Uploads", [])
        uploads = [u for u in uploads if u["Key"] == loc.key]
        if not uploads:
            raise TargetError(f"object storage: no unfinished upload of {loc} to resume",
                              hint="run put without --resume")
        upload_id = str(max(uploads, key=lambda u: u["Initiated"])["UploadId"])
        marker = 0
        while True:
            page = self._call("list the stored parts", lambda m=marker: self.client.list_parts(  # type: ignore[misc]
                Bucket=loc.bucket, Key=loc.key, UploadId=upload_id, PartNumberMarker=m))
            for part in page.get("Parts", []):
                self._stored[int(part["PartNumber"])] = (int(part["Size"]), str(part["ETag"]).strip('"'),
                                                         part.get("ChecksumCRC32C"))
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        if 1 in self._stored and len(self._stored) > 1:
            self._base = self._stored[1][0]  # the part size the upload was started with
        log.info("object storage: resuming the upload of %s: %d parts stored", loc, len(self._stored))
        return upload_id

    def _reuse(self, number: int, body: bytes) -> dict[str, Any] | None:
        """The stored part ``number`` if it holds exactly ``body`` (its CRC32C, else its MD5 ETag); else None."""
        stored = self._stored.get(number)
        if stored is None:
            return None
        size, etag, checksum = stored
        crc = _crc32c_b64(body)
        if size == len(body) and (crc == checksum if checksum else hashlib.md5(body).hexdigest() == etag):
            self.reused += 1
            return {"PartNumber": number, "ETag": f'"{etag}"', "ChecksumCRC32C": crc}
        raise TargetError(f"object storage: stored part {number} of {self.location} does not match the input "
                          "being resumed", hint="resume with the same input, or start again without --resume")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return _retry(what, fn, self.options.retry_seconds, self._cancel)
        except InnostreamError:
            raise
        except Exception as exc:
            raise TargetError(f"object storage: cannot {what} of {self.location}: {_describe(exc)}",
                              hint=_hint(exc)) from None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._done:
            raise ValueError("write to a completed or aborted upload")
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            room = part_size_for(self._part, self._base) - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) >= part_size_for(self._part, self._base):
                self._submit()
        self.bytes_written += n
        return n

    def _submit(self) -> None:
        self._raise_failure()
        body = bytes(self._buf)
        self._buf = bytearray()
        number = self._part
        self._part += 1
        if number > MAX_PARTS:
            raise TargetError(f"object storage: more than {MAX_PARTS} parts for {self.location}",
                              hint="give a larger --part-size")
        reused = self._reuse(number, body)
        if reused is not None:
            done: Future[dict[str, Any]] = Future()
            done.set_result(reused)
            self._parts[number] = done
            return
        self._slots.acquire()  # at most `inflight` parts in memory and in flight
        self._raise_failure(release=True)
        future = self._pool.submit(self._upload_part, number, body)
        self._parts[number] = future

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        try:
            checksum = _crc32c_b64(body)
            response = self._call(f"upload part {number}", lambda: self.client.upload_part(
                Bucket=self.location.bucket, Key=self.location.key, UploadId=self.upload_id, PartNumber=number,
                Body=body, ChecksumCRC32C=checksum))
            return {"PartNumber": number, "ETag": response["ETag"], "ChecksumCRC32C": checksum}
        except BaseException as exc:
            if self._failed is None:
                self._failed = exc
            self._cancel.set()
            raise
        finally:
            self._slots.release()

    def _raise_failure(self, release: bool = False) -> None:
        if self._failed is not None:
            if release:
                self._slots.release()
            raise self._failed

    def flush(self) -> None:
        self._raise_failure()

    def complete(self) -> None:
        """Upload the last part and complete the upload: only now does the object appear. On failure the upload
        is aborted and the error propagates."""
        if self._done:
            return
        try:
            if self._buf or self._part == 1:
                self._submit()
            parts = [self._parts[n].result() for n in sorted(self._parts)]
            self._call("complete the upload", lambda: self.client.complete_multipart_upload(
                Bucket=self.location.bucket, Key=self.location.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": parts}))
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._pool.shutdown()
        log.info("object storage: wrote %s (%d bytes in %d parts%s)", self.location, self.bytes_written,
                 len(self._parts), f", {self.reused} of them stored before and verified" if self.reused else "")

    def close(self) -> None:
        """:meth:`complete` (if not done or aborted yet), then close."""
        if not self.closed:
            try:
                self.complete()
            finally:
                super().close()

    def abort(self) -> None:
        """Cancel: stop the parts in flight and delete the upload with its parts (the object never appears); a
        resumed upload is kept (its stored parts are the point of resuming)."""
        if self._done:
            return
        self._done = True
        self._cancel.set()
        for future in self._parts.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        if self._resumed:
            log.warning("object storage: the resumed upload of %s is kept for another --resume (or abort it)",
                        self.location)
            return
        try:
            _retry("abort the upload", lambda: self.client.abort_multipart_upload(
                Bucket=self.location.bucket, Key=self.location.key, UploadId=self.upload_id),
                min(self.options.retry_seconds, 30.0))
            log.info("object storage: upload of %s aborted; no object written", self.location)
        except Exception as exc:
            log.error("object storage: could not abort the upload of %s (%s): its parts stay stored until it is "
                      "aborted (upload id %s; a bucket lifecycle rule can expire them)", self.location,
                      _describe(exc), self.upload_id)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


# ---------------------------------------------------------------------------------------------------------------
# reading


class S3Reader(io.RawIOBase):
    """A sequential binary reader of one object; resumes a broken download at the same offset."""

    def __init__(self, location: ObjectLocation, options: S3Options, client: Any = None) -> None:
        super().__init__()
        self.location = location
        self.options = options
        self.client = client if client is not None else make_client(options)
        head = self._call("read", lambda: self.client.head_object(Bucket=location.bucket, Key=location.key))
        self.size = int(head["ContentLength"])
        self.etag = str(head["ETag"])
        self.pos = 0
        self._body: Any = None

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return _retry(what, fn, self.options.retry_seconds)
        except InnostreamError:
            raise
        except Exception as exc:
            status, code = _status(exc)
            if status == 404 and code in {"404", "NoSuchKey", "NotFound", ""}:
                raise SourceError(f"object storage: no object {self.location}", hint="check the key: "
                                  "innostream list s3://BUCKET/PREFIX/") from None
            raise SourceError(f"object storage: cannot {what} {self.location}: {_describe(exc)}",
                              hint=_hint(exc)) from None

    def readable(self) -> bool:
        return True

    def _open(self) -> Any:
        return self._call("read", lambda: self.client.get_object(
            Bucket=self.location.bucket, Key=self.location.key, Range=f"bytes={self.pos}-",
            IfMatch=self.etag)["Body"])

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.pos >= self.size or not len(view):
            return 0
        deadline = time.monotonic() + self.options.retry_seconds
        while True:
            if self._body is None:
                self._body = self._open()
            try:
                data = self._body.read(len(view))
            except Exception as exc:
                if not _retryable(exc) or time.monotonic() > deadline:
                    raise SourceError(f"object storage: reading {self.location} failed at byte {self.pos}: "
                                      f"{_describe(exc)}") from None
                log.warning("object storage: download of %s broke at byte %d (%s); resuming", self.location,
                            self.pos, _describe(exc))
                self._close_body()
                continue
            if not data:
                # A body ending before the object's size is a dropped connection, not the end of the object.
                self._close_body()
                if time.monotonic() > deadline:
                    raise SourceError(f"object storage: download of {self.location} ended at byte {self.pos} of "
                                      f"{self.size}")
                continue
            view[:len(data)] = data
            self.pos += len(data)
            return len(data)

    def _close_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception as exc:  # the connection is being dropped anyway
                log.debug("object storage: closing a download: %s", exc)
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


class S3Ranges:
    """Byte ranges of one object by ranged GETs (the version first seen: ``If-Match`` its ETag), from several threads
    at once: the :class:`~innostream.archive.seekable.RangeSource` of an object. Counts what it fetched."""

    def __init__(self, location: ObjectLocation, options: S3Options, client: Any = None) -> None:
        self.location = location
        self.name = str(location)
        self.options = options
        self.client = client if client is not None else make_client(options)
        self._reader = S3Reader(location, options, self.client)  # HEAD: size, ETag, the errors of a missing object
        self.size = self._reader.size
        self.etag = self._reader.etag
        self.bytes_read = self.requests = 0
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (a body cut short is fetched again, within the retry time)."""
        if length <= 0:
            return b""
        if offset + length > self.size:
            raise SourceError(f"object storage: {self.location} holds {self.size} bytes, a read wants "
                              f"{offset}..{offset + length}")

        def get() -> bytes:
            body = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key, IfMatch=self.etag,
                                          Range=f"bytes={offset}-{offset + length - 1}")["Body"]
            try:
                data = bytes(body.read())
            finally:
                body.close()
            if len(data) != length:
                import botocore.exceptions

                raise botocore.exceptions.IncompleteReadError(actual_bytes=len(data), expected_bytes=length)
            return data

        data = self._reader._call("read", get)
        with self._lock:
            self.bytes_read += length
            self.requests += 1
        return data

    def close(self) -> None:
        self._reader.close()


def open_stream(location: ObjectLocation, options: S3Options) -> io.BufferedReader:
    """:class:`S3Reader` with a 1 MiB buffer (what the archive readers expect of a file)."""
    return io.BufferedReader(S3Reader(location, options), buffer_size=MIB)


# ---------------------------------------------------------------------------------------------------------------
# listing


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: str


def list_objects(location: ObjectLocation, options: S3Options) -> Iterator[ObjectInfo]:
    """The objects whose key starts with ``location.key`` (all pages)."""
    client = make_client(options)
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": location.bucket, "Prefix": location.key}
        if token:
            kwargs["ContinuationToken"] = token
        try:
            page = _retry("list", lambda kw=kwargs: client.list_objects_v2(**kw), options.retry_seconds)  # type: ignore[misc]
        except Exception as exc:
            raise SourceError(f"object storage: cannot list {location}: {_describe(exc)}", hint=_hint(exc)) from None
        for obj in page.get("Contents", []):
            yield ObjectInfo(obj["Key"], int(obj["Size"]), obj["LastModified"].strftime("%Y-%m-%d %H:%M:%S"))
        if not page.get("IsTruncated"):
            return
        token = page.get("NextContinuationToken")


def list_uploads(location: ObjectLocation, options: S3Options) -> Iterator[ObjectInfo]:
    """Multipart uploads under ``location.key`` not completed or aborted (a backup in progress or one that died
    with the store unreachable); size is the bytes stored in their parts so far."""
    client = make_client(options)
    try:
        page = _retry("list uploads", lambda: client.list_multipart_uploads(
            Bucket=location.bucket, Prefix=location.key), options.retry_seconds)
        for up in page.get("Uploads", []):
            parts = _retry("list parts", lambda up=up: client.list_parts(  # type: ignore[misc]
                Bucket=location.bucket, Key=up["Key"], UploadId=up["UploadId"]), options.retry_seconds)
            size = sum(int(p["Size"]) for p in parts.get("Parts", []))
            yield ObjectInfo(up["Key"], size, up["Initiated"].strftime("%Y-%m-%d %H:%M:%S"))
    except InnostreamError:
        raise
    except Exception as exc:
        raise SourceError(f"object storage: cannot list uploads under {location}: {_describe(exc)}",
                          hint=_hint(exc)) from None


def read_range(location: ObjectLocation, options: S3Options, start: int, length: int, *,
               client: Any = None) -> bytes:
    """Bytes ``[start, start + length)`` of an object (fewer at its end), or its last ``length`` bytes when
    ``start`` is negative: one ranged GET."""
    client = client if client is not None else make_client(options)
    span = f"bytes=-{length}" if start < 0 else f"bytes={start}-{start + length - 1}"
    try:
        body = _retry("read", lambda: client.get_object(Bucket=location.bucket, Key=location.key, Range=span),
                      options.retry_seconds)["Body"]
        return bytes(body.read())
    except Exception as exc:
        raise SourceError(f"object storage: cannot read {location}: {_describe(exc)}", hint=_hint(exc)) from None


__all__ = [
    "ObjectInfo",
    "S3Options",
    "S3Ranges",
    "S3Reader",
    "S3Writer",
    "list_objects",
    "list_uploads",
    "open_stream",
    "part_size_for",
    "read_range",
]
