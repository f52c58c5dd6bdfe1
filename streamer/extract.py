"""Extract an innostream archive or an xbstream into a target directory, safely.

Every member is opened with ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to directory descriptors that were themselves
opened with ``O_NOFOLLOW``, so nothing is written outside the target, no symlink is followed and no file is replaced
("File exists", errno 17, like xtrabackup). Data goes out with ``pwrite`` at the frame offsets (holes stay holes),
the size is set with ``ftruncate``. The xtrabackup metadata files are held back and written only after the trailer
verified: they are the commit point, so a half-extracted backup never looks complete.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO

from innostream.archive import (
    ArchiveSummary,
    FileResult,
    NullSink,
    ObserverFactory,
)
from innostream.archive.detect import read_any
from innostream.archive.seekable import IndexedArchive, RangeSource
from innostream.archive.types import DEFAULT_MAX_SIZE, SizeLimits
from innostream.datadir import is_system_continuation, is_tablespace
from innostream.ddl_track import NEW_SUFFIX
from innostream.errors import SourceError
from innostream.fileio import data_regions
from innostream.flavor import Flavor
from innostream.formats.errors import Corrupt, InnostreamError
from innostream.formats.fil0fil import UNIV_PAGE_SIZE_MAX
from innostream.log import log
from innostream.selection import PARTIAL_RECORD, build_partial_record, is_user_table_member
from innostream.sink import Sink
from innostream.target import TargetDir


class _Progress:
    """A line on stderr every ``every`` seconds while files complete (long extractions over ssh), debug per file."""

    def __init__(self, verb: str, every: float = 15.0) -> None:
        self.verb, self.every = verb, every
        self.files = self.bytes = 0
        self.last = time.monotonic()

    def __call__(self, result: FileResult) -> None:
        self.files += 1
        self.bytes += max(result.size, 0)
        log.debug("%s %s (%d bytes)", self.verb, result.name, result.size)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s %d files, %.0f MB so far", self.verb, self.files, self.bytes / 1e6)


class MemberFilter:
    """``extract --include/--exclude``: a sink that passes only the chosen members to ``inner``.

    The globs (``fnmatch``, ``*`` crosses ``/``) choose among the files of user tables only, and a partition's
    file also answers to its table's name (``db/t#p#p0.ibd`` to ``db/t.ibd``): what prepare needs (the datadir's
    root, the system schemas, ``db.opt``, the metadata) is always written. Every frame is still read and checked.
    When tables were left out, the result records itself as a partial backup (:data:`PARTIAL_RECORD`), so prepare
    drops them from the dictionary."""

    def __init__(self, inner: Sink, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.inner, self.include, self.exclude = inner, list(include), list(exclude)
        self.kept: list[str] = []
        self.left_out = 0
        self.bytes_written = 0

    def keeps(self, name: str) -> bool:
        if not is_user_table_member(name):
            return True
        names = {name, _PARTITION.sub("", name)}
        if self.include and not any(fnmatchcase(n, g) for n in names for g in self.include):
            return False
        return not any(fnmatchcase(n, g) for n in names for g in self.exclude)

    def begin_file(self, name: str, *, mode: int = 0o640) -> Any:
        if not self.keeps(name):
            self.left_out += 1
            return _SKIPPED
        self.kept.append(name)
        return self.inner.begin_file(name, mode=mode)

    def write(self, handle: Any, offset: int, data: bytes | bytearray | memoryview) -> None:
        if handle is not _SKIPPED:
            self.bytes_written += len(data)
            self.inner.write(handle, offset, data)

    def end_file(self, handle: Any, size: int) -> None:
        if handle is not _SKIPPED:
            self.inner.end_file(handle, size)

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        if self.keeps(name):
            self.kept.append(name)
            self.bytes_written += len(data)
            self.inner.add_bytes(name, data, mode=mode)

    def close(self, trailer: dict[str, Any] | None = None) -> None:
        if self.left_out and PARTIAL_RECORD not in self.kept:
            options = {"extract_include": " ".join(self.include), "extract_exclude": " ".join(self.exclude)}
            self.inner.add_bytes(PARTIAL_RECORD, build_partial_record(options, self.kept))
        self.inner.close(trailer)

    def abort(self) -> None:
        self.inner.abort()


_SKIPPED = object()
_PARTITION = re.compile(r"#[pP]#[^/]*(?=\.[^./]+$)")


def extract(
    inp: BinaryIO, target: Path, *, parallel: int = 2, fsync: bool = True, fmt: str = "auto", dialect: str = "auto",
    max_size: int = DEFAULT_MAX_SIZE, key: bytes | None = None, include: Sequence[str] = (),
    exclude: Sequence[str] = (), source: RangeSource | None = None,
) -> ArchiveSummary:
    """Extract ``inp`` under ``target``; metadata files last, after the trailer verified.

    ``source``: the same archive read by ranges (a file, an object); with ``include``/``exclude`` and an indexed
    archive, only the chosen members' frames are read (docs/FORMAT.md §10), else ``inp`` front to back.

    ``max_size`` bounds every member's declared size and, with it, the holes the archive may declare
    (:class:`innostream.archive.types.SizeLimits`).

    Raises:
        FormatError: damaged or hostile input (nothing outside ``target`` is touched).
        TargetError: a file exists already, an unsafe path, a write failure.
    """
    progress = _Progress("extracted")
    if source is not None and (include or exclude) and fmt in ("auto", "innostream"):
        from innostream.archive.seekable import open_indexed

        indexed = open_indexed(source, key=key)
        if indexed is not None:
            return _extract_indexed(source, indexed, target, parallel=parallel, fsync=fsync, max_size=max_size,
                                    key=key, include=include, exclude=exclude, progress=progress)
        log.info("%s has no index (an xbstream, or an archive written without one): reading all of it",
                 source.name)

    member_filter: MemberFilter | None = None

    def target_dir() -> Sink:
        nonlocal member_filter
        out = TargetDir(target, fsync=fsync)
        out.discard_unfinished = key is not None  # a member that did not authenticate to its end does not stay
        if include or exclude:
            member_filter = MemberFilter(out, include, exclude)
            return member_filter
        return out

    summary = read_any(inp, target_dir, parallel=parallel, fmt=fmt, dialect=dialect, on_file_done=progress,
                       limits=SizeLimits(max_size), key=key)
    if member_filter is not None:
        log.info("extracted %d of %d files (%d bytes of data written; %d files of user tables left out) from %s "
                 "into %s", len(member_filter.kept), len(summary.files), member_filter.bytes_written,
                 member_filter.left_out, summary.format, target)
        return summary
    log.info("extracted %d files, %d bytes from %s into %s", len(summary.files), sum(f.size for f in summary.files),
             summary.format, target)
    return summary


def _extract_indexed(source: RangeSource, indexed: IndexedArchive, target: Path, *, parallel: int, fsync: bool,
                     max_size: int, key: bytes | None, include: Sequence[str], exclude: Sequence[str],
                     progress: _Progress) -> ArchiveSummary:
    """Fetch and extract only the chosen members of an indexed archive (each verified as in one pass)."""
    from innostream.archive.reader import ArchiveReader
    from innostream.archive.seekable import MemberFrames

    chosen = [m for m in indexed.members if MemberFilter(NullSink(), include, exclude).keeps(m.name)]
    left_out = len(indexed.members) - len(chosen)
    frames = MemberFrames(source, indexed, chosen, inflight=max(4, parallel))
    made: list[MemberFilter] = []

    def target_dir() -> Sink:  # called once the key opened the archive: a wrong key leaves no directory behind
        out = TargetDir(target, fsync=fsync)
        out.discard_unfinished = key is not None
        made.append(MemberFilter(out, include, exclude))
        made[0].left_out = left_out
        return made[0]

    try:
        summary = ArchiveReader(None, target_dir, parallel=parallel, on_file_done=progress,  # type: ignore[arg-type]
                                limits=SizeLimits(max_size), key=key, frames=frames).read()
    finally:
        frames.close()
    log.info("extracted %d of %d files (%d bytes of data written; %d files of user tables left out) from %s into "
             "%s, reading %d of its %d bytes in %d requests", len(made[0].kept), len(indexed.members),
             made[0].bytes_written, left_out, source.name, target, source.bytes_read, source.size,
             source.requests)
    return summary


def verify(
    inp: BinaryIO, *, parallel: int = 2, fmt: str = "auto", dialect: str = "auto",
    observer_factory: ObserverFactory | None = None, max_size: int = DEFAULT_MAX_SIZE, key: bytes | None = None,
) -> ArchiveSummary:
    """Read and check everything without writing (an encrypted archive without ``key``: its structure only, a
    warning in the summary says the contents were not authenticated)."""
    return read_any(inp, NullSink(), parallel=parallel, fmt=fmt, dialect=dialect, observer_factory=observer_factory,
                    limits=SizeLimits(max_size), key=key, require_key=False)


@dataclass
class DirectorySummary:
    """What :func:`verify_directory` read."""

    backup_type: str
    flavor: str | None
    files: int = 0
    data_bytes: int = 0


#: what verify reads of a backup directory at most per read (data extents are read in pieces of this)
_DIR_READ = 4 << 20


def _read_small(path: Path, limit: int = 1 << 20) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SourceError(f"cannot read the backup: {exc.strerror}", file=str(path)) from None


def verify_directory(root: Path, observer_factory: ObserverFactory) -> DirectorySummary:
    """Check a backup directory (``backup --target-dir``, ``extract``, prepared or not, full or incremental) as
    ``verify`` checks an archive's members: its ``xtrabackup_checkpoints`` parses, and every tablespace, whole copy
    and ``.delta`` goes through ``observer_factory`` (each ``.meta`` first). Holes are skipped, not read. Only reads.

    Raises:
        Corrupt: no ``xtrabackup_checkpoints`` (the backup did not finish: it is written last), or one that does not
            parse; a ``.delta`` without its ``.meta``; SourceError: a file cannot be read.
    """
    from innostream.formats.xtrabackup_meta import (
        BACKUP_MY_CNF,
        MB_CHECKPOINTS,
        MB_INFO,
        XTRABACKUP_CHECKPOINTS,
        XTRABACKUP_INFO,
        parse_backup_my_cnf,
        parse_checkpoints,
        parse_info,
    )

    def first(*names: str) -> tuple[Path, bytes | None]:
        """The first of ``names`` that is there (mariadb-backup 11 writes its own names), and its bytes."""
        for n in names:
            raw = _read_small(root / n)
            if raw is not None:
                return root / n, raw
        return root / names[0], None

    cp_path, raw = first(XTRABACKUP_CHECKPOINTS, MB_CHECKPOINTS)
    if raw is None:
        raise Corrupt(f"not a complete backup: {XTRABACKUP_CHECKPOINTS} is missing", file=str(root),
                      hint="a backup writes it last, so one that stopped halfway has none; take the backup again")
    cp = parse_checkpoints(raw, file=str(cp_path))
    (info_path, info_raw), (cnf_path, cnf_raw) = first(XTRABACKUP_INFO, MB_INFO), first(BACKUP_MY_CNF)
    info = parse_info(info_raw, file=str(info_path)) if info_raw is not None else {}
    cnf = parse_backup_my_cnf(cnf_raw, file=str(cnf_path)) if cnf_raw is not None else {}
    version = info.get("server_version", "")
    meta: dict[str, Any] = {"flavor": Flavor.of_version(version).value if version else None}
    if cnf.get("innodb_page_size", "").isdigit():
        meta["page_size"] = int(cnf["innodb_page_size"])
    summary = DirectorySummary(cp.backup_type, meta["flavor"])
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    present = set(names)
    for name in names:
        if name.endswith(".delta") and name[: -len(".delta")] + ".meta" not in present:
            raise Corrupt(f"{name} has no .meta beside it: its page size and space id are unknown, and prepare "
                          "cannot apply it", file=str(root / name), hint="copy the backup again, with every file")
    # an incremental's .meta before every .delta: the delta's page size and format come from it
    for name in sorted(names, key=lambda n: not n.endswith(".meta")):
        observer = observer_factory(name, meta)
        if observer is None:
            continue
        path = root / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"cannot read the backup: {exc.strerror}", file=str(path)) from None
        try:
            size = os.fstat(fd).st_size
            for start, end in data_regions(fd, size):
                for off in range(start, end, _DIR_READ):
                    data = os.pread(fd, min(_DIR_READ, end - off), off)
                    if not data:
                        break
                    observer.feed(off, data)
            observer.finish(size)
        except OSError as exc:
            raise SourceError(f"cannot read the backup: {exc.strerror}", file=str(path)) from None
        finally:
            os.close(fd)
        summary.files += 1
        summary.data_bytes += size
    return summary


def list_archive(inp: BinaryIO, *, fmt: str = "auto", dialect: str = "auto",
                 on_file_done: Callable[[FileResult], None] | None = None,
                 max_size: int = DEFAULT_MAX_SIZE, key: bytes | None = None) -> ArchiveSummary:
    """Read the structure (checksums of every frame, no decompression) and report the files (of an encrypted
    archive: names, sizes and the trailer authenticated with ``key``; the data is not decrypted)."""
    return read_any(inp, NullSink(), fmt=fmt, dialect=dialect, verify_data=False, on_file_done=on_file_done,
                    limits=SizeLimits(max_size), key=key)


__all__ = ["DELTA_META_LATE", "DeltaValidator", "PageValidation", "PageValidator", "extract", "list_archive", "verify"]


# ==================================================================================================================
# Page validation for verify
# ==================================================================================================================
class PageValidator:
    """Sees one tablespace's bytes in file order (holes as zeros) and validates whole pages as they complete.

    Page size and format come from page 0 (``formats.fsp0fsp.space_info``); pages are checked in batches with
    ``formats.buf0checksum.validate_pages``. All-zero pages in holes are valid and skipped without materialising.
    Without a ``flavor`` (an xbstream says none), ``resolve(page0)`` decides it from page 0 once it has arrived.
    """

    def __init__(self, name: str, flavor: str | None,
                 resolve: Callable[[bytes], str | None] | None = None, server_page_size: int | None = None) -> None:
        self.name = name
        #: the server's innodb_page_size if the archive says it: how a tablespace whose page 0 is unwritten is cut
        self.server_page_size = server_page_size
        self._plain = name.removesuffix(NEW_SUFFIX)  # what the file is named once prepare puts it in place
        self.flavor = flavor
        self._resolve = resolve
        self.info: Any = None
        self.page_size = 0
        self.buf = bytearray()  # bytes from page_start
        self.page_start = 0  # file offset of buf[0], a page boundary once the page size is known
        self.bad: list[tuple[int, str]] = []
        self.pages = 0
        self.note: str | None = None
        self.zero_page0 = False
        self.data_after_page0 = False
        self.error: str | None = None  # the file's structure is broken (never for a whole tablespace)

    def _setup(self) -> bool:
        from innostream.formats.fsp0fsp import space_info, unwritten_space_info

        page0 = bytes(self.buf[:UNIV_PAGE_SIZE_MAX])
        if self.flavor is None:
            self.flavor = self._resolve(page0) if self._resolve is not None else None
            if self.flavor is None:
                self.note = "no page validation: the server family is unknown (give --flavor)"
                return False
        try:
            self.info = space_info(page0, self.flavor)
        except InnostreamError as exc:
            self.note = f"no page validation: {exc}"
            return False
        self.page_size = self.info.physical_page_size
        # Page 0 all zero (docs/PAGES.md): reported at finish, by whether the file holds any data after it.
        # (not for ibdata2..., whose first page is a later page of the system tablespace)
        # (a written page 0 is never zero in its first bytes, the FIL header: the smaller size tells as well)
        head = min(self.page_size, self.server_page_size or self.page_size)
        self.zero_page0 = self.buf.count(0, 0, head) == head and not is_system_continuation(self._plain)
        if self._lazy_page0() and self.server_page_size and self.server_page_size != self.page_size:
            # an all-zero page 0 reads as 16K; the tablespace has the server's page size (as the copier cut it)
            try:
                self.info = unwritten_space_info(self.server_page_size, self.flavor)
            except ValueError as exc:
                self.note = f"no page validation: {exc}"
                return False
            self.page_size = self.info.physical_page_size
        self.data_after_page0 = self.zero_page0 and self.buf.count(0) != len(self.buf)
        return True

    def _lazy_page0(self) -> bool:
        """Page 0 all zero where the server may not have written it yet: a MariaDB file-per-table tablespace (never
        the system or undo tablespaces, whose page 0 exists from the start, nor MySQL, which writes it at once)."""
        return self.zero_page0 and self.flavor == Flavor.MARIADB and self._plain.endswith(".ibd")

    def _flush(self, final: bool) -> None:
        from innostream.formats.buf0checksum import validate_pages, validate_pages_any_format

        ps = self.page_size
        whole = (len(self.buf) // ps) * ps
        if whole:
            first = self.page_start // ps
            # MariaDB page 0 all zero: the format is unknown (page 0 is written lazily; docs/PAGES.md)
            check = validate_pages_any_format if self._lazy_page0() else validate_pages
            self.bad.extend(check(memoryview(self.buf)[:whole], self.info, first))
            self.pages += whole // ps
            del self.buf[:whole]
            self.page_start += whole
        if final and self.buf:
            self.note = f"file size is not a whole number of {ps}-byte pages"
            self.buf.clear()

    def feed(self, offset: int, raw: bytes) -> None:
        if self.note is not None:
            return
        if not self.page_size and offset > len(self.buf):
            # a hole before the page size is known: materialise at most the first 64 KiB (page 0 of any size)
            self.buf.extend(bytes(min(offset, UNIV_PAGE_SIZE_MAX) - len(self.buf)))
            if offset >= UNIV_PAGE_SIZE_MAX and not self._setup():
                return
        end_known = self.page_start + len(self.buf)
        if offset > end_known:  # page size known: complete the current page, skip whole zero pages
            ps = self.page_size
            gap = offset - end_known
            fill = (-len(self.buf)) % ps
            if gap > fill + ps:
                self.buf.extend(bytes(fill))
                self._flush(False)
                self.page_start += (offset - self.page_start) // ps * ps
                gap = offset - self.page_start
            self.buf.extend(bytes(gap))
        self.buf.extend(raw)
        if self.zero_page0 and not self.data_after_page0 and raw.count(0) != len(raw):
            self.data_after_page0 = True
        if not self.page_size:
            if len(self.buf) < UNIV_PAGE_SIZE_MAX:
                return
            if not self._setup():
                return
        self._flush(False)

    def finish(self, size: int) -> None:
        if self.note is not None:
            return
        if not self.page_size:
            want = min(size, UNIV_PAGE_SIZE_MAX) - (self.page_start + len(self.buf))
            if want > 0:
                self.buf.extend(bytes(want))
            if not self.buf or not self._setup():
                return
        end_known = self.page_start + len(self.buf)
        if size > end_known:  # whole zero pages past the data are valid: only complete the partial page
            self.buf.extend(bytes(min((-len(self.buf)) % self.page_size, size - end_known)))
        self._flush(True)
        if self.zero_page0 and not self._lazy_page0():
            self.bad.insert(0, (0, "page 0 is all zero (InnoDB refuses it: \"Header page consists of zero bytes\")"))
        elif self.zero_page0 and self.data_after_page0:
            self.note = ("page 0 is all zero but later pages hold data: a new tablespace whose page 0 the server wrote "
                         "only after the backup had copied it (MariaDB writes it lazily; the backup's redo rebuilds "
                         "it), or a damaged one; verify --restore tells which")
        elif self.zero_page0:
            self.note = "every page is zero: a tablespace the server had not flushed yet (MariaDB), or damaged"


#: A delta whose .meta had not arrived: an archive written by innostream before 2026-12 put the .meta after it.
DELTA_META_LATE = ("no page validation: the .meta did not come before the .delta (an archive written by innostream "
                   "before 2026-12 puts it after; prepare still checks the delta's structure)")


class DeltaValidator:
    """Sees one ``.delta`` in file order and checks it as it passes: its cluster structure (``formats.
    xtrabackup_delta``) and every page image in it, validated as the backup validates pages.

    The page size and format come from the ``.meta`` (``meta()``, asked at the first byte: both reference tools and
    innostream write the .meta before its .delta), or from page 0 when the delta carries it. Memory: one page.
    """

    def __init__(self, name: str, flavor: str | None, meta: Callable[[], bytes | None]) -> None:
        self.name = name
        self.flavor = flavor
        self._meta = meta
        self.page_size = 0
        self.infos: list[Any] = []
        self.buf = bytearray()
        self.pos = 0  # file offset of buf[0]
        self.cluster: list[int] = []  # page numbers of the current cluster still to come
        self.last = False  # the current cluster is the last (XTRA)
        self.done = False  # the last cluster is complete
        self.seen: set[int] = set()
        self.bad: list[tuple[int, str]] = []
        self.pages = 0
        self.note: str | None = None
        self.error: str | None = None
        self.meta_info: Any = None  # the parsed .meta

    def _setup(self) -> bool:
        from innostream.formats.xtrabackup_delta import parse_meta

        raw = self._meta()
        if raw is None:
            self.note = DELTA_META_LATE
            return False
        try:
            meta = parse_meta(raw, file=self.name[: -len(".delta")] + ".meta")
        except InnostreamError as exc:
            self.error = str(exc)
            return False
        self.meta_info = meta
        self.page_size = meta.physical_page_size
        return True

    def _page(self, page: bytes, offset: int) -> None:
        from innostream.formats.buf0checksum import validate_pages
        from innostream.formats.xtrabackup_delta import check_cluster, delta_space_infos, parse_cluster_header

        ps = self.page_size
        if self.done:
            self.error = f"data after the last cluster, at offset {offset}"
            return
        if not self.cluster and not self.last:  # a header page
            try:
                header = parse_cluster_header(page, ps, file=self.name, offset=offset)
                check_cluster(header, ps, file=self.name, offset=offset)
            except InnostreamError as exc:
                self.error = str(exc)
                return
            self.cluster, self.last = list(header.page_nos), header.last
            self.done = self.last and not self.cluster
            return
        no = self.cluster.pop(0)
        if not self.infos:
            self.infos = delta_space_infos(self.meta_info, self.flavor, page if no == 0 else None)
        self.pages += 1
        if no in self.seen:
            self.bad.append((no, "listed twice in the delta"))
        self.seen.add(no)
        reasons = [validate_pages(page, i, no) for i in self.infos]  # (ibdata1's doublewrite area: never bad)
        if all(reasons):
            self.bad.append(reasons[0][0])
        if not self.cluster and self.last:
            self.done = True

    def _drain(self) -> None:
        ps = self.page_size
        while len(self.buf) >= ps and self.error is None:
            page = bytes(self.buf[:ps])
            del self.buf[:ps]
            self.pos += ps
            self._page(page, self.pos - ps)

    def feed(self, offset: int, raw: bytes) -> None:
        if self.note is not None or self.error is not None:
            return
        if not self.page_size and not self._setup():
            return
        end = self.pos + len(self.buf)
        while offset > end:  # a hole: zeros, a page at a time (a header page's tail may be one)
            n = min(offset - end, self.page_size)
            self.buf.extend(bytes(n))
            end += n
            self._drain()
        self.buf.extend(raw)
        self._drain()

    def finish(self, size: int) -> None:
        if self.note is not None or self.error is not None:
            return
        if not self.page_size and not self._setup():
            return
        if size > self.pos + len(self.buf):
            self.feed(size, b"")
            if self.error is not None:
                return
        if self.buf:
            self.error = f"ends inside a page: {len(self.buf)} bytes left of {self.page_size}"
        elif not self.done:
            self.error = "cut short: the last cluster (XTRA) is missing or incomplete"


class _MetaCapture:
    """Keeps a ``.meta`` member's bytes (a few dozen) for the :class:`DeltaValidator` of its delta."""

    def __init__(self, store: dict[str, bytes], stem: str) -> None:
        self.store, self.stem = store, stem
        self.data = bytearray()

    def feed(self, offset: int, raw: bytes) -> None:
        if offset == len(self.data) and len(self.data) + len(raw) <= 4096:
            self.data.extend(raw)

    def finish(self, size: int) -> None:
        if size == len(self.data):
            self.store[self.stem] = bytes(self.data)


