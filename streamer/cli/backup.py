"""``innostream backup``: option parsing only; the work is :func:`innostream.backup.run_backup`."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import click
from innostream.backup import BackupConfig, run_backup
from innostream.cli.storage import s3_options
from innostream.connection import REDO_CONSUMER_MAX_LAG, ConnectionOptions
from innostream.log import log
from innostream.selection import TableSelection

_DIR = click.Path(file_okay=False, path_type=Path)
#: ``--password`` given without a value: ask, like the MySQL clients do.
_PROMPT = "\0prompt"


def masked_argv(argv: Sequence[str], password: str) -> list[str]:
    """``argv`` with the password's characters replaced by ``x`` in ``--password VALUE``, ``--password=VALUE``,
    ``-pVALUE`` and ``-p VALUE`` (what the MySQL clients do to their own argv)."""
    out = list(argv)
    after_flag = False
    for i, arg in enumerate(out):
        if after_flag and arg == password:
            out[i] = "x" * len(arg)
        elif arg.startswith("-") and arg.endswith(password) and (
                arg.startswith("--password=") or (arg.startswith("-p") and not arg.startswith("--"))):
            out[i] = arg[: len(arg) - len(password)] + "x" * len(password)
        after_flag = arg in ("-p", "--password")
    return out


def hide_password(password: str) -> None:
    """A password given on the command line: warn, as the MySQL clients do, and take it out of what ``ps`` and
    ``/proc/PID/cmdline`` show for the rest of the run (the clients overwrite their argv; Python cannot, so the
    process title is set to the masked command line with ``setproctitle``)."""
    log.warning("Using a password on the command line interface can be insecure.")
    import setproctitle

    setproctitle.setproctitle(" ".join(masked_argv(sys.orig_argv, password)))


def _lsn_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from innostream.incremental import parse_lsn

    try:
        return parse_lsn(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _s3_options_if(location: str | None) -> Any:
    """The S3 options, only for an ``s3://`` incremental base (reading them needs no network)."""
    if location is None or not location.startswith("s3://"):
        return None
    from innostream.cli.storage import options_from_context

    return options_from_context()


@click.command("backup")
@click.option("--datadir", type=_DIR, help="The server's data directory (default: ask the server); must be the "
              "server's own.")
@click.option("--target-dir", type=_DIR, help="Write the backup here (created if missing; an existing empty "
              "directory is fine; existing files are never overwritten).")
@click.option("--stream", "stream", is_flag=True, help="Write the backup as one archive to stdout.")
@click.option("--to", "to", metavar="s3://BUCKET/KEY", default=None,
              help="With --stream: upload the archive to this object as it is produced instead of stdout (it "
              "appears only when the backup completes; docs/STORAGE.md).")
@s3_options(upload=True)
@click.option("--format", "stream_format", type=click.Choice(["innostream", "xbstream"]), default="innostream",
              show_default=True, help="Stream format with --stream.")
@click.option("--compress", "compress", type=click.Choice(["zstd", "none"]), default="zstd", show_default=True,
              help="Compression of the innostream archive.")
@click.option("--compress-level", type=click.IntRange(-7, 22), default=1, show_default=True,
              help="zstd level.")
