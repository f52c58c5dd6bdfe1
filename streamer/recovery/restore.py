"""``innostream restore``: put a prepared backup into an empty data directory (xtrabackup ``--copy-back`` /
``--move-back``).

Only a ``full-prepared`` backup is restored, and only into an empty or missing directory: we never overwrite a
data directory. Everything is copied except the backup's own metadata files (checkpoints, info, backup-my.cnf,
the raw redo copy), so the server finds exactly the data files and the redo layout it shut down with at prepare.
Holes stay holes (``SEEK_DATA``/``SEEK_HOLE``), so sparse and punch-holed tablespaces do not grow.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from innostream.errors import FileExistsInTarget, PrepareError, TargetError
from innostream.formats.xtrabackup_meta import BACKUP_TYPE_FULL_PREPARED, METADATA_FILES
from innostream.log import log
from innostream.recovery.backupdir import read_backup_dir
from innostream.target import TargetDir

#: Bytes per copy_file_range/read call: big enough for throughput, small enough for steady progress lines.
COPY_CHUNK = 8 * 1024 * 1024
#: Left behind by tools but never part of a data directory.
SKIP_SUFFIXES = (".innostream-tmp", ".delta", ".meta")
PROGRESS_EVERY = 5.0


@dataclass(frozen=True)
class RestoreConfig:
    """Options of ``innostream restore``."""

    target_dir: Path
    datadir: Path
    move: bool = False


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` of the file's data, skipping holes; the whole file if the FS cannot tell."""
    regions = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            regions.append((start, min(end, size)))
            pos = end
    except OSError:
        return [(0, size)] if size else []
    return regions


def _exists(path: Path) -> FileExistsInTarget:
    return FileExistsInTarget(f"{path} exists", file=str(path))


def copy_sparse(src: Path, dst: Path, *, target: TargetDir | None = None) -> int:
    """Copy ``src`` to a new file ``dst`` keeping holes; returns the data bytes copied. Never overwrites.

    ``dst`` is created through ``target``, the writer of the directory it lies under (restore's datadir), so no
    symlink on the way there is followed; without one, the directory of ``dst`` is the writer's root.
    """
    if target is None:
        with TargetDir(dst.parent, fsync=True, exists_error=_exists) as out:
            return copy_sparse(src, dst, target=out)
    with open(src, "rb") as fin:
        st = os.fstat(fin.fileno())
        size = st.st_size
        fdo = target.open_new(dst.absolute().relative_to(target.root).as_posix())
        copied = 0
        try:
            for start, end in _data_regions(fin.fileno(), size):
                pos = start
                while pos < end:
                    n = min(COPY_CHUNK, end - pos)
                    try:
                        done = os.copy_file_range(fin.fileno(), fdo, n, pos, pos)
                    except OSError as exc:
                        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                            raise
                        data = os.pread(fin.fileno(), n, pos)
                        done = os.pwrite(fdo, data, pos)
                    if done <= 0:
                        raise TargetError(f"short copy of {src} at offset {pos}", file=str(dst), offset=pos)
                    pos += done
                    copied += done
            os.ftruncate(fdo, size)
            os.fchmod(fdo, st.st_mode & 0o777)
            os.fsync(fdo)
        except OSError as exc:
            raise TargetError(f"cannot write {dst}: {exc.strerror}", file=str(dst)) from None
        finally:
            os.close(fdo)
    return copied


def _files_to_restore(backup: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(backup):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(backup)
        for name in sorted(filenames):
            rel = rel_dir / name
            if rel_dir == Path() and name in METADATA_FILES:
                continue
            if name.endswith(SKIP_SUFFIXES) or name.endswith(".tmp"):
                continue
            if not (backup / rel).is_file() or (backup / rel).is_symlink():
                raise TargetError(f"{backup / rel} is not a regular file; refusing to restore it")
            out.append(rel)
    return out


def restore_backup(config: RestoreConfig) -> RestoreResult:
    """Copy or move the prepared backup into the empty ``datadir``.

    Raises:
        PrepareError: the backup is not full-prepared.
        TargetError: datadir is not empty or cannot be written.
    """
    started = time.monotonic()
    bd = read_backup_dir(config.target_dir)
    if bd.checkpoints.backup_type != BACKUP_TYPE_FULL_PREPARED:
        raise PrepareError(f"the backup is {bd.checkpoints.backup_type!r}, not {BACKUP_TYPE_FULL_PREPARED!r}",
                           file=str(bd.checkpoints_file), hint=f"run: innostream prepare --target-dir {bd.path}")
    datadir = config.datadir
    if datadir.exists():
        if not datadir.is_dir():
            raise TargetError(f"{datadir} exists and is not a directory")
        if any(datadir.iterdir()):
            raise TargetError(f"datadir {datadir} is not empty; restore only fills an empty data directory",
                              hint="move the old data directory away first")
    if datadir.resolve() == bd.path.resolve() or bd.path.resolve() in datadir.resolve().parents:
        raise TargetError("datadir must not be inside the backup directory")
    try:
        datadir.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise TargetError(f"cannot create {datadir}: {exc.strerror}") from None

    files = _files_to_restore(bd.path)
    total = sum((bd.path / rel).stat().st_size for rel in files)
    result = RestoreResult()
    last_report = time.monotonic()
    verb = "Moving" if config.move else "Copying"
    log.info("restore: %s %d files (%d bytes) from %s to %s", verb.lower(), len(files), total, bd.path, datadir)
    # One writer for the datadir: no symlink below it is followed and no file replaced (the files and directories
    # are made through directory descriptors opened with O_NOFOLLOW); its close fsyncs the directories.
    with TargetDir(datadir, fsync=True, exists_error=_exists) as out:
        for rel in files:
            src, dst = bd.path / rel, datadir / rel
            log.debug("[01] %s %s to %s", verb, src, dst)
            size = src.stat().st_size
            if config.move:
                if not out.link_in(src, rel.as_posix()):  # another filesystem: copy
                    copy_sparse(src, dst, target=out)
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
    result.seconds = time.monotonic() - started
    log.info("restore: %d files, %d bytes in %.1f s", result.files, result.bytes, result.seconds)
    return result