class PageValidation:
    """Observer factory for ``verify``: one :class:`PageValidator` per tablespace, results kept for the report.

    The server family comes from ``--flavor``, else the archive's metadata (an innostream archive says it; an
    xbstream only through ``--xbstream-dialect mariadb/percona``), else from the pages: the first tablespace whose
    page 0 flags only one family accepts (``formats.fsp0fsp.guess_flavor``: MySQL's SDI bit, MariaDB's
    full_crc32 marker) decides it for the whole stream; a tablespace whose flags both accept, seen before that,
    is not checked (its validator says so).
    """

    def __init__(self, flavor: str | None = None) -> None:
        self.flavor = flavor
        self.validators: list[PageValidator | DeltaValidator] = []
        self.detected: str | None = None  # the family the pages showed, when no one said
        self.metas: dict[str, bytes] = {}  # an incremental's .meta members by tablespace name

    def resolve(self, page0: bytes) -> str | None:
        """The family of a tablespace from its page 0, remembered for the rest of the stream; None if unknown."""
        from innostream.formats.fsp0fsp import guess_flavor

        guess = guess_flavor(page0)
        if guess is not None and self.detected is None:
            self.detected = guess
        return guess or self.detected

    def __call__(self, name: str, meta: dict[str, Any]) -> PageValidator | DeltaValidator | _MetaCapture | None:
        flavor = self.flavor or meta.get("flavor")
        if flavor is not None and flavor not in tuple(Flavor):
            return None
        stem, dot, suffix = name.rpartition(".")
        if dot and suffix in ("delta", "meta") and is_tablespace(stem):
            if suffix == "meta":
                return _MetaCapture(self.metas, stem)
            d = DeltaValidator(name, flavor or self.detected, lambda: self.metas.get(stem))
            self.validators.append(d)
            return d
        if not is_tablespace(name.removesuffix(NEW_SUFFIX)):  # a whole copy DDL made during the backup, too
            return None
        page_size = meta.get("page_size")
        v = PageValidator(name, flavor, self.resolve if flavor is None else None,
                          page_size if isinstance(page_size, int) and not isinstance(page_size, bool) else None)
        self.validators.append(v)
        return v
