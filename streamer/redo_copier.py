"""Live redo log copiers: follow a running server's redo log and append it to the backup's redo copy.

A hot backup copies data files while the server keeps changing them; the redo written meanwhile is what makes the
copy consistent at prepare. The copier starts at the server's checkpoint, then polls the log files (read-only,
``os.pread``) and appends every complete, validated piece, in the layout the reference tools use:

* MySQL 8.0.30+ -> ``xtrabackup_logfile``: the 2048-byte header of the server file holding the checkpoint (both
  checkpoints set to the start checkpoint, START_LSN to the first copied block, checksums recomputed), then raw
  512-byte blocks from ``align_down(checkpoint_lsn, 512)``. Files ``#ib_redoN`` are followed by the LSN range in
  their headers; a partial last block is only written on the final pass.
* MariaDB 10.8+ -> ``ib_logfile0``: a 12288-byte prefix (creator "Backup x.y.z", CHECKPOINT_1 = the start
  checkpoint), then the raw mini-transactions from ``checkpoint_lsn`` with each sequence byte set to 1, never
  wrapping.

Data at the write frontier that does not validate is "not yet written" and is retried on the next poll. Data that
the server has already reused is detected from LSN arithmetic and raises :class:`RedoOverwritten`.

The copy starts a checkpoint age behind the server (under write load tens of MiB, most of the capacity), so
``start()`` copies that backlog itself, in large reads, before the polling thread starts and before the backup's
data copy threads compete with it for the GIL.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from innostream.errors import Corrupt, RedoOverwritten, SourceError, Truncated
from innostream.formats import log0files_io as my
from innostream.formats import mtr0log as ma
from innostream.formats.errors import FormatError
from innostream.log import log

OVERWRITE_HINT = "increase innodb_redo_log_capacity / innodb_log_file_size or reduce load during the backup"
#: Seconds without progress while stop() waits for an LSN the server has already written, or while the copy stands
#: at an invalid MySQL block that valid later log follows, before giving up: the frontier is retried on every poll
#: until then (a block or mtr being written validates on a later read).
STALL_TIMEOUT = 30.0
MYSQL_CHUNK = 4 << 20  # bytes read per pread on MySQL (whole blocks)
MYSQL_LOOKAHEAD_BLOCKS = 64  # blocks past an invalid one searched for later valid log (an invalid block, not the end)
MARIADB_WINDOW_MIN = 64 << 10  # first read size on MariaDB; doubled while an mtr is incomplete
MARIADB_WINDOW_MAX = 2 * ma.MTR_SIZE_MAX  # an mtr is at most 1 MiB, so this window always holds one
MARIADB_READ_MAX = 8 << 20  # reads grow up to this while they are consumed whole (the backlog at the start)
assert MARIADB_READ_MAX >= MARIADB_WINDOW_MAX
MAX_BYTES_PER_POLL = 16 << 20  # bound one poll so that progress lines and advance() keep coming

Writer = Callable[[bytes], None]


def pread_exact(fd: int, size: int, offset: int, name: str) -> bytes:
    """``os.pread`` that returns exactly ``size`` bytes or raises :class:`Truncated` (a file shrank under us)."""
    chunks = []
    got = 0
    while got < size:
        data = os.pread(fd, size - got, offset + got)
        if not data:
            raise Truncated(f"{name} ended at offset {offset + got}, wanted {size} bytes", file=name, offset=offset)
        chunks.append(data)
        got += len(data)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _source_error(exc: OSError) -> SourceError:
    return SourceError(f"cannot read the redo log: {exc.strerror or exc}", file=exc.filename)


class RedoCopier:
    """Base: the polling thread, the stop/abort protocol and progress logging. Subclasses do the format work.

    ``write`` receives the copy file's bytes in order, header first, from the copier thread; ``advance`` (optional)
    gets the copied LSN after each poll, e.g. for MySQL's ``innodb_redo_log_consumer_advance``.
    """

    copy_file_name = ""

    def __init__(
        self, log_dir: Path, write: Writer, *, poll_interval: float = 0.1, advance: Callable[[int], None] | None = None
    ) -> None:
        self.log_dir = Path(log_dir)
        self._write = write
        self.poll_interval = poll_interval
        self._advance = advance
        self.start_lsn = 0
        self.scanned_lsn = 0
        self.bytes_written = 0
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._quit = False
        self._target: int | None = None
        self._error: BaseException | None = None
        self._advanced = 0
        self._logged = 0
        self.frontier = "not polled yet"  # why the last poll stopped where it did
        #: The last poll stopped at an invalid piece of log although valid log the server wrote later follows it: not
        #: the end of the log, so it must validate soon (a torn read) or the backup fails after ``stall_timeout``.
        self.invalid_before_valid = False
        self.stall_timeout = STALL_TIMEOUT
        #: Upper bound of the backlog at start (set by _begin): the server never writes more than its log capacity
        #: past its checkpoint, so once this much is copied, what start() found is copied.
        self.backlog_bound = 0

    # --- public API ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Read the checkpoint, write the copy's header, copy the backlog, then start the polling thread.

        The backlog (checkpoint to the current end of the log) is copied here, on the caller's thread, so that it
        is done before anything else of the backup runs: a backup under load starts most of a capacity behind.

        Raises:
            SourceError, RedoOverwritten, Corrupt: as the thread would, but at once.
        """
        if self._thread is not None:
            raise RuntimeError("redo copier already started")
        try:
            self._begin()
            log.info("Transaction log copy starts at lsn (%d)", self.start_lsn)
            self._catch_up()
        except OSError as exc:
            self._close()
            raise _source_error(exc) from exc
        except BaseException:
            self._close()
            raise
        self._thread = threading.Thread(target=self._run, name="redo-copier", daemon=True)
        self._thread.start()

    @property
    def error(self) -> BaseException | None:
        """The copier thread's error once it failed (it stopped then), else None; stop() and check() raise it."""
        return self._error

    def current_checkpoint(self) -> int:
        """Re-read the server's latest checkpoint LSN (the backup's ``to_lsn``)."""
        raise NotImplementedError

    def stop(self, min_lsn: int, timeout: float = 300.0) -> int:
        """Copy until ``scanned_lsn >= min_lsn``, stop the thread and return the final scanned LSN.

        Raises:
            The copier thread's error, or SourceError if ``min_lsn`` is not reached within ``timeout``.
        """
        if self._thread is None:
            raise RuntimeError("redo copier not started")
        self._target = min_lsn
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._quit = True
            self._wake.set()
            self._thread.join(10)
            self._close()
            self._reraise()
            raise SourceError(
                f"failed to copy enough redo log: copied up to lsn {self.scanned_lsn}, need {min_lsn}",
                lsn=self.scanned_lsn,
                hint="the server may not have written that LSN yet; check the server error log",
            )
        self._close()
        self._reraise()
        log.info("Stopping log copying thread at LSN %d", self.scanned_lsn)
        return self.scanned_lsn

    def check(self) -> None:
        """Raise the copier thread's error now, if it already failed (lets the backup stop early)."""
        if self._thread is not None and not self._thread.is_alive():
            self._reraise()

    def abort(self) -> None:
        """Stop the thread without waiting for any LSN (cancel path); errors are dropped."""
        self._quit = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        self._close()

    # --- subclass hooks ----------------------------------------------------------------------------------------
    def _begin(self) -> None:
        raise NotImplementedError

    def _poll(self, final: bool) -> bool:
        """Copy everything valid that is there now; ``final`` writes a partial last piece as well.

        Returns True if it stopped at the end of the log, False if at the per-poll byte bound (more is there).
        """
        raise NotImplementedError

    def _target_reached(self, target: int) -> bool:
        return self.scanned_lsn >= target

    def _stalled(self, target: int) -> None:
        """Called when no progress was made for ``stall_timeout`` seconds while waiting for ``target``."""
        raise Corrupt(
            f"redo log does not advance past lsn {self.scanned_lsn} ({self.frontier}), need {target}",
            lsn=self.scanned_lsn,
            hint="the server reports that LSN as written but the log there stays invalid; check the server error log",
        )

    def _close(self) -> None:
        pass

    # --- thread ------------------------------------------------------------------------------------------------------
    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._write(data if type(data) is bytes else bytes(data))
        self.bytes_written += len(data)

    def _report(self) -> None:
        """Progress line for new data, then tell ``advance`` what is copied."""
        if self.scanned_lsn != self._logged:
            self._logged = self.scanned_lsn
            log.info(">> log scanned up to (%d)", self.scanned_lsn)
        self._do_advance()

    def _catch_up(self) -> None:
        """Poll without pause until a poll reaches the end of the log or the backlog found at start is copied.

        The second bound keeps a server that writes as fast as we read (or MySQL's consumer-throttled one) from
        holding the backup in start(); the thread goes on from there.
        """
        limit = self.start_lsn + self.backlog_bound
        while True:
            at_end = self._poll(final=False)
            self._report()
            if at_end or self.scanned_lsn >= limit:
                return

    def _reraise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _run(self) -> None:
        last_progress = time.monotonic()
        invalid_since: float | None = None
        try:
            while not self._quit:
                before = self.scanned_lsn
                target = self._target
                at_end = self._poll(final=False)
                self._report()
                now = time.monotonic()
                if self.scanned_lsn != before:
                    last_progress = now
                if target is not None:
                    if self._target_reached(target):
                        self._poll(final=True)
                        self._report()
                        return
                    if now - last_progress > self.stall_timeout:
                        self._stalled(target)
                elif not self.invalid_before_valid or self.scanned_lsn != before:
                    invalid_since = None
                elif invalid_since is None:
                    invalid_since = now  # timed from when it was first seen, not from the last progress
                elif now - invalid_since > self.stall_timeout:
                    # Without this bound the copier would wait forever (and MySQL's redo consumer would hold the
                    # server's writers until --redo-consumer-max-lag-seconds let go).
                    raise Corrupt(
                        f"redo log at lsn {self.scanned_lsn} stays invalid ({self.frontier}) for "
                        f"{self.stall_timeout:g} s although the server wrote valid log after it",
                        lsn=self.scanned_lsn,
                        hint="the server's redo log is damaged there (check its error log); a backup cannot be "
                        "consistent across it",
                    )
                if not at_end:
                    continue  # more is there already: no pause
                self._wake.wait(self.poll_interval if target is None else min(self.poll_interval, 0.05))
                self._wake.clear()
        except OSError as exc:
            self._error = _source_error(exc)
            self._error.__cause__ = exc
        except BaseException as exc:  # handed to stop(); a bug keeps its traceback there
            self._error = exc

    def _do_advance(self) -> None:
        lsn = self._durable_lsn()
        if self._advance is not None and lsn > self._advanced:
            self._advance(lsn)
            self._advanced = lsn

    def _durable_lsn(self) -> int:
        """LSN up to which the copy is written (what the server may now discard)."""
        return self.scanned_lsn


