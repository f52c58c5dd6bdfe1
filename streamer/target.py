"""The one safe directory writer: everything innostream writes under a directory goes through here (``backup
--target-dir``, ``extract``, ``restore``).

Every member is opened with ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to directory descriptors that were themselves
opened with ``O_NOFOLLOW``, so nothing is written outside the target, no symlink is followed and no file is replaced
("File exists", errno 17, like xtrabackup). Data goes out with ``pwrite`` at the frame offsets (holes stay holes),
the size is set with ``ftruncate``. The xtrabackup metadata files are held back and written only at ``close()``:
they are the commit point, so a half-written backup never looks complete.

Durable by default (``fsync=True``; ``--no-fsync`` turns it off): every file is fsync'ed when it is complete, every
directory that got an entry (and the parents of directories made for the target) before the metadata files are
written, and each metadata file goes through :func:`commit_file`: a temporary name, every byte written, fsync,
rename, fsync of its directory. So after a power cut, a ``xtrabackup_checkpoints`` that exists means every data
file and directory entry before it is on disk. Files are created 0640 and directories 0750, as mysqld does, owned by
``owner`` when given (restore: the owner of the datadir).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from innostream.errors import Corrupt, FileExistsInTarget, TargetError, UnsafePath
from innostream.fileio import DIR_MODE, file_mode, pwrite_all, write_all
from innostream.formats import archive as fa
from innostream.formats.xtrabackup_meta import MB_CHECKPOINTS, XTRABACKUP_CHECKPOINTS
from innostream.log import log
from innostream.zeros import nonzero_extents

MAX_METADATA_BYTES = 64 << 20  # held in memory until the commit point
MAX_DIR_FDS = 256  # directory descriptors kept open for O_NOFOLLOW-safe creation
#: errno of a hard link the filesystem cannot make (another filesystem, no hard links): copy instead
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK)
#: The commit files: written last of all, their existence says "this backup is complete".
COMMIT_FILES = (XTRABACKUP_CHECKPOINTS, MB_CHECKPOINTS)
#: Suffix of a file being committed (restore skips such leftovers of a crash).
TMP_SUFFIX = ".innostream-tmp"
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def commit_file(dir_fd: int, name: str, data: bytes | bytearray, *, fsync: bool = True, replace: bool = False,
                mode: int = 0o640, owner: tuple[int, int] | None = None) -> None:
    """Make ``name`` in the directory ``dir_fd`` appear whole or not at all: write it under a temporary name
    (every byte, :func:`innostream.fileio.write_all`), fsync it, rename it into place, fsync the directory.

    Without ``replace`` an existing ``name`` (or temporary file) is never replaced: :class:`FileExistsError`.
    With it (prepare rewriting ``xtrabackup_checkpoints``), a crash leaves the old file or the new one.

    Raises:
        OSError: writing, syncing or renaming failed; the temporary file is removed.
    """
    tmp = name + TMP_SUFFIX
    if replace:
        with contextlib.suppress(FileNotFoundError):  # a leftover of a crash during an earlier commit
            os.unlink(tmp, dir_fd=dir_fd)
    fd = os.open(tmp, _NEW, file_mode(mode), dir_fd=dir_fd)
    try:
        try:
            write_all(fd, data)
            if owner is not None:
                os.fchown(fd, *owner)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not replace:
            try:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if fsync:
        os.fsync(dir_fd)


def replace_file(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace the file ``path`` atomically and durably (:func:`commit_file` with ``replace``), e.g. prepare's new
    ``xtrabackup_checkpoints``: a crash leaves the old or the new file, never half of one.

    Raises:
        TargetError: the file cannot be written.
    """
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise TargetError(f"cannot write {path}: {exc.strerror}", file=str(path)) from None
    try:
        mode, owner = 0o640, None
        with contextlib.suppress(FileNotFoundError):  # the new file keeps the old one's mode and owner
            st = os.stat(path.name, dir_fd=dfd, follow_symlinks=False)
            mode, owner = st.st_mode, (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        commit_file(dfd, path.name, data, fsync=fsync, replace=True, mode=mode, owner=owner)
    except OSError as exc:
        raise TargetError(f"cannot write {path}: {exc.strerror}", file=str(path)) from None
    finally:
        os.close(dfd)


def sync_tree(root: Path) -> None:
    """fsync every directory under ``root`` and ``root`` itself (after a server wrote into it: prepare), so new
    entries are durable before a commit file says the directory is complete.

    Raises:
        TargetError: a directory cannot be synced.
    """
    dirs = [Path(d) for d, _, _ in os.walk(root)]
    for d in reversed(dirs):  # children first
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TargetError(f"cannot sync directory: {exc.strerror}", file=str(d)) from None


@dataclass(eq=False)  # compared by identity: the open list holds each handle once
class _Out:
    name: str
    mode: int
    fd: int = -1
    buf: bytearray | None = None  # metadata files: kept in memory until close()
    # One pwrite at a time per file: the kernel serialises buffered writes to one inode anyway (i_rwsem), and a
    # second writer would spin on that lock burning CPU (7 % of extraction samples); here it sleeps instead.
    # It also keeps abort() from closing the descriptor under a writer (a reused number would get its bytes).
    lock: threading.Lock = field(default_factory=threading.Lock)


class TargetDir:
    """A :class:`innostream.sink.Sink` writing under one directory; refuses to escape it or to overwrite.

    Args:
        target: created with its parents if missing (relative to the current directory); the target itself may
            be a symlink (the user chose it), nothing below it may.
        fsync: fsync every file when it is complete, the directories before the metadata files, and commit each
            metadata file by a synced rename (the default), so that "completed OK" means the data is on disk.
        exists_error: builds the error for a file that exists already from its absolute path (each command words
            it its own way); the default speaks of extraction.
        owner: ``(uid, gid)`` every file and directory made here gets (restore: the datadir's owner).
    """

    def __init__(self, target: Path | str, *, fsync: bool = True,
                 exists_error: Callable[[Path], FileExistsInTarget] | None = None,
                 owner: tuple[int, int] | None = None) -> None:
        self.target = Path(target)
        self.root = self.target.absolute()
        self.fsync = fsync
        self.owner = owner
        self._exists_error_for = exists_error
        #: directories that got a new entry when the target was made: synced at close (the root is in the cache)
        self._made_in: list[Path] = []
        try:
            self._make_root()
            self._root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileExistsError:
            raise TargetError(f"target {self.root} exists and is not a directory", file=str(self.root)) from None
        except OSError as exc:
            raise TargetError(f"cannot create or open the target directory: {exc.strerror}",
                              file=str(self.target)) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            os.close(self._root)
            raise TargetError("target directory is not writable", file=str(self.root))
        self._dirs: dict[str, int] = {"": self._root}
        self._lock = threading.Lock()  # the directory cache, the open/metadata lists, _closed
        self._open: list[_Out] = []
        self._metadata: list[_Out] = []
        self._meta_bytes = 0
        self._closed = False
        self.created: set[str] = set()
        #: abort() removes the files begun and not ended (an encrypted archive's extract: a member whose frames did
        #: not all authenticate must not stay behind under its name)
        self.discard_unfinished = False

    def _make_root(self) -> None:
        """mkdir -p of the root, 0750 like the server's directories, remembering whose entries changed."""
        missing: list[Path] = []
        path = self.root
        while not os.path.lexists(path):
            missing.append(path)
            if path.parent == path:
                break
            path = path.parent
        for d in reversed(missing):
            try:
                d.mkdir(DIR_MODE)
            except FileExistsError:  # made meanwhile by someone else: not our entry
                continue
            self._made_in.append(d.parent)
            if self.owner is not None:
                os.chown(d, *self.owner, follow_symlinks=False)
        if not self.root.is_dir():
            raise FileExistsError(errno.EEXIST, "not a directory", str(self.root))

    def __enter__(self) -> TargetDir:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Commit on success, abort on an error."""
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- paths (callers hold self._lock: a cached descriptor may be closed to make room) ----------------------------
    def _dir_fd(self, parent: str) -> int:
        """The descriptor of ``parent`` (relative, safe), creating components without following symlinks.

        Iterative: from the deepest cached ancestor down, one component at a time (a name of thousands of
        components costs no recursion)."""
        fd = self._dirs.get(parent)
        if fd is not None:
            return fd
        if len(self._dirs) > MAX_DIR_FDS:  # thousands of schemas: do not run out of descriptors
            self._close_dirs(keep_root=True)
        parts = parent.split("/")
        have = len(parts) - 1
        while have > 0 and "/".join(parts[:have]) not in self._dirs:
            have -= 1
        up = self._dirs["/".join(parts[:have])] if have else self._root
        for i in range(have, len(parts)):
            rel, last = "/".join(parts[: i + 1]), parts[i]
            made = False
            try:
                os.mkdir(last, DIR_MODE, dir_fd=up)
                made = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise TargetError(f"cannot create directory: {exc.strerror}", file=rel) from None
            try:
                fd = os.open(last, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=up)
                if made and self.owner is not None:
                    os.fchown(fd, *self.owner)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath("a path component in the target is a symlink or not a directory",
                                     file=rel) from None
                raise TargetError(f"cannot open directory: {exc.strerror}", file=rel) from None
            self._dirs[rel] = up = fd
        return up

    def _exists(self, name: str) -> bool:
        parent, _, base = name.rpartition("/")
        try:
            os.stat(base, dir_fd=self._dir_fd(parent), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _exists_error(self, name: str) -> FileExistsInTarget:
        if self._exists_error_for is not None:
            return self._exists_error_for(self.root / name)
        return FileExistsInTarget(f"File exists (errno 17): {self.target / name}", file=name,
                                  hint="extract into an empty directory")

    @staticmethod
    def _check(name: str) -> None:
        why = fa.check_name(name)
        if why:
            raise UnsafePath(f"refusing archive member {name!r}: {why}", file=name)

    def _check_open(self, name: str | None = None) -> None:
        if self._closed:
            raise TargetError("the target is closed", file=name)

    # -- the primitives every writer under a directory uses ----------------------------------------------------------
    def open_new(self, name: str, mode: int = 0o640) -> int:
        """Create the new regular file ``name`` (relative, parents made as needed) and return a descriptor open for
        writing; the caller closes it. An existing file is never opened: :class:`FileExistsInTarget`."""
        self._check(name)
        parent, _, base = name.rpartition("/")
        with self._lock:
            self._check_open(name)
            dfd = self._dir_fd(parent)
            try:
                fd = os.open(base, _NEW, file_mode(mode), dir_fd=dfd)
            except FileExistsError:
                raise self._exists_error(name) from None
            except OSError as exc:
                raise TargetError(f"cannot create file: {exc.strerror}", file=name) from None
            self.created.add(name)
            if self.owner is not None:
                try:
                    os.fchown(fd, *self.owner)
                except OSError as exc:
                    os.close(fd)
                    raise TargetError(f"cannot set the owner: {exc.strerror}", file=name) from None
        return fd

    def make_dir(self, name: str) -> None:
        """Make the directory ``name`` and its parents under the root (an existing directory is fine)."""
        self._check(name)
        with self._lock:
            self._check_open(name)
            self._dir_fd(name)

    def link_in(self, src: Path, name: str) -> bool:
        """Hard-link the file ``src`` into the target as ``name``, never replacing a file; False when this
        filesystem cannot link it here (another filesystem, no hard links): copy it instead."""
        self._check(name)
        parent, _, base = name.rpartition("/")
        with self._lock:
            self._check_open(name)
            dfd = self._dir_fd(parent)
            try:
                os.link(src, base, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                raise self._exists_error(name) from None
            except OSError as exc:
                if exc.errno in _NO_LINK:
                    return False
                raise TargetError(f"cannot link {src} into the target: {exc.strerror}", file=name) from None
            self.created.add(name)
            try:
                if self.owner is not None:
                    os.chown(base, *self.owner, dir_fd=dfd, follow_symlinks=False)
                os.chmod(base, file_mode(os.stat(base, dir_fd=dfd, follow_symlinks=False).st_mode), dir_fd=dfd,
                         follow_symlinks=False)
            except NotImplementedError:  # lchmod: not on Linux; the file is a regular file (link_in refuses others)
                os.chmod(base, file_mode(os.stat(base, dir_fd=dfd).st_mode), dir_fd=dfd)
            except OSError as exc:
                raise TargetError(f"cannot set the owner or mode: {exc.strerror}", file=name) from None
        return True

    # -- Sink ----------------------------------------------------------------------------------------------------
    def begin_file(self, name: str, *, mode: int = 0o640) -> _Out:
        out = _Out(name, mode)
        if "/" not in name and name in fa.METADATA_FILES:
            with self._lock:
                self._check_open(name)
                if self._exists(name):
                    raise self._exists_error(name)
            out.buf = bytearray()
        else:
            out.fd = self.open_new(name, mode)
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
        if isinstance(data, memoryview):  # the page copier's chunks; the zero scan needs bytes.startswith
            data = data.tobytes()
        extents = list(nonzero_extents(data, offset))
        whole = memoryview(data)
        with handle.lock:
            if handle.fd < 0:
                raise TargetError("the target was aborted", file=handle.name)
            for a, b in extents:
                try:
                    pwrite_all(handle.fd, whole[a:b], offset + a)
                except OSError as exc:
                    raise TargetError(f"cannot write: {exc.strerror}", file=handle.name, offset=offset + a) from None

    def end_file(self, handle: _Out, size: int) -> None:
        if handle.buf is not None:
            if size > len(handle.buf):
                self._meta_bytes += size - len(handle.buf)
                if self._meta_bytes > MAX_METADATA_BYTES:
                    raise Corrupt(f"metadata files exceed {MAX_METADATA_BYTES} bytes", file=handle.name)
                handle.buf.extend(bytes(size - len(handle.buf)))
            with self._lock:
                self._metadata.append(handle)
                if handle in self._open:
                    self._open.remove(handle)
            return
        with handle.lock:
            if handle.fd < 0:
                raise TargetError("the target was aborted", file=handle.name)
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
                    if handle in self._open:  # abort() may have taken the list already
                        self._open.remove(handle)

    # -- MariaDB xbstream RENAME / REMOVE chunks (DDL during the backup) -------------------------------------------
    def rename(self, old: str, new: str) -> None:
        """Rename a finished member. Only files this extraction wrote are touched; a member may replace another one."""
        for name in (old, new):
            self._check(name)
        held = [m for m in self._metadata if m.name == old]
        if held:
            self._metadata = [m for m in self._metadata if m.name != new]
            held[0].name = new
            return
        if old not in self.created:
            log.warning("xbstream renames %s, which the stream did not write: ignored", old)
            return
        (op, _, ob), (np, _, nb) = old.rpartition("/"), new.rpartition("/")
        with self._lock:
            if new not in self.created and self._exists(new):
                raise self._exists_error(new)
            ofd, nfd = self._dir_fd(op), self._dir_fd(np)
            try:
                os.rename(ob, nb, src_dir_fd=ofd, dst_dir_fd=nfd)
            except OSError as exc:
                raise TargetError(f"cannot rename to {new}: {exc.strerror}", file=old) from None
        self.created.discard(old)
        self.created.add(new)

    def remove(self, name: str) -> None:
        """Remove a finished member this extraction wrote."""
        self._check(name)
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

    def close(self, trailer: dict[str, Any] | None = None) -> None:
        """Commit: every file must be complete (each was fsync'ed at ``end_file``); fsync every directory that got
        an entry, then write the held-back metadata files, the commit file (``xtrabackup_checkpoints``) last, each
        by :func:`commit_file`. ``trailer`` is for the archive writers; here the metadata files play its role."""
        with self._lock:
            if self._open:
                names = ", ".join(out.name for out in self._open)
                raise TargetError(f"closing the target with unfinished files: {names}")
            self._check_open()
            if self.fsync:
                self._sync_dirs()
        for out in sorted(self._metadata, key=lambda m: m.name in COMMIT_FILES):  # stable: commit files last
            self._check(out.name)
            assert out.buf is not None
            try:
                commit_file(self._root, out.name, out.buf, fsync=self.fsync, mode=out.mode, owner=self.owner)
            except FileExistsError:
                raise self._exists_error(out.name) from None
            except OSError as exc:
                raise TargetError(f"cannot write: {exc.strerror}", file=out.name) from None
            self.created.add(out.name)
        with self._lock:
            self._closed = True
            self._close_dirs(keep_root=False, sync=False)  # synced above (the root by each commit)

    def _sync_dirs(self) -> None:
        """fsync the cached directories and the parents of the directories made for the root (callers hold the
        lock). Directories evicted from the cache were synced then."""
        try:
            for fd in self._dirs.values():
                os.fsync(fd)
            for d in self._made_in:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise TargetError(f"cannot sync the target's directories: {exc.strerror}", file=str(self.root)) from None

    def abort(self) -> None:
        """Close what is open and write nothing more; metadata files are never written, so the target does not look
        complete (prepare and restore refuse it). The unfinished files stay for inspection. Idempotent."""
        with self._lock:
            self._closed = True
            opened, self._open = self._open, []
            self._metadata.clear()
        for out in opened:
            with out.lock:  # not under a pwrite
                if out.fd >= 0:
                    os.close(out.fd)
                    out.fd = -1
        with self._lock:
            if self.discard_unfinished:
                for out in opened:
                    if out.buf is None and out.name in self.created:
                        parent, _, base = out.name.rpartition("/")
                        with contextlib.suppress(OSError):
                            os.unlink(base, dir_fd=self._dir_fd(parent))
                        self.created.discard(out.name)
            self._close_dirs(keep_root=False, sync=False)

    def _close_dirs(self, *, keep_root: bool, sync: bool | None = None) -> None:
        """Close the cached directory descriptors (fsync'ing them first with ``--fsync``: new entries durable)."""
        sync = self.fsync if sync is None else sync
        for rel, fd in list(self._dirs.items()):
            if keep_root and rel == "":
                continue
            try:
                if sync:
                    os.fsync(fd)
            except OSError as exc:
                raise TargetError(f"cannot sync directory: {exc.strerror}", file=rel or str(self.root)) from None
            finally:
                os.close(fd)
                del self._dirs[rel]
