"""MariaDB 10.8+ / 10.11 / 11.x: what innostream does differently for it (what mariadb-backup does).

Backup: ``BACKUP STAGE START`` + ``BACKUP STAGE BLOCK_DDL`` for the whole copy, so DDL waits and every file we copy
keeps its name and identity; ``BACKUP STAGE BLOCK_COMMIT`` briefly at the end for the non-InnoDB files, the binlog
position and the final LSN; ``BACKUP STAGE END``. The redo copy is ``ib_logfile0`` in mariadb-backup's layout: a
12288-byte prefix (creator ``Backup x.y.z``, checkpoint at 12288 = the checkpoint LSN) and the mini-transactions
after it, never wrapping.

Prepare: that ``ib_logfile0`` already is a log the server recovers from; it is only checked before the server runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pymysql
from innostream.connection import BackupLocks, LogStatus, PrivilegeProbe, ServerFacts, Session
from innostream.datadir import read_remote_files
from innostream.errors import InnostreamError, PrepareError, SourceError
from innostream.families.common import REDO_CHUNK, common_my_cnf
from innostream.fileio import pwrite_all
from innostream.flavor import Flavor
from innostream.formats import mtr0log as mtr
from innostream.formats import xtrabackup_meta as meta
from innostream.formats.errors import FormatError
from innostream.log import log
from innostream.redo_copier import MariaDBRedoCopier, RedoCopier, Writer
from innostream.selection import is_partial_backup_dir

#: The server's redo log and, in a backup, its copy.
REDO_FILE = MariaDBRedoCopier.copy_file_name
#: MariaDB redo log size for the prepare run. The server resizes the log to its own innodb_log_file_size at the
#: next start ("Resizing redo log from ... to ..."), so the backup need not carry the source's (maybe many GB)
#: fully allocated log; mariadb-backup leaves a 12304-byte one.
MARIADB_PREPARE_LOG_SIZE = "16M"
#: innodb_force_recovery for a redo-only recovery (see MariaDB.redo_only_options).
MARIADB_REDO_ONLY_LEVEL = 4
#: MariaDB refuses to start without its binlog when the backup holds transactions prepared for the binlog's
#: two-phase commit (MDEV-36025): "Found N prepared transactions! ... --tc-heuristic-recover".
_NEEDS_HEURISTIC = re.compile(r"Found \d+ prepared transactions!")


def encryption_plugin_options(my_cnf: Mapping[str, str]) -> list[str]:
    """Server options that load the key management plugin backup-my.cnf names (what ``mariadb-backup --prepare``
    does with the lines :meth:`MariaDB.encryption_plugin_config` wrote): ``plugin_load``, ``plugin_dir``, every
    ``<plugin>_*`` option and ``innodb_encrypt_log``. Without them the server cannot read encrypted pages or redo
    ("Encrypted page ... looks corrupted"). Empty when the backup names no plugin."""
    load = my_cnf.get("plugin_load", "")
    if not load:
        return []
    name = load.split("=", 1)[0].strip()
    argv = [f"--plugin-load-add={load}"]
    if my_cnf.get("plugin_dir"):
        argv.append(f"--plugin-dir={_unquote(my_cnf['plugin_dir'])}")
    argv += [f"--{key.replace('_', '-')}={_unquote(value)}" for key, value in my_cnf.items()
             if name and key.startswith(name + "_")]
    if my_cnf.get("innodb_encrypt_log"):
        argv.append(f"--innodb-encrypt-log={my_cnf['innodb_encrypt_log']}")
    return argv


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


class MariaDBBackupLocks(BackupLocks):
    """``BACKUP STAGE START`` + ``BLOCK_DDL`` for the copy, ``BLOCK_COMMIT`` at the end, ``END``."""

    started = False

    def _begin(self) -> None:
        self.session.execute("BACKUP STAGE START")
        log.info("Executed BACKUP STAGE START")
        self.ddl_locked = self.started = True

    def _lock_ddl(self) -> None:
        if not self.started:
            self._begin()
        self.session.execute("BACKUP STAGE BLOCK_DDL")
        log.info("Acquired BACKUP STAGE BLOCK_DDL: DDL waits until the backup ends")

    def _block_commits(self, need_read_lock: bool) -> None:
        """``BACKUP STAGE BLOCK_COMMIT``, made for exactly this: it covers non-InnoDB tables too."""
        self.session.execute("BACKUP STAGE BLOCK_COMMIT")
        self.commits_blocked = True
        log.info("Acquired BACKUP STAGE BLOCK_COMMIT")

    def _unlock_ddl(self) -> None:
        self.session.execute("BACKUP STAGE END")
        log.info("Executed BACKUP STAGE END")


#: Records whose payload is one file name: recovery opens (FILE_MODIFY) or may create (FILE_CREATE) that file.
_NAMED_FILE_RECORDS = (mtr.MfileType.FILE_MODIFY, mtr.MfileType.FILE_CREATE)


def _redo_renames(target: Path) -> dict[bytes, bytes]:
    """Names of the tablespaces that lived outside the datadir as the server's redo names them (absolute paths,
    FILE_MODIFY records) -> the backup's copy of each, as a name of the same length relative to the datadir
    (``./`` padded with ``/``): recovery opens the file a FILE_MODIFY record names, and it must apply the redo to
    the backup's copy, never to the original (on the backup host it may be a live server's file)."""
    try:
        files = read_remote_files(target)
    except InnostreamError as exc:
        raise PrepareError(str(exc)) from None
    out = {}
    for rf in files:
        old = rf.path.encode("utf-8", "surrogateescape")
        member = rf.name.encode("utf-8", "surrogateescape")
        pad = len(old) - len(member) - 2
        if pad < 0:
            raise PrepareError(f"cannot point the redo log at the backup's copy of {rf.path}: the path is too short",
                               file=str(target))
        out[old] = b"./" + b"/" * pad + member
    return out


def _rename_files_in_redo(path: Path, start: int, end: int, renames: Mapping[bytes, bytes]) -> int:
    """Rewrite, in the redo file's valid mtrs ``[start, end)`` (file offsets; a backup copy never wraps), the file
    names of FILE_MODIFY and FILE_CREATE records per ``renames`` (same lengths, so no LSN moves) and each changed
    mtr's CRC-32C. Returns the records rewritten."""
    changed = 0
    with open(path, "r+b") as fh:
        pos = start
        while pos < end:
            buf = os.pread(fh.fileno(), min(REDO_CHUNK, end - pos), pos)
            res = mtr.scan_mtrs(buf, 0, 0, 1 << 62)  # framing only: the walk above checked sequence bits
            if not res.terminators:
                break
            if any(old in buf for old in renames):
                begin = 0
                for term in res.terminators:
                    body = bytearray(buf[begin:term])
                    if any(old in body for old in renames):
                        hits = 0
                        for rec in mtr.parse_records(body):
                            new = renames.get(rec.payload)
                            if rec.type in _NAMED_FILE_RECORDS and new is not None:
                                body[rec.end - len(rec.payload):rec.end] = new
                                hits += 1
                        if hits:  # body, the terminator byte (unchanged), the CRC-32C of the body
                            pwrite_all(fh.fileno(), body, pos + begin)
                            pwrite_all(fh.fileno(), mtr.crc32c(body).to_bytes(4, "big"), pos + term + 1)
                            changed += hits
                    begin = term + 5
            pos += res.end
        os.fsync(fh.fileno())
    return changed


