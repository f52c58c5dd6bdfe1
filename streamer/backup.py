"""The hot backup engine: what ``xtrabackup --backup`` does, in one pass, into a directory or the stream.

Order of events (each step's reason in its comment below):

1. Connect, read version and paths; take the DDL-blocking lock (MariaDB ``BACKUP STAGE START``+``BLOCK_DDL``,
   MySQL ``LOCK INSTANCE FOR BACKUP``) for the whole copy, so no tablespace is created, dropped, renamed or
   rebuilt under us. DML goes on.
2. On MySQL register as redo log consumer, so the server cannot overwrite redo we have not copied yet.
3. Start the log-copying thread: it reads the current checkpoint and follows the redo from there.
4. Copy InnoDB files page by page (validated, torn pages re-read) with ``--parallel`` threads.
5. Block commits briefly (MariaDB ``BLOCK_COMMIT``; MySQL ``FLUSH TABLES WITH READ LOCK`` only for non-InnoDB
   tables): copy non-InnoDB files (.frm, MyISAM, Aria, CSV, .sdi, ...), read the LSN and binlog coordinates, make
   the redo durable up to that LSN and stop the log copier at or past it (MySQL, where commits go on: cut the copy
   at exactly that LSN, ``family.cut_redo_copy``). Then release all locks.
6. Write the metadata files last (``xtrabackup_checkpoints`` is the commit point), close the sink/stream.

An incremental backup (``--incremental-basedir``/``--incremental-lsn``, :mod:`innostream.incremental`) runs the
same steps: its base is read and checked before the server is touched, checked against the server's checkpoint
once the log copier has it, and the copier writes only the pages newer than the base as ``.delta``/``.meta``.

Any error, Ctrl-C, SIGTERM or a closed output pipe aborts: the log copier stops, the consumer is deregistered, the
locks are released, no trailer and no ``xtrabackup_checkpoints`` are written, and the exit status is non-zero.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from innostream import __version__
from innostream.connection import (
    REDO_CONSUMER_MAX_LAG,
    BackupLocks,
    ConnectionOptions,
    LogStatus,
    RedoConsumer,
    ServerFacts,
    Session,
    changed_pages,
    check_privileges,
    connect,
    page_tracking_start,
    resolve_options,
)
from innostream.copier import DEFAULT_CHUNK, FileCopier, SourceFile, Workers
from innostream.datadir import (
    REMOTE_FILES,
    Inventory,
    SourceDirs,
    build_remote_files,
    enumerate_files,
    find_source_dirs,
    seen_elsewhere,
    server_tablespaces,
)
from innostream.datadir_proof import prove_live_datadir
from innostream.ddl_track import NEW_SUFFIX, DdlTracker
from innostream.ddl_track import RECORD as DDL_RECORD
from innostream.errors import FileExistsInTarget, InnostreamError, Interrupted, SourceError, TargetError
from innostream.families import Family, family, read_server_facts
from innostream.fileio import fsync_output
from innostream.formats import xtrabackup_meta as meta
from innostream.incremental import check_lsn, check_server, resolve_base
from innostream.log import log
from innostream.metadata import build_metadata
from innostream.progress import Progress
from innostream.selection import PARTIAL_RECORD, TableSelection
from innostream.signals import sigterm_raises
from innostream.sink import Sink
from innostream.target import TargetDir
from innostream.throttle import Throttle

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
    #: "full": DDL blocked for the whole backup; "reduced" (None): only at the end (innostream.ddl_track)
    lock_ddl: str | None = None
    #: ``--throttle``: bytes per second the data copy may read (None: as fast as it can); never the redo copy
    throttle: float | None = None
    chunk_size: int = DEFAULT_CHUNK
    poll_interval: float = 0.1
    spool_redo: bool | None = None  # None: spool when streaming (see _RedoWriter)
    tmpdir: Path | None = None  # where the redo spool file goes (default: $TMPDIR or /tmp)
    #: The longest MySQL's redo log consumer may hold the server's writers behind a backup that copies no redo.
    redo_consumer_max_lag: float = REDO_CONSUMER_MAX_LAG
    argv: tuple[str, ...] = ()  # the command line the CLI got, for xtrabackup_info's tool_command
    fsync: bool = True  # the target directory, or the archive when ``out`` is a regular file, synced (--no-fsync)
    #: An incremental backup: the base (directory, archive file, s3:// object) or the LSN (docs/BACKUP.md).
    incremental_basedir: str | None = None
    incremental_lsn: int | None = None
    s3_options: Any = None  # storage.S3Options for an s3:// base
    #: MySQL: keep component_mysqlbackup's page tracking on, and read only the pages it lists (incremental).
    page_tracking: bool = False
    #: ``--encrypt-key-file``/``--encrypt-key-command``: the 32-byte user key the archive's data key is wrapped under
    encrypt_key: bytes | None = field(default=None, repr=False)
    #: ``--decrypt-key-file``/``--decrypt-key-command``: the key of an encrypted incremental base archive
    base_key: bytes | None = field(default=None, repr=False)
    #: A partial backup: the user tables to copy (--databases, --tables, ...; innostream.selection)
    selection: TableSelection | None = None


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
    from_lsn: int = 0  # an incremental's base LSN (0: a full backup)
    delta_pages: int = 0  # pages written into .delta files
    page_tracking: bool = False  # the incremental read only the pages MySQL's page tracking listed
    binlog: meta.BinlogInfo | None = None
    lock_seconds: float = 0.0
    ddl_blocked_seconds: float = 0.0  # how long DDL waited for this backup (the whole copy under --lock-ddl=full)
    ddl_settled: int = 0  # files copied again, new or dropped at the end under --lock-ddl=reduced
    metadata: dict[str, bytes] = field(default_factory=dict)


# --- the engine ---------------------------------------------------------------------------------------------------


def _file_exists(path: Path) -> FileExistsInTarget:
    """A file already in ``--target-dir``, in the wording of xtrabackup (which never overwrites either)."""
    return FileExistsInTarget(f"[Errno {errno.EEXIST}] File exists", file=str(path),
                              hint="innostream never overwrites; use an empty or new --target-dir")


def backup_target(target_dir: Path | str, *, fsync: bool = True) -> TargetDir:
    """The ``--target-dir`` writer: every file and directory fsync'ed ("completed OK" means the backup is on disk),
    an existing file refused in xtrabackup's words."""
    return TargetDir(target_dir, fsync=fsync, exists_error=_file_exists)


