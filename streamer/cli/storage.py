"""``innostream put`` and ``get``, and the object-storage options shared by every command that takes a location.

A location is ``-``, a file path or ``s3://bucket/key``; credentials come the AWS way (environment, shared config and
credentials files, ``--profile``), never from the command line (docs/STORAGE.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import click
from innostream.storage import is_object_location, open_read, open_write
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


def open_object_input(location: str) -> BinaryIO:
    """A reader of ``s3://bucket/key`` with the command's options (closed by the caller)."""
    return open_read(location, options_from_context())


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


def list_prefix(location: str) -> None:
    """``list s3://bucket/prefix/``: one line per object (time, size, what its header says, key) and per upload
    not completed ("incomplete"); the header is read with two small ranged GETs per object."""
    import struct

    from innostream.formats.archive import STREAM_HEADER_SIZE
    from innostream.storage import ObjectLocation, parse_location
    from innostream.storage.s3 import list_objects, list_uploads, read_range

    loc = parse_location(location, prefix_ok=True)
    options = options_from_context()
    for obj in list_objects(loc, options):
        head = read_range(ObjectLocation(loc.bucket, obj.key), options, 0, STREAM_HEADER_SIZE) if obj.size else b""
        if len(head) == STREAM_HEADER_SIZE and head.startswith(b"INNOSTRM"):
            meta_len = struct.unpack_from("<I", head, 20)[0]
            if 0 < meta_len <= 65536:
                head += read_range(ObjectLocation(loc.bucket, obj.key), options, STREAM_HEADER_SIZE, meta_len)
        click.echo(f"{obj.modified}  {obj.size:>14}  complete    {_describe_archive(head):32}  {obj.key}")
    for up in list_uploads(loc, options):
        click.echo(f"{up.modified}  {up.size:>14}  incomplete  {'-':32}  {up.key}")