class MariaDB:
    """The MariaDB family; see the module docstring."""

    flavor: Flavor = Flavor.MARIADB
    min_version: tuple[int, int, int] = (10, 8, 0)
    redo_copy_name: str = REDO_FILE
    server_binaries: tuple[str, ...] = ("mariadbd", "mysqld")
    read_lock_blocks_commits: bool = False  # BACKUP STAGE BLOCK_COMMIT stops commits
    # Each link's redo in turn, as mariadb-backup does (its incrementals start at the base's to_lsn).
    chain_by_overlay: bool = False

    # --- backup ---------------------------------------------------------------------------------------------------

    def check_server(self, session: Session, facts: ServerFacts) -> None:
        """Refuse an encrypted redo log (``innodb_encrypt_log=ON``) before anything is locked or copied: the log
        copier does not follow its format (format word 0xF09F979D) yet."""
        if facts.var("innodb_encrypt_log", "OFF").upper() in ("ON", "1"):
            raise SourceError("the server encrypts its redo log (innodb_encrypt_log=ON), which innostream cannot "
                              "copy yet; nothing was copied",
                              hint="use mariadb-backup for this server, or restart it with innodb_encrypt_log=OFF")

    def privilege_probes(self, *, binlog: bool) -> list[PrivilegeProbe]:
        """RELOAD: BACKUP STAGE and FLUSH ENGINE LOGS; PROCESS: the tablespace list; with the binlog on, BINLOG
        MONITOR (or SUPER): SHOW MASTER STATUS at the end."""
        probes = [
            PrivilegeProbe("RELOAD", "FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS", "BACKUP STAGE and FLUSH ENGINE LOGS"),
            PrivilegeProbe("PROCESS", "SELECT COUNT(*) FROM information_schema.INNODB_SYS_TABLESPACES WHERE 0",
                           "the list of tablespaces"),
        ]
        if binlog:
            probes.append(PrivilegeProbe("BINLOG MONITOR", "SHOW MASTER STATUS", "the binlog position"))
        return probes

    def backup_locks(self, session: Session, *, enabled: bool = True) -> BackupLocks:
        return MariaDBBackupLocks(session, enabled=enabled)

    def current_lsn(self, session: Session) -> int:
        return int(session.query("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")[0][1])

    def read_log_status(self, session: Session, *, binlog: bool) -> LogStatus:
        """Call this under ``BACKUP STAGE BLOCK_COMMIT`` so the binlog position and the LSN belong together."""
        status = dict(session.query("SHOW GLOBAL STATUS WHERE Variable_name IN "
                                    "('Innodb_lsn_current', 'Innodb_lsn_flushed', 'Innodb_lsn_last_checkpoint')"))
        binlog_file, binlog_pos, gtid = "", 0, ""
        if binlog:
            rows = session.query("SHOW MASTER STATUS")
            if rows:
                binlog_file, binlog_pos = str(rows[0][0]), int(rows[0][1])
                gtid = str(session.value("SELECT @@GLOBAL.gtid_binlog_pos") or "")
        return LogStatus(
            lsn=int(status["Innodb_lsn_current"]),
            checkpoint_lsn=int(status["Innodb_lsn_last_checkpoint"]),
            flushed_lsn=int(status.get("Innodb_lsn_flushed", 0)),
            binlog_file=binlog_file,
            binlog_pos=binlog_pos,
            gtid=gtid,
        )

    def cut_redo_copy(self, copier: RedoCopier, lsn: int) -> tuple[int, bytes] | None:
        """None: BACKUP STAGE BLOCK_COMMIT stops commits while the end LSN and binlog position are read, so redo
        past that LSN holds no commit."""
        return None

    def supports_redo_consumer(self, facts: ServerFacts) -> bool:
        """Never: MariaDB's log has no such interface."""
        return False

    def open_redo_copier(self, log_dir: Path, write: Writer, *, poll_interval: float = 0.1,
                         advance: Callable[[int], None] | None = None) -> RedoCopier:
        """``log_dir`` holds ``ib_logfile0``."""
        return MariaDBRedoCopier(Path(log_dir), write, poll_interval=poll_interval, advance=advance)

    def encryption_plugin_config(self, session: Session) -> list[str]:
        """The ``backup-my.cnf`` lines that let prepare load the server's key management plugin.

        Like mariadb-backup (encryption_plugin.cc): ``plugin_load=name=library`` (suffix dropped), ``plugin_dir``,
        every ``<name>_*`` variable, and ``innodb_encrypt_log``. Empty when no encryption plugin is active.
        """
        rows = session.query("SELECT PLUGIN_NAME, PLUGIN_LIBRARY, @@plugin_dir FROM information_schema.PLUGINS "
                             "WHERE PLUGIN_TYPE = 'ENCRYPTION' AND PLUGIN_STATUS = 'ACTIVE'")
        if not rows:
            return []
        name, library, plugin_dir = (str(v) if v is not None else "" for v in rows[0])
        load = name
        if library:
            load += "=" + re.sub(r"\.(so|dll)$", "", library)
        lines = [f"plugin_load={load}", f'plugin_dir="{plugin_dir}"']
        like = name.replace("_", "\\_") + "\\_%"
        lines += [f"{k}={v}" for k, v in session.query("SHOW GLOBAL VARIABLES LIKE %s", (like,))]
        encrypt_log = session.value("SELECT @@innodb_encrypt_log")
        lines.append(f"innodb_encrypt_log={encrypt_log}")
        return lines

    def backup_my_cnf(self, facts: ServerFacts, undo_files: int = 0, plugin_config: Sequence[str] = ()) -> bytes:
        v = facts.var
        options = dict(common_my_cnf(facts, log_file_size=v("innodb_log_file_size"), undo_files=undo_files),
                       innodb_compression_level=v("innodb_compression_level", "6"))
        if v("innodb_buffer_pool_filename"):
            options["innodb_buffer_pool_filename"] = v("innodb_buffer_pool_filename")
        return meta.build_backup_my_cnf(options, self.flavor, plugin_config=plugin_config)

    # --- prepare --------------------------------------------------------------------------------------------------

    def holds_redo_copy(self, backup: Path) -> bool:
        return (backup / REDO_FILE).is_file()

    def check_backup_type(self, backup_type: str) -> None:
        """Nothing to refuse: a 'log-applied' backup (``--apply-log-only``) is finished by the server's recovery."""

    def prepare_server_options(self, target: Path, run: Path, my_cnf: Mapping[str, str]) -> list[str]:
        argv = ["--skip-slave-start", "--skip-log-bin", f"--innodb-undo-directory={target}",
                f"--innodb-log-file-size={MARIADB_PREPARE_LOG_SIZE}"]
        for key in ("innodb_checksum_algorithm", "innodb_undo_tablespaces"):
            if my_cnf.get(key):
                argv.append(f"--{key.replace('_', '-')}={my_cnf[key]}")
        if is_partial_backup_dir(target):
            # A partial backup's redo may name tablespaces it left out; the server refuses to recover without
            # them unless innodb_force_recovery >= 1 (then it skips their redo). recovery/partial.py drops them.
            argv.append("--innodb-force-recovery=1")
        return argv + encryption_plugin_options(my_cnf)

    def stage_redo(self, target: Path, my_cnf: Mapping[str, str], server_version: str) -> int:
        """Walk the mini-transactions of the backup's ``ib_logfile0`` from its checkpoint as recovery will (length
        walk + CRC-32C per mtr), in bounded chunks, and return the LSN after the last valid one: the server will
        recover exactly that far, so a damaged copy is refused before the server touches the backup. Returns 0 (no
        check) for a log the server wrote itself (an interrupted prepare) or an encrypted one."""
        path = target / REDO_FILE
        if not path.is_file():
            raise PrepareError(f"{path} is missing", hint="the backup is incomplete")
        file_size = path.stat().st_size
        with open(path, "rb") as fh:
            try:
                header, cp = mtr.find_checkpoint(fh.read(mtr.START_OFFSET))
            except FormatError as exc:
                raise PrepareError(f"the redo log copy is unusable: {exc}", file=str(path)) from None
            if not header.creator.startswith(mtr.BACKUP_CREATOR_PREFIX):
                log.info("prepare: %s was written by %r, not a backup tool: an earlier prepare ran; recovering from "
                         "it", REDO_FILE, header.creator)
                return 0
            if header.encrypted:
                log.warning("prepare: %s is encrypted; its mini-transactions are not checked before recovery",
                            REDO_FILE)
                return 0
            fh.seek(mtr.lsn_to_offset(cp.checkpoint_lsn, header.first_lsn, file_size))
            lsn = cp.checkpoint_lsn
            pending = b""
            stop = "end of file"
            # A backup copy never wraps (its sequence bytes are all 1), so one linear pass from the checkpoint.
            while chunk := fh.read(REDO_CHUNK):
                buf = pending + chunk
                res = mtr.scan_mtrs(buf, lsn, header.first_lsn, file_size)
                lsn += res.end
                pending = buf[res.end:]
                if res.status == mtr.MTR_INVALID:
                    seq = mtr.sequence_bit(lsn, header.first_lsn, file_size)
                    stop = mtr.describe_stop(pending, 0, seq)
                    break
        log.info("prepare: %s: mini-transactions valid from LSN %d to %d (%s)", REDO_FILE, cp.checkpoint_lsn,
                 lsn, stop)
        renames = _redo_renames(target)
        if renames:
            start = mtr.lsn_to_offset(cp.checkpoint_lsn, header.first_lsn, file_size)
            n = _rename_files_in_redo(path, start, start + lsn - cp.checkpoint_lsn, renames)
            log.info("prepare: %d redo records now name the backup's copies of the tablespaces that lived outside "
                     "the datadir", n)
        return lsn

    def recovered_lsn(self, lines: Sequence[str]) -> int | None:
        """``End of log at LSN`` is exact when there was redo to apply; otherwise the LSN the server started at
        (``Read redo log up to`` comes before ``End of log``)."""
        ends = [int(m.group(1)) for line in lines if (m := re.search(r"End of log at LSN=(\d+)", line))]
        found = ends or [int(m.group(1)) for line in lines
                         if (m := re.search(r"InnoDB: log sequence number (\d+); transaction id", line))]
        return max(found) if found else None

    def dictionary_tablespaces(self, conn: pymysql.connections.Connection, target: Path) -> list[str]:
        with conn.cursor() as cur:
            # INNODB_SYS_TABLESPACES only lists tablespaces that could be opened; SYS_TABLES is the dictionary.
            cur.execute("SELECT NAME FROM information_schema.INNODB_SYS_TABLES WHERE SPACE > 0 AND "
                        "SPACE_TYPE = 'Single'")
            names = [r[0] for r in cur.fetchall()]
        return [f"./{n}.ibd" for n in names if not (target / f"{n}.isl").exists()]

    def needs_heuristic_rollback(self, lines: Sequence[str]) -> bool:
        return any(_NEEDS_HEURISTIC.search(line) for line in lines)

    def redo_only_options(self) -> list[str]:
        """``innodb_force_recovery`` at SRV_FORCE_NO_IBUF_MERGE (4): redo is applied and flushed, but no rollback of
        incomplete transactions (>= 3), no purge or other background work (>= 2), no change buffer merge and no
        statistics (>= 4); the page-LSN proof in recovery/chain.py checks it wrote nothing else."""
        return [f"--innodb-force-recovery={MARIADB_REDO_ONLY_LEVEL}"]

    def log_checkpoint_lsn(self, target: Path) -> int | None:
        try:
            with open(target / REDO_FILE, "rb") as fh:
                return mtr.find_checkpoint(fh.read(mtr.START_OFFSET))[1].checkpoint_lsn
        except (OSError, FormatError):
            return None

    def unstage_redo(self, target: Path) -> None:
        """Nothing: the incremental's ``ib_logfile0`` replaces the server's."""
