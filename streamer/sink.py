"""Where a backup goes: :class:`DirSink` writes a target directory with the same interface as the archive writers.

The engine talks to one interface (``begin_file``/``write``/``end_file``/``add_bytes``/``close``/``abort``) and
does not care whether the bytes become files in ``--target-dir`` or members of the stream on stdout
(:class:`innostream.archive.ArchiveWriter`, :class:`innostream.archive.XbstreamWriter`).

Rules of the directory sink, as xtrabackup's: the target may exist if it is empty of the files we write; a file
that exists is never overwritten (``O_EXCL``, errno 17 "File exists"); member names are relative and may not
climb out of the target. Gaps between writes stay holes (sparse files), like the stream's "gaps are zeros".
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from innostream.errors import FileExistsInTarget, TargetError, UnsafePath
from innostream.formats.archive import check_name


class Sink(Protocol):
    """Where files go, one interface for every writer: a target directory (:class:`innostream.target.TargetDir`),
    an archive stream (:class:`innostream.archive.ArchiveWriter`, :class:`innostream.archive.xbstream.XbstreamWriter`)
    or nowhere (:class:`NullSink`). The backup engine writes to it; so does the archive reader when extracting.

    ``write`` may be called from any thread, in any order of offsets; gaps are holes. ``close`` is the commit
    point (metadata files last); ``abort`` leaves nothing that looks complete.
    """

    def begin_file(self, name: str, *, mode: int = 0o640) -> Any: ...

    def write(self, handle: Any, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def end_file(self, handle: Any, size: int) -> None: ...

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None: ...

    def close(self, trailer: dict | None = None) -> None: ...

    def abort(self) -> None: ...


class NullSink:
    """A sink that writes nothing (verify, list)."""

    def begin_file(self, name: str, *, mode: int = 0o640) -> Any:
        return name

    def write(self, handle: Any, offset: int, data: bytes | bytearray | memoryview) -> None:
        return None

    def end_file(self, handle: Any, size: int) -> None:
        return None

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        return None

    def close(self, trailer: dict | None = None) -> None:
        return None

    def abort(self) -> None:
        return None


def safe_member_name(name: str) -> PurePosixPath:
    """Check a member name is relative and stays under the target; return it as a path.

    Raises:
        UnsafePath: what :func:`formats.archive.check_name` refuses (absolute, empty, NUL, ``..``/``.`` parts).
    """
    why = check_name(name)
    if why:
        raise UnsafePath(f"unsafe member name {name!r}: {why}", file=name)
    return PurePosixPath(name)


@dataclass
class _OpenFile:
    name: str
    fd: int
    end: int = 0  # highest offset written so far, for the hole at the end


class DirSink:
    """Write backup members as files under ``target_dir``; never overwrite, never leave the directory.

    Args:
        target_dir: created (with parents) if missing; relative paths are relative to the current directory.
        fsync: fsync each file when it is complete and the directories at ``close`` so that "completed OK"
            means the data is on disk.
    """

    def __init__(self, target_dir: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(target_dir).absolute()
        self.fsync = fsync
        self._lock = threading.Lock()
        self._files: dict[int, _OpenFile] = {}
        self._next_id = 1
        self._dirs: set[Path] = set()
        self._closed = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise TargetError(f"target {self.root} exists and is not a directory", file=str(self.root)) from None
        except OSError as exc:
            raise TargetError(f"cannot create target directory: {exc.strerror}", file=str(self.root)) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise TargetError("target directory is not writable", file=str(self.root))

    def _path(self, name: str) -> Path:
        rel = safe_member_name(name)
        path = self.root.joinpath(*rel.parts)
        parent = path.parent
        if parent not in self._dirs:
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TargetError(f"cannot create directory: {exc.strerror}", file=str(parent)) from None
            # A symlink planted inside the target must not redirect our writes elsewhere.
            if not parent.resolve().is_relative_to(self.root.resolve()):
                raise UnsafePath("directory leads outside the target", file=str(parent))
            self._dirs.add(parent)
        return path

    def _open(self, name: str, mode: int) -> int:
        path = self._path(name)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileExistsError:
            raise FileExistsInTarget(
                f"[Errno {errno.EEXIST}] File exists", file=str(path),
                hint="innostream never overwrites; use an empty or new --target-dir") from None
        except OSError as exc:
            raise TargetError(f"cannot create file: [Errno {exc.errno}] {exc.strerror}", file=str(path)) from None

    def begin_file(self, name: str, *, mode: int = 0o640) -> int:
        """Create ``name`` (exclusively) and return the id to write it through."""
        with self._lock:
            if self._closed:
                raise TargetError("sink already closed", file=name)
            fd = self._open(name, mode)
            file_id = self._next_id
            self._next_id += 1
            self._files[file_id] = _OpenFile(name, fd)
        return file_id

    def write(self, file_id: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; skipped ranges stay holes."""
        f = self._files[file_id]
        view = memoryview(data)
        pos = offset
        try:
            while view:
                n = os.pwrite(f.fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as exc:
            raise TargetError(f"write failed: [Errno {exc.errno}] {exc.strerror}", file=str(self.root / f.name),
                              offset=pos) from None
        if pos > f.end:
            f.end = pos

    def end_file(self, file_id: int, size: int) -> None:
        """Finish a file at exactly ``size`` bytes (a trailing gap becomes a hole) and close it."""
        with self._lock:
            f = self._files.pop(file_id)
        try:
            if size != f.end:
                os.ftruncate(f.fd, size)
            if self.fsync:
                os.fsync(f.fd)
        except OSError as exc:
            raise TargetError(f"cannot finish file: [Errno {exc.errno}] {exc.strerror}",
                              file=str(self.root / f.name)) from None
        finally:
            os.close(f.fd)

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        """Write a small whole file (metadata) in one go."""
        file_id = self.begin_file(name, mode=mode)
        self.write(file_id, 0, data)
        self.end_file(file_id, len(data))

    def close(self, trailer: dict | None = None) -> None:
        """Finish the backup: every file must be complete; sync the directories so the names are durable.

        ``trailer`` is accepted for interface parity with the archive writers; a directory has no trailer (the
        metadata files written last play that role).
        """
        with self._lock:
            if self._files:
                names = ", ".join(f.name for f in self._files.values())
                raise TargetError(f"closing the target with unfinished files: {names}")
            self._closed = True
        if self.fsync:
            for d in sorted(self._dirs | {self.root}, key=lambda p: len(p.parts), reverse=True):
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def abort(self) -> None:
        """Close whatever is open and write nothing more; the unfinished files stay for inspection.

        A target without ``xtrabackup_checkpoints`` is not a backup: prepare and restore refuse it.
        """
        with self._lock:
            files, self._files = list(self._files.values()), {}
            self._closed = True
        for f in files:
            try:
                os.close(f.fd)
            except OSError:
                pass