def _open_sink(config: BackupConfig, out: BinaryIO | None, meta_info: dict[str, Any]) -> Sink:
    if config.target_dir is not None:
        return backup_target(config.target_dir, fsync=config.fsync)
    if out is None:
        raise TargetError("no --target-dir and no output stream")
    if config.stream_format == "xbstream":
        from innostream.archive.xbstream import XbstreamWriter

        return XbstreamWriter(out, level=config.compress_level, threads=config.compress_threads, meta=meta_info,
                              compress=config.compress)
    from innostream.archive import ArchiveWriter

    codec = None
    if config.encrypt_key is not None:  # compression first, then AES-256-GCM (docs/FORMAT.md §9)
        from innostream.archive.codec import PlainCodec, ZstdCodec
        from innostream.archive.crypt import new_codec

        codec = new_codec(ZstdCodec(config.compress_level) if config.compress else PlainCodec(), config.encrypt_key)
    return ArchiveWriter(out, level=config.compress_level, threads=config.compress_threads, meta=meta_info,
                         compress=config.compress, codec=codec)


#: With a spool, the redo stream into the archive stays this far behind the copy until the end point is known: the
#: MySQL cut rewrites the block holding the end LSN, which must not have left yet (docs/BACKUP.md step 5).
REDO_HOLD_BACK = 64 << 10
#: The pump sends spooled redo in pieces of at least this (or whatever is left at the end).
REDO_PUMP_PIECE = 256 << 10


