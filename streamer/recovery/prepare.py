"""``innostream prepare``: make a backup directory a data directory the server starts on, consistent at last_lsn.

We do not re-implement redo apply: the flavour's own server binary runs crash recovery on the backup directory
(networking off, private socket, no binlog, no replica or event threads, grant tables skipped), we check it
recovered up to ``last_lsn``, shut it down cleanly and record ``backup_type = full-prepared``. What differs between
the families (the redo copy's staging, server options, log messages) is theirs, in :mod:`innostream.families`; the
server itself runs through :mod:`innostream.recovery.server`.

A rerun after an interruption is safe: the redo the server finds is always the newest (our file, or the log the
server itself rewrote), and applying redo is idempotent.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
from innostream.datadir import local_data_file_path, read_remote_files
from innostream.ddl_track import RECORD, apply_record
from innostream.errors import Interrupted, PrepareError
from innostream.families import Family, family
from innostream.flavor import Flavor
from innostream.formats.xtrabackup_meta import (
    BACKUP_TYPE_FULL,
    BACKUP_TYPE_FULL_PREPARED,
    BACKUP_TYPE_INCREMENTAL,
    BACKUP_TYPE_LOG_APPLIED,
)
from innostream.log import log
from innostream.recovery.backupdir import CHAIN_JOURNAL, BackupDir, read_backup_dir
from innostream.recovery.export import export_tables
from innostream.recovery.partial import drop_tables_not_copied, is_partial
from innostream.recovery.server import RunDir, ServerExited, run_dir, running_server, server_binary_version
from innostream.signals import sigterm_raises

# --- configuration and result -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareConfig:
    """Options of ``innostream prepare``."""

    target_dir: Path
    server_binary: Path | None = None
    use_memory: str = "128M"
    timeout: float = 3600.0
    server_options: tuple[str, ...] = ()
    fsync: bool = True  # sync the backup's directories and commit xtrabackup_checkpoints durably (--no-fsync)
    export: bool = False  # then .cfg + CREATE TABLE for every table (recovery/export.py, --export)


@dataclass
class PrepareResult:
    """What prepare did: for tests, the CLI summary and the benchmark."""

    flavor: Flavor
    already_prepared: bool = False
    last_lsn: int = 0
    recovered_lsn: int | None = None
    server_version: str = ""
    seconds: float = 0.0
    log_lines: list[str] = field(default_factory=list)
    #: Incrementals were laid but no recovery ran (MySQL chain, ``--apply-log-only``): more may follow.
    pending: bool = False


# --- the server binary --------------------------------------------------------------------------------------------


def _backup_version(bd: BackupDir) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", bd.info.get("server_version", ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_server_binary(bd: BackupDir, explicit: Path | None) -> tuple[Path, str]:
    """Pick the server binary: ``--server-binary``, else the flavour's server on PATH or in the usual places.

    The binary must be of the backup's flavour and, when the backup records it, the same major.minor version:
    an older server cannot read a newer data dictionary and a newer one would upgrade the backup in place.
    """
    want = _backup_version(bd)
    candidates: list[Path]
    if explicit is not None:
        candidates = [explicit]
    else:
        names = family(bd.flavor).server_binaries
        dirs = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/usr/local/mysql/bin", "/usr/libexec"]
        seen: set[Path] = set()
        candidates = []
        for d in dirs:
            for n in names:
                p = Path(d or ".") / n
                if p.is_file() and os.access(p, os.X_OK) and p.resolve() not in seen:
                    seen.add(p.resolve())
                    candidates.append(p)
    if not candidates:
        raise PrepareError(f"no {bd.flavor} server binary found on PATH",
                           hint="pass --server-binary PATH (the mysqld/mariadbd that made the backup)")
    problems = []
    for binary in candidates:
        flavor, version, line = server_binary_version(binary)
        if flavor != bd.flavor:
            problems.append(f"{binary} is {flavor} ({line}), the backup is {bd.flavor}")
            continue
        if want is not None and version[:2] != want:
            problems.append(f"{binary} is {'.'.join(map(str, version))}, the backup was taken from "
                            f"{bd.info.get('server_version')}")
            continue
        return binary, line
    raise PrepareError("wrong server binary: " + "; ".join(problems),
                       hint="pass --server-binary with the server of the backup's flavour and version")


# --- running the server on the backup -----------------------------------------------------------------------------


def _server_argv(binary: Path, bd: BackupDir, run: RunDir, config: PrepareConfig, fam: Family) -> list[str]:
    target = bd.path
    argv = [
        str(binary), "--no-defaults", f"--datadir={target}", f"--socket={run.socket}",
        "--skip-networking", f"--pid-file={run.pid_file}", f"--log-error={run.error_log}",
        f"--innodb-buffer-pool-size={config.use_memory}", "--skip-grant-tables", "--event-scheduler=DISABLED",
        "--innodb-buffer-pool-dump-at-shutdown=OFF", "--innodb-buffer-pool-load-at-startup=OFF",
        "--performance-schema=OFF", f"--tmpdir={run.path}",
    ]
    if os.geteuid() == 0:
        argv.append("--user=root")
    cnf = bd.my_cnf
    if cnf.get("innodb_page_size"):
        argv.append(f"--innodb-page-size={cnf['innodb_page_size']}")
    if cnf.get("innodb_data_file_path"):
        argv.append(f"--innodb-data-file-path={local_data_file_path(cnf['innodb_data_file_path'])}")
    argv += fam.prepare_server_options(target, run.path, cnf)
    return argv + list(config.server_options)


#: The XID the server gives its own binlog two-phase commits (``MYSQL_XID_PREFIX`` + server_id + xid, handler.h):
#: formatID 1, a 20-byte gtrid starting "MySQLXid", no bqual.
MYSQL_XID_PREFIX = b"MySQLXid"
MYSQL_XID_GTRID_LEN = 20


def _rollback_binlog_prepared(sock: Path) -> int:
    """Roll back transactions the backup caught between the binlog's prepare and commit.

    They never reached the binlog position the backup records, and a restored server without the source's binlog
    cannot resolve them: MariaDB keeps them prepared (holding their locks) or refuses to start (MDEV-36025);
    MySQL 9.7 with its binlog off keeps them prepared too. XA transactions prepared by clients keep their state:
    they survive restarts by design and belong to their transaction manager."""
    # XIDs are binary; MySQL sends them in a text column, so read them undecoded.
    conn = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True, use_unicode=False)
    done = 0
    try:
        with conn.cursor() as cur:
            cur.execute("XA RECOVER")
            for format_id, gtrid_len, bqual_len, data in cur.fetchall():
                raw = bytes(data)
                if int(format_id) == 1 and int(gtrid_len) == MYSQL_XID_GTRID_LEN and int(bqual_len) == 0 and (
                    raw.startswith(MYSQL_XID_PREFIX)
                ):
                    cur.execute(f"XA ROLLBACK X'{raw[:MYSQL_XID_GTRID_LEN].hex()}', '', 1")
                    done += 1
    finally:
        conn.close()
    if done:
        log.info("prepare: rolled back %d transaction(s) left prepared by the binlog's two-phase commit", done)
    return done


def _innodb_lsn(conn: pymysql.connections.Connection) -> int | None:
    with conn.cursor() as cur:
        cur.execute("SHOW ENGINE INNODB STATUS")
        row = cur.fetchone()
    m = re.search(r"Log sequence number\s+(\d+)", row[2] if row else "")
    return int(m.group(1)) if m else None


def _missing_tablespaces(conn: pymysql.connections.Connection, fam: Family, target: Path) -> list[str]:
    """Tablespace files the data dictionary knows but the backup lacks (a file lost between backup and prepare)."""
    missing = []
    # A tablespace that lived outside the datadir is the backup's copy (restore puts it back at its path).
    remote = {rf.path: rf.name for rf in read_remote_files(target)}
    for p in fam.dictionary_tablespaces(conn, target):
        path = Path(p)
        if p in remote:
            path = target / remote[p]
        elif not path.is_absolute():
            path = target / p
        if "#innodb_temp" in p or path.name.startswith("ibtmp"):
            continue
        if not path.exists():
            missing.append(p)
    return missing


def _run_server(binary: Path, bd: BackupDir, config: PrepareConfig, fam: Family, lines: list[str],
                extra: tuple[str, ...] = ()) -> tuple[list[str], int | None]:
    """Start the server on the backup, wait until it accepts connections, look at it, shut it down cleanly.
    Its error-log lines are appended to ``lines``. Returns (missing tablespace files, InnoDB's LSN)."""
    with run_dir() as run:
        argv = _server_argv(binary, bd, run, config, fam) + list(extra)
        with running_server(argv, run, config.timeout, lines) as conn:
            _rollback_binlog_prepared(run.socket)
            missing = _missing_tablespaces(conn, fam, bd.path)
            if is_partial(bd.path, bd.info):  # tables left out: dropped (recovery/partial.py)
                missing = drop_tables_not_copied(conn, bd.path, missing,
                                                 lambda: _missing_tablespaces(conn, fam, bd.path))
            live_lsn = _innodb_lsn(conn)
        return missing, live_lsn


def _start_and_recover(binary: Path, bd: BackupDir, config: PrepareConfig, fam: Family,
                       result: PrepareResult) -> None:
    before = {p.name for p in bd.path.iterdir()}
    lines: list[str] = []
    try:
        missing, live_lsn = _run_server(binary, bd, config, fam, lines)
    except ServerExited as exc:
        if not fam.needs_heuristic_rollback(exc.lines):
            raise
        # Those transactions never reached the binlog position the backup records: roll them back. One start
        # with --tc-heuristic-recover=ROLLBACK does that and exits; XA transactions prepared by clients
        # ("foreign" XIDs) stay prepared. Then start normally.
        log.info("prepare: the backup holds binlog-prepared transactions; rolling them back "
                 "(--tc-heuristic-recover=ROLLBACK) and starting again")
        try:
            _run_server(binary, bd, config, fam, lines, ("--tc-heuristic-recover=ROLLBACK",))
        except ServerExited as again:
            if not any("Please restart without --tc-heuristic-recover" in line for line in again.lines):
                raise
        missing, live_lsn = _run_server(binary, bd, config, fam, lines)
    result.log_lines = lines
    result.recovered_lsn = fam.recovered_lsn(lines)
    if result.recovered_lsn is None:
        result.recovered_lsn = live_lsn
    if missing:
        raise PrepareError(f"{len(missing)} tablespace file(s) known to the data dictionary are missing from "
                           f"the backup: {', '.join(missing[:5])}", hint="the backup is incomplete")
    # Files the server creates on a first start that would make every restore of this backup the same
    # server (auto.cnf holds server_uuid) or carry keys generated here.
    for name in {p.name for p in bd.path.iterdir()} - before:
        if name == "auto.cnf" or name.endswith(".pem"):
            (bd.path / name).unlink()


# --- the steps ----------------------------------------------------------------------------------------------------


def apply_ddl_side_files(target: Path) -> int:
    """Apply the DDL side files a backup tool leaves for DDL that ran during the copy (``.del``, ``.ren``, then
    ``.new``, the order the tools use): ``t.new`` is a complete copy of a table created or rebuilt meanwhile and
    replaces ``t.ibd``; ``t.del`` drops ``t.ibd``. ``.ren`` files are refused: their meaning differs between
    tools and a wrong guess would silently lose a table. Our own record of DDL settled at the end of a
    ``--lock-ddl=reduced`` backup (:mod:`innostream.ddl_track`) is applied first. Returns the number of files
    handled."""
    done = apply_record(target)
    if done:
        log.info("prepare: %d files replaced or dropped as %s records (DDL during the backup)", done, RECORD)
    found = sorted(p for p in target.rglob("*") if p.suffix in (".del", ".ren", ".new") and p.is_file())
    for side in (p for p in found if p.suffix == ".ren"):
        raise PrepareError(f"{side.relative_to(target)}: rename side files (.ren) are not supported",
                           hint="prepare this backup with the tool that made it")
    for side in (p for p in found if p.suffix == ".del"):
        ibd = side.with_suffix(".ibd")
        if not ibd.exists():
            raise PrepareError(f"{side.relative_to(target)}: {ibd.name} to delete does not exist")
        log.info("prepare: %s: dropping %s", side.relative_to(target), ibd.name)
        ibd.unlink()
        side.unlink()
        done += 1
    for side in (p for p in found if p.suffix == ".new"):
        ibd = side.with_suffix(".ibd")
        log.info("prepare: %s: replaces %s", side.relative_to(target), ibd.name)
        for stale in (ibd.with_name(ibd.name + ".delta"), ibd.with_name(ibd.name + ".meta")):
            stale.unlink(missing_ok=True)
        side.replace(ibd)
        done += 1
    return done


def prepare_backup(config: PrepareConfig) -> PrepareResult:
    """Run crash recovery on the backup with the real server and mark it full-prepared.

    Raises:
        PrepareError: the backup is incomplete or of a kind we cannot prepare, the binary is wrong, recovery
            failed or stopped short of last_lsn, or tablespace files are missing.
    """
    started = time.monotonic()
    bd = read_backup_dir(Path(config.target_dir))
    fam = family(bd.flavor)
    cp = bd.checkpoints
    result = PrepareResult(flavor=bd.flavor, last_lsn=cp.last_lsn)
    if cp.backup_type == BACKUP_TYPE_FULL_PREPARED:
        log.info("prepare: %s is already prepared (backup_type = %s); nothing to do", bd.path, cp.backup_type)
        result.already_prepared = True
        if config.export:
            _export(bd, config, fam, find_server_binary(bd, config.server_binary)[0])
        return result
    if cp.backup_type == BACKUP_TYPE_INCREMENTAL:
        raise PrepareError(f"{bd.path} is an incremental backup: prepare its base with it",
                           file=str(bd.checkpoints_file), hint="prepare --target-dir BASE --incremental-dir THIS")
    if (bd.path / CHAIN_JOURNAL).exists():
        raise PrepareError(f"an earlier prepare of an incremental chain on {bd.path} did not finish",
                           file=str(bd.path / CHAIN_JOURNAL),
                           hint="run that prepare again with the same --incremental-dir options")
    if cp.backup_type not in (BACKUP_TYPE_FULL, BACKUP_TYPE_LOG_APPLIED):
        raise PrepareError(f"cannot prepare a backup of type {cp.backup_type!r}", file=str(bd.checkpoints_file))
    fam.check_backup_type(cp.backup_type)

    binary, line = find_server_binary(bd, config.server_binary)
    result.server_version = line
    log.info("prepare: %s backup in %s, LSN %d..%d, with %s", bd.flavor, bd.path, cp.to_lsn, cp.last_lsn, line)
    if cp.backup_type == BACKUP_TYPE_FULL:
        apply_ddl_side_files(bd.path)
        copy_end = fam.stage_redo(bd.path, bd.my_cnf, bd.info.get("server_version", ""))
        if copy_end and cp.last_lsn and copy_end < cp.last_lsn:
            raise PrepareError(f"the redo log copy ends at LSN {copy_end}, before the backup's last_lsn "
                               f"{cp.last_lsn}: it is truncated or damaged", lsn=copy_end,
                               hint="the backup is incomplete; take a new one")
    # SIGTERM stops the server instead of leaving it holding the backup directory (it runs in its own session
    # and would outlive us).
    with sigterm_raises():
        try:
            _start_and_recover(binary, bd, config, fam, result)
        except KeyboardInterrupt:
            raise Interrupted("prepare interrupted; the server was stopped and the backup is not marked prepared",
                              hint="run prepare again: recovery restarts from the redo in the backup") from None
    if cp.backup_type == BACKUP_TYPE_FULL and cp.last_lsn and (
        result.recovered_lsn is None or result.recovered_lsn < cp.last_lsn
    ):
        raise PrepareError(f"crash recovery reached LSN {result.recovered_lsn}, not the backup's last_lsn "
                           f"{cp.last_lsn}", lsn=result.recovered_lsn,
                           hint="the redo log copy is damaged; the backup directory was partly recovered, "
                                "restore it from the original before trying again")
    bd.write_checkpoints(cp.with_type(BACKUP_TYPE_FULL_PREPARED), fsync=config.fsync)
    result.seconds = time.monotonic() - started
    log.info("prepare: recovered to LSN %s (last_lsn %d) in %.1f s; backup_type = %s", result.recovered_lsn,
             cp.last_lsn, result.seconds, BACKUP_TYPE_FULL_PREPARED)
    if config.export:
        _export(bd, config, fam, binary)
    return result


def _export(bd: BackupDir, config: PrepareConfig, fam: Family, binary: Path) -> None:
    """``--export``: the server started again on the prepared backup writes every table's .cfg."""
    with sigterm_raises():
        export_tables(bd, lambda run: _server_argv(binary, bd, run, config, fam), config.timeout, fsync=config.fsync)


__all__ = [
    "PrepareConfig",
    "PrepareResult",
    "apply_ddl_side_files",
    "find_server_binary",
    "local_data_file_path",
    "prepare_backup",
]