# ---------------------------------------------------------------------------------------------------------------
# MySQL 8.0.30+

_REDO_NAME = re.compile(r"^#ib_redo(\d+)$")


@dataclass
class _RedoFile:
    file_id: int
    path: Path
    start_lsn: int
    end_lsn: int
    size: int
    header: bytes  # the first 2048 bytes when listed


def list_mysql_redo_files(redo_dir: Path) -> list[_RedoFile]:
    """The in-use ``#ib_redoN`` files (``_tmp`` spares skipped) whose header is valid, sorted by start LSN."""
    out = []
    try:
        names = os.listdir(redo_dir)  # noqa: PTH208 (plain names, matched below)
    except FileNotFoundError as exc:
        raise SourceError(f"redo log directory {redo_dir} not found", file=str(redo_dir)) from exc
    for name in names:
        m = _REDO_NAME.match(name)
        if not m:
            continue
        path = redo_dir / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed or renamed while we listed
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, my.LOG_FILE_HDR_SIZE, 0)
        finally:
            os.close(fd)
        if len(head) < my.LOG_FILE_HDR_SIZE:
            continue
        try:
            hdr = my.parse_file_header(head)
        except FormatError:
            continue  # being (re)initialised by the server
        if not hdr.is_8_0_30:
            raise SourceError(f"{path} has redo format {hdr.format}; MySQL 8.0.30+ is required", file=str(path))
        out.append(_RedoFile(int(m.group(1)), path, hdr.start_lsn, my.file_end_lsn(hdr.start_lsn, size), size, head))
    out.sort(key=lambda f: f.start_lsn)
    return out


