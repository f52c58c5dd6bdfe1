"""``innostream prepare``: make a backup directory a data directory the server starts on, consistent at last_lsn.

We do not re-implement redo apply: the flavour's own server binary runs crash recovery on the backup directory
(networking off, private socket, no binlog, no replica or event threads, grant tables skipped), we check it
recovered up to ``last_lsn``, shut it down cleanly and record ``backup_type = full-prepared``.

* MariaDB 10.8+ (mariadb-backup layout): the backup's ``ib_logfile0`` already is a log the server recovers from
  (header + checkpoint at 12288 = checkpoint LSN, mini-transactions after it; creator ``Backup x.y.z``).
* MySQL 8.0.30+ (Percona XtraBackup layout): ``xtrabackup_logfile`` holds the 2048-byte header of the server redo
  file plus 512-byte blocks from ``align_down(checkpoint, 512)``. Like PXB's ``xtrabackup_init_temp_log`` we make
  ``#innodb_redo/#ib_redo0`` of it: start LSN = that block, both checkpoint blocks = the checkpoint, CRC-32C
  recomputed, FILE_FULL cleared, zero-padded to a size the server accepts.

A rerun after an interruption is safe: the redo the server finds is always the newest (our file, or the log the
server itself rewrote), and applying redo is idempotent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
from innostream.errors import InnostreamError, Interrupted, PrepareError
from innostream.formats import log0files_io as lf
from innostream.formats import mtr0log as mtr
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
from innostream.formats.xtrabackup_meta import (
    BACKUP_MY_CNF,
    BACKUP_TYPE_FULL,
    BACKUP_TYPE_FULL_PREPARED,
    BACKUP_TYPE_INCREMENTAL,
    BACKUP_TYPE_LOG_APPLIED,
    MB_CHECKPOINTS,
    MB_INFO,
    XTRABACKUP_CHECKPOINTS,
    XTRABACKUP_INFO,
    Checkpoints,
    build_checkpoints,
    parse_backup_my_cnf,
    parse_checkpoints,
    parse_info,
)
from innostream.log import log

# --- MariaDB 10.8+ ib_logfile0 (formats/mtr0log.py; innodb-formats.md §5, §6.1) ---------------------------------
MARIADB_LOGFILE = "ib_logfile0"


# --- configuration and result -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareConfig:
    """Options of ``innostream prepare``."""

    target_dir: Path
    server_binary: Path | None = None
    use_memory: str = "128M"
    timeout: float = 3600.0
    server_options: tuple[str, ...] = ()


@dataclass
class PrepareResult:
    """What prepare did: for tests, the CLI summary and the benchmark."""

    flavor: str
    already_prepared: bool = False
    last_lsn: int = 0
    recovered_lsn: int | None = None
    server_version: str = ""
    seconds: float = 0.0
    log_lines: list[str] = field(default_factory=list)


@dataclass
class BackupDir:
    """The facts prepare and restore need from a backup directory's metadata files."""

    path: Path
    checkpoints_file: Path
    checkpoints: Checkpoints
    flavor: str
    info: dict[str, str]
    my_cnf: dict[str, str]


def read_backup_dir(target: Path) -> BackupDir:
    """Read and check a backup directory's metadata. Raises PrepareError if it is not a complete backup."""
    if not target.is_dir():
        raise PrepareError(f"backup directory {target} does not exist")
    cp_file = next((target / n for n in (XTRABACKUP_CHECKPOINTS, MB_CHECKPOINTS) if (target / n).is_file()), None)
    if cp_file is None:
        raise PrepareError(f"{target} has no {XTRABACKUP_CHECKPOINTS}: not a backup, or the backup did not finish",
                           hint="the metadata files are written last, when a backup completes")
    try:
        cp = parse_checkpoints(cp_file.read_bytes(), file=str(cp_file))
    except FormatError as exc:
        raise PrepareError(f"cannot read backup metadata: {exc}") from None
    info_file = next((target / n for n in (XTRABACKUP_INFO, MB_INFO) if (target / n).is_file()), None)
    info = parse_info(info_file.read_bytes(), file=str(info_file)) if info_file else {}
    cnf = target / BACKUP_MY_CNF
    my_cnf = parse_backup_my_cnf(cnf.read_bytes(), file=str(cnf)) if cnf.is_file() else {}
    if (target / XTRABACKUP_LOGFILE).is_file() or (target / MYSQL_REDO_DIR).is_dir():
        flavor = "mysql"
    elif (target / MARIADB_LOGFILE).is_file():
        flavor = "mariadb"
    elif "mariadb" in info.get("server_version", "").lower():
        flavor = "mariadb"
    else:
        raise PrepareError(f"{target} holds no redo log copy ({XTRABACKUP_LOGFILE} or {MARIADB_LOGFILE})",
                           hint="the backup is incomplete")
    return BackupDir(target, cp_file, cp, flavor, info, my_cnf)


