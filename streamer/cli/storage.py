"""``innostream put`` and ``get``, and the object-storage options shared by every command that takes a location.

A location is ``-``, a file path or ``s3://bucket/key``; credentials come the AWS way (environment, shared config and
credentials files, ``--profile``), never from the command line (docs/STORAGE.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import click
from innostream.archive.seekable import RangeSource
from innostream.storage import is_object_location, open_write
from innostream.storage.s3 import DEFAULT_INFLIGHT, DEFAULT_PART, DEFAULT_RETRY_SECONDS, MIB, S3Options, S3Writer

_META = "innostream.s3"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def s3_options(*, upload: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add --endpoint-url, --region, --profile, --retry-time (and --part-size, --parts-in-flight for uploads);
    :func:`options_from_context` reads them back."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        opts = [
            click.option("--endpoint-url", default=None, expose_value=False, callback=_remember,
                         help="S3 endpoint for s3:// locations (default: AWS_ENDPOINT_URL, the AWS config, AWS)."),
            click.option("--region", default=None, expose_value=False, callback=_remember,
                         help="S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, the AWS config)."),
            click.option("--profile", default=None, expose_value=False, callback=_remember,
                         help="Profile of the AWS shared config and credentials files (default: AWS_PROFILE)."),
            click.option("--retry-time", default=DEFAULT_RETRY_SECONDS, show_default=True, type=click.FloatRange(1),
                         expose_value=False, callback=_remember,
                         help="Seconds one object-storage request is retried (throttling, 5xx, connection errors)."),
        ]
        if upload:
            opts += [
                click.option("--part-size", default=DEFAULT_PART // MIB, show_default=True,
                             type=click.IntRange(5, 5120), expose_value=False, callback=_remember,
                             help="First multipart part size in MiB (parts double every 900 parts)."),
                click.option("--parts-in-flight", default=DEFAULT_INFLIGHT, show_default=True,
                             type=click.IntRange(1, 64), expose_value=False, callback=_remember,
                             help="Parts uploading at once (memory: about (this + 1) x part size)."),
            ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def options_from_context() -> S3Options:
    values = click.get_current_context().meta.get(_META, {})
    return S3Options(
        endpoint_url=values.get("endpoint_url"),
        region=values.get("region"),
        profile=values.get("profile"),
        part_size=int(values.get("part_size") or DEFAULT_PART // MIB) * MIB,
        inflight=int(values.get("parts_in_flight") or DEFAULT_INFLIGHT),
        retry_seconds=float(values.get("retry_time") or DEFAULT_RETRY_SECONDS),
    )


def open_object_input(location: str, src: RangeSource | None = None) -> BinaryIO:
    """A reader of ``s3://bucket/key`` with the command's options (closed by the caller): ranged GETs of 8 MiB,
    ``--parts-in-flight`` of them at once (memory about (that + 1) x 8 MiB), from the first read on; ``src``: the
    object's ranges already opened (:func:`open_ranges`)."""
    from innostream.archive.seekable import PrefetchStream
    from innostream.storage import parse_location
    from innostream.storage.s3 import S3Ranges

    options = options_from_context()
    if src is None:
        src = S3Ranges(parse_location(location), options)
    return PrefetchStream(src, [(0, src.size)], inflight=options.inflight)  # type: ignore[return-value]


def open_ranges(location: str) -> RangeSource | None:
    """The archive at ``location`` read by ranges (a regular file, an object), or None (stdin, a pipe)."""
    if is_object_location(location):
        from innostream.storage import parse_location
        from innostream.storage.s3 import S3Ranges

        return S3Ranges(parse_location(location), options_from_context())
    from pathlib import Path

    try:
        if location == "-" or not Path(location).is_file():
            return None
    except OSError:
        return None  # the sequential open says why
    from innostream.archive.seekable import LocalFileSource

    return LocalFileSource(location)


def open_object_output(location: str, resume: bool = False) -> S3Writer:
    """A writer to ``s3://bucket/key`` with the command's options: ``close()`` completes, ``abort()`` cancels."""
    return open_write(location, options_from_context(), resume=resume)


def _require_object(location: str) -> None:
    if not is_object_location(location):
        raise click.UsageError(f"{location!r} is not an object location s3://BUCKET/KEY")


@click.command("put")
@s3_options(upload=True)
@click.option("--resume", is_flag=True, help="Continue the unfinished upload of this key (the process was killed or "
              "the store unreachable) with the same input: stored parts whose checksum matches are kept.")
@click.argument("location", metavar="s3://BUCKET/KEY")
def put_cmd(location: str, resume: bool) -> None:
    """Upload stdin to an object (a multipart upload; the object appears only once all of stdin is stored).

    \b
    innostream backup --stream | innostream put s3://backups/db1/2026-12-01
    mariadb-backup --backup --stream=xbstream | innostream put s3://backups/db1/today.xbstream
    innostream put --resume s3://backups/db1/big < big.xbstream   # after a killed or failed put of that file
    """
    _require_object(location)
    if sys.stdin.isatty():
        raise click.UsageError("put uploads stdin; pipe the data in")
    from innostream.errors import Interrupted
    from innostream.signals import sigterm_raises

    inp = sys.stdin.buffer
    out = open_object_output(location, resume=resume)
    try:
        with sigterm_raises(lambda: Interrupted("terminated by SIGTERM; the upload was aborted")):
            try:
                while chunk := inp.read(MIB):
                    out.write(chunk)
                out.complete()
            except KeyboardInterrupt:
                raise Interrupted("interrupted; the upload was aborted") from None
    except BaseException:
        out.abort()
        raise
    out.close()