class _RedoWriter:
    """Appends the redo copy to its member in the sink (the copier gives bytes, the sink wants offsets).

    With ``spool_dir`` (a stream) the log copier writes to an unlinked temporary file and never waits for the
    stream: a stream is only as fast as its reader (ssh, a slow disk at the other end), and a log copier writing
    into it directly would fall behind with it, so the server would overwrite redo not yet copied (MariaDB) or, with
    MySQL's redo consumer, stall every writer until the network caught up. A pump thread streams the spool into the
    archive while the data files are copied, interleaved with their frames, so the spool holds only what the
    stream has not taken yet (its peak is logged); :meth:`hold` before the end point is read keeps the last
    :data:`REDO_HOLD_BACK` bytes back for the cut, and :meth:`finish` sends the rest.
    """

    def __init__(self, sink: Sink, name: str, spool_dir: Path | None = None) -> None:
        self.sink = sink
        self.name = name
        self.file_id: int | None = None
        self.offset = 0  # bytes the log copier gave
        self.sent = 0  # bytes of the spool already in the sink
        self.peak = 0  # largest spool backlog (offset - sent)
        self.spool: BinaryIO | None = None
        self._limit: int | None = None
        self._pump: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        if spool_dir is not None:
            try:
                self.spool = tempfile.TemporaryFile(prefix="innostream-redo-", dir=spool_dir, buffering=0)
            except OSError as exc:
                raise TargetError(f"cannot create the redo spool file: {exc.strerror}", file=str(spool_dir),
                                  hint="use --tmpdir DIR with room for the redo written during the backup") from None

    def __call__(self, data: bytes) -> None:
        if self.spool is not None:
            try:
                self.spool.write(data)  # unbuffered: the pump reads the descriptor
            except OSError as exc:
                raise TargetError(f"cannot write the redo spool file: {exc.strerror}",
                                  hint="use --tmpdir DIR with room for the redo written during the backup") from None
            self.offset += len(data)
            self.peak = max(self.peak, self.offset - self.sent)
            return
        if self.file_id is None:
            self.file_id = self.sink.begin_file(self.name)
        self.sink.write(self.file_id, self.offset, data)
        self.offset += len(data)

    def start_pump(self) -> None:
        """Stream the spool into the archive from now on (a no-op without a spool)."""
        if self.spool is None or self._pump is not None:
            return
        self.file_id = self.sink.begin_file(self.name)
        self._pump = threading.Thread(target=self._run, name="redo-pump", daemon=True)
        self._pump.start()

    def hold(self) -> None:
        """The end point is about to be read: from here the pump sends nothing past the current offset minus
        :data:`REDO_HOLD_BACK` (the block the end LSN lies in comes later than anything copied now)."""
        self._limit = max(self.sent, self.offset - REDO_HOLD_BACK)

    def _send(self, end: int, piece: int = 4 << 20) -> None:
        assert self.spool is not None
        assert self.file_id is not None
        while self.sent < end:
            data = os.pread(self.spool.fileno(), min(piece, end - self.sent), self.sent)
            if not data:
                raise TargetError("the redo spool file is shorter than what was written to it")
            self.sink.write(self.file_id, self.sent, data)
            self.sent += len(data)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                limit = self._limit
                end = limit if limit is not None else self.offset - REDO_HOLD_BACK
                if end - self.sent >= REDO_PUMP_PIECE or (limit is not None and end > self.sent):
                    self._send(end)
                else:
                    self._stop.wait(0.05)
        except BaseException as exc:  # reported by finish(); the backup is aborting if the sink failed
            self._error = exc

    def _stop_pump(self) -> None:
        if self._pump is not None:
            self._stop.set()
            self._pump.join(timeout=60)
            self._pump = None

    def finish(self, chunk: int = 4 << 20, cut: tuple[int, bytes] | None = None) -> None:
        """End the member; what the spool still holds is streamed into the sink now. ``cut`` (offset, last piece):
        the copy ends with that piece at that offset (the family's :meth:`cut_redo_copy`), whatever was written
        after."""
        if cut is not None and cut[0] > self.offset:
            raise SourceError(f"the redo copy ends at byte {self.offset}, before its last block at byte {cut[0]}")
        size = self.offset if cut is None else cut[0] + len(cut[1])
        if self.spool is not None:
            self._stop_pump()
            if self._error is not None:
                raise self._error
            if cut is not None and cut[0] < self.sent:  # hold() makes this impossible; never send a wrong copy
                raise SourceError(f"the redo copy's last block at byte {cut[0]} was streamed already (to byte "
                                  f"{self.sent})")
            if self.file_id is None:
                self.file_id = self.sink.begin_file(self.name)
            left = self.offset - self.sent
            self._send(self.offset if cut is None else cut[0], chunk)
            log.info("Redo spool: %d of %d bytes of redo were left for the end of the stream (peak backlog %d)",
                     left, self.offset, self.peak)
            self.close()
        elif self.file_id is None:
            self.file_id = self.sink.begin_file(self.name)
        if cut is not None and cut[1]:
            self.sink.write(self.file_id, cut[0], cut[1])  # in place when not spooled (the target directory)
        self.sink.end_file(self.file_id, size)

    def close(self) -> None:
        self._stop_pump()
        if self.spool is not None:
            with contextlib.suppress(OSError):
                self.spool.close()
            self.spool = None


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
        self.family: Family | None = None
        self.locks: BackupLocks | None = None
        self.consumer: RedoConsumer | None = None
        self.redo: Any = None
        self.sink: Sink | None = None
        self.progress: Progress | None = None
        self.pool: Workers | None = None
        self.copier: FileCopier | None = None
        self.redo_writer: _RedoWriter | None = None
        self._last_scanned = 0
        self._last_lsn_poll = 0.0
        self.facts: ServerFacts | None = None
        self._lost = False  # the main session (and with it the locks) is gone

    # -- helpers -------------------------------------------------------------------------------------------------

    def _paths(self, facts: ServerFacts) -> SourceDirs:
        cfg = self.config
        return find_source_dirs(facts, datadir=cfg.datadir, data_home_dir=cfg.data_home_dir, log_dir=cfg.log_dir,
                                undo_dir=cfg.undo_dir, target_dir=cfg.target_dir)

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
        if (self.progress is not None and self.session is not None and self.family is not None
                and now - self._last_lsn_poll >= 1.0):
            self._last_lsn_poll = now
            # Also the liveness check of the session holding the locks: a killed session or a dead server must stop
            # the backup now, not after hours of copying without DDL protection.
            try:
                lsn = self.family.current_lsn(self.session)
            except SourceError as exc:
                raise self._session_lost(exc) from None
            self.progress.set_redo(scanned, lsn)
            if self.facts is not None:  # e.g. MySQL redo logging disabled meanwhile: the copy cannot be consistent
                self._check_server_still()
        if self.progress is not None:
            self.progress.render()

    def _check_server_still(self) -> None:
        """What the family refuses at the start must not become true during the backup (under --lock-ddl=reduced
        nothing stops MySQL's ALTER INSTANCE DISABLE INNODB REDO_LOG during the copy)."""
        assert self.family is not None
        assert self.session is not None
        assert self.facts is not None
        try:
            self.family.check_server(self.session, self.facts)
        except SourceError as exc:
            raise SourceError(f"during the backup: {exc.message}; the backup is incomplete", hint=exc.hint) from None

    def _session_lost(self, exc: SourceError) -> SourceError:
        """The main session failed mid-backup: say whether the server or only our session went away."""
        assert self.session is not None
        self._lost = True
        try:
            connect(self.session.args).close()
        except SourceError:
            return SourceError(f"the server went away during the backup ({exc.message}); the backup is incomplete",
                               hint="check the server's error log, then run the backup again")
        what = "the backup's connection was killed"
        if self.locks is not None and self.locks.ddl_locked:
            what += "; DDL was no longer blocked"
        return SourceError(f"{what} ({exc.message}); the backup is incomplete",
                           hint="do not KILL the backup's session; run the backup again")

    def _wait(self, futures: list[cf.Future[int]]) -> None:
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
        # The base first: a wrong one is refused before the server is touched.
        base = resolve_base(cfg.incremental_basedir, cfg.incremental_lsn, cfg.s3_options, cfg.base_key)
        args = resolve_options(cfg.connection)
        self.session = Session(args, "main")
        facts = self.facts = read_server_facts(self.session)
        flavor = facts.flavor
        fam = self.family = family(flavor)
        self.result.flavor, self.result.server_version = flavor, facts.version
        log.info("Using server version %s (%s)", facts.version, flavor)
        dirs = self._paths(facts)
        if cfg.target_dir is None and self.out is not None and hasattr(self.out, "isatty") and self.out.isatty():
            raise TargetError("refusing to write the binary stream to a terminal",
                              hint="pipe it (| innostream extract -C DIR) or redirect it to a file")
        server_uuid = str(self.session.value("SELECT UUID()"))
        source_uuid = facts.var("server_uuid") or None  # MySQL only; MariaDB has none
        page_size = int(facts.var("innodb_page_size", "16384") or 16384)
        if base is not None:
            check_server(base, flavor=str(flavor), version=facts.version, page_size=page_size,
                         server_uuid=source_uuid)
            # Before anything is locked or written; checked again at the redo copy's start checkpoint.
            check_lsn(base, fam.read_log_status(self.session, binlog=False).checkpoint_lsn)
            self.result.from_lsn = base.from_lsn
        plugin_config = fam.encryption_plugin_config(self.session)
        binlog_on = facts.var("log_bin", "0").upper() in ("1", "ON")
        # Every privilege the backup will use, now: a missing one must not be found after hours of copying.
        check_privileges(self.session, fam.privilege_probes(binlog=binlog_on))

        if not cfg.lock:
            log.warning("--no-lock: DDL is not blocked; a table created, dropped, renamed or rebuilt during the "
                        "backup makes it inconsistent, and non-InnoDB tables and the binlog position are not "
                        "consistent with the data")
        tracking_since: int | None = None
        if cfg.page_tracking and flavor != "mysql":
            log.warning("--page-tracking is MySQL's component_mysqlbackup; on %s every page is scanned", flavor)
        elif cfg.page_tracking:
            # On from now, for the next incremental; a no-op when it runs already (its start LSN is kept).
            tracking_since = page_tracking_start(self.session)
            if tracking_since is not None:
                log.info("Page tracking on since LSN %d", tracking_since)
        self.locks = fam.backup_locks(self.session, enabled=cfg.lock)
        # --lock-ddl=reduced (the default): DDL runs on during the InnoDB copy and is settled at the end
        # (innostream.ddl_track); in an incremental too, whose settled files come whole.
        reduced = cfg.lock and cfg.lock_ddl in (None, "reduced")
        if reduced:
            self.locks.begin()
        else:  # locks before the inventory: the list of files cannot change once DDL is blocked
            self.locks.lock_ddl()
            ddl_blocked = time.monotonic()
        if seen_elsewhere(facts, dirs):  # a server in a container or chroot: prove these are its live files
            prove_live_datadir(self.session, fam, facts, dirs)
        inventory = self._inventory(facts, dirs)
        total = sum(f.size for f in inventory.innodb)
        log.info("Found %d InnoDB files (%s bytes) and %d other files", len(inventory.innodb), total,
                 len(inventory.other))
        for path in inventory.skipped:
            log.debug("not copied: %s", path)
        for rf in inventory.remote:
            log.info("Tablespace outside the datadir: %s (stored as %s)", rf.path, rf.name)
        tracker = DdlTracker(self.session, flavor, inventory.innodb) if reduced else None

        meta_info: dict[str, Any] = {"flavor": flavor, "server_version": facts.version,
                                     "tool": f"innostream {__version__}", "hostname": os.uname().nodename,
                                     "start_time": started.isoformat(timespec="seconds"), "page_size": page_size}
        if base is not None:
            meta_info["from_lsn"] = base.from_lsn
        self.sink = _open_sink(cfg, self.out, meta_info)
        label = str(Path(cfg.target_dir).absolute()) if cfg.target_dir is not None else ""
        self.progress = Progress(total, len(inventory.innodb))
        copier = self.copier = FileCopier(self.sink, flavor, cancel=self.cancel, progress=self.progress,
                            chunk_size=cfg.chunk_size, streaming=cfg.target_dir is None, target_label=label,
                            incremental_lsn=base.from_lsn if base is not None else None, spool_dir=cfg.tmpdir,
                            page_size=page_size)

        # Redo: consumer first (its start point is the checkpoint at registration), then the copier thread.
        if fam.supports_redo_consumer(facts):
            self.consumer = RedoConsumer(args, cfg.redo_consumer_max_lag)
        spool = cfg.spool_redo if cfg.spool_redo is not None else cfg.target_dir is None
        redo_writer = _RedoWriter(self.sink, fam.redo_copy_name,
                                  Path(cfg.tmpdir or tempfile.gettempdir()) if spool else None)
        self.redo_writer = redo_writer
        self.redo = fam.open_redo_copier(dirs.log_dir, redo_writer, poll_interval=cfg.poll_interval,
                                         advance=self.consumer.advance if self.consumer else None)
        redo_writer.start_pump()  # a stream: the redo copy goes into it interleaved with the data files
        self.redo.start()
        self.result.start_lsn = int(self.redo.start_lsn)
        copier.start_lsn = self.result.start_lsn
        log.info("Log copying started at checkpoint LSN %d", self.result.start_lsn)
        if base is not None:
            check_lsn(base, self.result.start_lsn)
            log.info("Incremental backup: pages newer than LSN %d (base: %s%s)", base.from_lsn, base.source,
                     ", its start checkpoint" if base.to_lsn and base.from_lsn != base.to_lsn else "")
            if tracking_since is not None:
                self._use_page_tracking(dirs.datadir, tracking_since, base.from_lsn)

        self.pool = Workers(cfg.parallel, copier.copy)
        if cfg.throttle:
            copier.throttle = Throttle(cfg.throttle, self.cancel)
            log.info("Data copy throttled to %.1f MB/s (the redo copy is not)", cfg.throttle / 1e6)
        if tracker is not None:
            copier.on_vanished = tracker.vanished
        self._copy_all(inventory.innodb)
        if tracker is not None:
            copier.throttle = None  # what runs under the DDL block must be short
            self.locks.lock_ddl()
            ddl_blocked = time.monotonic()
            inventory = self._settle_ddl(tracker, copier, facts, dirs)
            self._check_server_still()  # DDL is blocked from here on: nothing can change it any more

        # The end: everything that must be consistent with one LSN happens under the commit block.
        self.progress.add_total(sum(f.size for f in inventory.other), len(inventory.other))
        lock_started = time.monotonic()
        with self.locks.block_commits(need_read_lock=inventory.needs_read_lock or fam.read_lock_blocks_commits):
            self._copy_all(inventory.other)
            redo_writer.hold()  # what the cut below may rewrite stays in the spool
            status = fam.read_log_status(self.session, binlog=binlog_on)
            # The log copier reads the redo file; make sure it holds everything up to this LSN.
            self.session.execute("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS")
            log.info("Server LSN at the end of the copy: %d; waiting for the log copy to reach it", status.lsn)
            end = self._stop_redo(status.lsn)
            to_lsn = self._latest_checkpoint(status)
            # Commits may have gone on (MySQL): the copy must end at the LSN the binlog position belongs to.
            cut = fam.cut_redo_copy(self.redo, status.lsn)
            if cut is not None:
                end, to_lsn = status.lsn, min(to_lsn, status.lsn)
        self.result.lock_seconds = time.monotonic() - lock_started
        self.locks.release()
        if cfg.lock:
            self.result.ddl_blocked_seconds = time.monotonic() - ddl_blocked
            log.info("DDL was blocked for %.2f s (%s)", self.result.ddl_blocked_seconds,
                     "the end of the backup: --lock-ddl=reduced" if reduced else "the whole copy: --lock-ddl=full")
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        redo_writer.finish(cut=cut)

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
        res.delta_pages = copier.delta_pages
        log.info("The latest check point (for incremental): '%d'", to_lsn)
        self.progress.close()
        log.info(self.progress.summary())

        # Metadata last; xtrabackup_checkpoints last of all: a target without it is not a backup.
        files = build_metadata(facts, my_cnf=fam.backup_my_cnf(facts, inventory.undo_files, plugin_config),
                               to_lsn=res.to_lsn, last_lsn=res.end_lsn, flushed_lsn=status.flushed_lsn,
                               binlog=res.binlog, lock_seconds=res.lock_seconds, started=started,
                               ended=datetime.now(), argv=cfg.argv,
                               stream_format=None if cfg.target_dir is not None else cfg.stream_format,
                               compressed=cfg.compress, server_uuid=server_uuid, from_lsn=res.from_lsn,
                               source_uuid=source_uuid, partial=cfg.selection is not None,
                               start_lsn=res.start_lsn)
        if cfg.selection is not None:  # what a partial backup holds, for prepare and for the user
            self.sink.add_bytes(PARTIAL_RECORD, cfg.selection.record([f.name for f in (*inventory.innodb,
                                                                                     *inventory.other)]))
        if inventory.remote:  # where the files that lived outside the datadir go back to (restore)
            log.info("Writing %s", REMOTE_FILES)
            self.sink.add_bytes(REMOTE_FILES, build_remote_files(inventory.remote))
        for name, data in files.items():
            log.info("Writing %s", name)
            self.sink.add_bytes(name, data)
        res.metadata = files
        trailer: dict[str, Any] = {"flavor": flavor, "server_version": facts.version, "start_lsn": res.start_lsn,
                                   "end_lsn": res.end_lsn, "to_lsn": res.to_lsn, "last_lsn": res.end_lsn,
                                   "from_lsn": res.from_lsn, "page_size": page_size,
                                   "backup_type": meta.BACKUP_TYPE_INCREMENTAL if base else meta.BACKUP_TYPE_FULL}
        if source_uuid:
            trailer["server_uuid"] = source_uuid
        self.sink.close(trailer)
        self.sink = None
        complete = getattr(self.out, "complete", None) if cfg.target_dir is None else None
        if complete is not None:  # ``--to s3://``: the object appears only now, before "completed OK!"
            complete()
        if cfg.target_dir is None and self.out is not None and cfg.fsync:
            # ``backup --stream > FILE``: the archive is on disk before "completed OK!" (a pipe has nothing to sync)
            try:
                fsync_output(self.out)
            except OSError as exc:
                raise TargetError(f"cannot write the archive: {exc.strerror or exc}") from None
        log.info("Transaction log of lsn (%d) to (%d) was copied.", res.start_lsn, res.end_lsn)
        return res

    def _inventory(self, facts: ServerFacts, dirs: SourceDirs) -> Inventory:
        """What the backup copies, listed now (at the start, and again under the DDL block at the end)."""
        assert self.session is not None
        return enumerate_files(facts, dirs.datadir, dirs.data_home, dirs.undo_dir,
                               server_tablespaces(self.session, facts, dirs), selection=self.config.selection)

    def _settle_ddl(self, tracker: DdlTracker, copier: FileCopier, facts: ServerFacts, dirs: SourceDirs) -> Inventory:
        """Under the DDL block, after the InnoDB copy: list the files again, copy what DDL created or changed during
        the copy, record what it dropped (innostream.ddl_track); returns the inventory as it is now."""
        assert self.session is not None
        assert self.sink is not None
        assert self.progress is not None
        now = self._inventory(facts, dirs)
        incremental = copier.incremental_lsn is not None
        plan = tracker.settle(now.innodb, incremental=incremental)
        for f in plan.copy:
            log.info("DDL during the backup: %s %s", "copying again" if f.name.endswith(NEW_SUFFIX) else "new",
                     f.name.removesuffix(NEW_SUFFIX))
        for name in plan.deleted:
            log.info("DDL during the backup: %s was dropped or renamed", name)
        copier.on_vanished = None  # DDL is blocked now: a file that disappears is an error again
        self.progress.add_total(sum(f.size for f in plan.copy), len(plan.copy))
        since, copier.incremental_lsn = copier.incremental_lsn, None  # an incremental's settled files: whole
        try:
            self._copy_all(plan.copy)
        finally:
            copier.incremental_lsn = since
        if plan:
            self.sink.add_bytes(DDL_RECORD, plan.record())
            if incremental:
                log.warning("DDL ran during this incremental: %d files come whole with the record %s; prepare "
                            "this chain with innostream (mariadb-backup --prepare does not read the record)",
                            len(plan.copy) + len(plan.deleted), DDL_RECORD)
        self.result.ddl_settled = len(plan.copy) + len(plan.deleted)
        return now

    def _use_page_tracking(self, datadir: Path, since: int, from_lsn: int) -> None:
        """Read only the pages MySQL saw change from the base to the redo copy's start (later changes are in the
        redo copy); with a note, scan every page when tracking does not cover that range."""
        assert self.session is not None
        assert self.copier is not None
        if since > from_lsn:
            log.info("Page tracking started at LSN %d, after the base's LSN %d: scanning every page", since,
                     from_lsn)
            return
        tracked = changed_pages(self.session, datadir, from_lsn, self.result.start_lsn)
        if tracked is None:
            log.info("Scanning every page instead of page tracking's list")
            return
        self.copier.tracked = tracked
        self.result.page_tracking = True
        log.info("Page tracking: %d changed pages in %d tablespaces since LSN %d",
                 sum(len(v) for v in tracked.values()), len(tracked), from_lsn)

    def _stop_redo(self, lsn: int) -> int:
        """Stop the log copier at or past ``lsn`` while keeping Ctrl-C responsive."""
        ends: list[int] = []
        errors: list[BaseException] = []

        def stop() -> None:
            try:
                ends.append(int(self.redo.stop(lsn, timeout=REDO_STOP_TIMEOUT)))
            except BaseException as exc:  # re-raised on the main thread
                errors.append(exc)

        t = threading.Thread(target=stop, name="redo-stop", daemon=True)
        t.start()
        while t.is_alive():
            t.join(timeout=0.25)
            self._tick()
        if errors:
            raise errors[0]
        self._tick()
        return ends[0]

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
        if self.locks is not None and not self._lost:  # a lost session's locks went with it
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
        with sigterm_raises(lambda: Interrupted("terminated by SIGTERM; the backup is incomplete and was "
                                                "discarded")):
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
