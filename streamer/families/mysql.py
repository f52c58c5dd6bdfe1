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
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pymysql
from innostream.connection import LOCK_WAIT_TIMEOUT, BackupLocks, LogStatus, PrivilegeProbe, ServerFacts, Session
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
from innostream.redo_copier import MySQLRedoCopier, RedoCopier, Writer, list_mysql_redo_files
from innostream.selection import is_partial_backup_dir

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
        """``FLUSH TABLES WITH READ LOCK``, only when non-InnoDB tables that DML changes are copied.

        InnoDB data needs no commit block: ``performance_schema.log_status`` gives the binlog position, GTID set
        and LSN in one consistent read, and the redo copy is cut at exactly that LSN
        (:meth:`MySQL.cut_redo_copy`), so recovery stops where the recorded position is. FTWRL would only make
        every writer queue behind it while a long query runs.

        MyISAM (and other non-transactional) tables need it. A DDL statement waiting for our instance lock holds
        the global intention lock that FTWRL needs, and the server would resolve that cycle by failing the user's
        DDL (ER_LOCK_DEADLOCK); FTWRL may also not get its lock within :data:`FTWRL_WAIT_TIMEOUT`. In both cases
        the non-InnoDB tables are copied while they may change, and a warning says so (the binlog position stays
        exact for the InnoDB data).
        """
        if not need_read_lock:
            return
        cost = ("non-InnoDB tables are copied without a read lock and may not match the binlog position (InnoDB "
                "data and the position are exact)")
        waiting = self.session.value(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE = 'Waiting for backup lock'")
        if waiting:
            log.warning("%s DDL statement(s) wait for the backup lock; not taking FLUSH TABLES WITH READ LOCK "
                        "(it would make them fail): %s", waiting, cost)
            return
        try:
            self.session.execute(f"SET SESSION lock_wait_timeout = {FTWRL_WAIT_TIMEOUT}")
            self.session.execute("FLUSH TABLES WITH READ LOCK")
        except SourceError as exc:
            log.warning("FLUSH TABLES WITH READ LOCK failed (%s): %s", exc.message, cost)
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
    # Commits need not stop: log_status is one consistent read and the redo copy is cut at its LSN. FLUSH TABLES
    # WITH READ LOCK is taken only for non-InnoDB tables.
    read_lock_blocks_commits: bool = False
    # No redo-only recovery (see redo_only_options): a chain's deltas are laid over each other instead.
    chain_by_overlay: bool = True

    # --- backup ---------------------------------------------------------------------------------------------------

    def check_server(self, session: Session, facts: ServerFacts) -> None:
        rows = session.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_enabled'")
        if rows and str(rows[0][1]).upper() == "OFF":
            raise SourceError("redo logging is disabled (ALTER INSTANCE DISABLE INNODB REDO_LOG): a hot backup "
                              "cannot be made consistent", hint="ALTER INSTANCE ENABLE INNODB REDO_LOG first")

    def privilege_probes(self, *, binlog: bool) -> list[PrivilegeProbe]:
        """RELOAD: FLUSH TABLES WITH READ LOCK and FLUSH ENGINE LOGS at the end; BACKUP_ADMIN: LOCK INSTANCE FOR
        BACKUP, the redo log consumer and ``log_status``; PROCESS: the tablespace list and seeing DDL that waits."""
        return [
            PrivilegeProbe("RELOAD", "FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS",
                           "FLUSH TABLES WITH READ LOCK and FLUSH ENGINE LOGS"),
            PrivilegeProbe("BACKUP_ADMIN", "SELECT COUNT(*) FROM performance_schema.log_status",
                           "LOCK INSTANCE FOR BACKUP, the redo log consumer and performance_schema.log_status"),
            PrivilegeProbe("PROCESS", "SELECT COUNT(*) FROM information_schema.INNODB_DATAFILES WHERE 0",
                           "the list of tablespaces and the sessions waiting for the backup lock"),
        ]

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
        lsn = int(innodb["LSN"])
        return LogStatus(
            lsn=lsn,
            checkpoint_lsn=int(innodb["LSN_checkpoint"]),
            # read after log_status: it may already be past the LSN the backup ends at
            flushed_lsn=min(lsn, int(flushed.get("Innodb_redo_log_flushed_to_disk_lsn", 0))),
            binlog_file=local.get("binary_log_file", "") if binlog else "",
            binlog_pos=int(local.get("binary_log_position", 0)) if binlog else 0,
            gtid=local.get("gtid_executed", "").replace("\n", "") if binlog else "",
        )

    def cut_redo_copy(self, copier: RedoCopier, lsn: int) -> tuple[int, bytes] | None:
        """Where the redo copy must end so that recovery stops at exactly ``lsn`` (log_status's LSN, an mtr
        boundary: it is read under the log's exclusive lock): the offset of the block holding ``lsn`` in
        ``xtrabackup_logfile`` and that block with ``data_len`` cut to ``lsn``. Recovery treats a block that is not
        full as the end of the log. Commits go on while the backup ends (no FLUSH TABLES WITH READ LOCK), and the
        log copier stops at or past ``lsn``: without the cut, the prepared backup would hold transactions after the
        recorded binlog position and GTID set.

        The block is re-read from the server's redo (the redo consumer, still registered, keeps it there).

        Raises:
            SourceError: the block is no longer (or not yet) in the server's redo files.
        """
        if not isinstance(copier, MySQLRedoCopier):
            return None
        block_lsn = lf.align_down(lsn)
        base = lf.align_down(copier.start_lsn)
        if block_lsn < base:
            return None
        if lsn - block_lsn <= lf.LOG_BLOCK_HDR_SIZE:
            # The last mtr filled the block before: the next one, holding no data, may not be written yet. The copy
            # ends with that block as the server would write it (header only), so its end reads as ``lsn``.
            return lf.LOG_FILE_HDR_SIZE + block_lsn - base, lf.build_log_block(block_lsn, b"")
        block = b""
        for f in list_mysql_redo_files(copier.redo_dir):
            if f.start_lsn <= block_lsn < f.end_lsn:
                with contextlib.suppress(OSError):
                    fd = os.open(f.path, os.O_RDONLY)
                    try:
                        block = os.pread(fd, lf.OS_FILE_LOG_BLOCK_SIZE, lf.lsn_to_offset(f.start_lsn, block_lsn))
                    finally:
                        os.close(fd)
                break
        status, data_len = (lf.check_block(block, block_lsn) if len(block) == lf.OS_FILE_LOG_BLOCK_SIZE
                            else (lf.BlockStatus.EMPTY, 0))
        if status is not lf.BlockStatus.VALID or block_lsn + data_len < lsn:
            raise SourceError(f"the redo block holding the backup's end LSN {lsn} cannot be read back "
                              f"({status.name.lower()}, {data_len} bytes)", lsn=lsn,
                              hint="the server rewrote its redo; retry the backup")
        return lf.LOG_FILE_HDR_SIZE + block_lsn - base, cut_log_block(block, lsn - block_lsn)

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
        # A partial backup's redo may name tablespaces it left out: the server starts without them only with
        # innodb_force_recovery >= 1 (their changes are skipped); recovery/partial.py then drops those tables.
        partial = ["--innodb-force-recovery=1"] if is_partial_backup_dir(target) else []
        return [*partial, f"--secure-file-priv={run}", "--skip-log-bin", "--skip-replica-start",
                "--log-error-verbosity=3", "--mysqlx=OFF",
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

    def redo_only_options(self) -> list[str]:
        """Refused: MySQL has no redo-only recovery we can prove. Measured on 9.7.4 (docs/PREPARE.md): with
        innodb_force_recovery 3, 4 and 5 it writes ibdata1 page 5 (TRX_SYS) past the redo at startup, which would
        make the next incremental's redo be skipped for that page; innodb_read_only refuses to recover at all."""
        raise PrepareError("preparing an incremental chain of a MySQL backup is not supported: MySQL's recovery "
                           "writes pages beyond the redo even with innodb_force_recovery, so a base could not "
                           "take the next incremental safely; nothing was changed",
                           hint="restore from a full backup (docs/PREPARE.md, 'Incremental chains')")

    def log_checkpoint_lsn(self, target: Path) -> int | None:
        """The newest checkpoint in the server's ``#innodb_redo`` files."""
        try:
            files = list_mysql_redo_files(target / MYSQL_REDO_DIR)
        except (SourceError, OSError, FormatError):
            return None
        found = [cp.lsn for f in files if (cp := lf.find_checkpoint(f.header, f.size)) is not None]
        return max(found) if found else None

    def unstage_redo(self, target: Path) -> None:
        """Remove ``#innodb_redo/#ib_redoN`` so that stage_redo makes the log from the new xtrabackup_logfile."""
        redo_dir = target / MYSQL_REDO_DIR
        if redo_dir.is_dir():
            for p in redo_dir.iterdir():
                if re.fullmatch(r"#ib_redo\d+(_tmp)?", p.name):
                    p.unlink()


def cut_log_block(block: bytes, data_len: int) -> bytes:
    """``block`` (a valid 512-byte redo block) ending after ``data_len`` bytes: ``data_len`` set (keeping the
    encryption bit), ``first_rec_group`` cleared if no record group starts before the end, the checksum redone (or
    the no-checksum magic kept). The bytes after the end stay as they were: recovery does not read them."""
    hdr_no, old_len, first_rec_group, epoch = _BLOCK_HDR.unpack_from(block)
    if first_rec_group >= data_len:
        first_rec_group = 0
    head = _BLOCK_HDR.pack(hdr_no, data_len | (old_len & lf.LOG_BLOCK_ENCRYPT_BIT_MASK), first_rec_group, epoch)
    body = head + block[lf.LOG_BLOCK_HDR_SIZE:lf.LOG_BLOCK_CHECKSUM]
    stored = int.from_bytes(block[lf.LOG_BLOCK_CHECKSUM:], "big")
    checksum = stored if stored == lf.LOG_NO_CHECKSUM_MAGIC else lf.crc32c(body)
    return body + checksum.to_bytes(lf.LOG_BLOCK_TRL_SIZE, "big")


_BLOCK_HDR = struct.Struct(">IHHI")


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
