"""The one safe directory writer: everything innostream writes under a directory goes through here.

Every member is opened with ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to directory descriptors that were themselves
opened with ``O_NOFOLLOW``, so nothing is written outside the target, no symlink is followed and no file is replaced
("File exists", errno 17, like xtrabackup). Data goes out with ``pwrite`` at the frame offsets (holes stay holes),
the size is set with ``ftruncate``. The xtrabackup metadata files are held back and written only at ``finish()``:
they are the commit point, so a half-written backup never looks complete.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from innostream.archive import nonzero_extents
from innostream.errors import Corrupt, FileExistsInTarget, TargetError, UnsafePath
from innostream.formats import archive as fa
from innostream.log import log

MAX_METADATA_BYTES = 64 << 20  # held in memory until the commit point
MAX_DIR_FDS = 256  # directory descriptors kept open for O_NOFOLLOW-safe creation


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
    """A :class:`innostream.archive.Sink` writing under one directory; refuses to escape it or to overwrite."""

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
    def begin_file(self, name: str, *, mode: int = 0o640) -> _Out:
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

    def write(self, handle: _Out, offset: int, data: bytes | bytearray | memoryview) -> None:
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

    def end_file(self, handle: _Out, size: int) -> None:
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

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        """A whole small file at once (metadata files are held back until :meth:`close`)."""
        handle = self.begin_file(name, mode=mode)
        self.write(handle, 0, data)
        self.end_file(handle, len(data))

    def close(self, trailer: dict | None = None) -> None:
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
        self.release()

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

    def release(self) -> None:
        """Close the directory descriptors without committing anything."""
        self._close_dirs(keep_root=False, sync=False)