def mysql_checkpoint(redo_dir: Path) -> tuple[int, _RedoFile]:
    """``recv_find_max_checkpoint``: the greatest valid checkpoint over all files, and the file holding it."""
    best: tuple[int, _RedoFile] | None = None
    for f in list_mysql_redo_files(redo_dir):
        cp = my.find_checkpoint(f.header, f.size)
        if cp is not None and (best is None or cp.lsn > best[0]):
            best = (cp.lsn, f)
    if best is None:
        raise SourceError(f"no valid checkpoint in {redo_dir}", file=str(redo_dir))
    return best


class MySQLRedoCopier(RedoCopier):
    """Copies ``#innodb_redo/#ib_redoN`` into ``xtrabackup_logfile`` (PXB layout)."""

    copy_file_name = "xtrabackup_logfile"

    def __init__(self, log_dir: Path, write: Writer, *, poll_interval: float = 0.1,
                 advance: Callable[[int], None] | None = None) -> None:
        super().__init__(log_dir, write, poll_interval=poll_interval, advance=advance)
        self.redo_dir = self.log_dir / my.LOG_DIRECTORY_NAME
        self._write_lsn = 0  # next block to write (block aligned)
        self._fd: int | None = None
        self._file: _RedoFile | None = None
        self._partial_written = False

    def current_checkpoint(self) -> int:
        return mysql_checkpoint(self.redo_dir)[0]

    def _begin(self) -> None:
        cp, f = mysql_checkpoint(self.redo_dir)
        self.start_lsn = cp
        self.backlog_bound = sum(g.end_lsn - g.start_lsn for g in list_mysql_redo_files(self.redo_dir))
        self._write_lsn = my.align_down(cp)
        self.scanned_lsn = self._write_lsn
        now = time.localtime()  # PXB: "xtrabkup " + ut_sprintf_timestamp(), i.e. "YYMMDD HH:MM:SS" with %2d hour
        creator = (
            my.LOG_HEADER_CREATOR_PXB
            + time.strftime("%y%m%d", now)
            + f" {now.tm_hour:2d}"
            + time.strftime(":%M:%S", now)
        )
        self._emit(my.rewrite_header_for_copy(f.header, cp, creator))

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._file = None

    def _target_reached(self, target: int) -> bool:
        # An LSN never points into a block header: at a block boundary, boundary + 12 is the same position.
        s = self.scanned_lsn
        return s >= target or (s % my.OS_FILE_LOG_BLOCK_SIZE == 0 and s + my.LOG_BLOCK_HDR_SIZE >= target)

    def _durable_lsn(self) -> int:
        return self._write_lsn

    def _open_for(self, lsn: int) -> bool:
        """Make ``self._fd`` the file holding ``lsn``; False if it does not exist yet. Raises RedoOverwritten."""
        if self._file is not None and self._file.start_lsn <= lsn < self._file.end_lsn:
            return True
        self._close()
        files = list_mysql_redo_files(self.redo_dir)
        for f in files:
            if f.start_lsn <= lsn < f.end_lsn:
                try:
                    self._fd = os.open(f.path, os.O_RDONLY)
                except FileNotFoundError:
                    break
                self._file = f
                return True
        if files and lsn < files[0].start_lsn:
            raise RedoOverwritten(
                f"redo log at lsn {lsn} was removed before it was copied (oldest file {files[0].path.name} "
                f"starts at {files[0].start_lsn})",
                lsn=lsn,
                file=str(files[0].path),
                hint=OVERWRITE_HINT,
            )
        return False  # the next file is not created yet

    def _file_still_same(self) -> bool:
        """After a read: the file still carries the header we resolved (not recycled under our descriptor)."""
        assert self._fd is not None
        assert self._file is not None
        head = os.pread(self._fd, my.OS_FILE_LOG_BLOCK_SIZE, 0)
        try:
            return my.parse_file_header(head).start_lsn == self._file.start_lsn
        except FormatError:
            return False

    @staticmethod
    def _valid_after(buf: bytes, lsn: int, start: int, end: int) -> bool:
        """Whether a block the server wrote later (valid for its own LSN) follows within a few blocks of ``start``:
        then the invalid block before it is not the end of the log."""
        stop = min(end, start + MYSQL_LOOKAHEAD_BLOCKS * my.OS_FILE_LOG_BLOCK_SIZE)
        return any(my.check_block(buf, lsn + off, off)[0] is my.BlockStatus.VALID
                   for off in range(start, stop - my.OS_FILE_LOG_BLOCK_SIZE + 1, my.OS_FILE_LOG_BLOCK_SIZE))

    def _poll(self, final: bool) -> bool:
        budget = MAX_BYTES_PER_POLL
        while budget > 0 and not self._quit:
            lsn = self._write_lsn
            if not self._open_for(lsn):
                self.frontier = f"no redo file holds lsn {lsn} yet"
                return True
            f = self._file
            assert f is not None
            assert self._fd is not None
            n = min(MYSQL_CHUNK, f.end_lsn - lsn)
            buf = pread_exact(self._fd, n, my.lsn_to_offset(f.start_lsn, lsn), str(f.path))
            if not self._file_still_same():
                self._close()  # recycled between listing and reading: re-resolve (raises if gone)
                continue
            full = 0
            partial = 0
            stop = False
            for off in range(0, n, my.OS_FILE_LOG_BLOCK_SIZE):
                status, data_len = my.check_block(buf, lsn + off, off)
                if status is my.BlockStatus.VALID:
                    if data_len == my.OS_FILE_LOG_BLOCK_SIZE:
                        full += 1
                        continue
                    partial = data_len
                elif status is my.BlockStatus.AHEAD:
                    hdr = my.parse_block_header(buf, off)
                    raise RedoOverwritten(
                        f"log block numbers mismatch: expected block no. {my.block_hdr_no(lsn + off)}, got no. "
                        f"{hdr.hdr_no} (epoch {hdr.epoch_no}): the server reused the log before it was copied",
                        file=str(f.path),
                        offset=my.lsn_to_offset(f.start_lsn, lsn + off),
                        lsn=lsn + off,
                        hint=OVERWRITE_HINT,
                    )
                self.frontier = f"block at lsn {lsn + off}: {status.name.lower().replace('_', ' ')}"
                self.invalid_before_valid = self._valid_after(buf, lsn, off + my.OS_FILE_LOG_BLOCK_SIZE, n)
                stop = True
                break
            else:
                self.frontier = "end of the chunk read"
                self.invalid_before_valid = False
            if partial:
                self.frontier = f"partial block at lsn {self._write_lsn + full * my.OS_FILE_LOG_BLOCK_SIZE}"
            size = full * my.OS_FILE_LOG_BLOCK_SIZE
            if size:
                self._emit(memoryview(buf)[:size])
                self._write_lsn += size
                budget -= size
            self.scanned_lsn = self._write_lsn + partial
            if partial and final and not self._partial_written:
                self._emit(memoryview(buf)[size : size + my.OS_FILE_LOG_BLOCK_SIZE])
                self._partial_written = True
            if stop:
                return True
        return False