@click.command("get")
@s3_options()
@click.argument("location", metavar="s3://BUCKET/KEY")
def get_cmd(location: str) -> None:
    """Write an object to stdout.

    \b
    innostream get s3://backups/db1/2026-12-01 | innostream extract -C /restore
    """
    _require_object(location)
    if sys.stdout.isatty():
        raise click.UsageError("get writes binary data; redirect stdout to a file or a pipe")
    from innostream.archive.output import StreamOutput

    out = StreamOutput(sys.stdout.buffer)
    with open_object_input(location) as inp:
        buf = bytearray(MIB)
        while n := inp.readinto(buf):  # type: ignore[attr-defined]
            out.write(memoryview(buf)[:n])


def _describe_archive(head: bytes) -> str:
    """What the first bytes of an object say: "innostream FLAVOR VERSION", "xbstream", or "?"."""
    from innostream.formats.archive import STREAM_HEADER_SIZE, parse_stream_header
    from innostream.formats.errors import InnostreamError
    from innostream.formats.xbstream import XB_STREAM_CHUNK_MAGIC

    if head.startswith(XB_STREAM_CHUNK_MAGIC):
        return "xbstream"
    try:
        header = parse_stream_header(head[:STREAM_HEADER_SIZE], head[STREAM_HEADER_SIZE:])
    except InnostreamError:
        return "?"
    if header.crypt:  # the metadata is sealed: say which key opens it (the first 8 hex digits of its key id)
        from innostream.formats.archive_crypt import slots

        ids = ",".join(s.key_id.hex()[:8] for s in slots(header.crypt) if s is not None)
        return f"innostream encrypted key {ids}"
    meta = header.meta
    return f"innostream {meta.get('flavor', '?')} {meta.get('server_version', '?')}"


#: one ranged GET of an object's end: the end locator and the trailer of a backup of up to some thousand files
LIST_TAIL = 256 << 10


def _describe_tail(tail: bytes, size: int) -> tuple[str, str] | None:
    """(state, "type from_lsn..to_lsn flavor version") from an indexed archive's end, or None if it has no index."""
    from innostream.archive.seekable import read_tail
    from innostream.formats.errors import InnostreamError

    try:
        info = read_tail(tail, size)
    except InnostreamError as exc:
        return "damaged", exc.message[:60]
    if info is None:
        return None
    if info.trailer is None:
        return "complete", "encrypted (give the key to extract or list it)"
    t = info.trailer
    kind = {"full-backuped": "full", "incremental": "incremental"}.get(str(t.get("backup_type")),
                                                                       str(t.get("backup_type", "?")))
    return "complete", (f"innostream {t.get('flavor', '?')} {t.get('server_version', '?')}  {kind} "
                        f"{t.get('from_lsn', '?')}..{t.get('to_lsn', '?')}  {info.files} files")


def list_prefix(location: str) -> None:
    """``list s3://bucket/prefix/``: one line per object (time, size, complete/damaged, full or incremental, LSN
    range, server, key), read from its end locator and trailer with one ranged GET; per upload not completed
    ("incomplete"). An object without the index (older archives, xbstreams) is described by its header (two more
    small GETs)."""
    import struct

    from innostream.formats.archive import STREAM_HEADER_SIZE
    from innostream.storage import ObjectLocation, parse_location
    from innostream.storage.s3 import list_objects, list_uploads, make_client, read_range

    loc = parse_location(location, prefix_ok=True)
    options = options_from_context()
    client = make_client(options)
    for obj in list_objects(loc, options):
        where = ObjectLocation(loc.bucket, obj.key)
        described = None
        if obj.size:
            tail = read_range(where, options, -1, min(obj.size, LIST_TAIL), client=client)
            described = _describe_tail(tail, obj.size)
        if described is None:
            head = read_range(where, options, 0, STREAM_HEADER_SIZE, client=client) if obj.size else b""
            if len(head) == STREAM_HEADER_SIZE and head.startswith(b"INNOSTRM"):
                meta_len = struct.unpack_from("<I", head, 20)[0]
                if 0 < meta_len <= 65536:
                    head += read_range(where, options, STREAM_HEADER_SIZE, meta_len, client=client)
            described = ("complete", f"{_describe_archive(head)} (no index)")
        state, what = described
        click.echo(f"{obj.modified}  {obj.size:>14}  {state:10}  {what:60}  {obj.key}")
    for up in list_uploads(loc, options):
        click.echo(f"{up.modified}  {up.size:>14}  {'incomplete':10}  {'-':60}  {up.key}")
