"""``innostream extract``, ``list`` and ``verify``: thin click commands over :mod:`innostream.extract`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, ClassVar

import click
from innostream.archive.types import DEFAULT_MAX_SIZE, tar_escape
from innostream.archive.xbstream import DIALECTS
from innostream.cli.storage import s3_options
from innostream.extract import DELTA_META_LATE, PageValidation, extract, list_archive, verify, verify_directory
from innostream.flavor import Flavor
from innostream.formats.errors import Corrupt
from innostream.log import log

_FORMATS = click.Choice(["auto", "innostream", "xbstream"])


def _open_input(archive: str) -> BinaryIO:
    if archive.startswith("s3://"):
        from innostream.cli.storage import open_object_input

        return open_object_input(archive)
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


class _Size(click.ParamType[int, object]):
    """A byte count: digits with an optional K, M, G, T or P suffix (powers of 1024)."""

    name = "size"
    _UNITS: ClassVar[dict[str, int]] = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in self._UNITS else ""
        digits = text[: len(text) - len(unit)]
        if not digits.isdigit() or int(digits) <= 0:
            self.fail(f"{value!r} is not a size such as 500G or 16T", param, ctx)
        return int(digits) << self._UNITS[unit]


def _key(key_file: str | None, key_command: str | None) -> bytes | None:
    """The --decrypt-key-file/--decrypt-key-command key, or None."""
    if key_file is None and key_command is None:
        return None
    from innostream.keys import load_key

    return load_key(key_file, key_command, what="decrypt")


def _input_options(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--decrypt-key-command", metavar="CMD", default=None,
                     help="Like --decrypt-key-file, the key being what CMD prints on stdout (/bin/sh -c).")(f)
    f = click.option("--decrypt-key-file", metavar="FILE", default=None,
                     help="The key of an encrypted archive (mode 600); the archive must then be encrypted and "
                          "authenticate under it, or nothing is written (exit 3).")(f)
    f = click.option("--max-size", type=_Size(), default=DEFAULT_MAX_SIZE, show_default="16T",
                     help="Largest member size to accept (holes included); an archive declaring more, or holes out "
                          "of all proportion to its data, is refused as corrupt (exit 3) before anything is "
                          "written.")(f)
    f = click.option("--xbstream-dialect", type=click.Choice(DIALECTS), default="auto", show_default=True,
                     help="Meaning of xbstream 'S' chunks: MariaDB seek or Percona sparse (auto: guess).")(f)
    f = click.option("--format", "fmt", type=_FORMATS, default="auto", show_default=True,
                     help="Input format; auto-detected from the first bytes.")(f)
    f = s3_options()(f)
    return click.argument("archive", default="-", metavar="[ARCHIVE|-|s3://BUCKET/KEY]")(f)


@click.command("extract")
@_input_options
@click.option("-C", "--target-dir", "target", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to extract into (created if missing; existing files are never overwritten).")
@click.option("-p", "--parallel", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Threads decompressing and writing.")
@click.option("--fsync/--no-fsync", default=True, show_default=True,
              help="fsync every file and directory, and commit xtrabackup_checkpoints last by a synced rename, "
                   "before reporting success (--no-fsync: faster, not crash-safe).")
@click.option("--include", "include", multiple=True, metavar="GLOB",
              help="Only the user tables whose files match GLOB, e.g. 'shop/orders.*' (repeatable; a partition's "
                   "file also matches as its table's). The system tablespace, undo, redo, mysql and the metadata are "
                   "always extracted, so the result prepares (docs/RESTORE.md).")
@click.option("--exclude", "exclude", multiple=True, metavar="GLOB", help="Leave out the user tables whose files "
              "match GLOB (repeatable).")
def extract_cmd(archive: str, fmt: str, xbstream_dialect: str, max_size: int, target: Path, parallel: int,
                fsync: bool, decrypt_key_file: str | None = None, decrypt_key_command: str | None = None,
                include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
    """Extract an innostream archive or an xbstream (from a file or stdin) into TARGET."""
    key = _key(decrypt_key_file, decrypt_key_command)
    from innostream.cli.storage import open_ranges

    source = open_ranges(archive) if include or exclude else None  # a file or object: read the chosen members only
    if source is not None and archive.startswith("s3://"):
        from innostream.cli.storage import open_object_input

        inp = open_object_input(archive, source)  # one HEAD; nothing is fetched unless the archive has no index
    else:
        inp = _open_input(archive)
    try:
        extract(inp, target, parallel=parallel, fsync=fsync, fmt=fmt, dialect=xbstream_dialect, max_size=max_size,
                key=key, include=include, exclude=exclude, source=source)
    finally:
        if inp is not sys.stdin.buffer:
            inp.close()
        if source is not None:
            source.close()


@click.command("list")
@_input_options
@click.option("-l", "--long", "long_", is_flag=True, help="Also show stored bytes and the xxh3-128 of each file.")
def list_cmd(archive: str, fmt: str, xbstream_dialect: str, max_size: int, long_: bool,
             decrypt_key_file: str | None = None, decrypt_key_command: str | None = None) -> None:
    """List the files of an archive (checks every frame checksum, decompresses nothing; an encrypted archive's names
    and sizes are authenticated, its data is not decrypted)."""
    if archive.startswith("s3://") and (archive.endswith("/") or "/" not in archive[5:]):
        from innostream.cli.storage import list_prefix

        return list_prefix(archive)  # s3://bucket/prefix/: the backups there
    key = _key(decrypt_key_file, decrypt_key_command)
    inp = _open_input(archive)

    def show(r) -> None:  # type: ignore[no-untyped-def]
        name = tar_escape(r.name)  # as GNU tar lists names: a newline or escape sequence cannot forge a line
        if long_:
            click.echo(f"{r.size:>14} {r.stored_bytes:>14} {r.digest or '-':32} {name}")
        else:
            click.echo(f"{r.size:>14} {name}")

    try:
        summary = list_archive(inp, fmt=fmt, dialect=xbstream_dialect, on_file_done=show, max_size=max_size, key=key)
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
              help="Server family for page validation (default: from the archive's metadata; an xbstream does not "
                   "say it, so --xbstream-dialect mariadb/percona, else the pages themselves decide).")
@click.option("--restore", is_flag=True,
              help="Prove the backup restores: prepare a scratch copy (ARCHIVE may also be a backup directory), "
                   "restore it, start a throwaway server on it and CHECK TABLE every table.")
@click.option("--server-binary", type=click.Path(dir_okay=False, path_type=Path),
              help="With --restore: the mysqld/mariadbd to prepare and start (default: the flavour's server on PATH).")
@click.option("--scratch-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --restore: where the scratch copy goes (default: next to the backup, else $TMPDIR).")
@click.option("--keep", is_flag=True, help="With --restore: keep the scratch directory.")
@click.option("--use-memory", default="128M", show_default=True, help="With --restore: the server's buffer pool.")
@click.option("--timeout", default=3600.0, show_default=True,
              help="With --restore: seconds to wait for each server start and shutdown.")
def verify_cmd(archive: str, fmt: str, xbstream_dialect: str, max_size: int, parallel: int, flavor: str | None,
               restore: bool,
               server_binary: Path | None, scratch_dir: Path | None, keep: bool, use_memory: str,
               timeout: float, decrypt_key_file: str | None = None, decrypt_key_command: str | None = None) -> None:
    """Check every checksum, file digest, the trailer and the InnoDB pages, writing nothing.

    ARCHIVE may also be a backup directory (of backup --target-dir or extract; full or incremental): its
    xtrabackup_checkpoints, every InnoDB page of its tablespaces and every page in its .delta files are checked.

    With --restore, prove instead that the backup restores: an archive (file or stdin) is extracted, a backup
    directory copied (reflink where possible; the original is only read) into a scratch directory, prepared,
    restored, a server started on it (no networking), every table checked (CHECK TABLE, row count); exit 0 only if
    every table is clean, 7 otherwise.

    \b
    innostream verify --restore /backups/today
    ssh host 'innostream backup --stream' | innostream verify --restore --server-binary /usr/sbin/mysqld
    """
    key = _key(decrypt_key_file, decrypt_key_command)
    if restore:
        from innostream.recovery.proof import ProofConfig, verify_restore

        config = ProofConfig(server_binary, scratch_dir, keep, use_memory, timeout, parallel, fmt, xbstream_dialect,
                             max_size, key)
        if archive != "-" and Path(archive).is_dir():
            if key is not None:
                raise click.UsageError("a backup directory is not encrypted: --decrypt-key-file/"
                                       "--decrypt-key-command apply to an archive")
            verify_restore(Path(archive), config)
            return
        source = _open_input(archive)
        try:
            verify_restore(source, config)
        finally:
            if source is not sys.stdin.buffer:
                source.close()
        return
    pages = PageValidation(flavor)
    if archive != "-" and Path(archive).is_dir():
        if key is not None:
            raise click.UsageError("a backup directory is not encrypted: --decrypt-key-file/"
                                   "--decrypt-key-command apply to an archive")
        d = verify_directory(Path(archive), pages)
        checked = _report_pages(pages, [])
        how = f" (as {pages.detected}, told by the pages)" if pages.detected and not flavor else ""
        log.info("verified backup directory %s (%s): %d files checked, %d bytes, %d InnoDB pages checked%s; OK",
                 archive, d.backup_type, d.files, d.data_bytes, checked, how)
        return
    inp = _open_input(archive)
    try:
        summary = verify(inp, parallel=parallel, fmt=fmt, dialect=xbstream_dialect, observer_factory=pages,
                         max_size=max_size, key=key)
    finally:
        if inp is not sys.stdin.buffer:
            inp.close()
    checked = _report_pages(pages, summary.warnings)
    how = f" (as {pages.detected}, told by the pages)" if pages.detected and not flavor else ""
    if summary.authenticated is False:
        log.info("verified the structure of an encrypted archive: %d frames; contents NOT authenticated (give "
                 "--decrypt-key-file or --decrypt-key-command to check them)", summary.frames)
        return
    log.info("verified %s: %d files, %d bytes of data, %d frames, %d InnoDB pages checked%s; OK", summary.format,
             len(summary.files), sum(f.size for f in summary.files), summary.frames, checked, how)


def _report_pages(pages: PageValidation, warnings: list[str]) -> int:
    """Log what the page validators found; raise Corrupt (exit 3) for a bad page or file; the pages checked."""
    checked = sum(v.pages for v in pages.validators)
    late_meta = [v.name for v in pages.validators if v.note == DELTA_META_LATE]
    for v in pages.validators:
        if v.note and v.note != DELTA_META_LATE:
            log.warning("%s: %s", v.name, v.note)
    if late_meta:  # one line for an older archive's every delta, not one per table
        log.warning("%d .delta file(s), first %s: %s", len(late_meta), late_meta[0], DELTA_META_LATE)
    bad = [(v.name, page_no, why) for v in pages.validators for page_no, why in v.bad]
    for name, page_no, why in bad[:20]:
        log.error("corrupt page: %s page %d: %s", name, page_no, why)
    broken = [(v.name, v.error) for v in pages.validators if v.error]
    for name, why in broken[:20]:
        log.error("corrupt file: %s: %s", name, why)
    for w in warnings:
        log.warning("%s", w)
    if broken:
        name, why = broken[0]
        raise Corrupt(f"{len(broken)} corrupt file(s), first: {why}", file=name)
    if bad:
        name, page_no, why = bad[0]
        raise Corrupt(f"{len(bad)} corrupt page(s), first: {why}", file=name, page=page_no)
    return checked
