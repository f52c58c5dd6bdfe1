"""Copying data files into a sink: InnoDB tablespaces page by page with validation, other files as bytes.

A hot InnoDB file is read while the server writes it, so a page may be caught half-written. We read large chunks
(``os.pread``, sequential ``posix_fadvise``), validate the whole chunk with the page helper's batch function and
re-read only the pages that fail, a bounded number of times 100 ms apart (as mariadb-backup and xtrabackup do,
but per page instead of per batch). A page that keeps failing fails the backup with file, page, LSN and reason:
a silently corrupt backup is worse than none. Pages newer than the backup start are fine: redo apply skips
records older than the page LSN.

The doublewrite area of the system tablespace (pages [FSP_EXTENT_SIZE, 3*FSP_EXTENT_SIZE) of ibdata1) holds
copies of other pages and is never validated, like both reference tools.

Incremental backups (``incremental_lsn``): every page is still read and validated, but only those whose
FIL_PAGE_LSN is newer than the base's LSN leave, as ``<name>.delta`` + ``<name>.meta`` in XtraBackup's format
(:mod:`innostream.formats.xtrabackup_delta`). A page that was not written since the base is older than the base
LSN; one written since is newer, so a tablespace created since the base comes whole.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from innostream.errors import Interrupted, SourceError
from innostream.flavor import Flavor
from innostream.formats.errors import Corrupt, FormatError
from innostream.formats.fil0fil import BE64, FIL_PAGE_LSN, UNIV_PAGE_SIZE_MAX
from innostream.formats.fsp0fsp import XDES_ARR_OFFSET, SpaceInfo, space_info, unwritten_space_info
from innostream.formats.xtrabackup_delta import DeltaMeta, build_cluster_header, build_meta, cluster_capacity
from innostream.log import log
from innostream.throttle import Throttle

if TYPE_CHECKING:
    from innostream.progress import Progress
    from innostream.sink import Sink

#: Chunk read per pread: large enough for sequential throughput, small enough to bound memory per thread.
DEFAULT_CHUNK = 4 << 20
#: Re-reads of a page that fails validation before the backup fails (both reference tools use 10 x 100 ms).
PAGE_RETRIES = 10
RETRY_SLEEP = 0.1
#: A delta cluster's pages wait in memory up to this size, then in an unlinked file (a full 16K cluster is 64 MiB).
DELTA_SPOOL_MEMORY = 8 << 20
DELTA_SUFFIX = ".delta"
META_SUFFIX = ".meta"
#: A whole tablespace in an incremental (``<db>/<t>.new``): the reference tools' name for a table created during
#: the backup; prepare renames it to ``<t>.ibd``.
NEW_SUFFIX = ".new"


@dataclass(frozen=True)
class SourceFile:
    """One file to copy: where it is, what it is called in the backup, and how to read it."""

    path: Path
    name: str  # member name in the backup (relative, '/'-separated)
    kind: str  # "innodb" | "other"
    size: int = 0  # at enumeration; only for ordering and progress
    first_page_no: int = 0  # system tablespace files after the first continue the page numbering
    system: bool = False  # part of the system tablespace (ibdata*)
    space: SpaceInfo | None = None  # known already (later ibdata files have no page 0)


@dataclass
class _Space:
    """How one file's pages are checked: the format page 0 gives. ``pending``: page 0 of this (MariaDB, new)
    tablespace was all zero when the copy began, so its format is not known; the server may write it at any moment
    (docs/PAGES.md, "all-zero page 0")."""

    info: SpaceInfo
    pending: bool = False


class _FormatKnown(Exception):
    """Page 0 of a pending tablespace was written during a re-read: check the chunk again in its real format."""


def _format_name(info: SpaceInfo) -> str:
    """The format pages were checked in, for the error line (a wrong format once looked like corruption)."""
    kind = "full_crc32" if info.full_crc32 else "ROW_FORMAT=COMPRESSED" if info.zip_size else "crc32/innodb"
    return f"{kind}, flags {info.flags:#x}"


def _validate(buf: memoryview, info: SpaceInfo, first_page_no: int, system: bool,
              any_format: bool = False) -> list[tuple[int, str]]:
    from innostream.formats.buf0checksum import validate_pages, validate_pages_any_format

    bad = (validate_pages_any_format if any_format else validate_pages)(buf, info, first_page_no)
    if bad and system and info.space_id == 0:
        ext = info.extent_size
        bad = [(p, r) for p, r in bad if not ext <= p < 3 * ext]
    return bad


class FileCopier:
    """Copies files into a sink; one instance shared by the copier threads.

    Args:
        sink: DirSink or archive writer.
        flavor: the server family, to read tablespace flags.
        cancel: set by the main thread to stop every copy at the next chunk.
        progress: counters for the status line.
        chunk_size: bytes per read (rounded down to whole pages).
    """

    def __init__(self, sink: Sink, flavor: Flavor, *, cancel: threading.Event, progress: Progress | None = None,
                 chunk_size: int = DEFAULT_CHUNK, retries: int = PAGE_RETRIES, retry_sleep: float = RETRY_SLEEP,
                 streaming: bool = False, target_label: str = "", incremental_lsn: int | None = None,
                 spool_dir: Path | None = None, tracked: Mapping[int, Sequence[int]] | None = None,
                 page_size: int = 16384) -> None:
        self.sink = sink
        #: the server's innodb_page_size: how a tablespace whose page 0 is not written yet is cut into pages
        self.page_size = page_size
        #: the checkpoint the redo copy starts at, once known: a MariaDB page written after it belongs to a
        #: tablespace the redo copy can rebuild (see :meth:`_zero_page0`)
        self.start_lsn: int | None = None
        self.flavor = flavor
        self.cancel = cancel
        self.progress = progress
        self.chunk_size = max(chunk_size, UNIV_PAGE_SIZE_MAX)
        self.retries = retries
        self.retry_sleep = retry_sleep
        self.streaming = streaming
        self.target_label = target_label
        self.retried_pages = 0
        #: Only pages newer than this LSN are copied, into ``.delta`` files (None: a full backup).
        self.incremental_lsn = incremental_lsn
        self.spool_dir = spool_dir
        #: MySQL page tracking: ``{space_id: page numbers}`` changed since the base; only those pages are read.
        self.tracked = tracked
        self.delta_pages = 0  # pages written to .delta files
        self._stats_lock = threading.Lock()
        #: ``--throttle``: every data read is paid for here (never the redo copy's)
        self.throttle: Throttle | None = None
        #: DDL may run during the copy (``--lock-ddl=reduced``): a file gone before it was opened is reported here
        #: and copied again, or dropped, under the DDL block at the end (innostream.ddl_track), not an error
        self.on_vanished: Callable[[SourceFile], None] | None = None

    # -- public ----------------------------------------------------------------------------------------------------

    def copy(self, src: SourceFile, thread_no: int = 1) -> int:
        """Copy one file; return the bytes written. Log lines as the reference tools print them."""
        if self.streaming:
            log.info("[%02d] Streaming %s", thread_no, src.path)
        else:
            log.info("[%02d] Copying %s to %s", thread_no, src.path, f"{self.target_label}/{src.name}")
        try:
            fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self.on_vanished is not None:
                self.on_vanished(src)
                log.info("[%02d]        ...gone (dropped or renamed by DDL; settled at the end)", thread_no)
                return 0
            raise SourceError("file disappeared during the backup", file=str(src.path),
                              hint="DDL ran although it should wait for the backup lock (--no-lock?)") from None
        except OSError as exc:
            raise SourceError(f"cannot open: [Errno {exc.errno}] {exc.strerror}", file=str(src.path)) from None
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            if src.kind == "innodb" and self.incremental_lsn is not None:
                n = self._copy_delta(fd, src, self.incremental_lsn)
            elif src.kind == "innodb":
                n = self._copy_innodb(fd, src)
            else:
                n = self._copy_plain(fd, src)
            if hasattr(os, "posix_fadvise"):
                # We will not read it again; do not push the server's working set out of the page cache.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if self.progress is not None:
            self.progress.file_done()
        log.info("[%02d]        ...done", thread_no)
        return n

    # -- internals -------------------------------------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Interrupted("copy cancelled")

    def _pread(self, fd: int, n: int, offset: int, src: SourceFile) -> bytes:
        try:
            data = os.pread(fd, n, offset)
            if self.throttle is not None:
                self.throttle.take(len(data))
            return data
        except OSError as exc:
            raise SourceError(f"read failed: [Errno {exc.errno}] {exc.strerror}", file=str(src.path),
                              offset=offset) from None

    def _copy_plain(self, fd: int, src: SourceFile) -> int:
        file_id = self.sink.begin_file(src.name)
        offset = 0
        while True:
            self._check_cancel()
            data = self._pread(fd, self.chunk_size, offset, src)
            if not data:
                break
            self.sink.write(file_id, offset, data)
            offset += len(data)
            if self.progress is not None:
                self.progress.add(len(data))
        self.sink.end_file(file_id, offset)
        return offset

    def _space_info(self, fd: int, src: SourceFile, *, zero_checked: bool = False) -> _Space | None:
        """Read page 0 (re-reading it if it is caught mid-write); None for an empty file. An all-zero page 0 goes
        to :meth:`_zero_page0` (once)."""
        last: FormatError | None = None
        for _ in range(self.retries + 1):
            head = self._pread(fd, UNIV_PAGE_SIZE_MAX, 0, src)
            if not head:
                return None
            try:
                info = space_info(head, self.flavor)
            except FormatError as exc:
                last = exc
            else:
                ps = info.physical_page_size
                if len(head) >= ps and head.count(0, 0, ps) == ps and not zero_checked and src.first_page_no == 0:
                    return self._zero_page0(fd, src, info)
                if len(head) >= ps and not _validate(memoryview(head)[:ps], info, 0, src.system):
                    return _Space(info)
                last = Corrupt("page 0 fails validation")
            time.sleep(self.retry_sleep)
        assert last is not None
        raise Corrupt(f"cannot read the tablespace header: {last.message}", file=str(src.path), page=0,
                      hint="is this an InnoDB file of this server?")

    def _zero_page0(self, fd: int, src: SourceFile, info: SpaceInfo) -> _Space | None:
        """Page 0 is all zero, which InnoDB refuses ("Header page consists of zero bytes"); see docs/PAGES.md.

        A file with no data at all on MariaDB is a tablespace the server created and has not flushed yet (it writes
        page 0 lazily; a page older than our start checkpoint would have been flushed, so the redo copy rebuilds
        it at prepare): warn, at once. Otherwise (a later page holds data, or MySQL, which writes page 0 when it
        creates a file) page 0 is re-read like a torn page and, if it stays zero, the backup fails.

        The first case returns a *pending* :class:`_Space`: ``info`` is only a guess (the server's page size,
        crc32/innodb), not the tablespace's format; see :meth:`_learn_format`. So does a MariaDB file whose data
        pages were written after the backup's start checkpoint (a tablespace created since, whose page 0 was not
        flushed yet): pages are then accepted in any format the tablespace may have
        (``validate_pages_any_format``). A data page older than the start checkpoint with page 0 zero is damage.
        """
        ps = info.physical_page_size
        data_page: int | None = None
        data_lsn = 0
        offset = ps
        while data := self._pread(fd, self.chunk_size, offset, src):
            if data.count(0) != len(data):
                first = offset + next(i for i, b in enumerate(data) if b)
                data_page = first // ps
                # the FIL header of the page holding it (pages are 1K-aligned whatever the page size)
                head = self._pread(fd, FIL_PAGE_LSN + 8, first // 1024 * 1024, src)
                data_lsn = BE64.unpack_from(head, FIL_PAGE_LSN)[0] if len(head) == FIL_PAGE_LSN + 8 else 0
                break
            offset += len(data)
        mariadb = self.flavor != Flavor.MYSQL
        pending = _Space(unwritten_space_info(self.page_size, str(self.flavor)), pending=True) if mariadb else None
        if data_page is None and pending is not None:
            log.warning("%s: every page is zero: a tablespace the server created and has not flushed yet (MariaDB "
                        "writes page 0 lazily; the redo copy rebuilds it at prepare). If it is not new, it is "
                        "damaged", src.path)
            return pending
        for _ in range(self.retries):
            time.sleep(self.retry_sleep)
            self._check_cancel()
            head = self._pread(fd, ps, 0, src)
            if head.count(0) != len(head):
                return self._space_info(fd, src, zero_checked=True)
        if pending is not None and self.start_lsn is not None and data_lsn >= self.start_lsn:
            # Page 0 was modified first, when the file was created: had that been before our start checkpoint, it
            # would be on disk. So the whole tablespace was created since, and the redo copy holds all of it.
            log.warning("%s: page 0 is still zero but page %d was written after the backup started (LSN %d, start "
                        "checkpoint %d): a tablespace created since (MariaDB writes page 0 lazily; the redo copy "
                        "rebuilds it at prepare)", src.path, data_page, data_lsn, self.start_lsn)
            return pending
        where = (f"but page {data_page} holds data" if data_page is not None
                 else "and so is every page (MySQL writes page 0 when it creates a file)")
        raise Corrupt(f"page 0 is all zero {where}; InnoDB refuses such a file (\"Header page consists of zero "
                      "bytes\")", file=str(src.path), page=0,
                      hint="the tablespace is damaged; restore it from an older backup or rebuild the table")

    def _read_pages(self, fd: int, src: SourceFile, space: _Space, offset: int, size: int) -> memoryview | None:
        """Read whole pages at ``offset`` and validate them; torn pages are re-read, corrupt ones fail. None at the
        end of the file."""
        self._check_cancel()
        if space.pending:
            self._learn_format(fd, src, space, offset)
        info = space.info
        ps = info.physical_page_size
        data = self._pread(fd, size, offset, src)
        npages = len(data) // ps
        if npages == 0:
            if data:
                # A file being extended: the partial page is not there yet as far as redo is concerned.
                log.debug("%s: ignoring %d bytes of a partial last page", src.path, len(data))
            return None
        first = src.first_page_no + offset // ps
        view = memoryview(data)[: npages * ps]
        bad = self._check(view, space, first, src)
        if bad:
            buf = bytearray(view)
            try:
                for page_no, reason in bad:
                    self._reread(fd, src, space, buf, first, page_no, reason)
            except _FormatKnown:  # page 0 was written meanwhile: the whole chunk again, in the real format
                return self._read_pages(fd, src, space, offset, size)
            view = memoryview(buf)
        if self.progress is not None:
            self.progress.add(len(view))
        return view

    def _chunks(self, fd: int, src: SourceFile, space: _Space) -> Iterator[tuple[int, memoryview]]:
        """Yield ``(file offset, whole validated pages)`` chunk by chunk. While the format is pending, chunks are
        whole multiples of the largest page size, so that they cut whole pages whatever page 0 turns out to say."""
        offset = 0
        while True:
            unit = UNIV_PAGE_SIZE_MAX if space.pending else space.info.physical_page_size
            view = self._read_pages(fd, src, space, offset, self.chunk_size // unit * unit)
            if view is None:
                return
            yield offset, view
            offset += len(view)

    def _tracked_chunks(self, fd: int, src: SourceFile, space: _Space,
                        page_nos: Sequence[int]) -> Iterator[tuple[int, memoryview]]:
        """Like :meth:`_chunks`, for only the pages page tracking listed (runs of consecutive pages read at once;
        numbers relative to the space, so a later ibdata file takes those in its range)."""
        ps = space.info.physical_page_size
        max_run = max(1, self.chunk_size // ps)
        runs: list[list[int]] = []
        for no in page_nos:
            rel = no - src.first_page_no
            if rel < 0:
                continue
            if runs and rel == runs[-1][0] + runs[-1][1] and runs[-1][1] < max_run:
                runs[-1][1] += 1
            else:
                runs.append([rel, 1])
        for start, n in runs:
            view = self._read_pages(fd, src, space, start * ps, n * ps)
            if view is None:  # past the end of this file (the next ibdata file, or not extended yet)
                continue
            yield start * ps, view

    def _copy_innodb(self, fd: int, src: SourceFile, space: _Space | None = None) -> int:
        space = space or (_Space(src.space) if src.space else self._space_info(fd, src))
        file_id = self.sink.begin_file(src.name)
        if space is None:
            log.warning("%s is empty; copied as an empty file", src.path)
            self.sink.end_file(file_id, 0)
            return 0
        zero = bytes(self.chunk_size)
        end = 0
        for offset, view in self._chunks(fd, src, space):
            if not zero.startswith(view):  # all-zero chunks stay holes (a memcmp: comparing a memoryview with
                # bytes goes item by item, 2 CPU s per GiB of zero chunks)
                self.sink.write(file_id, offset, view)
            end = offset + len(view)
        self.sink.end_file(file_id, end)
        return end

    def _copy_delta(self, fd: int, src: SourceFile, lsn: int) -> int:
        """Write ``<name>.meta``, then ``<name>.delta`` with the pages newer than ``lsn`` (page numbers relative to
        the file, as both reference tools write them); return the bytes written."""
        space = _Space(src.space) if src.space else self._space_info(fd, src)
        if space is None or space.pending or (src.first_page_no == 0 and not src.system
                                              and _page0_zero(fd, space.info)):
            # Empty, or a MariaDB tablespace created and not flushed yet (page 0 is written lazily): no page says
            # its id or LSN. It goes whole, as in a full backup (the redo copy rebuilds it at prepare), named
            # ``<t>.new`` as both reference tools name a tablespace created during the backup: prepare puts it in
            # place of the base's file.
            name = src.name[: -len(".ibd")] + NEW_SUFFIX if src.name.endswith(".ibd") else src.name
            log.info("%s: no valid page 0 yet (a new tablespace); copied whole as %s", src.path, name)
            return self._copy_innodb(fd, SourceFile(src.path, name, src.kind, src.size, src.first_page_no,
                                                    src.system, src.space), space)
        info = space.info
        ps = info.physical_page_size
        # The .meta first, as both reference tools write it (wf_incremental_init): a reader of the stream then knows
        # the page size and format before the delta's pages arrive (``verify`` checks them as they pass).
        meta = build_meta(DeltaMeta(page_size=ps, zip_size=info.zip_size, space_id=info.space_id,
                                    space_flags=info.flags), self.flavor)
        meta_id = self.sink.begin_file(src.name + META_SUFFIX)
        self.sink.write(meta_id, 0, meta)
        self.sink.end_file(meta_id, len(meta))
        out = _DeltaFile(self.sink, src.name + DELTA_SUFFIX, ps, self.spool_dir)
        chunks = (self._chunks(fd, src, space) if self.tracked is None
                  else self._tracked_chunks(fd, src, space, self.tracked.get(info.space_id, ())))
        try:
            for offset, view in chunks:
                page_base = offset // ps
                for i in range(len(view) // ps):
                    if BE64.unpack_from(view, i * ps + FIL_PAGE_LSN)[0] > lsn:
                        out.add(page_base + i, view[i * ps : (i + 1) * ps])
            size = out.finish()
        finally:
            out.close()
        with self._stats_lock:
            self.delta_pages += out.pages
        log.debug("%s: %d pages newer than LSN %d", src.path, out.pages, lsn)
        return size + len(meta)

    def _check(self, view: memoryview, space: _Space, first: int, src: SourceFile) -> list[tuple[int, str]]:
        """The pages of ``view`` the server would refuse; while the format is pending, those valid in neither
        format a new MariaDB tablespace can be in (``validate_pages_any_format``)."""
        return _validate(view, space.info, first, src.system, any_format=space.pending)

    def _learn_format(self, fd: int, src: SourceFile, space: _Space, offset: int) -> bool:
        """A pending tablespace: if the server has written page 0 since, take its format from it (page 0 checked,
        re-read if torn) for every page from now on; True if it did. The copy keeps what it read before."""
        head = self._pread(fd, XDES_ARR_OFFSET, 0, src)  # FIL + FSP header
        if head.count(0) == len(head):
            return False
        known = self._space_info(fd, src, zero_checked=True)
        if known is None:  # the file was emptied: leave it to the end-of-file handling
            return False
        space.info, space.pending = known.info, False
        log.info("%s: page 0 was written during the copy (%s); pages from offset %d on are checked in that format%s",
                 src.path, _format_name(known.info), offset,
                 "" if offset == 0 else "; the copy keeps the all-zero page 0 read before (the redo copy rebuilds it)")
        return True

    def _reread(self, fd: int, src: SourceFile, space: _Space, buf: bytearray, first: int, page_no: int,
                reason: str) -> None:
        """Re-read one failing page until it validates; fail the backup after ``retries`` attempts. Raises
        :class:`_FormatKnown` if page 0 of a pending tablespace was written meanwhile."""
        info = space.info
        ps = info.physical_page_size
        index = page_no - first
        file_offset = (page_no - src.first_page_no) * ps
        for attempt in range(1, self.retries + 1):
            log.info("Database page corruption detected at page %d of %s (%s), retrying...", page_no, src.path,
                     reason)
            time.sleep(self.retry_sleep)
            self._check_cancel()
            if space.pending and self._learn_format(fd, src, space, file_offset):
                raise _FormatKnown
            if hasattr(os, "posix_fadvise"):
                # Drop the range so the re-read comes from the device, not from a page-cache copy left by a buffered
                # read racing the server's O_DIRECT write (cheap insurance: never seen; the "page 0 torn through
                # all re-reads" it was added for was the pending-format mix-up, docs/PAGES.md).
                os.posix_fadvise(fd, file_offset, ps, os.POSIX_FADV_DONTNEED)
            page = self._pread(fd, ps, file_offset, src)
            if len(page) == ps:
                still = self._check(memoryview(page), space, page_no, src)
                if not still:
                    buf[index * ps : (index + 1) * ps] = page
                    with self._stats_lock:
                        self.retried_pages += 1
                    log.debug("page %d of %s valid after %d re-reads", page_no, src.path, attempt)
                    return
                reason = still[0][1]
        lsn = BE64.unpack_from(buf, index * ps + FIL_PAGE_LSN)[0]
        checked = "" if space.pending else f" (checked as {_format_name(info)}, from page 0)"
        raise Corrupt(f"page failed validation after {self.retries} re-reads: {reason}{checked}",
                      file=str(src.path), page=page_no, lsn=lsn,
                      hint="the file seems to be corrupted; check the server's error log")


def _page0_zero(fd: int, info: SpaceInfo) -> bool:
    page = os.pread(fd, info.physical_page_size, 0)
    return page.count(0) == len(page)


class _DeltaFile:
    """One ``.delta`` being written: clusters of ``page_size // 4`` pages, each a header page (magic + page numbers)
    then the pages. The stream writers want rising offsets and the header comes first, so a cluster's pages wait in
    a spool (memory up to :data:`DELTA_SPOOL_MEMORY`, then an unlinked file in ``spool_dir``) until it is full."""

    def __init__(self, sink: Sink, name: str, page_size: int, spool_dir: Path | None) -> None:
        self.sink = sink
        self.page_size = page_size
        self.capacity = cluster_capacity(page_size)
        self.file_id = sink.begin_file(name)
        self.spool = tempfile.SpooledTemporaryFile(max_size=DELTA_SPOOL_MEMORY, prefix="innostream-delta-",
                                                   dir=None if spool_dir is None else str(spool_dir))
        self.page_nos: list[int] = []
        self.offset = 0
        self.pages = 0

    def add(self, page_no: int, page: memoryview) -> None:
        if len(self.page_nos) == self.capacity:  # only now: the last cluster may be full (then no terminator)
            self._flush(last=False)
        self.page_nos.append(page_no)
        self.spool.write(page)
        self.pages += 1

    def _flush(self, *, last: bool) -> None:
        self.sink.write(self.file_id, self.offset, build_cluster_header(self.page_nos, self.page_size, last=last))
        self.offset += self.page_size
        self.spool.seek(0)
        while data := self.spool.read(DEFAULT_CHUNK):
            self.sink.write(self.file_id, self.offset, data)
            self.offset += len(data)
        self.spool.seek(0)
        self.spool.truncate()
        self.page_nos = []

    def finish(self) -> int:
        """Write the last cluster (``XTRA``; with no page at all, a lone header) and end the file."""
        self._flush(last=True)
        self.sink.end_file(self.file_id, self.offset)
        return self.offset

    def close(self) -> None:
        self.spool.close()


class Workers:
    """A fixed set of numbered daemon threads running ``fn(item, thread_no)``.

    Not a ThreadPoolExecutor on purpose: its threads are joined at interpreter exit, so one stuck in a write to a
    stalled pipe would keep a cancelled backup from ever exiting. Daemon threads cannot. Jobs are small (a path
    and a name each); memory is bounded by the chunk each thread holds, not by the queue.
    """

    def __init__(self, n: int, fn: Callable[[SourceFile, int], int]) -> None:
        self._fn = fn
        self._jobs: queue.Queue[tuple[Future[int], SourceFile] | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._run, args=(i + 1,), name=f"copy-{i + 1:02d}", daemon=True)
                         for i in range(max(1, n))]
        for t in self._threads:
            t.start()

    def _run(self, thread_no: int) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, item = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._fn(item, thread_no))
            except BaseException as exc:  # handed to the waiting main thread
                fut.set_exception(exc)

    def submit(self, item: SourceFile) -> Future[int]:
        fut: Future[int] = Future()
        self._jobs.put((fut, item))
        return fut

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel queued jobs, stop the threads and wait up to ``timeout`` s for running ones to notice."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