@click.option("--compress-threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--parallel", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Threads copying data files.")
@click.option("--innodb-data-home-dir", type=_DIR, help="Where ibdata* live (default: the server's setting).")
@click.option("--innodb-log-group-home-dir", type=_DIR, help="Where the redo log lives (default: the server's).")
@click.option("--innodb-undo-directory", type=_DIR, help="Where undo tablespaces live (default: the server's).")
@click.option("--defaults-file", type=click.Path(dir_okay=False),
              help="Read [client] options only from this file.")
@click.option("-u", "--user", help="Server user (needs RELOAD, PROCESS, BACKUP_ADMIN/RELOAD and SELECT).")
@click.option("-p", "--password", is_flag=False, flag_value=_PROMPT, default=None,
              help="Password; without a value, ask on the terminal (better: [client] password= in an option file).")
@click.option("--host", help="Server host; localhost or nothing means the unix socket.")
@click.option("-P", "--port", type=int)
@click.option("-S", "--socket", help="Unix socket of the server.")
@click.option("--lock-ddl", type=click.Choice(["full", "reduced"]), default=None,
              help="When DDL waits for the backup: reduced (default) = only at the end, where what DDL changed "
              "during the copy is copied again; full = for the whole backup. "
              "docs/BACKUP.md")
@click.option("--throttle", type=click.FloatRange(min=0.1), default=None, metavar="MB/S",
              help="Read data files at most this fast (10^6 bytes per second); the redo copy is never throttled.")
@click.option("--no-lock", is_flag=True, help="Do not block DDL or commits. Only if no DDL runs during the backup "
              "and you accept non-InnoDB tables and the binlog position being inconsistent.")
@click.option("--tmpdir", type=_DIR, help="With --stream, the redo copy is spooled here (an unlinked temporary "
              "file) so a slow reader never holds back the log copier (default: $TMPDIR or /tmp).")
@click.option("--read-buffer-size", type=click.IntRange(1, 64), default=4, show_default=True,
              help="MiB read at a time per copier thread.")
@click.option("--redo-consumer-max-lag-seconds", "redo_consumer_max_lag", type=click.FloatRange(0.5, 3600),
              default=REDO_CONSUMER_MAX_LAG, show_default=True,
              help="MySQL: the redo log consumer registration holds the server's writers while the backup copies "
              "no redo; after this long it is dropped (with a warning) and the backup goes on, failing with exit 5 "
              "if redo is then lost.")
@click.option("--incremental-basedir", metavar="DIR|ARCHIVE|s3://BUCKET/KEY", default=None,
              help="Incremental backup: copy only the pages changed since this backup (a directory, an archive "
              "file or object; its to_lsn is the base). docs/BACKUP.md.")
@click.option("--page-tracking", is_flag=True,
              help="MySQL: keep component_mysqlbackup's page tracking on, and with --incremental-* read only the "
              "pages it lists as changed (every page is scanned when it does not cover the base).")
@click.option("--incremental-lsn", metavar="LSN", default=None, callback=_lsn_option,
              help="Incremental backup: copy only the pages changed after this LSN (a base's to_lsn).")
@click.option("--encrypt-key-file", metavar="FILE", default=None,
              help="With --stream: encrypt and authenticate the archive (AES-256-GCM) under the key in FILE: 32 raw "
              "bytes, 64 hex characters or base64 of 32 bytes; mode 600 (README: Encrypted backups).")
@click.option("--encrypt-key-command", metavar="CMD", default=None,
              help="Like --encrypt-key-file, the key being what CMD prints on stdout (run by /bin/sh -c; e.g. a "
              "vault or KMS client).")
@click.option("--decrypt-key-file", metavar="FILE", default=None,
              help="The key of an encrypted --incremental-basedir archive (mode 600).")
@click.option("--decrypt-key-command", metavar="CMD", default=None,
              help="Like --decrypt-key-file, the key being what CMD prints on stdout (/bin/sh -c).")
@click.option("--fsync/--no-fsync", default=True, show_default=True,
              help="fsync every file and directory of --target-dir (xtrabackup_checkpoints last, by a synced "
                   "rename), or the archive when stdout is a regular file, before 'completed OK!'.")
@click.option("--databases", metavar="'DB DB.TABLE ...'", help="Partial backup: only these databases and tables "
              "(space-separated; the system tablespace, undo, redo and the mysql/sys schemas are always copied).")
@click.option("--databases-exclude", metavar="'DB DB.TABLE ...'", help="Partial backup: leave these out.")
@click.option("--tables", metavar="REGEX", help="Partial backup: only tables whose db.table matches REGEX.")
@click.option("--tables-exclude", metavar="REGEX", help="Partial backup: leave out tables whose db.table matches.")
@click.option("--tables-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Partial backup: only the tables listed in FILE, one db.table per line.")
@click.pass_obj
def backup_cmd(obj: dict[str, Any] | None, datadir: Path | None, target_dir: Path | None, stream: bool,
               stream_format: str, compress: str, compress_level: int, compress_threads: int, parallel: int,
               innodb_data_home_dir: Path | None, innodb_log_group_home_dir: Path | None,
               innodb_undo_directory: Path | None, defaults_file: str | None, user: str | None,
               password: str | None, host: str | None, port: int | None, socket: str | None, no_lock: bool,
               tmpdir: Path | None, read_buffer_size: int, fsync: bool, to: str | None,
               redo_consumer_max_lag: float = REDO_CONSUMER_MAX_LAG, incremental_basedir: str | None = None,
               incremental_lsn: int | None = None, encrypt_key_file: str | None = None,
               encrypt_key_command: str | None = None, decrypt_key_file: str | None = None,
               decrypt_key_command: str | None = None, databases: str | None = None,
               databases_exclude: str | None = None, tables: str | None = None, tables_exclude: str | None = None,
               tables_file: Path | None = None, page_tracking: bool = False, lock_ddl: str | None = None,
               throttle: float | None = None) -> None:
    """Hot physical backup of a running server into --target-dir or as a stream on stdout.

    \b
    A log-copying thread follows the redo log from the current checkpoint while the data files are copied page
    by page (each page validated, torn pages re-read). DDL is blocked for the whole backup (MariaDB BACKUP STAGE
    BLOCK_DDL, MySQL LOCK INSTANCE FOR BACKUP): CREATE/DROP/ALTER/RENAME TABLE wait until it ends; reads and
    writes go on. Commits are blocked briefly at the end while non-InnoDB files, the binlog position and the
    final LSN are taken.

    \b
    Copied: ibdata*, undo tablespaces, mysql.ibd, */*.ibd, .frm/.MYD/.MYI/.MAD/.MAI/.CSV/.opt/.par/.TRG/.sdi...,
    Aria logs; the redo as xtrabackup_logfile (MySQL) or ib_logfile0 (MariaDB). Not copied: the live redo files,
    ibtmp1, #innodb_temp, doublewrite files, binlogs, relay logs, auto.cnf, keys, pid and socket files.

    \b
    innostream backup --target-dir /backups/today
    innostream backup --stream | ssh host 'innostream extract -C /backups/today'
    innostream backup --target-dir /backups/inc1 --incremental-basedir /backups/today
    """
    if (target_dir is None) == (not stream):
        raise click.UsageError("give exactly one of --target-dir DIR and --stream")
    if to is not None and not (stream and to.startswith("s3://")):
        raise click.UsageError("--to takes s3://BUCKET/KEY, with --stream")
    if stream and to is None and sys.stdout.isatty():
        raise click.UsageError("--stream writes binary data; redirect stdout to a file or a pipe")
    if not stream and (stream_format != "innostream" or compress != "zstd"):
        log.warning("--format and --compress only apply to --stream; ignored")
    if incremental_basedir is not None and incremental_lsn is not None:
        raise click.UsageError("give --incremental-basedir or --incremental-lsn, not both")
    encrypt_key = None
    if encrypt_key_file is not None or encrypt_key_command is not None:
        if not stream:
            raise click.UsageError("--encrypt-key-file/--encrypt-key-command encrypt an archive: use them with "
                                   "--stream")
        if stream_format != "innostream":
            raise click.UsageError("xbstream has no authenticated encryption: --encrypt-key-file/--encrypt-key-command "
                                   "need --format innostream")
        from innostream.keys import load_key

        encrypt_key = load_key(encrypt_key_file, encrypt_key_command)  # before the server is touched
    base_key = None
    if decrypt_key_file is not None or decrypt_key_command is not None:
        if incremental_basedir is None:
            raise click.UsageError("--decrypt-key-file/--decrypt-key-command open an encrypted "
                                   "--incremental-basedir archive; there is none")
        from innostream.keys import load_key

        base_key = load_key(decrypt_key_file, decrypt_key_command, what="decrypt")
    if password == _PROMPT:
        password = click.prompt("Enter password", hide_input=True, default="", show_default=False, err=True)
    elif password:
        hide_password(password)
    config = BackupConfig(
        selection=TableSelection.from_options(databases=databases, databases_exclude=databases_exclude,
                                              tables=tables, tables_exclude=tables_exclude, tables_file=tables_file),
        connection=ConnectionOptions(user=user, password=password, host=host, port=port, socket=socket,
                                     defaults_file=defaults_file),
        datadir=datadir,
        target_dir=target_dir,
        data_home_dir=innodb_data_home_dir,
        log_dir=innodb_log_group_home_dir,
        undo_dir=innodb_undo_directory,
        parallel=parallel,
        stream_format=stream_format,
        compress=compress != "none",
        compress_level=compress_level,
        compress_threads=compress_threads,
        lock=not no_lock,
        lock_ddl=lock_ddl,
        throttle=throttle * 1e6 if throttle else None,
        chunk_size=read_buffer_size << 20,
        redo_consumer_max_lag=redo_consumer_max_lag,
        tmpdir=tmpdir,
        fsync=fsync,
        incremental_basedir=incremental_basedir,
        incremental_lsn=incremental_lsn,
        page_tracking=page_tracking,
        s3_options=_s3_options_if(incremental_basedir),
        encrypt_key=encrypt_key,
        base_key=base_key,
        # click also takes "--password VALUE"; mask the value itself, not only the "--password=VALUE" form.
        argv=tuple("..." if password and arg == password else arg for arg in (obj or {}).get("argv", ())),
    )
    if to is not None:
        from innostream.cli.storage import open_object_output

        upload = open_object_output(to)  # fails here, before the server is touched, on a wrong bucket or key
        try:
            run_backup(config, cast(BinaryIO, upload))  # completes the upload before "completed OK!"
        except BaseException:
            upload.abort()
            raise
        upload.close()
        return
    out = sys.stdout.buffer if stream else None
    try:
        run_backup(config, out)
    except BaseException:
        if stream:
            # The stream is incomplete and the reader may be gone or stalled: the interpreter's final flush of
            # stdout must neither raise nor block, so point fd 1 at /dev/null (CPython signal docs, SIGPIPE note).
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        raise