# --- the server binary --------------------------------------------------------------------------------------------

_VERSION_RE = re.compile(r"\bVer\s+(\d+)\.(\d+)\.(\d+)(\S*)")


def server_binary_version(binary: Path) -> tuple[str, tuple[int, int, int], str]:
    """Run ``binary --version``: return (flavor, (major, minor, patch), the whole line)."""
    try:
        res = subprocess.run([str(binary), "--no-defaults", "--version"], capture_output=True, text=True,
                             timeout=60, check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise PrepareError(f"cannot run server binary {binary}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise PrepareError(f"server binary {binary} --version did not answer in 60 s") from None
    text = (res.stdout + res.stderr).strip()
    m = _VERSION_RE.search(text)
    if res.returncode != 0 or m is None:
        raise PrepareError(f"{binary} does not look like a MySQL/MariaDB server: {text[:200]!r}")
    flavor = "mariadb" if "mariadb" in text.lower() else "mysql"
    return flavor, (int(m.group(1)), int(m.group(2)), int(m.group(3))), text.splitlines()[0]


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
        names = ("mariadbd", "mysqld") if bd.flavor == "mariadb" else ("mysqld",)
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


# --- running the server -------------------------------------------------------------------------------------------

#: Error-log lines worth showing in the condensed output (the rest only with --verbose).
_INTERESTING = re.compile(
    r"\[ERROR\]|crash recovery|End of log|To recover|Starting to parse|scanned up to|Apply batch|"
    r"Recovered|Rolled back|rollback|log sequence number|ready for connections|Shutdown complete|Resizing redo|"
    r"Applying log|Database was not shutdown normally|Starting crash|progress|Last binlog|batch|Read redo log|"
    r"Trying to recover|\d%",
    re.IGNORECASE,
)
_BORING = re.compile(r"max_open_files|Could not increase|Using .* instructions|io_uring|CA certificate|"
                     r"Insecure configuration|deprecated", re.IGNORECASE)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\s?\d?\d:\d\d:\d\d(?:\.\d+)?Z?\s+\d+\s+")


class ErrorLogFollower:
    """Follow the server's error log from a thread and pass condensed lines to the logger."""

    def __init__(self, path: Path, sink: Callable[[str], None]) -> None:
        self.path = path
        self.sink = sink
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="errlog-follower", daemon=True)

    def __enter__(self) -> ErrorLogFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Read what is left of the log and stop following (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        pos = 0
        partial = ""
        while True:
            stopping = self._stop.is_set()
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                pos += len(chunk)
                text = partial + chunk.decode(errors="replace")
                *full, partial = text.split("\n")
                for line in full:
                    self._line(line)
            if stopping:
                if partial:
                    self._line(partial)
                return
            self._stop.wait(0.2)

    def _line(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.lines.append(line)
        short = _TIMESTAMP.sub("", line)
        if _INTERESTING.search(short) and not _BORING.search(short):
            self.sink(short)
        else:
            log.debug("server: %s", short)


#: MariaDB redo log size for the prepare run. The server resizes the log to its own innodb_log_file_size at the
#: next start ("Resizing redo log from ... to ..."), so the backup need not carry the source's (maybe many GB)
#: fully allocated log; mariadb-backup leaves a 12304-byte one.
MARIADB_PREPARE_LOG_SIZE = "16M"


def local_data_file_path(value: str) -> str:
    """``innodb_data_file_path`` with directories stripped (``/data/ibdata1:12M:autoextend`` ->
    ``ibdata1:12M:autoextend``): in a backup the system tablespace files are at the top (mariabackup's
    ``make_local_paths``)."""
    parts = []
    for spec in value.split(";"):
        name, sep, rest = spec.partition(":")
        parts.append(name.replace("\\", "/").rsplit("/", 1)[-1] + sep + rest)
    return ";".join(parts)


def _server_argv(binary: Path, bd: BackupDir, run: Path, config: PrepareConfig) -> list[str]:
    target = bd.path
    argv = [
        str(binary), "--no-defaults", f"--datadir={target}", f"--socket={run / 'mysqld.sock'}",
        "--skip-networking", f"--pid-file={run / 'mysqld.pid'}", f"--log-error={run / 'prepare.err'}",
        f"--innodb-buffer-pool-size={config.use_memory}", "--skip-grant-tables", "--event-scheduler=DISABLED",
        "--innodb-buffer-pool-dump-at-shutdown=OFF", "--innodb-buffer-pool-load-at-startup=OFF",
        "--performance-schema=OFF", f"--tmpdir={run}",
    ]
    if os.geteuid() == 0:
        argv.append("--user=root")
    cnf = bd.my_cnf
    if cnf.get("innodb_page_size"):
        argv.append(f"--innodb-page-size={cnf['innodb_page_size']}")
    if cnf.get("innodb_data_file_path"):
        argv.append(f"--innodb-data-file-path={local_data_file_path(cnf['innodb_data_file_path'])}")
    if bd.flavor == "mysql":
        argv += [f"--secure-file-priv={run}", "--skip-log-bin", "--skip-replica-start", "--log-error-verbosity=3",
                 "--mysqlx=OFF",
                 "--innodb-redo-log-capacity=8M", "--loose-auto-generate-certs=OFF",
                 "--loose-sha256-password-auto-generate-rsa-keys=OFF",
                 "--loose-caching-sha2-password-auto-generate-rsa-keys=OFF"]
    else:
        argv += ["--skip-slave-start", "--skip-log-bin", f"--innodb-undo-directory={target}",
                 f"--innodb-log-file-size={MARIADB_PREPARE_LOG_SIZE}"]
        for key in ("innodb_checksum_algorithm", "innodb_undo_tablespaces"):
            if cnf.get(key):
                argv.append(f"--{key.replace('_', '-')}={cnf[key]}")
    return argv + list(config.server_options)


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def recovered_lsn_from_log(flavor: str, lines: list[str]) -> int | None:
    """The LSN crash recovery reached, from the server's own messages (the highest one: MySQL prints
    ``scanned up to`` as progress every few MB, MariaDB ``Read redo log up to`` before ``End of log``)."""
    pattern = (r"End of log at LSN=(\d+)|InnoDB: log sequence number (\d+); transaction id" if flavor == "mariadb"
               else r"Doing recovery: scanned up to log sequence number (\d+)")
    found = [int(next(g for g in m.groups() if g)) for line in lines if (m := re.search(pattern, line))]
    if flavor == "mariadb":
        # "End of log" is exact when there was redo to apply; otherwise the LSN the server started at.
        ends = [int(m.group(1)) for line in lines if (m := re.search(r"End of log at LSN=(\d+)", line))]
        found = ends or found
    return max(found) if found else None


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


def _missing_tablespaces(conn: pymysql.connections.Connection, flavor: str, target: Path) -> list[str]:
    """Tablespace files the data dictionary knows but the backup lacks (a file lost between backup and prepare)."""
    with conn.cursor() as cur:
        if flavor == "mariadb":
            # INNODB_SYS_TABLESPACES only lists tablespaces that could be opened; SYS_TABLES is the dictionary.
            cur.execute("SELECT NAME FROM information_schema.INNODB_SYS_TABLES WHERE SPACE > 0 AND "
                        "SPACE_TYPE = 'Single'")
            names = [r[0] for r in cur.fetchall()]
            paths = [f"./{n}.ibd" for n in names if not (target / f"{n}.isl").exists()]
        else:
            cur.execute("SELECT PATH FROM information_schema.INNODB_DATAFILES")
            paths = [r[0] for r in cur.fetchall()]
    missing = []
    for p in paths:
        path = Path(p)
        if not path.is_absolute():
            path = target / p
        if "#innodb_temp" in p or path.name.startswith("ibtmp"):
            continue
        if not path.exists():
            missing.append(p)
    return missing


def apply_ddl_side_files(target: Path) -> int:
    """Apply the DDL side files a backup tool leaves for DDL that ran during the copy (``.del``, ``.ren``, then
    ``.new``, the order the tools use): ``t.new`` is a complete copy of a table created or rebuilt meanwhile and
    replaces ``t.ibd``; ``t.del`` drops ``t.ibd``. ``.ren`` files are refused: their meaning differs between
    tools and a wrong guess would silently lose a table. Returns the number of files handled."""
    found = sorted(p for p in target.rglob("*") if p.suffix in (".del", ".ren", ".new") and p.is_file())
    done = 0
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


@contextlib.contextmanager
def _run_dir() -> Iterator[Path]:
    """A short private directory under /tmp for socket, pid and error log (chroot wrappers share /tmp).

    Removed afterwards, except when the server failed: then its log stays for the user (the error names it)."""
    run = Path(tempfile.mkdtemp(prefix="innostream-prepare-", dir="/tmp"))
    keep = False
    try:
        yield run
    except PrepareError:
        keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(run, ignore_errors=True)


class _ServerExited(PrepareError):
    """The server stopped before it accepted connections (``lines``: its error log)."""

    def __init__(self, message: str, lines: list[str], **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.lines = lines


#: MariaDB refuses to start without its binlog when the backup holds transactions prepared for the binlog's
#: two-phase commit (MDEV-36025): "Found N prepared transactions! ... --tc-heuristic-recover".
_NEEDS_HEURISTIC = re.compile(r"Found \d+ prepared transactions!")


def _start_and_recover(binary: Path, bd: BackupDir, config: PrepareConfig, result: PrepareResult) -> None:
    before = {p.name for p in bd.path.iterdir()}
    lines: list[str] = []
    try:
        missing, live_lsn = _run_server(binary, bd, config, lines)
    except _ServerExited as exc:
        if bd.flavor != "mariadb" or not any(_NEEDS_HEURISTIC.search(line) for line in exc.lines):
            raise
        # Those transactions never reached the binlog position the backup records: roll them back. One start
        # with --tc-heuristic-recover=ROLLBACK does that and exits; XA transactions prepared by clients
        # ("foreign" XIDs) stay prepared. Then start normally.
        log.info("prepare: the backup holds binlog-prepared transactions; rolling them back "
                 "(--tc-heuristic-recover=ROLLBACK) and starting again")
        try:
            _run_server(binary, bd, config, lines, ("--tc-heuristic-recover=ROLLBACK",))
        except _ServerExited as again:
            if not any("Please restart without --tc-heuristic-recover" in line for line in again.lines):
                raise
        missing, live_lsn = _run_server(binary, bd, config, lines)
    result.log_lines = lines
    result.recovered_lsn = recovered_lsn_from_log(bd.flavor, lines)
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


def _run_server(binary: Path, bd: BackupDir, config: PrepareConfig, lines: list[str],
                extra: tuple[str, ...] = ()) -> tuple[list[str], int | None]:
    """Start the server on the backup, wait until it accepts connections, look at it, shut it down cleanly.
    Its error-log lines are appended to ``lines``. Returns (missing tablespace files, InnoDB's LSN)."""
    with _run_dir() as run:
        argv = _server_argv(binary, bd, run, config) + list(extra)
        log.debug("prepare: %s", " ".join(argv))
        err = run / "prepare.err"
        with ErrorLogFollower(err, lambda s: log.info("server: %s", s)) as follower:
            with open(run / "server.out", "wb") as out:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            try:
                conn = _wait_ready(proc, run / "mysqld.sock", config.timeout, err)
                try:
                    _rollback_binlog_prepared(run / "mysqld.sock")
                    missing = _missing_tablespaces(conn, bd.flavor, bd.path)
                    live_lsn = _innodb_lsn(conn)
                finally:
                    conn.close()
                _shutdown(proc, config.timeout, err)
            except BaseException:
                if _alive(proc):
                    proc.kill()
                    proc.wait()
                raise
            finally:
                follower.stop()
                lines.extend(follower.lines)
        if proc.returncode != 0:
            raise PrepareError(f"the server exited with code {proc.returncode} at shutdown", file=str(err),
                               hint=_last_errors(follower.lines))
        return missing, live_lsn


#: Follow-up errors that say nothing about the cause.
_GENERIC_ERRORS = re.compile(r"Aborting|registration as a STORAGE ENGINE failed|Unknown/unsupported storage engine|"
                             r"Operating system error number|Error number \d+ means|Failed to initialize DD|"
                             r"Data Dictionary initialization failed|Plugin initialization aborted")


def _last_errors(lines: list[str]) -> str:
    """The server's own words for why it failed: its first specific [ERROR] lines."""
    errors = [_TIMESTAMP.sub("", line) for line in lines if "[ERROR]" in line]
    specific = [e for e in errors if not _GENERIC_ERRORS.search(e)] or errors
    return ("server said: " + " | ".join(specific[:2])) if specific else "see the server error log"


#: Seconds between our own "still recovering" lines, for recoveries that print nothing for a while.
PROGRESS_EVERY = 30.0


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path, timeout: float, err: Path) -> pymysql.Connection:
    started = time.monotonic()
    deadline = started + timeout
    next_report = started + PROGRESS_EVERY
    while True:
        now = time.monotonic()
        if now >= next_report:
            next_report = now + PROGRESS_EVERY
            log.info("prepare: crash recovery running for %.0f s", now - started)
        if not _alive(proc):
            lines = err.read_text(errors="replace").splitlines() if err.exists() else []
            raise _ServerExited(f"crash recovery failed: the server exited with code {proc.returncode}", lines,
                                hint=_last_errors(lines) + f" (full log kept in {err})")
        if sock.exists():
            try:
                return pymysql.connect(unix_socket=str(sock), user="root", autocommit=True, connect_timeout=10)
            except pymysql.MySQLError:
                pass
        if time.monotonic() > deadline:
            raise PrepareError(f"the server did not finish crash recovery within {timeout:.0f} s",
                               hint=f"see {err}; raise --timeout for large backups")
        time.sleep(0.2)


def _shutdown(proc: subprocess.Popen[bytes], timeout: float, err: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise PrepareError(f"the server did not shut down within {timeout:.0f} s", hint=f"see {err}") from None


# --- the steps ----------------------------------------------------------------------------------------------------


#: Bytes read at a time when validating and copying a redo copy (a multiple of 512): bounded memory for any size.
REDO_CHUNK = 8 * 1024 * 1024


def _stage_mysql_redo(bd: BackupDir, server_version: str) -> int:
    """Create ``#innodb_redo/#ib_redo0`` from ``xtrabackup_logfile`` unless a redo dir with files exists already
    (an interrupted prepare: the server's own newer log wins). Returns the end LSN of the copied redo (or 0).

    The copy is validated block by block while it is written, in bounded chunks."""
    redo_dir = bd.path / MYSQL_REDO_DIR
    if redo_dir.is_dir() and any(re.fullmatch(r"#ib_redo\d+", p.name) for p in redo_dir.iterdir()):
        log.info("prepare: %s exists from an earlier, interrupted prepare; recovering from it", MYSQL_REDO_DIR)
        return 0
    logfile = bd.path / XTRABACKUP_LOGFILE
    if not logfile.is_file():
        raise PrepareError(f"{logfile} is missing", hint="the backup is incomplete")
    m = re.match(r"(\d+\.\d+\.\d+)", server_version)
    page_size = int(bd.my_cnf.get("innodb_page_size", 16384))
    redo_dir.mkdir(exist_ok=True)
    tmp = redo_dir / (MYSQL_PREPARED_REDO + ".innostream-tmp")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(tmp.unlink, missing_ok=True)
        end, file_size, start = _copy_mysql_redo(logfile, tmp, page_size, f"MySQL {m.group(1)}" if m else None)
        tmp.rename(redo_dir / MYSQL_PREPARED_REDO)
    log.info("prepare: %s/%s: redo %d..%d, checkpoint %d, %d bytes", MYSQL_REDO_DIR, MYSQL_PREPARED_REDO,
             start.start_lsn, end, start.checkpoint_lsn, file_size)
    return end


def _copy_mysql_redo(logfile: Path, tmp: Path, page_size: int, creator: str | None) -> tuple[int, int, MysqlRedoStart]:
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


def _check_mariadb_redo(bd: BackupDir) -> int:
    """Walk the mini-transactions of a backup's ``ib_logfile0`` from its checkpoint as recovery will (length walk
    + CRC-32C per mtr), in bounded chunks, and return the LSN after the last valid one: the server will recover
    exactly that far, so a damaged copy is refused before the server touches the backup. Returns 0 (no check)
    for a log the server wrote itself (an interrupted prepare) or an encrypted one."""
    path = bd.path / MARIADB_LOGFILE
    if not path.is_file():
        raise PrepareError(f"{path} is missing", hint="the backup is incomplete")
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        try:
            header, cp = mtr.find_checkpoint(fh.read(mtr.START_OFFSET))
        except FormatError as exc:
            raise PrepareError(f"the redo log copy is unusable: {exc}", file=str(path)) from None
        if not header.creator.startswith(mtr.BACKUP_CREATOR_PREFIX):
            log.info("prepare: %s was written by %r, not a backup tool: an earlier prepare ran; recovering from it",
                     MARIADB_LOGFILE, header.creator)
            return 0
        if header.encrypted:
            log.warning("prepare: %s is encrypted; its mini-transactions are not checked before recovery",
                        MARIADB_LOGFILE)
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
    log.info("prepare: %s: mini-transactions valid from LSN %d to %d (%s)", MARIADB_LOGFILE, cp.checkpoint_lsn,
             lsn, stop)
    return lsn


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the server runs, so it is stopped instead of left holding the
    backup directory (it runs in its own session and would outlive us)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _write_checkpoints(bd: BackupDir, cp: Checkpoints) -> None:
    tmp = bd.checkpoints_file.with_name(bd.checkpoints_file.name + ".tmp")
    tmp.write_bytes(build_checkpoints(cp, bd.flavor))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(bd.checkpoints_file)


def prepare_backup(config: PrepareConfig) -> PrepareResult:
    """Run crash recovery on the backup with the real server and mark it full-prepared.

    Raises:
        PrepareError: the backup is incomplete or of a kind we cannot prepare, the binary is wrong, recovery
            failed or stopped short of last_lsn, or tablespace files are missing.
    """
    started = time.monotonic()
    bd = read_backup_dir(Path(config.target_dir))
    cp = bd.checkpoints
    result = PrepareResult(flavor=bd.flavor, last_lsn=cp.last_lsn)
    if cp.backup_type == BACKUP_TYPE_FULL_PREPARED:
        log.info("prepare: %s is already prepared (backup_type = %s); nothing to do", bd.path, cp.backup_type)
        result.already_prepared = True
        return result
    if cp.backup_type == BACKUP_TYPE_INCREMENTAL:
        raise PrepareError("this is an incremental backup; applying deltas is not supported yet",
                           file=str(bd.checkpoints_file))
    if cp.backup_type not in (BACKUP_TYPE_FULL, BACKUP_TYPE_LOG_APPLIED):
        raise PrepareError(f"cannot prepare a backup of type {cp.backup_type!r}", file=str(bd.checkpoints_file))
    if bd.flavor == "mysql" and cp.backup_type == BACKUP_TYPE_LOG_APPLIED:
        raise PrepareError("a MySQL backup in 'log-applied' state (xtrabackup --apply-log-only) is not supported")

    binary, line = find_server_binary(bd, config.server_binary)
    result.server_version = line
    log.info("prepare: %s backup in %s, LSN %d..%d, with %s", bd.flavor, bd.path, cp.to_lsn, cp.last_lsn, line)
    if cp.backup_type == BACKUP_TYPE_FULL:
        apply_ddl_side_files(bd.path)
        copy_end = _stage_mysql_redo(bd, bd.info.get("server_version", "")) if bd.flavor == "mysql" else (
            _check_mariadb_redo(bd))
        if copy_end and cp.last_lsn and copy_end < cp.last_lsn:
            raise PrepareError(f"the redo log copy ends at LSN {copy_end}, before the backup's last_lsn "
                               f"{cp.last_lsn}: it is truncated or damaged", lsn=copy_end,
                               hint="the backup is incomplete; take a new one")
    with _terminate_as_interrupt():
        try:
            _start_and_recover(binary, bd, config, result)
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
    _write_checkpoints(bd, cp.with_type(BACKUP_TYPE_FULL_PREPARED))
    result.seconds = time.monotonic() - started
    log.info("prepare: recovered to LSN %s (last_lsn %d) in %.1f s; backup_type = %s", result.recovered_lsn,
             cp.last_lsn, result.seconds, BACKUP_TYPE_FULL_PREPARED)
    return result


__all__ = [
    "BackupDir",
    "InnostreamError",
    "PrepareConfig",
    "PrepareResult",
    "find_server_binary",
    "prepare_backup",
    "read_backup_dir",
]
