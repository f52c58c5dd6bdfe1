"""``innostream prepare`` and ``innostream restore``: thin click commands over :mod:`innostream.recovery.prepare` and
:mod:`innostream.recovery.restore`."""

from __future__ import annotations

from pathlib import Path

import click
from innostream.recovery.chain import prepare_chain
from innostream.recovery.prepare import PrepareConfig, prepare_backup
from innostream.recovery.restore import RestoreConfig, restore_backup

_DIR = click.Path(file_okay=False, path_type=Path)


@click.command("prepare")
@click.option("--target-dir", required=True, type=_DIR, help="The backup directory (from backup or extract).")
@click.option("--server-binary", type=click.Path(dir_okay=False, path_type=Path),
              help="mysqld/mariadbd to run crash recovery with (default: the flavour's server on PATH).")
@click.option("--use-memory", default="128M", show_default=True, help="InnoDB buffer pool size for recovery.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for recovery and shutdown.")
@click.option("--server-option", "server_options", multiple=True, metavar="OPT",
              help="Extra option for the server, e.g. --server-option=--innodb-log-file-size=256M (repeatable).")
@click.option("--fsync/--no-fsync", default=True, show_default=True,
              help="fsync the backup's directories and commit xtrabackup_checkpoints by a synced rename.")
@click.option("--export", is_flag=True, help="Then write every table's .cfg (FLUSH TABLES ... FOR EXPORT on the same "
              "server) and CREATE TABLE into innostream_export.json, for `innostream import` (docs/RESTORE.md).")
@click.option("--incremental-dir", "incremental_dirs", multiple=True, type=_DIR, metavar="DIR",
              help="An incremental of --target-dir to apply (repeatable, oldest first: the whole chain at once).")
@click.option("--apply-log-only", is_flag=True,
              help="Apply redo only (no rollback) and mark the base log-applied, so more incrementals can follow "
                   "(xtrabackup's step-by-step form; leave it off the last step).")
def prepare_cmd(target_dir: Path, server_binary: Path | None, use_memory: str, timeout: float,
                server_options: tuple[str, ...], fsync: bool, export: bool = False,
                incremental_dirs: tuple[Path, ...] = (), apply_log_only: bool = False) -> None:
    """Apply the backup's redo log with the real server so the directory is a consistent data directory.

    The flavour's own mysqld/mariadbd runs crash recovery on the backup (no networking, private socket, no
    binlog, grant tables skipped), must reach the backup's last_lsn, and is shut down cleanly; then
    xtrabackup_checkpoints says backup_type = full-prepared. Running it again on a prepared backup does nothing.

    \b
    innostream prepare --target-dir /backups/today
    innostream prepare --target-dir /tmp/b --server-binary tools/server-wrappers/mysqld-sid
    innostream prepare --target-dir /backups/full --incremental-dir /backups/inc1 --incremental-dir /backups/inc2

    An incremental chain is checked whole (LSN continuity, same server) before anything is written. MariaDB:
    every link but the last is recovered redo-only and proven so; MySQL: the deltas are laid over the base in
    order and one recovery runs with the last link's redo (docs/PREPARE.md, "Incremental chains").
    """
    if incremental_dirs or apply_log_only:
        if export:
            raise click.UsageError("--export goes on a plain prepare, after the chain is prepared")
        result = prepare_chain(PrepareConfig(target_dir.resolve(), server_binary, use_memory, timeout,
                                             server_options, fsync=fsync),
                               [d.resolve() for d in incremental_dirs], apply_log_only)
    else:
        result = prepare_backup(PrepareConfig(target_dir.resolve(), server_binary, use_memory, timeout,
                                              server_options, fsync=fsync, export=export))
    state = ("incrementals laid, not recovered yet: finish with a prepare without --apply-log-only"
             if result.pending else "already prepared" if result.already_prepared else "prepared")
    click.echo(f"innostream: {target_dir}: {state} ({result.flavor}, last_lsn {result.last_lsn})", err=True)


@click.command("restore")
@click.option("--target-dir", required=True, type=_DIR, help="The prepared backup directory.")
@click.option("--datadir", required=True, type=_DIR, help="Empty (or missing) data directory to fill.")
@click.option("--move", is_flag=True, help="Move files instead of copying them (like --move-back); the backup is "
              "consumed: its metadata files and emptied directories are removed at the end.")
@click.option("--owner", metavar="USER[:GROUP]",
              help="Owner of the restored files and directories (default: the owner of --datadir, or of its parent "
                   "if it does not exist, e.g. mysql:mysql for /var/lib/mysql).")
@click.option("--fsync/--no-fsync", default=True, show_default=True,
              help="fsync every restored file and directory before reporting success.")
@click.option("--remote-to-datadir", is_flag=True,
              help="Put tablespaces that lived outside the datadir (DATA DIRECTORY tables, general tablespaces in "
                   "innodb_directories) into --datadir as <db>/<file> (<file> at the root for a general "
                   "tablespace) instead of back at their original path.")
def restore_cmd(target_dir: Path, datadir: Path, move: bool, owner: str | None, fsync: bool,
                remote_to_datadir: bool) -> None:
    """Copy (or move) a prepared backup into an empty data directory (like xtrabackup --copy-back).

    Data files and the redo log the server expects are copied, holes kept; the backup's metadata files are not.
    A non-empty datadir is refused. Files are 0640 and directories 0750 (as mysqld makes them), owned by the
    datadir's owner unless --owner says otherwise, so no chown step is needed. A --move that stopped halfway
    marks the backup: a rerun refuses it instead of restoring a partial datadir.

    \b
    innostream restore --target-dir /backups/today --datadir /var/lib/mysql
    """
    result = restore_backup(RestoreConfig(target_dir.resolve(), datadir.resolve(), move, fsync=fsync, owner=owner,
                                          remote_to_datadir=remote_to_datadir))
    verb = "moved" if move else "copied"
    click.echo(f"innostream: {verb} {result.files} files ({result.bytes} bytes) to {datadir}", err=True)
