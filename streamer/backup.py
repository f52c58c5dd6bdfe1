"""The hot backup engine: what ``xtrabackup --backup`` does, in one pass, into a directory or the stream.

Order of events (each step's reason in its comment below):

1. Connect, read version and paths; take the DDL-blocking lock (MariaDB ``BACKUP STAGE START``+``BLOCK_DDL``,
   MySQL ``LOCK INSTANCE FOR BACKUP``) for the whole copy, so no tablespace is created, dropped, renamed or
   rebuilt under us. DML goes on.
2. On MySQL register as redo log consumer, so the server cannot overwrite redo we have not copied yet.
3. Start the log-copying thread: it reads the current checkpoint and follows the redo from there.
4. Copy InnoDB files page by page (validated, torn pages re-read) with ``--parallel`` threads.
5. Block commits briefly (MariaDB ``BLOCK_COMMIT``, MySQL ``FLUSH TABLES WITH READ LOCK``): copy non-InnoDB
   files (.frm, MyISAM, Aria, CSV, .sdi, ...), read the LSN and binlog coordinates, make the redo durable up to
   that LSN and stop the log copier at or past it. Then release all locks.
6. Write the metadata files last (``xtrabackup_checkpoints`` is the commit point), close the sink/stream.

Any error, Ctrl-C, SIGTERM or a closed output pipe aborts: the log copier stops, the consumer is deregistered, the
locks are released, no trailer and no ``xtrabackup_checkpoints`` are written, and the exit status is non-zero.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from innostream import __version__
from innostream.connection import (
    BackupLocks,
    ConnectionOptions,
    LogStatus,
    RedoConsumer,
    ServerFacts,
    Session,
    current_lsn,
    encryption_plugin_config,
    read_log_status,
    read_server_facts,
    resolve_options,
    supports_redo_consumer,
)
from innostream.copier import DEFAULT_CHUNK, FileCopier, SourceFile, Workers
from innostream.errors import InnostreamError, Interrupted, SourceError, TargetError
from innostream.formats import xtrabackup_meta as meta
from innostream.log import log
from innostream.progress import Progress
from innostream.sink import DirSink, Sink

#: Extensions of non-InnoDB files copied from database directories (xtrabackup's backup_copy.cc list, plus .sdi
#: for MySQL 8+). Everything else in a database directory is left out.
NON_INNODB_EXTENSIONS = frozenset({
    "frm", "MYD", "MYI", "MAD", "MAI", "MRG", "TRG", "TRN", "ARM", "ARZ", "CSM", "CSV", "opt", "par", "sdi",
})
#: Non-InnoDB table data that writers can change under BLOCK_DDL: on MySQL these need FLUSH TABLES WITH READ LOCK.
NON_TRANSACTIONAL_DATA = frozenset({"MYD", "MYI", "MAD", "MAI", "ARZ", "ARM", "CSV", "CSM", "MRG"})
#: Log tables are written by the server itself and never locked; copying them as they are is what both tools do.
LOG_TABLES = ("general_log", "slow_log")
#: Directories in the datadir that are not databases: InnoDB's own and the reference tools'.
SKIP_DIRS = frozenset({"#innodb_temp", "#innodb_redo", "#file_purge", "lost+found", ".", ".."})
#: MySQL/MariaDB undo tablespace names (undo_001 / undo001) and user-created MySQL undo files.
UNDO_RE = re.compile(r"^(undo_?\d{3}|.+\.ibu)$")
#: Aria's own log, needed to open Aria tables consistently.
ARIA_RE = re.compile(r"^(aria_log_control|aria_log\.\d{8})$")
#: The redo copy must reach the end LSN within this time after the end of the copy (seconds).
REDO_STOP_TIMEOUT = 300.0


@dataclass(frozen=True)
class BackupConfig:
    """Everything ``innostream backup`` was asked to do; built by the CLI, read by :func:`run_backup`."""

    connection: ConnectionOptions = field(default_factory=ConnectionOptions)
    datadir: Path | None = None
    target_dir: Path | None = None  # None: stream to ``out``
    data_home_dir: Path | None = None
    log_dir: Path | None = None
    undo_dir: Path | None = None
    parallel: int = 2
    stream_format: str = "innostream"  # "innostream" | "xbstream"
    compress: bool = True
    compress_level: int = 1
    compress_threads: int = 2
    lock: bool = True
    chunk_size: int = DEFAULT_CHUNK
    poll_interval: float = 0.1
    spool_redo: bool | None = None  # None: spool when streaming (see _RedoWriter)
    tmpdir: Path | None = None  # where the redo spool file goes (default: $TMPDIR or /tmp)
    argv: tuple[str, ...] = ()


@dataclass
class BackupResult:
    """What the backup did, for the CLI summary and for tests."""

    flavor: str = ""
    server_version: str = ""
    start_lsn: int = 0  # redo copy start = server checkpoint at backup start
    end_lsn: int = 0  # redo copy end
    to_lsn: int = 0  # server checkpoint at backup end
    server_lsn: int = 0  # server LSN under the commit block at the end
    files: int = 0
    bytes_copied: int = 0
    retried_pages: int = 0
    binlog: meta.BinlogInfo | None = None
    lock_seconds: float = 0.0
    metadata: dict[str, bytes] = field(default_factory=dict)


# --- file enumeration ---------------------------------------------------------------------------------------------


def parse_data_file_path(value: str) -> list[tuple[str, int | None]]:
    """``ibdata1:12M;ibdata2:50M:autoextend`` -> [(name, fixed size in bytes or None for autoextend), ...].

    Raises:
        SourceError: raw devices (``newraw``/``raw``) or an unparsable value.
    """
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    out = []
    for item in filter(None, (part.strip() for part in value.split(";"))):
        m = re.match(r"^(.+?):(\d+)([KMGTkmgt]?)(newraw|raw)?(?::autoextend(?::max:.*)?)?$", item)
        if not m:
            raise SourceError(f"cannot parse innodb_data_file_path entry {item!r}")
        if m[4]:
            raise SourceError(f"system tablespace on a raw device ({item}) is not supported")
        size = int(m[2]) * units.get(m[3].upper(), 1) if m[3] else int(m[2]) * (1 << 20)
        out.append((m[1], None if ":autoextend" in item else size))
    if not out:
        raise SourceError("innodb_data_file_path is empty")
    return out


def _member(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


@dataclass
class Inventory:
    """The files of one backup, split by when they are copied."""

    innodb: list[SourceFile] = field(default_factory=list)
    other: list[SourceFile] = field(default_factory=list)  # copied under the commit block
    skipped: list[Path] = field(default_factory=list)

    @property
    def needs_read_lock(self) -> bool:
        """MySQL only: non-InnoDB tables whose data DML can change (MyISAM, CSV, ...) need FTWRL."""
        for f in self.other:
            ext = f.name.rsplit(".", 1)[-1]
            table = f.name.rsplit("/", 1)[-1].split(".")[0]
            if ext in NON_TRANSACTIONAL_DATA and not (f.name.startswith("mysql/") and table in LOG_TABLES):
                return True
        return False


def _stat_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _server_tablespaces(session: Session, facts: ServerFacts) -> list[Path]:
    """Paths of the tablespaces the server knows (to find ones outside the datadir)."""
    if facts.flavor == "mysql":
        rows = session.query("SELECT PATH FROM information_schema.INNODB_DATAFILES")
    else:
        rows = session.query("SELECT FILENAME FROM information_schema.INNODB_SYS_TABLESPACES")
    return [(facts.datadir / str(r[0])).resolve() for r in rows if r[0]]


def enumerate_files(facts: ServerFacts, datadir: Path, data_home: Path, undo_dir: Path,
                    server_paths: Sequence[Path] = ()) -> Inventory:
    """Find what to copy, as PXB and mariadb-backup do.

    Copied: the system tablespace files of ``innodb_data_file_path``, undo tablespaces, ``mysql.ibd``,
    ``<db>/*.ibd``; non-InnoDB files of database directories by extension (:data:`NON_INNODB_EXTENSIONS`) and
    Aria's logs. Skipped: the live redo (copied by the log thread instead), ``ibtmp1``, ``#innodb_temp``, MySQL
    doublewrite files (prepare does not use them), binary and relay logs, pid/socket files, ``auto.cnf``, keys
    and certificates, ``ib_buffer_pool`` and anything else the server re-creates.

    Raises:
        SourceError: a tablespace lives outside the data directories (DATA DIRECTORY=..., .isl files), which
            this version cannot restore to the right place.
    """
    inv = Inventory()
    seen: set[Path] = set()

    def add(path: Path, name: str, kind: str, **kw: Any) -> None:
        real = path.resolve()
        if real in seen:
            return
        seen.add(real)
        (inv.innodb if kind == "innodb" else inv.other).append(
            SourceFile(path=path, name=name, kind=kind, size=_stat_size(path), **kw))

    # System tablespace: later files continue the page numbering of the first.
    first_page = 0
    page_size = int(facts.var("innodb_page_size", "16384") or 16384)
    for name, fixed in parse_data_file_path(facts.var("innodb_data_file_path", "ibdata1:12M:autoextend")):
        path = Path(name) if Path(name).is_absolute() else data_home / name
        if not path.is_file():
            raise SourceError("system tablespace file not found", file=str(path),
                              hint="check --innodb-data-home-dir")
        add(path, path.name, "innodb", first_page_no=first_page, system=True)
        first_page += (fixed if fixed is not None else _stat_size(path)) // page_size

    # Undo tablespaces (MySQL undo_NNN and *.ibu; MariaDB undoNNN), placed at the backup root like the tools do.
    for d in dict.fromkeys([undo_dir, datadir]):
        if d.is_dir():
            for child in sorted(d.iterdir()):
                if UNDO_RE.match(child.name) and child.is_file():
                    add(child, child.name, "innodb")

    # MariaDB remote tablespaces are .isl link files; refuse them clearly rather than copy a dangling link.
    for dbdir in sorted(p for p in datadir.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
        for child in sorted(dbdir.iterdir()):
            if child.suffix == ".isl":
                raise SourceError(
                    "table with DATA DIRECTORY (a .isl link file) is not supported by this version",
                    file=str(child), hint="move the table into the datadir (ALTER TABLE ... ) or use mariadb-backup")

    if (datadir / "mysql.ibd").is_file():
        add(datadir / "mysql.ibd", "mysql.ibd", "innodb")
    for child in sorted(datadir.iterdir()):
        if ARIA_RE.match(child.name) and child.is_file():
            add(child, child.name, "other")
    for dbdir in sorted(p for p in datadir.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
        for child in sorted(dbdir.iterdir()):
            if not child.is_file():
                continue
            name = f"{dbdir.name}/{child.name}"
            ext = child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            if ext == "ibd":
                add(child, name, "innodb")
            elif ext in NON_INNODB_EXTENSIONS:
                add(child, name, "other")
            else:
                inv.skipped.append(child)

    roots = [datadir.resolve(), data_home.resolve(), undo_dir.resolve()]
    for path in server_paths:
        if path.resolve() in seen or path.name in ("ibtmp1",) or path.suffix == ".ibt":
            continue
        if not any(path.is_relative_to(r) for r in roots):
            raise SourceError("tablespace outside the data directory (DATA DIRECTORY=...) is not supported by this "
                              "version", file=str(path), hint="move the table into the datadir first")
        if path.suffix in (".ibd", ".ibu") and path.exists():
            # Known to the server but not found by the scan (for example in a nested directory): refuse rather
            # than produce a backup without it.
            raise SourceError("tablespace in an unexpected place", file=str(path))
    # Largest first keeps all threads busy until the end.
    inv.innodb.sort(key=lambda f: f.size, reverse=True)
    return inv


# --- metadata -----------------------------------------------------------------------------------------------------


def _strip_data_file_path(value: str) -> str:
    return ";".join(
        Path(part.split(":", 1)[0]).name + ":" + part.split(":", 1)[1] if ":" in part else part
        for part in value.split(";") if part)


#: MySQL 8.0.30+ splits innodb_redo_log_capacity over this many #ib_redoN files (log0constants.h).
LOG_N_FILES = 32


def backup_my_cnf(facts: ServerFacts, undo_files: int = 0, plugin_config: Sequence[str] = ()) -> bytes:
    """``backup-my.cnf``: the InnoDB settings prepare must start with (innodb-formats.md 6.2 / 6.4).

    MySQL 9 has neither ``innodb_log_file_size`` nor ``innodb_undo_tablespaces``; we write what is true of the
    files instead: the size of one ``#ib_redoN`` file and the number of undo tablespaces copied.
    """
    v = facts.var
    log_file_size = v("innodb_log_file_size")
    if not log_file_size and v("innodb_redo_log_capacity"):
        log_file_size = str(int(v("innodb_redo_log_capacity")) // LOG_N_FILES)
    common = {
        "innodb_checksum_algorithm": v("innodb_checksum_algorithm", "crc32"),
        "innodb_data_file_path": _strip_data_file_path(v("innodb_data_file_path", "ibdata1:12M:autoextend")),
        "innodb_log_file_size": log_file_size or "0",
        "innodb_page_size": v("innodb_page_size", "16384"),
        # Undo tablespaces are copied to the backup root.
        "innodb_undo_directory": "./",
        "innodb_undo_tablespaces": v("innodb_undo_tablespaces") or str(undo_files),
    }
    if facts.flavor == "mariadb":
        options: dict[str, object] = dict(common, innodb_compression_level=v("innodb_compression_level", "6"))
        if v("innodb_buffer_pool_filename"):
            options["innodb_buffer_pool_filename"] = v("innodb_buffer_pool_filename")
        return meta.build_backup_my_cnf(options, "mariadb", plugin_config=plugin_config)

    def onoff(name: str) -> str:
        return "ON" if v(name, "OFF").upper() in ("ON", "1") else "OFF"

    options = dict(
        common,
        innodb_log_checksums=onoff("innodb_log_checksums"),
        server_id=v("server_id", "0"),
        innodb_redo_log_encrypt=onoff("innodb_redo_log_encrypt"),
        innodb_undo_log_encrypt=onoff("innodb_undo_log_encrypt"),
    )
    if v("server_uuid"):
        options["server_uuid"] = v("server_uuid")
    if v("innodb_redo_log_capacity"):
        options["innodb_redo_log_capacity"] = v("innodb_redo_log_capacity")
    return meta.build_backup_my_cnf(options, "mysql")


def build_metadata(facts: ServerFacts, result: BackupResult, status: LogStatus, *, started: datetime,
                   ended: datetime, argv: Sequence[str], stream_format: str | None, compressed: bool,
                   server_uuid: str, undo_files: int = 0, plugin_config: Sequence[str] = ()) -> dict[str, bytes]:
    """The metadata files, in the order they are written (checkpoints last: the commit point)."""
    flavor = facts.flavor
    files: dict[str, bytes] = {}
    binlog_pos = ""
    if result.binlog is not None:
        files[meta.XTRABACKUP_BINLOG_INFO] = meta.build_binlog_info(result.binlog, flavor)
        binlog_pos = meta.format_binlog_pos(result.binlog.filename, result.binlog.position, result.binlog.gtid)
    files[meta.BACKUP_MY_CNF] = backup_my_cnf(facts, undo_files, plugin_config)
    info: dict[str, object] = {
        "uuid": server_uuid,
        "name": "",
        "tool_name": "innostream",
        "tool_command": meta.tool_command(argv),
        "tool_version": __version__,
        "ibbackup_version": __version__,
        "server_version": facts.version,
        "start_time": started.strftime(meta.INFO_TIME_FORMAT),
        "end_time": ended.strftime(meta.INFO_TIME_FORMAT),
        "lock_time": round(result.lock_seconds),
        "binlog_pos": binlog_pos,
        "innodb_from_lsn": 0,
        "innodb_to_lsn": result.to_lsn,
        "partial": "N",
        "incremental": "N",
        "format": "file" if stream_format is None else ("xbstream" if stream_format == "xbstream" else "innostream"),
        "compressed": "compressed" if compressed and stream_format is not None else "N",
    }
    if flavor == "mysql":
        info["encrypted"] = "N"
    files[meta.XTRABACKUP_INFO] = meta.build_info(info, flavor)
    checkpoints = meta.Checkpoints(
        backup_type=meta.BACKUP_TYPE_FULL,
        from_lsn=0,
        to_lsn=result.to_lsn,
        last_lsn=result.end_lsn,
        flushed_lsn=status.flushed_lsn if flavor == "mysql" else 0,
    )
    files[meta.XTRABACKUP_CHECKPOINTS] = meta.build_checkpoints(checkpoints, flavor)
    return files


# --- the engine ---------------------------------------------------------------------------------------------------


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return Path(a).samefile(b)
    except OSError:
        return False


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM ends the backup like Ctrl-C does (only the main thread can install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("terminated by SIGTERM; the backup is incomplete and was discarded")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _open_sink(config: BackupConfig, out: BinaryIO | None, meta_info: dict) -> Sink:
    if config.target_dir is not None:
        return DirSink(config.target_dir)
    if out is None:
        raise TargetError("no --target-dir and no output stream")
    if config.stream_format == "xbstream":
        from innostream.archive.xbstream import XbstreamWriter

        return XbstreamWriter(out, level=config.compress_level, threads=config.compress_threads, meta=meta_info,
                              compress=config.compress)
    from innostream.archive import ArchiveWriter

    return ArchiveWriter(out, level=config.compress_level, threads=config.compress_threads, meta=meta_info,
                         compress=config.compress)


class _RedoWriter:
    """Appends the redo copy to its member in the sink (the copier gives bytes, the sink wants offsets).

    With ``spool_dir`` the redo goes to an unlinked temporary file first and into the sink at ``finish``. A stream
    is only as fast as its reader (ssh, a slow disk at the other end); if the log copier wrote into it directly it
    would fall behind with it, and the server would overwrite redo not yet copied (MariaDB) or, with MySQL's redo
    consumer, stall every writer until the network caught up. Spooled, the log copier runs at local disk speed.
    """

    def __init__(self, sink: Sink, name: str, spool_dir: Path | None = None) -> None:
        self.sink = sink
        self.name = name
        self.file_id: int | None = None
        self.offset = 0
        self.spool: BinaryIO | None = None
        if spool_dir is not None:
            try:
                self.spool = tempfile.TemporaryFile(prefix="innostream-redo-", dir=spool_dir)
            except OSError as exc:
                raise TargetError(f"cannot create the redo spool file: {exc.strerror}", file=str(spool_dir),
                                  hint="use --tmpdir DIR with room for the redo written during the backup") from None

    def __call__(self, data: bytes) -> None:
        if self.spool is not None:
            try:
                self.spool.write(data)
            except OSError as exc:
                raise TargetError(f"cannot write the redo spool file: {exc.strerror}",
                                  hint="use --tmpdir DIR with room for the redo written during the backup") from None
            self.offset += len(data)
            return
        if self.file_id is None:
            self.file_id = self.sink.begin_file(self.name)
        self.sink.write(self.file_id, self.offset, data)
        self.offset += len(data)

    def finish(self, chunk: int = 4 << 20) -> None:
        """End the member; a spooled copy is streamed into the sink now."""
        if self.spool is not None:
            self.file_id = self.sink.begin_file(self.name)
            self.spool.flush()
            pos = 0
            while pos < self.offset:
                data = os.pread(self.spool.fileno(), min(chunk, self.offset - pos), pos)
                if not data:
                    raise TargetError("the redo spool file is shorter than what was written to it")
                self.sink.write(self.file_id, pos, data)
                pos += len(data)
            self.close()
        elif self.file_id is None:
            self.file_id = self.sink.begin_file(self.name)
        self.sink.end_file(self.file_id, self.offset)

    def close(self) -> None:
        if self.spool is not None:
            with contextlib.suppress(OSError):
                self.spool.close()
            self.spool = None


def redo_copy_name(flavor: str) -> str:
    """mariadb-backup names the redo copy ``ib_logfile0``, xtrabackup ``xtrabackup_logfile``."""
    return "ib_logfile0" if flavor == "mariadb" else "xtrabackup_logfile"


class Backup:
    """One backup run. Use :func:`run_backup`; the class keeps the cleanup state in one place."""

    def __init__(self, config: BackupConfig, out: BinaryIO | None = None, *,
                 on_event: Callable[[str, Any], None] | None = None) -> None:
        self.config = config
        self.out = out
        self.on_event = on_event or (lambda name, value: None)
        self.cancel = threading.Event()
        self.result = BackupResult()
        self.session: Session | None = None
        self.locks: BackupLocks | None = None
        self.consumer: RedoConsumer | None = None
        self.redo: Any = None
        self.sink: Sink | None = None
        self.progress: Progress | None = None
        self.pool: Workers | None = None
        self.redo_writer: _RedoWriter | None = None
        self._last_scanned = 0
        self._last_lsn_poll = 0.0

    # -- helpers -------------------------------------------------------------------------------------------------

    def _paths(self, facts: ServerFacts) -> tuple[Path, Path, Path, Path]:
        cfg = self.config
        datadir = facts.datadir
        if cfg.datadir is not None:
            if not Path(cfg.datadir).is_dir():
                raise SourceError("--datadir is not a directory", file=str(cfg.datadir))
            if not _same_dir(cfg.datadir, facts.datadir):
                raise SourceError(f"--datadir {cfg.datadir} is not the server's datadir {facts.datadir}",
                                  hint="connect to the server that owns this data directory")
            datadir = Path(cfg.datadir).resolve()
        home = Path(cfg.data_home_dir).resolve() if cfg.data_home_dir else facts.data_home_dir
        logd = Path(cfg.log_dir).resolve() if cfg.log_dir else facts.log_dir
        undo = Path(cfg.undo_dir).resolve() if cfg.undo_dir else facts.undo_dir
        for label, p in (("innodb data home", home), ("redo log", logd), ("undo", undo)):
            if not p.is_dir():
                raise SourceError(f"{label} directory not found", file=str(p))
        if cfg.target_dir is not None:
            target = Path(cfg.target_dir).absolute().resolve()
            for d in (datadir, home, logd, undo):
                if target == d or target.is_relative_to(d):
                    raise TargetError("the target directory is inside the server's directories", file=str(target),
                                      hint="back up to a directory outside the datadir, InnoDB and log directories")
        if not os.access(datadir, os.R_OK | os.X_OK):
            raise SourceError("cannot read the data directory", file=str(datadir),
                              hint="run innostream as the mysql user or root")
        return datadir, home, logd, undo

    def _tick(self) -> None:
        """Once per wait-loop turn on the main thread: redo progress line and live status."""
        redo = self.redo
        if redo is None:
            return
        scanned = int(getattr(redo, "scanned_lsn", 0) or 0)
        if scanned and scanned != self._last_scanned:
            self._last_scanned = scanned
            self.on_event("scanned", scanned)
        now = time.monotonic()
        if self.progress is not None and self.session is not None and now - self._last_lsn_poll >= 1.0:
            self._last_lsn_poll = now
            try:
                self.progress.set_redo(scanned, current_lsn(self.session, self.result.flavor))
            except SourceError as exc:
                log.debug("LSN poll failed: %s", exc)
        if self.progress is not None:
            self.progress.render()

    def _wait(self, futures: list[cf.Future]) -> None:
        """Wait for copy jobs while rendering progress; the first failure cancels the rest."""
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_EXCEPTION)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    self.cancel.set()
                    raise exc
            self._check_redo()
            self._tick()

    def _check_redo(self) -> None:
        """The log copier's thread error (redo overwritten, corrupt block) ends the backup at once."""
        # The copier hands its thread's error to stop(); look at it early so a lost redo ends the backup now
        # instead of after copying everything else.
        err = self.redo.error if self.redo is not None else None
        if isinstance(err, BaseException):
            self.cancel.set()
            raise err

    def _copy_all(self, files: list[SourceFile]) -> None:
        assert self.pool is not None
        self._wait([self.pool.submit(f) for f in files])

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> BackupResult:
        cfg = self.config
        started = datetime.now()
        args = resolve_options(cfg.connection)
        self.session = Session(args, "main")
        facts = read_server_facts(self.session)
        flavor = facts.flavor
        self.result.flavor, self.result.server_version = flavor, facts.version
        log.info("Using server version %s (%s)", facts.version, flavor)
        datadir, home, logd, undo = self._paths(facts)
        if cfg.target_dir is None and self.out is not None and hasattr(self.out, "isatty") and self.out.isatty():
            raise TargetError("refusing to write the binary stream to a terminal",
                              hint="pipe it (| innostream extract -C DIR) or redirect it to a file")
        server_uuid = str(self.session.value("SELECT UUID()"))
        plugin_config = encryption_plugin_config(self.session) if flavor == "mariadb" else []
        binlog_on = facts.var("log_bin", "0").upper() in ("1", "ON")

        if not cfg.lock:
            log.warning("--no-lock: DDL is not blocked; a table created, dropped, renamed or rebuilt during the "
                        "backup makes it inconsistent, and non-InnoDB tables and the binlog position are not "
                        "consistent with the data")
        self.locks = BackupLocks(self.session, flavor, enabled=cfg.lock)
        # Locks before the inventory: the list of files cannot change once DDL is blocked.
        self.locks.lock_ddl()
        inventory = enumerate_files(facts, datadir, home, undo, _server_tablespaces(self.session, facts))
        total = sum(f.size for f in inventory.innodb)
        log.info("Found %d InnoDB files (%s bytes) and %d other files", len(inventory.innodb), total,
                 len(inventory.other))
        for path in inventory.skipped:
            log.debug("not copied: %s", path)

        meta_info = {"flavor": flavor, "server_version": facts.version, "tool": f"innostream {__version__}",
                     "hostname": os.uname().nodename, "start_time": started.isoformat(timespec="seconds")}
        self.sink = _open_sink(cfg, self.out, meta_info)
        label = str(Path(cfg.target_dir).absolute()) if cfg.target_dir is not None else ""
        self.progress = Progress(total, len(inventory.innodb))
        copier = FileCopier(self.sink, flavor, cancel=self.cancel, progress=self.progress,
                            chunk_size=cfg.chunk_size, streaming=cfg.target_dir is None, target_label=label)

        # Redo: consumer first (its start point is the checkpoint at registration), then the copier thread.
        if supports_redo_consumer(facts):
            self.consumer = RedoConsumer(args)
        from innostream.redo_copier import open_redo_copier

        spool = cfg.spool_redo if cfg.spool_redo is not None else cfg.target_dir is None
        redo_writer = _RedoWriter(self.sink, redo_copy_name(flavor),
                                  Path(cfg.tmpdir or tempfile.gettempdir()) if spool else None)
        self.redo_writer = redo_writer
        self.redo = open_redo_copier(flavor, logd, redo_writer, poll_interval=cfg.poll_interval,
                                     advance=self.consumer.advance if self.consumer else None)
        if getattr(self.redo, "copy_file_name", redo_writer.name) != redo_writer.name:
            redo_writer.name = self.redo.copy_file_name
        self.redo.start()
        self.result.start_lsn = int(self.redo.start_lsn)
        log.info("Log copying started at checkpoint LSN %d", self.result.start_lsn)

        self.pool = Workers(cfg.parallel, copier.copy)
        self._copy_all(inventory.innodb)

        # The end: everything that must be consistent with one LSN happens under the commit block.
        self.progress.add_total(sum(f.size for f in inventory.other), len(inventory.other))
        lock_started = time.monotonic()
        with self.locks.block_commits(need_read_lock=inventory.needs_read_lock or flavor == "mysql"):
            self._copy_all(inventory.other)
            status = read_log_status(self.session, flavor, binlog=binlog_on)
            # The log copier reads the redo file; make sure it holds everything up to this LSN.
            self.session.execute("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS")
            log.info("Server LSN at the end of the copy: %d; waiting for the log copy to reach it", status.lsn)
            end = self._stop_redo(status.lsn)
            to_lsn = self._latest_checkpoint(status)
        self.result.lock_seconds = time.monotonic() - lock_started
        self.locks.release()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        redo_writer.finish()

        res = self.result
        res.end_lsn, res.to_lsn, res.server_lsn = end, to_lsn, status.lsn
        if end < status.lsn:
            raise SourceError(f"failed to copy enough redo log: copied up to {end}, need {status.lsn}")
        if status.binlog_file:
            res.binlog = meta.BinlogInfo(status.binlog_file, status.binlog_pos, status.gtid)
            log.info("MySQL binlog position: %s",
                     meta.format_binlog_pos(status.binlog_file, status.binlog_pos, status.gtid))
        res.files = self.progress.files + 1
        res.bytes_copied = self.progress.bytes
        res.retried_pages = copier.retried_pages
        log.info("The latest check point (for incremental): '%d'", to_lsn)
        self.progress.close()
        log.info(self.progress.summary())

        # Metadata last; xtrabackup_checkpoints last of all: a target without it is not a backup.
        files = build_metadata(facts, res, status, started=started, ended=datetime.now(), argv=cfg.argv,
                               stream_format=None if cfg.target_dir is not None else cfg.stream_format,
                               compressed=cfg.compress, server_uuid=server_uuid,
                               undo_files=sum(1 for f in inventory.innodb if UNDO_RE.match(f.name)),
                               plugin_config=plugin_config)
        for name, data in files.items():
            log.info("Writing %s", name)
            self.sink.add_bytes(name, data)
        res.metadata = files
        self.sink.close({"flavor": flavor, "server_version": facts.version, "start_lsn": res.start_lsn,
                         "end_lsn": res.end_lsn, "to_lsn": res.to_lsn, "last_lsn": res.end_lsn})
        self.sink = None
        log.info("Transaction log of lsn (%d) to (%d) was copied.", res.start_lsn, res.end_lsn)
        return res

    def _stop_redo(self, lsn: int) -> int:
        """Stop the log copier at or past ``lsn`` while keeping Ctrl-C responsive."""
        result: dict[str, Any] = {}

        def stop() -> None:
            try:
                result["end"] = int(self.redo.stop(lsn, timeout=REDO_STOP_TIMEOUT))
            except BaseException as exc:  # re-raised on the main thread
                result["error"] = exc

        t = threading.Thread(target=stop, name="redo-stop", daemon=True)
        t.start()
        while t.is_alive():
            t.join(timeout=0.25)
            self._tick()
        if "error" in result:
            raise result["error"]
        self._tick()
        return result["end"]

    def _latest_checkpoint(self, status: LogStatus) -> int:
        """to_lsn: the server's latest checkpoint, read from the redo file like the reference tools do."""
        try:
            cp = int(self.redo.current_checkpoint())
        except (AttributeError, InnostreamError, OSError) as exc:
            log.debug("checkpoint from the redo file unavailable (%s); using the server's status", exc)
            cp = status.checkpoint_lsn
        return max(cp, self.result.start_lsn)

    def cleanup(self) -> None:
        """Leave the server as it was, whatever happened: stop threads, abort output, release locks, deregister."""
        self.cancel.set()
        # The sink first: a copier thread blocked on a full output queue must get an error, not wait forever.
        if self.sink is not None:
            with contextlib.suppress(Exception):
                self.sink.abort()
            self.sink = None
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        if self.redo is not None:
            with contextlib.suppress(Exception):
                self.redo.abort()
        if self.redo_writer is not None:
            self.redo_writer.close()
        if self.progress is not None:
            self.progress.close()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.locks is not None:
            self.locks.release()
        if self.session is not None:
            self.session.close()


def run_backup(config: BackupConfig, out: BinaryIO | None = None, *,
               on_event: Callable[[str, Any], None] | None = None) -> BackupResult:
    """Take one backup into ``config.target_dir`` or as a stream to ``out``; see the module docstring.

    Raises:
        SourceError, TargetError, FormatError: the backup failed; nothing was left locked on the server.
        Interrupted: SIGINT/SIGTERM or the reader of the stream went away.
    """
    backup = Backup(config, out, on_event=on_event)
    try:
        with _sigterm_raises():
            try:
                result = backup.run()
            except KeyboardInterrupt:
                raise Interrupted("interrupted; the backup is incomplete and was discarded, the server is "
                                  "unlocked") from None
            except BrokenPipeError:
                raise Interrupted("output pipe closed by the reader; the stream is incomplete") from None
    finally:
        backup.cleanup()
    log.info("completed OK!")
    return result


def main_argv() -> tuple[str, ...]:
    """The command line for ``tool_command`` (masked when written)."""
    return tuple(sys.argv[1:])
