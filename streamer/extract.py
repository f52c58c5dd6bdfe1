"""Extract an innostream archive or an xbstream into a target directory, safely.

Every member is opened with ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to directory descriptors that were themselves
opened with ``O_NOFOLLOW``, so nothing is written outside the target, no symlink is followed and no file is replaced
("File exists", errno 17, like xtrabackup). Data goes out with ``pwrite`` at the frame offsets (holes stay holes),
the size is set with ``ftruncate``. The xtrabackup metadata files are held back and written only after the trailer
verified: they are the commit point, so a half-extracted backup never looks complete.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from formats import archive as fa
from formats import xbstream as fx
from formats.errors import BadMagic, Corrupt, InnostreamError
from streamer.archive import (
    ArchiveSummary,
    FileResult,
    NullSink,
    ObserverFactory,
    Sink,
    nonzero_extents,
    read_archive,
)
from streamer.errors import FileExistsInTarget, TargetError, UnsafePath
from streamer.log import log
from streamer.xbstream import read_xbstream

MAX_METADATA_BYTES = 64 << 20  # held in memory until the commit point
PAGE0_BYTES = 65536  # enough of a tablespace's start to read page 0 of the largest page size
MAX_DIR_FDS = 256  # directory descriptors kept open for O_NOFOLLOW-safe creation
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class _Out:
    name: str
    mode: int
    fd: int = -1
    buf: bytearray | None = None  # metadata files: kept in memory until finish()
    # One pwrite at a time per file: the kernel serialises buffered writes to one inode anyway (i_rwsem), and a
    # second writer would spin on that lock burning CPU (7 % of extraction samples); here it sleeps instead.
    lock: threading.Lock = field(default_factory=threading.Lock)


class TargetDir:
    """A :class:`streamer.archive.Sink` writing under one directory; refuses to escape it or to overwrite."""

    def __init__(self, target: Path, *, fsync: bool = False) -> None:
        self.target = target
        self.fsync = fsync
        try:
            target.mkdir(parents=True, exist_ok=True)
            self._root = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise TargetError(f"cannot create or open the target directory: {exc.strerror}", file=str(target)) from None
        self._dirs: dict[str, int] = {"": self._root}
        self._lock = threading.Lock()
        self._open: list[_Out] = []
        self._metadata: list[_Out] = []
        self._meta_bytes = 0
        self.created: set[str] = set()

    # -- paths ---------------------------------------------------------------------------------------------------
    def _dir_fd(self, parent: str) -> int:
        """The descriptor of ``parent`` (relative, safe), creating components without following symlinks."""
        fd = self._dirs.get(parent)
        if fd is not None:
            return fd
        if len(self._dirs) > MAX_DIR_FDS:  # thousands of schemas: do not run out of descriptors
            self._close_dirs(keep_root=True)
        head, _, last = parent.rpartition("/")
        up = self._dir_fd(head)
        try:
            os.mkdir(last, 0o750, dir_fd=up)
        except FileExistsError:
            pass
        except OSError as exc:
            raise TargetError(f"cannot create directory: {exc.strerror}", file=parent) from None
        try:
            fd = os.open(last, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=up)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath("a path component in the target is a symlink or not a directory",
                                 file=parent) from None
            raise TargetError(f"cannot open directory: {exc.strerror}", file=parent) from None
        self._dirs[parent] = fd
        return fd

    def _create(self, name: str, mode: int) -> int:
        why = fa.check_name(name)
        if why:
            raise UnsafePath(f"refusing archive member {name!r}: {why}", file=name)
        parent, _, base = name.rpartition("/")
        with self._lock:
            dfd = self._dir_fd(parent)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(base, flags, mode & 0o777 or 0o640, dir_fd=dfd)
        except FileExistsError:
            raise FileExistsInTarget(f"File exists (errno 17): {self.target / name}", file=name,
                                     hint="extract into an empty directory") from None
        except OSError as exc:
            raise TargetError(f"cannot create file: {exc.strerror}", file=name) from None
        self.created.add(name)
        return fd

    def _exists(self, name: str) -> bool:
        parent, _, base = name.rpartition("/")
        try:
            os.stat(base, dir_fd=self._dir_fd(parent), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    # -- Sink ----------------------------------------------------------------------------------------------------
    def begin(self, name: str, mode: int) -> _Out:
        out = _Out(name, mode)
        if "/" not in name and name in fa.METADATA_FILES:
            if fa.check_name(name) is None and self._exists(name):
                raise FileExistsInTarget(f"File exists (errno 17): {self.target / name}", file=name)
            out.buf = bytearray()
        else:
            out.fd = self._create(name, mode)
        with self._lock:
            self._open.append(out)
        return out

    def write_at(self, handle: _Out, offset: int, data: bytes) -> None:
        if handle.buf is not None:
            with self._lock:
                end = offset + len(data)
                self._meta_bytes += max(0, end - len(handle.buf))
                if self._meta_bytes > MAX_METADATA_BYTES:
                    raise Corrupt(f"metadata files exceed {MAX_METADATA_BYTES} bytes", file=handle.name)
                if end > len(handle.buf):
                    handle.buf.extend(bytes(end - len(handle.buf)))
                handle.buf[offset:end] = data
            return
        # Files are new (O_EXCL) and get their size from ftruncate, so aligned zero blocks need not be written:
        # they stay holes, as in the source (xbstream carries them as zeros).
        extents = list(nonzero_extents(data, offset))
        whole = memoryview(data)
        with handle.lock:
            for a, b in extents:
                view = whole[a:b]
                pos = offset + a
                try:
                    while view:
                        n = os.pwrite(handle.fd, view, pos)
                        view = view[n:]
                        pos += n
                except OSError as exc:
                    raise TargetError(f"cannot write: {exc.strerror}", file=handle.name, offset=pos) from None

    def end(self, handle: _Out, size: int) -> None:
        if handle.buf is not None:
            if size > len(handle.buf):
                self._meta_bytes += size - len(handle.buf)
                if self._meta_bytes > MAX_METADATA_BYTES:
                    raise Corrupt(f"metadata files exceed {MAX_METADATA_BYTES} bytes", file=handle.name)
                handle.buf.extend(bytes(size - len(handle.buf)))
            with self._lock:
                self._metadata.append(handle)
                self._open.remove(handle)
            return
        try:
            os.ftruncate(handle.fd, size)
            if self.fsync:
                os.fsync(handle.fd)
        except OSError as exc:
            raise TargetError(f"cannot finish file: {exc.strerror}", file=handle.name) from None
        finally:
            os.close(handle.fd)
            handle.fd = -1
            with self._lock:
                self._open.remove(handle)

    # -- MariaDB xbstream RENAME / REMOVE chunks (DDL during the backup) -------------------------------------------
    def rename(self, old: str, new: str) -> None:
        """Rename a finished member. Only files this extraction wrote are touched; a member may replace another one."""
        for name in (old, new):
            why = fa.check_name(name)
            if why:
                raise UnsafePath(f"refusing archive member {name!r}: {why}", file=name)
        held = [m for m in self._metadata if m.name == old]
        if held:
            self._metadata = [m for m in self._metadata if m.name != new]
            held[0].name = new
            return
        if old not in self.created:
            log.warning("xbstream renames %s, which the stream did not write: ignored", old)
            return
        if new not in self.created and self._exists(new):
            raise FileExistsInTarget(f"File exists (errno 17): {self.target / new}", file=new)
        (op, _, ob), (np, _, nb) = old.rpartition("/"), new.rpartition("/")
        with self._lock:
            ofd, nfd = self._dir_fd(op), self._dir_fd(np)
            try:
                os.rename(ob, nb, src_dir_fd=ofd, dst_dir_fd=nfd)
            except OSError as exc:
                raise TargetError(f"cannot rename to {new}: {exc.strerror}", file=old) from None
        self.created.discard(old)
        if new not in self.created:
            self.created.add(new)

    def remove(self, name: str) -> None:
        """Remove a finished member this extraction wrote."""
        why = fa.check_name(name)
        if why:
            raise UnsafePath(f"refusing archive member {name!r}: {why}", file=name)
        if any(m.name == name for m in self._metadata):
            self._metadata = [m for m in self._metadata if m.name != name]
            return
        if name not in self.created:
            log.warning("xbstream removes %s, which the stream did not write: ignored", name)
            return
        parent, _, base = name.rpartition("/")
        with self._lock:
            try:
                os.unlink(base, dir_fd=self._dir_fd(parent))
            except OSError as exc:
                raise TargetError(f"cannot remove: {exc.strerror}", file=name) from None
        self.created.discard(name)

    def finish(self) -> None:
        """Commit: write the held-back metadata files, then fsync directories if asked."""
        for out in self._metadata:
            fd = self._create(out.name, out.mode)
            try:
                assert out.buf is not None
                os.write(fd, out.buf)
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                raise TargetError(f"cannot write: {exc.strerror}", file=out.name) from None
            finally:
                os.close(fd)
        self._close_dirs(keep_root=False)

    def abort(self) -> None:
        """Close what is open; metadata files are never written, so the target does not look complete."""
        for out in list(self._open):
            if out.fd >= 0:
                os.close(out.fd)
                out.fd = -1
        self._open.clear()
        self._metadata.clear()
        self.close()

    def _close_dirs(self, *, keep_root: bool, sync: bool | None = None) -> None:
        """Close the cached directory descriptors (fsync'ing them first with ``--fsync``: new entries durable)."""
        sync = self.fsync if sync is None else sync
        for rel, fd in list(self._dirs.items()):
            if keep_root and rel == "":
                continue
            try:
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
                del self._dirs[rel]

    def close(self) -> None:
        self._close_dirs(keep_root=False, sync=False)


class PrefixedInput:
    """A binary input with some already-read bytes in front (format detection on a pipe).

    Reads never concatenate: while prefix bytes remain, a read returns only those (a short read, which every
    consumer loops over, as on a raw pipe); afterwards reads go straight to the input.
    """

    def __init__(self, prefix: bytes, inp: BinaryIO) -> None:
        self._prefix = prefix
        self._inp = inp

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            if n < 0:
                data, self._prefix = self._prefix + self._inp.read(), b""
                return data
            head, self._prefix = self._prefix[:n], self._prefix[n:]
            return head
        return self._inp.read(n) or b""

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Fill ``buf`` from the prefix first, then from the input; return the count (0 at the end)."""
        if self._prefix:
            k = min(len(buf), len(self._prefix))
            buf[:k] = self._prefix[:k]
            self._prefix = self._prefix[k:]
            return k
        readinto = getattr(self._inp, "readinto", None)
        if readinto is not None:
            try:
                return readinto(buf) or 0
            except NotImplementedError:  # io.RawIOBase subclasses that implement only read()
                pass
        data = self._inp.read(len(buf)) or b""
        buf[: len(data)] = data
        return len(data)


def detect(inp: BinaryIO) -> tuple[str, BinaryIO]:
    """Tell innostream from xbstream (and a zstd-compressed xbstream) by the first bytes."""
    head = inp.read(8) or b""
    while len(head) < 8:
        more = inp.read(8 - len(head))
        if not more:
            break
        head += more
    stream: BinaryIO = PrefixedInput(head, inp)  # type: ignore[assignment]
    if head == fa.STREAM_MAGIC:
        return "innostream", stream
    if head == fx.XB_STREAM_CHUNK_MAGIC:
        return "xbstream", stream
    if head[:4] == ZSTD_MAGIC:
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True, closefd=False)
        kind, inner = detect(reader)  # type: ignore[arg-type]
        if kind != "xbstream":
            raise BadMagic("zstd-compressed input is not an xbstream", offset=0)
        return "xbstream.zst", inner
    if not head:
        raise BadMagic("empty input: not an archive", offset=0)
    raise BadMagic(f"not an innostream archive nor an xbstream (starts with {head.hex()})", offset=0)


def read_any(
    inp: BinaryIO,
    sink: Sink | Callable[[], Sink],
    *,
    parallel: int = 2,
    fmt: str = "auto",
    dialect: str = "auto",
    verify_data: bool = True,
    observer_factory: ObserverFactory | None = None,
    on_file_done: Callable[[FileResult], None] | None = None,
) -> ArchiveSummary:
    """Read an innostream archive or an xbstream (detected unless ``fmt`` says) into ``sink``.

    ``sink`` may be a factory, called only once the input was recognised (so that garbage on stdin does not leave
    an empty target directory behind).
    """
    kind, stream = detect(inp)
    if fmt != "auto" and not kind.startswith(fmt):
        raise BadMagic(f"input is {kind}, not {fmt}", offset=0)
    if callable(sink):
        sink = sink()
    if kind == "innostream":
        return read_archive(stream, sink, parallel=parallel, verify_data=verify_data,
                            observer_factory=observer_factory, on_file_done=on_file_done)
    return read_xbstream(stream, sink, dialect=dialect, on_file_done=on_file_done,
                         observer_factory=observer_factory if verify_data else None)


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


def extract(
    inp: BinaryIO, target: Path, *, parallel: int = 2, fsync: bool = False, fmt: str = "auto", dialect: str = "auto"
) -> ArchiveSummary:
    """Extract ``inp`` under ``target``; metadata files last, after the trailer verified.

    Raises:
        FormatError: damaged or hostile input (nothing outside ``target`` is touched).
        TargetError: a file exists already, an unsafe path, a write failure.
    """
    progress = _Progress("extracted")
    summary = read_any(inp, lambda: TargetDir(target, fsync=fsync), parallel=parallel, fmt=fmt, dialect=dialect,
                       on_file_done=progress)
    log.info("extracted %d files, %d bytes from %s into %s", len(summary.files), sum(f.size for f in summary.files),
             summary.format, target)
    return summary


def verify(
    inp: BinaryIO, *, parallel: int = 2, fmt: str = "auto", dialect: str = "auto",
    observer_factory: ObserverFactory | None = None,
) -> ArchiveSummary:
    """Read and check everything without writing."""
    return read_any(inp, NullSink(), parallel=parallel, fmt=fmt, dialect=dialect, observer_factory=observer_factory)


def list_archive(inp: BinaryIO, *, fmt: str = "auto", dialect: str = "auto",
                 on_file_done: Callable[[FileResult], None] | None = None) -> ArchiveSummary:
    """Read the structure (checksums of every frame, no decompression) and report the files."""
    return read_any(inp, NullSink(), fmt=fmt, dialect=dialect, verify_data=False, on_file_done=on_file_done)


__all__ = ["PageValidation", "PageValidator", "TargetDir", "detect", "extract", "list_archive", "read_any", "verify"]


# ==================================================================================================================
# Page validation for verify
# ==================================================================================================================
def is_tablespace(name: str) -> bool:
    """InnoDB tablespace files whose pages ``verify`` checks: *.ibd, *.ibu, ibdataN, undoNNN/undo_NNN."""
    base = name.rpartition("/")[2]
    if base.endswith((".ibd", ".ibu")):
        return True
    if base.startswith("ibdata") and base[6:].isdigit():
        return True
    return base.startswith("undo") and base.lstrip("undo_").isdigit()


class PageValidator:
    """Sees one tablespace's bytes in file order (holes as zeros) and validates whole pages as they complete.

    Page size and format come from page 0 (``formats.fsp0fsp.space_info``); pages are checked in batches with
    ``formats.buf0checksum.validate_pages``. All-zero pages in holes are valid and skipped without materialising.
    """

    def __init__(self, name: str, flavor: str) -> None:
        self.name = name
        self.flavor = flavor
        self.info: Any = None
        self.page_size = 0
        self.buf = bytearray()  # bytes from page_start
        self.page_start = 0  # file offset of buf[0], a page boundary once the page size is known
        self.bad: list[tuple[int, str]] = []
        self.pages = 0
        self.note: str | None = None

    def _setup(self) -> bool:
        from formats.fsp0fsp import space_info

        try:
            self.info = space_info(bytes(self.buf[:PAGE0_BYTES]), self.flavor)
        except InnostreamError as exc:
            self.note = f"no page validation: {exc}"
            return False
        self.page_size = self.info.physical_page_size
        return True

    def _flush(self, final: bool) -> None:
        from formats.buf0checksum import validate_pages

        ps = self.page_size
        whole = (len(self.buf) // ps) * ps
        if whole:
            first = self.page_start // ps
            self.bad.extend(validate_pages(memoryview(self.buf)[:whole], self.info, first))
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
            self.buf.extend(bytes(min(offset, PAGE0_BYTES) - len(self.buf)))
            if offset >= PAGE0_BYTES and not self._setup():
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
        if not self.page_size:
            if len(self.buf) < PAGE0_BYTES:
                return
            if not self._setup():
                return
        self._flush(False)

    def finish(self, size: int) -> None:
        if self.note is not None:
            return
        if not self.page_size:
            want = min(size, PAGE0_BYTES) - (self.page_start + len(self.buf))
            if want > 0:
                self.buf.extend(bytes(want))
            if not self.buf or not self._setup():
                return
        end_known = self.page_start + len(self.buf)
        if size > end_known:  # whole zero pages past the data are valid: only complete the partial page
            self.buf.extend(bytes(min((-len(self.buf)) % self.page_size, size - end_known)))
        self._flush(True)


class PageValidation:
    """Observer factory for ``verify``: one :class:`PageValidator` per tablespace, results kept for the report."""

    def __init__(self, flavor: str | None = None) -> None:
        self.flavor = flavor
        self.validators: list[PageValidator] = []

    def __call__(self, name: str, meta: dict[str, Any]) -> PageValidator | None:
        flavor = self.flavor or meta.get("flavor")
        if not is_tablespace(name) or flavor not in ("mysql", "mariadb"):
            return None
        v = PageValidator(name, flavor)
        self.validators.append(v)
        return v
