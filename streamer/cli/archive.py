"""``innostream extract``, ``list`` and ``verify``: thin click commands over :mod:`innostream.extract`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import click
from innostream.archive.xbstream import DIALECTS
from innostream.extract import PageValidation, extract, list_archive, verify
from innostream.flavor import Flavor
from innostream.formats.errors import Corrupt
from innostream.log import log

_FORMATS = click.Choice(["auto", "innostream", "xbstream"])


def _open_input(archive: str) -> BinaryIO:
    if archive == "-":
        if sys.stdin.isatty():
            from innostream.errors import SourceError

            raise SourceError("no archive on stdin (a terminal)", hint="pipe a stream in or name an ARCHIVE file")
        return sys.stdin.buffer
    try:
        return open(archive, "rb")  # closed by the caller
    except OSError as exc:
        from innostream.errors import SourceError

        raise SourceError(f"cannot open archive: {exc.strerror}", file=archive) from None


def _input_options(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--xbstream-dialect", type=click.Choice(DIALECTS), default="auto", show_default=True,
                     help="Meaning of xbstream 'S' chunks: MariaDB seek or Percona sparse (auto: guess).")(f)
    f = click.option("--format", "fmt", type=_FORMATS, default="auto", show_default=True,
                     help="Input format; auto-detected from the first bytes.")(f)
    return click.argument("archive", default="-", metavar="[ARCHIVE|-]")(f)


@click.command("extract")
@_input_options
@click.option("-C", "--target-dir", "target", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to extract into (created if missing; existing files are never overwritten).")
@click.option("-p", "--parallel", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Threads decompressing and writing.")
@click.option("--fsync", is_flag=True, help="fsync every file and directory before reporting success.")
def extract_cmd(archive: str, fmt: str, xbstream_dialect: str, target: Path, parallel: int, fsync: bool) -> None:
    """Extract an innostream archive or an xbstream (from a file or stdin) into TARGET."""
    inp = _open_input(archive)
    try:
        extract(inp, target, parallel=parallel, fsync=fsync, fmt=fmt, dialect=xbstream_dialect)
    finally:
        if inp is not sys.stdin.buffer:
            inp.close()


@click.command("list")
@_input_options
@click.option("-l", "--long", "long_", is_flag=True, help="Also show stored bytes and the xxh3-128 of each file.")
def list_cmd(archive: str, fmt: str, xbstream_dialect: str, long_: bool) -> None:
    """List the files of an archive (checks every frame checksum, decompresses nothing)."""
    inp = _open_input(archive)

    def show(r) -> None:  # type: ignore[no-untyped-def]
        if long_:
            click.echo(f"{r.size:>14} {r.stored_bytes:>14} {r.digest or '-':32} {r.name}")
        else:
            click.echo(f"{r.size:>14} {r.name}")

    try:
        summary = list_archive(inp, fmt=fmt, dialect=xbstream_dialect, on_file_done=show)
    finally:
        if inp is not sys.stdin.buffer:
            inp.close()
    log.info("%d files, %d bytes of data in %d bytes of %s", len(summary.files), sum(f.size for f in summary.files),
             summary.archive_bytes, summary.format)


@click.command("verify")
@_input_options
@click.option("-p", "--parallel", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Threads decompressing.")
@click.option("--flavor", type=click.Choice([f.value for f in Flavor]), default=None,
              help="Server flavour for page validation (default: from the archive's metadata; an xbstream does not "
                   "say, so pages are validated only with --flavor or --xbstream-dialect mariadb/percona).")
def verify_cmd(archive: str, fmt: str, xbstream_dialect: str, parallel: int, flavor: str | None) -> None:
    """Check every checksum, file digest, the trailer and the InnoDB pages, writing nothing."""
    inp = _open_input(archive)
    pages = PageValidation(flavor)
    try:
        summary = verify(inp, parallel=parallel, fmt=fmt, dialect=xbstream_dialect, observer_factory=pages)
    finally:
        if inp is not sys.stdin.buffer:
            inp.close()
    checked = sum(v.pages for v in pages.validators)
    for v in pages.validators:
        if v.note:
            log.warning("%s: %s", v.name, v.note)
    bad = [(v.name, page_no, why) for v in pages.validators for page_no, why in v.bad]
    for name, page_no, why in bad[:20]:
        log.error("corrupt page: %s page %d: %s", name, page_no, why)
    for w in summary.warnings:
        log.warning("%s", w)
    if bad:
        name, page_no, why = bad[0]
        raise Corrupt(f"{len(bad)} corrupt page(s), first: {why}", file=name, page=page_no)
    log.info("verified %s: %d files, %d bytes of data, %d frames, %d InnoDB pages checked; OK", summary.format,
             len(summary.files), sum(f.size for f in summary.files), summary.frames, checked)
