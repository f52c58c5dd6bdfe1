"""MySQL 8.0.30+ / 8.4 / 9.x: what innostream does differently for it (what Percona XtraBackup 8 does).

Backup: ``LOCK INSTANCE FOR BACKUP`` for the whole copy (blocks DDL, not DML); ``FLUSH TABLES WITH READ LOCK``
briefly at the end; ``performance_schema.log_status`` gives binlog position, GTIDs and LSNs in one consistent read;
the redo log consumer keeps the server from overwriting redo not yet copied; the redo copy is
``xtrabackup_logfile``: the 2048-byte header of the server redo file plus 512-byte blocks from
``align_down(checkpoint, 512)``.

Prepare: like PXB's ``xtrabackup_init_temp_log`` we make ``#innodb_redo/#ib_redo0`` of ``xtrabackup_logfile``:
start LSN = that block, both checkpoint blocks = the checkpoint, CRC-32C recomputed, FILE_FULL cleared, zero-padded
to a size the server accepts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pymysql
from innostream.connection import LOCK_WAIT_TIMEOUT, BackupLocks, LogStatus, ServerFacts, Session
from innostream.errors import PrepareError, SourceError
from innostream.families.common import REDO_CHUNK, common_my_cnf
from innostream.flavor import Flavor
from innostream.formats import log0files_io as lf
from innostream.formats import xtrabackup_meta as meta
from innostream.formats.errors import FormatError
from innostream.formats.xtrabackup_logfile import (
    MYSQL_PREPARED_REDO,
    MYSQL_REDO_DIR,
    XTRABACKUP_LOGFILE,
    MysqlRedoStart,
    mysql_redo_file_size,
    mysql_redo_start,
    scan_mysql_blocks,
)
from innostream.log import log
from innostream.redo_copier import MySQLRedoCopier, RedoCopier, Writer

#: How long FLUSH TABLES WITH READ LOCK may wait for running statements; meanwhile all writes queue behind it.
FTWRL_WAIT_TIMEOUT = 30
#: MySQL 8.0.30+ splits innodb_redo_log_capacity over this many #ib_redoN files (log0constants.h).
LOG_N_FILES = 32


class MySQLBackupLocks(BackupLocks):
    """``LOCK INSTANCE FOR BACKUP`` for the copy, ``FLUSH TABLES WITH READ LOCK`` (when it is safe) at the end."""

    def _lock_ddl(self) -> None:
        self.session.execute("LOCK INSTANCE FOR BACKUP")
        self.ddl_locked = True
        log.info("Executed LOCK INSTANCE FOR BACKUP: DDL waits until the backup ends")

    def _block_commits(self, need_read_lock: bool) -> None:
        """``FLUSH TABLES WITH READ LOCK``, unless it would break a user's DDL.

        A DDL statement waiting for our instance lock holds the global intention lock that FTWRL needs, and the
        server resolves that cycle by failing the DDL (ER_LOCK_DEADLOCK). So when DDL is waiting, or FTWRL cannot
        get its lock within :data:`FTWRL_WAIT_TIMEOUT`, we do not block commits: the binlog position and LSN still
        come from one consistent ``log_status`` read, but the redo copy may hold a few transactions committed after
        it, and non-InnoDB tables may change while copied. That is said in a warning, and ``commits_blocked``
        tells the caller.
        """
        if not need_read_lock:
            return
        waiting = self.session.value(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE = 'Waiting for backup lock'")
        if waiting:
            log.warning("%s DDL statement(s) wait for the backup lock; not taking FLUSH TABLES WITH READ LOCK "
                        "(it would make them fail). The binlog position may precede transactions committed "
                        "during the last moments of the redo copy, and non-InnoDB tables may be inconsistent",
                        waiting)
            return
        try:
            self.session.execute(f"SET SESSION lock_wait_timeout = {FTWRL_WAIT_TIMEOUT}")
            self.session.execute("FLUSH TABLES WITH READ LOCK")
        except SourceError as exc:
            log.warning("FLUSH TABLES WITH READ LOCK failed (%s); continuing without blocking commits: the "
                        "binlog position may precede the last transactions in the redo copy", exc.message)
        else:
            self.read_locked = self.commits_blocked = True
            log.info("Executed FLUSH TABLES WITH READ LOCK")
        finally:
            self.session.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")

    def _unlock_ddl(self) -> None:
        self.session.execute("UNLOCK INSTANCE")
        log.info("Executed UNLOCK INSTANCE")


class MySQL:
    """The MySQL family; see the module docstring."""

    flavor: Flavor = Flavor.MYSQL
    min_version: tuple[int, int, int] = (8, 0, 30)
    redo_copy_name: str = MySQLRedoCopier.copy_file_name
    server_binaries: tuple[str, ...] = ("mysqld",)
    # MySQL has no commit-only block: FLUSH TABLES WITH READ LOCK is how commits stop, whatever tables exist.
    read_lock_blocks_commits: bool = True

    # --- backup ---------------------------------------------------------------------------------------------------

    def check_server(self, session: Session, facts: ServerFacts) -> None:
        rows = session.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_enabled'")
        if rows and str(rows[0][1]).upper() == "OFF":
            raise SourceError("redo logging is disabled (ALTER INSTANCE DISABLE INNODB REDO_LOG): a hot backup "
                              "cannot be made consistent", hint="ALTER INSTANCE ENABLE INNODB REDO_LOG first")

    def backup_locks(self, session: Session, *, enabled: bool = True) -> BackupLocks:
        return MySQLBackupLocks(session, enabled=enabled)

    def current_lsn(self, session: Session) -> int:
        return int(session.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_current_lsn'")[0][1])

    def read_log_status(self, session: Session, *, binlog: bool) -> LogStatus:
        """One consistent read of ``performance_schema.log_status``, plus the flushed LSN."""
        rows = session.query("SELECT LOCAL, STORAGE_ENGINES FROM performance_schema.log_status")
        local = json.loads(rows[0][0])
        engines = json.loads(rows[0][1])
        innodb = engines.get("InnoDB", {})
        flushed = dict(session.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_flushed_to_disk_lsn'"))
        return LogStatus(
            lsn=int(innodb["LSN"]),
            checkpoint_lsn=int(innodb["LSN_checkpoint"]),
            flushed_lsn=int(flushed.get("Innodb_redo_log_flushed_to_disk_lsn", 0)),
            binlog_file=local.get("binary_log_file", "") if binlog else "",
            binlog_pos=int(local.get("binary_log_position", 0)) if binlog else 0,
            gtid=local.get("gtid_executed", "").replace("\n", "") if binlog else "",
        )

    def supports_redo_consumer(self, facts: ServerFacts) -> bool:
        """The consumer UDFs exist on MySQL 8.0.30+."""
        return facts.version_tuple >= (8, 0, 30)

    def open_redo_copier(self, log_dir: Path, write: Writer, *, poll_interval: float = 0.1,
                         advance: Callable[[int], None] | None = None) -> RedoCopier:
        """``log_dir`` holds ``#innodb_redo/``."""
        return MySQLRedoCopier(Path(log_dir), write, poll_interval=poll_interval, advance=advance)

    def encryption_plugin_config(self, session: Session) -> list[str]:
        """None: MySQL's keyring is not configured through backup-my.cnf."""
        return []

    def backup_my_cnf(self, facts: ServerFacts, undo_files: int = 0, plugin_config: Sequence[str] = ()) -> bytes:
        """MySQL 9 has neither ``innodb_log_file_size`` nor ``innodb_undo_tablespaces``; we write what is true of
        the files instead: the size of one ``#ib_redoN`` file and the number of undo tablespaces copied."""
        v = facts.var
        log_file_size = v("innodb_log_file_size")
        if not log_file_size and v("innodb_redo_log_capacity"):
            log_file_size = str(int(v("innodb_redo_log_capacity")) // LOG_N_FILES)

        def onoff(name: str) -> str:
            return "ON" if v(name, "OFF").upper() in ("ON", "1") else "OFF"

        options = dict(
            common_my_cnf(facts, log_file_size=log_file_size, undo_files=undo_files),
            innodb_log_checksums=onoff("innodb_log_checksums"),
            server_id=v("server_id", "0"),
            innodb_redo_log_encrypt=onoff("innodb_redo_log_encrypt"),
            innodb_undo_log_encrypt=onoff("innodb_undo_log_encrypt"),
        )
        if v("server_uuid"):
            options["server_uuid"] = v("server_uuid")
        if v("innodb_redo_log_capacity"):
            options["innodb_redo_log_capacity"] = v("innodb_redo_log_capacity")
        return meta.build_backup_my_cnf(options, self.flavor)

    # --- prepare --------------------------------------------------------------------------------------------------

    def holds_redo_copy(self, backup: Path) -> bool:
        return (backup / XTRABACKUP_LOGFILE).is_file() or (backup / MYSQL_REDO_DIR).is_dir()

    def check_backup_type(self, backup_type: str) -> None:
        if backup_type == meta.BACKUP_TYPE_LOG_APPLIED:
            raise PrepareError("a MySQL backup in 'log-applied' state (xtrabackup --apply-log-only) is not supported")

    def prepare_server_options(self, target: Path, run: Path, my_cnf: Mapping[str, str]) -> list[str]:
        return [f"--secure-file-priv={run}", "--skip-log-bin", "--skip-replica-start", "--log-error-verbosity=3",
                "--mysqlx=OFF",
                "--innodb-redo-log-capacity=8M", "--loose-auto-generate-certs=OFF",
                "--loose-sha256-password-auto-generate-rsa-keys=OFF",
                "--loose-caching-sha2-password-auto-generate-rsa-keys=OFF"]

    def stage_redo(self, target: Path, my_cnf: Mapping[str, str], server_version: str) -> int:
        """Create ``#innodb_redo/#ib_redo0`` from ``xtrabackup_logfile`` unless a redo dir with files exists
        already (an interrupted prepare: the server's own newer log wins). Returns the end LSN of the copied redo
        (or 0). The copy is validated block by block while it is written, in bounded chunks."""
        redo_dir = target / MYSQL_REDO_DIR
        if redo_dir.is_dir() and any(re.fullmatch(r"#ib_redo\d+", p.name) for p in redo_dir.iterdir()):
            log.info("prepare: %s exists from an earlier, interrupted prepare; recovering from it", MYSQL_REDO_DIR)
            return 0
        logfile = target / XTRABACKUP_LOGFILE
        if not logfile.is_file():
            raise PrepareError(f"{logfile} is missing", hint="the backup is incomplete")
        m = re.match(r"(\d+\.\d+\.\d+)", server_version)
        page_size = int(my_cnf.get("innodb_page_size", 16384))
        redo_dir.mkdir(exist_ok=True)
        tmp = redo_dir / (MYSQL_PREPARED_REDO + ".innostream-tmp")
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(tmp.unlink, missing_ok=True)
            end, file_size, start = _copy_redo(logfile, tmp, page_size, f"MySQL {m.group(1)}" if m else None)
            tmp.rename(redo_dir / MYSQL_PREPARED_REDO)
        log.info("prepare: %s/%s: redo %d..%d, checkpoint %d, %d bytes", MYSQL_REDO_DIR, MYSQL_PREPARED_REDO,
                 start.start_lsn, end, start.checkpoint_lsn, file_size)
        return end

    def recovered_lsn(self, lines: Sequence[str]) -> int | None:
        """The highest ``scanned up to`` (printed as progress every few MB)."""
        found = [int(m.group(1)) for line in lines
                 if (m := re.search(r"Doing recovery: scanned up to log sequence number (\d+)", line))]
        return max(found) if found else None

    def dictionary_tablespaces(self, conn: pymysql.connections.Connection, target: Path) -> list[str]:
        with conn.cursor() as cur:
            cur.execute("SELECT PATH FROM information_schema.INNODB_DATAFILES")
            return [r[0] for r in cur.fetchall()]

    def needs_heuristic_rollback(self, lines: Sequence[str]) -> bool:
        """Never: MySQL with its binlog off starts and keeps binlog-prepared transactions prepared."""
        return False


def _copy_redo(logfile: Path, tmp: Path, page_size: int, creator: str | None) -> tuple[int, int, MysqlRedoStart]:
    """``xtrabackup_logfile`` -> ``tmp``: the rewritten header, the valid blocks, the padding. Returns (end LSN, file
    size, the header facts)."""
    with open(logfile, "rb") as fin, open(tmp, "wb") as fout:
        try:
            start = mysql_redo_start(fin.read(lf.LOG_FILE_HDR_SIZE + lf.OS_FILE_LOG_BLOCK_SIZE), creator=creator)
        except FormatError as exc:
            raise PrepareError(f"the redo log copy is unusable: {exc}") from None
        fout.write(start.header)
        fin.seek(lf.LOG_FILE_HDR_SIZE)
        lsn, end, size = start.start_lsn, None, lf.LOG_FILE_HDR_SIZE
        while chunk := fin.read(REDO_CHUNK):
            n, chunk_end, stopped = scan_mysql_blocks(chunk, lsn)
            fout.write(chunk[:n])
            size += n
            lsn += n
            end = chunk_end if chunk_end is not None else end
            if stopped:
                break
        if end is None or end < start.checkpoint_lsn:
            raise PrepareError(f"the redo log copy has no valid block at the checkpoint LSN {start.checkpoint_lsn}",
                               file=str(logfile), lsn=start.checkpoint_lsn, hint="the backup is damaged")
        file_size = mysql_redo_file_size(size, page_size)
        fout.truncate(file_size)
        fout.flush()
        os.fsync(fout.fileno())
    return end, file_size, start