# ---------------------------------------------------------------------------------------------------------------
# MariaDB 10.8+


class MariaDBRedoCopier(RedoCopier):
    """Copies the circular ``ib_logfile0`` into a non-wrapping ``ib_logfile0`` (mariabackup layout)."""

    copy_file_name = "ib_logfile0"

    def __init__(self, log_dir: Path, write: Writer, *, poll_interval: float = 0.1,
                 advance: Callable[[int], None] | None = None) -> None:
        super().__init__(log_dir, write, poll_interval=poll_interval, advance=advance)
        self.path = self.log_dir / "ib_logfile0"
        self._fd: int | None = None
        self.first_lsn = 0
        self.file_size = 0
        self.header: ma.LogHeader | None = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError as exc:
                raise SourceError(f"{self.path} not found", file=str(self.path)) from exc
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _checkpoint(self) -> ma.Checkpoint:
        fd = self._open()
        prefix = pread_exact(fd, ma.START_OFFSET, 0, str(self.path))
        try:
            header, cp = ma.find_checkpoint(prefix)
        except FormatError as exc:
            exc.file = str(self.path)
            raise
        if self.header is not None and header.first_lsn != self.first_lsn:
            raise SourceError(
                f"{self.path} was re-created during the backup (first_lsn {self.first_lsn} -> {header.first_lsn})",
                file=str(self.path),
                hint="do not resize innodb_log_file_size during a backup",
            )
        self.header = header
        return cp

    def current_checkpoint(self) -> int:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return ma.find_checkpoint(pread_exact(fd, ma.START_OFFSET, 0, str(self.path)))[1].checkpoint_lsn
        finally:
            os.close(fd)

    def _begin(self) -> None:
        cp = self._checkpoint()
        assert self.header is not None
        if self.header.encrypted:
            raise SourceError("encrypted redo log (innodb_encrypt_log=ON) is not supported", file=str(self.path))
        fd = self._open()
        self.file_size = os.fstat(fd).st_size
        self.first_lsn = self.header.first_lsn
        if self.file_size < ma.START_OFFSET + ma.SIZE_OF_FILE_CHECKPOINT:
            raise Corrupt(f"{self.path} is too small ({self.file_size} bytes)", file=str(self.path))
        self.start_lsn = self.scanned_lsn = cp.checkpoint_lsn
        self.backlog_bound = ma.capacity(self.file_size)
        version = self.header.creator.split(" ")[-1] if self.header.creator.startswith("MariaDB ") else "0.0.0"
        creator = ma.BACKUP_CREATOR_PREFIX + version
        self._emit(ma.build_log_prefix(cp.checkpoint_lsn, creator, cp.checkpoint_lsn, cp.end_lsn))

    def _read_circular(self, lsn: int, size: int) -> bytes:
        fd = self._open()
        off = ma.lsn_to_offset(lsn, self.first_lsn, self.file_size)
        first = min(size, self.file_size - off)
        data = pread_exact(fd, first, off, str(self.path))
        if first < size:
            data += pread_exact(fd, size - first, ma.START_OFFSET, str(self.path))
        return data

    def _poll(self, final: bool) -> bool:
        cp = self._checkpoint()  # read BEFORE the data: the log up to cp.end_lsn is on disk by then
        st = os.fstat(self._open())
        try:
            same_file = self.path.stat().st_ino == st.st_ino
        except FileNotFoundError:
            same_file = False
        if st.st_size != self.file_size or not same_file:
            raise SourceError(
                f"{self.path} was resized or re-created during the backup",
                file=str(self.path),
                hint="do not change innodb_log_file_size while a backup runs",
            )
        cap = ma.capacity(self.file_size)
        window = MARIADB_WINDOW_MIN  # small while idle (one short read per poll), doubled while reads are used up
        budget = MAX_BYTES_PER_POLL
        frontier = False
        while budget > 0 and not self._quit:
            lsn = self.scanned_lsn
            buf = self._read_circular(lsn, min(window, cap))
            res = ma.scan_mtrs(buf, lsn, self.first_lsn, self.file_size)
            if res.terminators:
                self._emit_mtrs(buf, lsn, res)
                budget -= res.end
            if res.status == 0 or (res.status == ma.MTR_INCOMPLETE and res.end > len(buf) // 2):
                # The read was (nearly) all mtrs: a backlog, read on in larger pieces.
                if window < MARIADB_READ_MAX and window < cap:
                    window *= 2
                continue
            if res.status == ma.MTR_INCOMPLETE:
                if res.end == 0 and window < MARIADB_WINDOW_MAX and window < cap:
                    window *= 2
                    continue
                if res.end:
                    continue
            frontier = True  # end of log for now
            self.frontier = ma.describe_stop(
                buf, res.end, ma.sequence_bit(lsn + res.end, self.first_lsn, self.file_size)
            )
            break
        lsn = self.scanned_lsn
        # The server wrote the log up to cp.end_lsn before it wrote that checkpoint, and it never writes more than
        # one capacity past its checkpoint: invalid data below end_lsn, or a checkpoint a lap ahead, means lapped.
        if (frontier and lsn < cp.end_lsn) or cp.checkpoint_lsn - lsn >= cap:
            raise RedoOverwritten(
                f"redo log at lsn {lsn} was overwritten before it was copied (server checkpoint "
                f"{cp.checkpoint_lsn}, end {cp.end_lsn}, log capacity {cap})",
                file=str(self.path),
                offset=ma.lsn_to_offset(lsn, self.first_lsn, self.file_size),
                lsn=lsn,
                hint=OVERWRITE_HINT,
            )
        return frontier

    def _emit_mtrs(self, buf: bytes, lsn: int, res: ma.ScanResult) -> None:
        """Write the mtrs ``buf[:res.end]`` (at ``lsn``) with every sequence byte set to 1: the copy never wraps."""
        end = res.end
        seq = ma.sequence_bit
        if seq(lsn, self.first_lsn, self.file_size) and seq(lsn + end - 1, self.first_lsn, self.file_size):
            # Both ends on a lap whose sequence bit is 1 (and less than a lap apart): the bytes are right already.
            self._emit(buf if end == len(buf) else buf[:end])
        else:
            out = bytearray(memoryview(buf)[:end])
            for t in res.terminators:
                out[t] = 1
            self._emit(out)
        self.scanned_lsn = lsn + end


__all__ = [
    "OVERWRITE_HINT",
    "MariaDBRedoCopier",
    "MySQLRedoCopier",
    "RedoCopier",
    "list_mysql_redo_files",
    "mysql_checkpoint",
]
