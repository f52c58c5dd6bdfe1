"""``innostream restore``: put a prepared backup into an empty data directory (xtrabackup ``--copy-back`` /
``--move-back``).

Only a ``full-prepared`` backup is restored, and only into an empty or missing directory: we never overwrite a
data directory. Everything is copied except the backup's own metadata files (checkpoints, info, backup-my.cnf,
the raw redo copy), so the server finds exactly the data files and the redo layout it shut down with at prepare.
Holes stay holes (``SEEK_DATA``/``SEEK_HOLE``), so sparse and punch-holed tablespaces do not grow.

Files and directories get the server's modes (0640/0750) and the owner of the datadir (``--owner`` to choose), so
a server running as ``mysql`` opens them without a chown step. Every file and directory is fsync'ed (``--no-fsync``
to skip). ``--move`` first marks the backup (a key in ``xtrabackup_checkpoints``) so that a move that stops halfway
is refused on a rerun instead of "succeeding" with a partial datadir; a move that completes leaves no backup behind.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from innostream.datadir import REMOTE_FILES, RemoteFile, read_remote_files
from innostream.ddl_track import NEW_SUFFIX, RECORD
from innostream.errors import FileExistsInTarget, PrepareError, TargetError
from innostream.fileio import data_regions, file_mode, pwrite_all
from innostream.formats.xtrabackup_meta import BACKUP_TYPE_FULL_PREPARED, METADATA_FILES
from innostream.log import log
from innostream.recovery.backupdir import BackupDir, read_backup_dir
from innostream.recovery.export import EXPORT_RECORD
from innostream.selection import PARTIAL_RECORD
from innostream.target import TargetDir

#: Bytes per copy_file_range/read call: big enough for throughput, small enough for steady progress lines.
COPY_CHUNK = 8 * 1024 * 1024
#: Left behind by tools but never part of a data directory.
#: innostream's own records at the backup root: what they describe is applied by prepare, none belongs in a datadir
BACKUP_RECORDS = (REMOTE_FILES, RECORD, EXPORT_RECORD, PARTIAL_RECORD)
#: not data: temporary names, incremental deltas, DDL re-copies, and the .cfg files of ``prepare --export`` (a stale
#: .cfg next to a table's .ibd in a live datadir would be read by a later IMPORT TABLESPACE)
SKIP_SUFFIXES = (".innostream-tmp", ".delta", ".meta", NEW_SUFFIX, ".cfg")
PROGRESS_EVERY = 5.0
#: The key ``restore --move`` adds to the backup's checkpoints before it moves the first file.
MOVE_MARK = "innostream_move_started_to"


@dataclass(frozen=True)
class RestoreConfig:
    """Options of ``innostream restore``."""

    target_dir: Path
    datadir: Path
    move: bool = False
    fsync: bool = True
    #: ``USER[:GROUP]`` (names or numbers) for every file and directory; None: the owner of the datadir (of its
    #: parent when it does not exist yet)
    owner: str | None = None
    #: tablespaces that lived outside the datadir go into the datadir (at their name in the backup) instead of
    #: back to their original path
    remote_to_datadir: bool = False


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _exists(path: Path) -> FileExistsInTarget:
    return FileExistsInTarget(f"{path} exists", file=str(path))


def resolve_owner(spec: str | None, datadir: Path) -> tuple[int, int] | None:
    """``(uid, gid)`` the restored files get: ``spec`` (``USER[:GROUP]``, names or numbers; the user's group when
    no group is given), else the owner of ``datadir`` or, if it does not exist, of its parent. None when that is
    us already (nothing to change).

    Raises:
        TargetError: unknown user or group, or not root and asked for another owner.
    """
    if spec:
        user, _, group = spec.partition(":")
        try:
            pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
            uid, gid = pw.pw_uid, pw.pw_gid
        except KeyError:
            if not user.isdigit():
                raise TargetError(f"--owner: no user {user!r}") from None
            uid, gid = int(user), os.getegid()
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
            except KeyError:
                raise TargetError(f"--owner: no group {group!r}") from None
    else:
        where = datadir
        while not where.exists() and where.parent != where:  # the nearest directory that exists
            where = where.parent
        st = where.stat()
        uid, gid = st.st_uid, st.st_gid
    if (uid, gid) == (os.geteuid(), os.getegid()):
        return None
    if os.geteuid() != 0:
        if spec:
            raise TargetError(f"--owner {spec}: only root can give files to another user")
        return None  # not root: the files are ours, as the user who runs us expects
    return uid, gid


def copy_regions(fd_in: int, fd_out: int, size: int, *, src: Path, dst: Path) -> int:
    """Copy the data regions of ``fd_in`` to the same offsets of ``fd_out`` (holes stay holes; the caller sets the
    size); ``copy_file_range`` where the kernel can, else pread/pwrite. Returns the data bytes copied.

    Raises:
        TargetError: the source shrank while it was copied.
    """
    copied = 0
    for start, end in data_regions(fd_in, size):
        pos = start
        while pos < end:
            n = min(COPY_CHUNK, end - pos)
            try:
                done = os.copy_file_range(fd_in, fd_out, n, pos, pos)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                data = os.pread(fd_in, n, pos)
                done = pwrite_all(fd_out, data, pos) if data else 0
            if done <= 0:
                raise TargetError(f"short copy of {src} at offset {pos} (did it shrink?)", file=str(dst), offset=pos)
            pos += done
            copied += done
    return copied


def copy_sparse(src: Path, dst: Path, *, target: TargetDir | None = None) -> int:
    """Copy ``src`` to a new file ``dst`` keeping holes; returns the data bytes copied. Never overwrites.

    ``dst`` is created through ``target``, the writer of the directory it lies under (restore's datadir), so no
    symlink on the way there is followed; without one, the directory of ``dst`` is the writer's root.
    """
    if target is None:
        with TargetDir(dst.parent, fsync=True, exists_error=_exists) as out:
            return copy_sparse(src, dst, target=out)
    rel = dst.absolute().relative_to(target.root).as_posix()
    with open(src, "rb") as fin:
        st = os.fstat(fin.fileno())
        size = st.st_size
        fdo = target.open_new(rel, file_mode(st.st_mode))
        try:
            try:
                copied = copy_regions(fin.fileno(), fdo, size, src=src, dst=dst)
                os.ftruncate(fdo, size)
                if target.fsync:
                    os.fsync(fdo)
            finally:
                os.close(fdo)
        except BaseException as exc:
            # Never leave a partial file that looks like a data file (a rerun would also refuse it as existing).
            with contextlib.suppress(Exception):
                target.remove(rel)
            if isinstance(exc, OSError):
                raise TargetError(f"cannot write {dst}: {exc.strerror}", file=str(dst)) from None
            raise
    return copied


def _files_to_restore(backup: Path, remote: set[str]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(backup):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(backup)
        for name in sorted(filenames):
            rel = rel_dir / name
            if rel_dir == Path() and name in (*METADATA_FILES, *BACKUP_RECORDS):
                continue
            if rel.as_posix() in remote:  # goes back to its own directory
                continue
            if name.endswith(SKIP_SUFFIXES) or name.endswith(".tmp"):
                continue
            if not (backup / rel).is_file() or (backup / rel).is_symlink():
                raise TargetError(f"{backup / rel} is not a regular file; refusing to restore it")
            out.append(rel)
    return out


def _restore_remote(backup: Path, rf: RemoteFile, datadir: TargetDir, config: RestoreConfig) -> int:
    """Put a tablespace that lived outside the datadir back at its absolute path (its directory made as needed;
    with ``remote_to_datadir`` it is already in the datadir) and, for MariaDB, write its ``.isl`` link into the
    datadir, naming where the file now is. Returns the bytes copied."""
    size = 0
    if config.remote_to_datadir:
        where = (datadir.root / rf.name).as_posix()
    else:
        src, dst = backup / rf.name, Path(rf.path)
        size = src.stat().st_size
        log.info("restore: %s %s to %s", "moving" if config.move else "copying", src, dst)
        with TargetDir(dst.parent, fsync=datadir.fsync, exists_error=_exists, owner=datadir.owner) as out:
            if not (config.move and out.link_in(src, dst.name)):
                copy_sparse(src, dst, target=out)
        if config.move:
            src.unlink()
        where = rf.path
    if rf.link is not None:
        fd = datadir.open_new(rf.link)
        try:
            pwrite_all(fd, where.encode("utf-8", "surrogateescape"), 0)
            if datadir.fsync:
                os.fsync(fd)
        except OSError as exc:
            raise TargetError(f"cannot write {rf.link}: {exc.strerror}", file=rf.link) from None
        finally:
            os.close(fd)
    return size


@dataclass
class _Moving:
    moved: bool = False  # a file has left the backup


@contextlib.contextmanager
def _move_mark(bd: BackupDir, config: RestoreConfig) -> Iterator[_Moving]:
    """With ``--move``: mark the backup (:data:`MOVE_MARK` in its checkpoints, a synced rename) before the first
    file leaves it, so a move that stops halfway is refused on a rerun. A failure before any file left the backup
    removes the mark again: the backup is whole."""
    state = _Moving()
    if not config.move:
        yield state
        return
    original = bd.checkpoints
    bd.write_checkpoints(replace(original, extra=(*original.extra, (MOVE_MARK, str(config.datadir)))),
                         fsync=config.fsync)
    try:
        yield state
    except BaseException:
        if not state.moved:
            with contextlib.suppress(Exception):
                bd.write_checkpoints(original, fsync=config.fsync)
        raise


def _remove_moved_backup(bd: BackupDir) -> None:
    """After a complete ``--move``: remove the backup's metadata files (the checkpoints, which carry the move mark,
    last) and the directories the move emptied, the backup directory itself included. Anything else stays."""
    names = [p.name for p in bd.path.iterdir() if p.name in (*METADATA_FILES, *BACKUP_RECORDS) and p.is_file()]
    for name in sorted(names, key=lambda n: bd.path / n == bd.checkpoints_file):
        (bd.path / name).unlink()
    for dirpath, _, _ in sorted(os.walk(bd.path), key=lambda w: -len(Path(w[0]).parts)):  # deepest first
        with contextlib.suppress(OSError):  # not empty: something we did not move stays, with its directory
            Path(dirpath).rmdir()


def restore_backup(config: RestoreConfig) -> RestoreResult:
    """Copy or move the prepared backup into the empty ``datadir``.

    Raises:
        PrepareError: the backup is not full-prepared.
        TargetError: datadir is not empty or cannot be written.
    """
    started = time.monotonic()
    bd = read_backup_dir(config.target_dir)
    moving_to = dict(bd.checkpoints.extra).get(MOVE_MARK)
    if moving_to is not None:
        raise PrepareError(f"an earlier restore --move of this backup into {moving_to} stopped halfway: the backup "
                           f"is incomplete (some files are in {moving_to})", file=str(bd.checkpoints_file),
                           hint="restore another copy of the backup; do not start a server on that datadir")
    if bd.checkpoints.backup_type != BACKUP_TYPE_FULL_PREPARED:
        raise PrepareError(f"the backup is {bd.checkpoints.backup_type!r}, not {BACKUP_TYPE_FULL_PREPARED!r}",
                           file=str(bd.checkpoints_file), hint=f"run: innostream prepare --target-dir {bd.path}")
    datadir = config.datadir
    remote = read_remote_files(bd.path)
    for rf in remote if not config.remote_to_datadir else ():  # before anything is written: never replace a file
        if os.path.lexists(rf.path):
            raise FileExistsInTarget(f"{rf.path} exists: the backup's tablespace {rf.name} lived there",
                                     file=rf.path, hint="move the old file away first; restore never overwrites")
    if datadir.exists():
        if not datadir.is_dir():
            raise TargetError(f"{datadir} exists and is not a directory")
        if any(datadir.iterdir()):
            raise TargetError(f"datadir {datadir} is not empty; restore only fills an empty data directory",
                              hint="move the old data directory away first")
    if datadir.resolve() == bd.path.resolve() or bd.path.resolve() in datadir.resolve().parents:
        raise TargetError("datadir must not be inside the backup directory")
    owner = resolve_owner(config.owner, datadir)

    files = _files_to_restore(bd.path, set() if config.remote_to_datadir else {rf.name for rf in remote})
    total = sum((bd.path / rel).stat().st_size for rel in files) + sum(
        (bd.path / rf.name).stat().st_size for rf in remote if not config.remote_to_datadir)
    result = RestoreResult()
    last_report = time.monotonic()
    verb = "Moving" if config.move else "Copying"
    log.info("restore: %s %d files (%d bytes) from %s to %s", verb.lower(), len(files), total, bd.path, datadir)
    # One writer for the datadir: no symlink below it is followed and no file replaced (the files and directories
    # are made through directory descriptors opened with O_NOFOLLOW); its close fsyncs the directories.
    with TargetDir(datadir, fsync=config.fsync, exists_error=_exists, owner=owner) as out, \
            _move_mark(bd, config) as moving:
        for rel in files:
            src, dst = bd.path / rel, datadir / rel
            log.debug("[01] %s %s to %s", verb, src, dst)
            size = src.stat().st_size
            if config.move:
                if not out.link_in(src, rel.as_posix()):  # another filesystem: copy
                    copy_sparse(src, dst, target=out)
                moving.moved = True
                src.unlink()
            else:
                copy_sparse(src, dst, target=out)
            result.files += 1
            result.bytes += size
            if time.monotonic() - last_report > PROGRESS_EVERY:
                last_report = time.monotonic()
                log.info("restore: %d/%d files, %d/%d bytes", result.files, len(files), result.bytes, total)
        for dirpath, dirnames, _ in os.walk(bd.path):
            for d in dirnames:  # empty schema directories (a database without tables) must exist too
                out.make_dir((Path(dirpath).relative_to(bd.path) / d).as_posix())
        moving.moved = moving.moved or bool(remote)
        for rf in remote:
            result.bytes += _restore_remote(bd.path, rf, out, config)
            result.files += 0 if config.remote_to_datadir else 1
    if config.move:
        _remove_moved_backup(bd)
    result.seconds = time.monotonic() - started
    log.info("restore: %d files, %d bytes in %.1f s", result.files, result.bytes, result.seconds)
    return result
