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
    check_privileges,
    connect,
    resolve_options,
)
from innostream.copier import DEFAULT_CHUNK, FileCopier, SourceFile, Workers
from innostream.datadir import (
    REMOTE_FILES,
    SourceDirs,
    build_remote_files,
    enumerate_files,
    find_source_dirs,
    server_tablespaces,
)
from innostream.errors import FileExistsInTarget, InnostreamError, Interrupted, SourceError, TargetError
from innostream.families import Family, family, read_server_facts
from innostream.fileio import fsync_output
from innostream.formats import xtrabackup_meta as meta
from innostream.log import log
from innostream.metadata import build_metadata
from innostream.progress import Progress
from innostream.signals import sigterm_raises
from innostream.sink import Sink
from innostream.target import TargetDir

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
    #: The longest MySQL's redo log consumer may hold the server's writers behind a backup that copies no redo.
    redo_consumer_max_lag: float = REDO_CONSUMER_MAX_LAG
    argv: tuple[str, ...] = ()  # the command line the CLI got, for xtrabackup_info's tool_command
    fsync: bool = True  # the target directory, or the archive when ``out`` is a regular file, synced (--no-fsync)


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

    def finish(self, chunk: int = 4 << 20, cut: tuple[int, bytes] | None = None) -> None:
        """End the member; a spooled copy is streamed into the sink now. ``cut`` (offset, last piece): the copy
        ends with that piece at that offset (the family's :meth:`cut_redo_copy`), whatever was written after."""
        if cut is not None and cut[0] > self.offset:
            raise SourceError(f"the redo copy ends at byte {self.offset}, before its last block at byte {cut[0]}")
        size = self.offset if cut is None else cut[0] + len(cut[1])
        if self.spool is not None:
            self.file_id = self.sink.begin_file(self.name)
            self.spool.flush()
            pos = 0
            end = self.offset if cut is None else cut[0]
            while pos < end:
                data = os.pread(self.spool.fileno(), min(chunk, end - pos), pos)
                if not data:
                    raise TargetError("the redo spool file is shorter than what was written to it")
                self.sink.write(self.file_id, pos, data)
                pos += len(data)
            self.close()
        elif self.file_id is None:
            self.file_id = self.sink.begin_file(self.name)
        if cut is not None and cut[1]:
            self.sink.write(self.file_id, cut[0], cut[1])  # in place when not spooled (the target directory)
        self.sink.end_file(self.file_id, size)

    def close(self) -> None:
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
        self.redo_writer: _RedoWriter | None = None
        self._last_scanned = 0
        self._last_lsn_poll = 0.0
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
        if self.progress is not None:
            self.progress.render()

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
        args = resolve_options(cfg.connection)
        self.session = Session(args, "main")
        facts = read_server_facts(self.session)
        flavor = facts.flavor
        fam = self.family = family(flavor)
        self.result.flavor, self.result.server_version = flavor, facts.version
        log.info("Using server version %s (%s)", facts.version, flavor)
        datadir, home, logd, undo = self._paths(facts)
        if cfg.target_dir is None and self.out is not None and hasattr(self.out, "isatty") and self.out.isatty():
            raise TargetError("refusing to write the binary stream to a terminal",
                              hint="pipe it (| innostream extract -C DIR) or redirect it to a file")
        server_uuid = str(self.session.value("SELECT UUID()"))
        plugin_config = fam.encryption_plugin_config(self.session)
        binlog_on = facts.var("log_bin", "0").upper() in ("1", "ON")
        # Every privilege the backup will use, now: a missing one must not be found after hours of copying.
        check_privileges(self.session, fam.privilege_probes(binlog=binlog_on))

        if not cfg.lock:
            log.warning("--no-lock: DDL is not blocked; a table created, dropped, renamed or rebuilt during the "
                        "backup makes it inconsistent, and non-InnoDB tables and the binlog position are not "
                        "consistent with the data")
        self.locks = fam.backup_locks(self.session, enabled=cfg.lock)
        # Locks before the inventory: the list of files cannot change once DDL is blocked.
        self.locks.lock_ddl()
        inventory = enumerate_files(facts, datadir, home, undo, server_tablespaces(self.session, facts))
        total = sum(f.size for f in inventory.innodb)
        log.info("Found %d InnoDB files (%s bytes) and %d other files", len(inventory.innodb), total,
                 len(inventory.other))
        for path in inventory.skipped:
            log.debug("not copied: %s", path)
        for rf in inventory.remote:
            log.info("Tablespace outside the datadir: %s (stored as %s)", rf.path, rf.name)

        meta_info = {"flavor": flavor, "server_version": facts.version, "tool": f"innostream {__version__}",
                     "hostname": os.uname().nodename, "start_time": started.isoformat(timespec="seconds")}
        self.sink = _open_sink(cfg, self.out, meta_info)
        label = str(Path(cfg.target_dir).absolute()) if cfg.target_dir is not None else ""
        self.progress = Progress(total, len(inventory.innodb))
        copier = FileCopier(self.sink, flavor, cancel=self.cancel, progress=self.progress,
                            chunk_size=cfg.chunk_size, streaming=cfg.target_dir is None, target_label=label)

        # Redo: consumer first (its start point is the checkpoint at registration), then the copier thread.
        if fam.supports_redo_consumer(facts):
            self.consumer = RedoConsumer(args, cfg.redo_consumer_max_lag)
        spool = cfg.spool_redo if cfg.spool_redo is not None else cfg.target_dir is None
        redo_writer = _RedoWriter(self.sink, fam.redo_copy_name,
                                  Path(cfg.tmpdir or tempfile.gettempdir()) if spool else None)
        self.redo_writer = redo_writer
        self.redo = fam.open_redo_copier(logd, redo_writer, poll_interval=cfg.poll_interval,
                                         advance=self.consumer.advance if self.consumer else None)
        self.redo.start()
        self.result.start_lsn = int(self.redo.start_lsn)
        log.info("Log copying started at checkpoint LSN %d", self.result.start_lsn)

        self.pool = Workers(cfg.parallel, copier.copy)
        self._copy_all(inventory.innodb)

        # The end: everything that must be consistent with one LSN happens under the commit block.
        self.progress.add_total(sum(f.size for f in inventory.other), len(inventory.other))
        lock_started = time.monotonic()
        with self.locks.block_commits(need_read_lock=inventory.needs_read_lock or fam.read_lock_blocks_commits):
            self._copy_all(inventory.other)
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
        log.info("The latest check point (for incremental): '%d'", to_lsn)
        self.progress.close()
        log.info(self.progress.summary())

        # Metadata last; xtrabackup_checkpoints last of all: a target without it is not a backup.
        files = build_metadata(facts, my_cnf=fam.backup_my_cnf(facts, inventory.undo_files, plugin_config),
                               to_lsn=res.to_lsn, last_lsn=res.end_lsn, flushed_lsn=status.flushed_lsn,
                               binlog=res.binlog, lock_seconds=res.lock_seconds, started=started,
                               ended=datetime.now(), argv=cfg.argv,
                               stream_format=None if cfg.target_dir is not None else cfg.stream_format,
                               compressed=cfg.compress, server_uuid=server_uuid)
        if inventory.remote:  # where the files that lived outside the datadir go back to (restore)
            log.info("Writing %s", REMOTE_FILES)
            self.sink.add_bytes(REMOTE_FILES, build_remote_files(inventory.remote))
        for name, data in files.items():
            log.info("Writing %s", name)
            self.sink.add_bytes(name, data)
        res.metadata = files
        self.sink.close({"flavor": flavor, "server_version": facts.version, "start_lsn": res.start_lsn,
                         "end_lsn": res.end_lsn, "to_lsn": res.to_lsn, "last_lsn": res.end_lsn})
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
