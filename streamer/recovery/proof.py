"""``innostream verify --restore``: prove a backup restores by doing it, on a scratch copy.

The backup (a directory, or an archive extracted through the normal extract path) is copied into a scratch
directory (a reflink where the file system has one, else a plain copy that keeps holes; never a hard link: prepare
writes into the data files, and the original is only ever read), prepared with :mod:`innostream.recovery.prepare`,
restored with :mod:`innostream.recovery.restore` into a fresh data directory beside it, and a throwaway server
(:mod:`innostream.recovery.server`: networking off, private socket, grant tables skipped) is started on that data
directory. Every table of every schema but performance_schema, information_schema and sys gets ``CHECK TABLE`` and
``SELECT COUNT(*)``; then the server is shut down cleanly and the scratch directory removed (``keep`` keeps it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pymysql
from innostream.errors import Interrupted, PrepareError, TargetError
from innostream.extract import extract
from innostream.families import family
from innostream.log import log
from innostream.recovery.backupdir import BackupDir, read_backup_dir
from innostream.recovery.prepare import PrepareConfig, _server_argv, find_server_binary, prepare_backup
from innostream.recovery.restore import RestoreConfig, copy_regions, restore_backup
from innostream.recovery.server import ServerExited, run_dir, running_server
from innostream.signals import sigterm_raises

#: ``FICLONE`` (linux/fs.h ``_IOW(0x94, 9, int)``): share the source's extents (btrfs, XFS with reflink, bcachefs).
FICLONE = 0x40049409
#: Schemas that hold no data of their own.
SKIP_SCHEMAS = ("performance_schema", "information_schema", "sys")
#: Room prepare needs beyond the copy: its redo files (MySQL 8 MiB capacity, MariaDB a 16 MiB log), doublewrite,
#: temporary tablespaces, and pages a reflinked copy unshares.
PREPARE_MARGIN = 64 * 1024 * 1024
#: CHECK TABLE answers that mean "nothing wrong" (the last row of its result).
_CLEAN = ("OK", "Table is already up to date")
#: pymysql error codes for a connection the server dropped (it crashed or was killed).
_CONNECTION_LOST = (2006, 2013, 2014)


@dataclass(frozen=True)
class ProofConfig:
    """Options of ``innostream verify --restore``."""

    server_binary: Path | None = None
    scratch_dir: Path | None = None
    keep: bool = False
    use_memory: str = "128M"
    timeout: float = 3600.0
    parallel: int = 2
    fmt: str = "auto"
    dialect: str = "auto"
    max_size: int | None = None  # extract's bound on declared member sizes (None: its default)
    key: bytes | None = field(default=None, repr=False)  # an encrypted archive's key (--decrypt-key-file)


@dataclass
class TableCheck:
    """One table's CHECK TABLE answer and row count."""

    schema: str
    name: str
    engine: str
    rows: int | None = None
    status: str = ""
    checked: bool = False
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in _CLEAN or self.status.startswith("note: ")

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class ProofResult:
    """What ``verify --restore`` found."""

    tables: list[TableCheck] = field(default_factory=list)
    recovered_lsn: int | None = None
    last_lsn: int = 0
    seconds: float = 0.0
    scratch: Path | None = None
    copy_method: str = ""
    server_version: str = ""
    already_prepared: bool = False
    crashed: str | None = None  # the server died while checking this table

    @property
    def errors(self) -> list[TableCheck]:
        """Tables CHECK TABLE (or counting their rows) found fault with."""
        return [t for t in self.tables if t.checked and not t.ok]

    @property
    def unchecked(self) -> list[TableCheck]:
        """Tables never checked because the server died before their turn."""
        return [t for t in self.tables if not t.checked]


# --- the scratch directory ----------------------------------------------------------------------------------------


def _allocated(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (holes excluded)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).lstat().st_blocks * 512
    return total


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def _check_space(scratch: Path, need: int, what: str) -> None:
    free = _free(scratch)
    if free < need:
        raise TargetError(f"the scratch copy needs {_mb(need)} ({what}) but {scratch.parent} has {_mb(free)} free",
                          file=str(scratch.parent), hint="pass --scratch-dir DIR on a file system with more room")


def _make_scratch(base: Path | None, near: Path | None) -> Path:
    """A new private directory for the scratch copy: in ``base`` (--scratch-dir), else next to the backup ``near``,
    else in $TMPDIR."""
    candidates = [base] if base is not None else [p for p in (near, Path(tempfile.gettempdir())) if p is not None]
    last: OSError | None = None
    for d in candidates:
        try:
            return Path(tempfile.mkdtemp(prefix="innostream-verify-", dir=d))
        except OSError as exc:
            last = exc
    where = ", ".join(str(d) for d in candidates)
    raise TargetError(f"cannot create a scratch directory in {where}: {last.strerror if last else 'no place'}",
                      hint="pass --scratch-dir DIR (a writable directory with room for the backup)")


def _clone_file(src: Path, dst: Path) -> bool:
    """Create ``dst`` (never replacing anything) with ``src``'s bytes and mode: a reflink if the file system can,
    else a copy of the data regions (holes stay holes). Returns True for a reflink."""
    with open(src, "rb") as fin:
        st = os.fstat(fin.fileno())
        fdo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
        try:
            try:
                fcntl.ioctl(fdo, FICLONE, fin.fileno())
                return True
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS,
                                     errno.EPERM, errno.EBADF):
                    raise
            copy_regions(fin.fileno(), fdo, st.st_size, src=src, dst=dst)
            os.ftruncate(fdo, st.st_size)
            return False
        finally:
            os.close(fdo)


def copy_backup_tree(src: Path, dst: Path) -> str:
    """Copy the backup directory ``src`` into the new directory ``dst``; returns "reflink", "copy" or "empty".

    ``src`` is only read. Symlinks and special files are refused (a backup holds none)."""
    methods: set[bool] = set()
    dst.mkdir(mode=0o700)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(dirpath).relative_to(src)
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise TargetError(f"{Path(dirpath) / d} is a symlink; a backup directory holds none")
            (dst / rel / d).mkdir(mode=0o750)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise TargetError(f"{path} is not a regular file; a backup directory holds only files")
            try:
                methods.add(_clone_file(path, dst / rel / name))
            except OSError as exc:
                raise TargetError(f"cannot copy {path} into the scratch directory {dst}: {exc.strerror}",
                                  file=str(path),
                                  hint="pass --scratch-dir DIR on a file system with more room" if exc.errno in (
                                      errno.ENOSPC, errno.EDQUOT) else None) from None
    if not methods:
        return "empty"
    return "reflink" if methods == {True} else "copy"


# --- checking the tables ------------------------------------------------------------------------------------------


def _list_tables(conn: pymysql.connections.Connection) -> list[TableCheck]:
    skip = ", ".join(f"'{s}'" for s in SKIP_SCHEMAS)
    with conn.cursor() as cur:
        cur.execute("SELECT table_schema, table_name, COALESCE(engine, '') FROM information_schema.tables "
                    f"WHERE table_schema NOT IN ({skip}) AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') "
                    "ORDER BY table_schema, table_name")
        return [TableCheck(str(s), str(n), str(e)) for s, n, e in cur.fetchall()]


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _check_table(conn: pymysql.connections.Connection, t: TableCheck) -> None:
    """CHECK TABLE and COUNT(*) of ``t``, recorded in it. A dropped connection (the server died) propagates."""
    sql_name = f"{_ident(t.schema)}.{_ident(t.name)}"
    t.checked = True
    with conn.cursor() as cur:
        try:
            cur.execute(f"CHECK TABLE {sql_name}")
            rows = cur.fetchall()
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] in _CONNECTION_LOST:
                raise
            t.status = f"error: {exc.args[-1] if exc.args else exc}"
            return
        for _, _, msg_type, msg_text in rows:
            t.messages.append(f"{msg_type}: {msg_text}")
        last_type, last_text = (str(rows[-1][2]), str(rows[-1][3])) if rows else ("error", "no answer")
        has_error = any(str(r[2]).lower() == "error" for r in rows)
        if has_error:
            t.status = "; ".join(m for m in t.messages if m.lower().startswith("error"))
        elif last_type.lower() == "status":
            t.status = last_text
        elif last_type.lower() == "note" and "support check" in last_text:
            t.status = f"note: {last_text}"
        else:
            t.status = f"{last_type}: {last_text}"
        try:
            cur.execute(f"SELECT COUNT(*) FROM {sql_name}")
            row = cur.fetchone()
            t.rows = int(row[0]) if row else None
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] in _CONNECTION_LOST:
                raise
            if t.ok:
                t.status = f"error: COUNT(*) failed: {exc.args[-1] if exc.args else exc}"


def _check_all(conn: pymysql.connections.Connection, result: ProofResult) -> None:
    result.tables = _list_tables(conn)
    log.info("verify --restore: checking %d tables", len(result.tables))
    for t in result.tables:
        try:
            _check_table(conn, t)
        except pymysql.MySQLError as exc:
            t.status = f"error: the server went away during CHECK TABLE ({exc.args[-1] if exc.args else exc})"
            result.crashed = t.qualified
            return
        if t.ok:
            log.debug("verify --restore: %s: %s, %s rows", t.qualified, t.status, t.rows)
        else:
            log.error("verify --restore: %s: %s", t.qualified, t.status)


def _start_and_check(datadir: Path, bd: BackupDir, config: ProofConfig, result: ProofResult) -> None:
    """Start a throwaway server on the restored ``datadir`` (options from the prepared backup's metadata ``bd``,
    read before the restore moved it) and check every table."""
    fam = family(bd.flavor)
    binary, _ = find_server_binary(bd, config.server_binary)
    restored = dataclasses.replace(bd, path=datadir)
    pconf = PrepareConfig(datadir, binary, config.use_memory, config.timeout)
    lines: list[str] = []
    with run_dir() as run:
        argv = _server_argv(binary, restored, run, pconf, fam)
        try:
            with running_server(argv, run, config.timeout, lines) as conn:
                _check_all(conn, result)
        except ServerExited as exc:
            raise PrepareError(f"the server did not start on the restored backup: {exc.message}",
                               hint=exc.hint) from None
        except PrepareError:
            if result.crashed is None:
                raise
            # The server died while checking a table: that table is the finding; show the server's own words.
            for line in [x for x in lines if "[ERROR]" in x or "ssertion" in x][:3]:
                log.error("server: %s", line)


# --- the whole proof ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _scratch(config: ProofConfig, near: Path | None) -> Iterator[Path]:
    scratch = _make_scratch(config.scratch_dir, near)
    log.info("verify --restore: scratch directory %s", scratch)
    try:
        yield scratch
    finally:
        if config.keep:
            log.info("verify --restore: scratch directory kept: %s", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _report(result: ProofResult) -> None:
    innodb = sum(1 for t in result.tables if t.engine.lower() == "innodb")
    rows = sum(t.rows or 0 for t in result.tables)
    bad = result.errors
    recovered = ("the backup was prepared already" if result.already_prepared else
                 f"recovered LSN {result.recovered_lsn} (last_lsn {result.last_lsn})")
    skipped = result.unchecked
    not_checked = f" ({len(skipped)} not checked: the server died first)" if skipped else ""
    line = (f"verify --restore: {len(result.tables) - len(skipped)} tables checked ({innodb} InnoDB, "
            f"{len(result.tables) - innodb} other){not_checked}, {rows} rows, {len(bad)} with errors; {recovered}; "
            f"{result.seconds:.1f} s")
    if bad or skipped:
        log.error("%s", line)
    else:
        log.info("%s; OK", line)


def verify_restore(source: Path | BinaryIO, config: ProofConfig) -> ProofResult:
    """Prove that ``source`` (a backup directory, or an open archive / xbstream) restores: copy or extract it into
    a scratch directory, prepare, restore, start a server, CHECK TABLE and count every table.

    Raises:
        FormatError: the archive is damaged (nothing is started).
        TargetError: the scratch directory cannot be made or filled.
        PrepareError: prepare, restore or the server failed, or a table is not clean (the message names it).
        Interrupted: a signal; the server is stopped and the scratch directory removed.
    """
    started = time.monotonic()
    result = ProofResult()
    near: Path | None = None
    archive_size: int | None = None  # an archive in a regular file: a lower bound of what extract writes
    if isinstance(source, Path):
        read_backup_dir(source)  # refuse what is not a complete backup before copying anything
        near = source.resolve().parent
    else:
        try:
            st: os.stat_result | None = os.fstat(source.fileno())
        except (AttributeError, OSError, ValueError):  # not a file descriptor: an object-store reader
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            archive_size = st.st_size
            name = getattr(source, "name", None)
            with contextlib.suppress(OSError, TypeError):
                if isinstance(name, str) and os.path.samestat(Path(name).stat(), st):
                    near = Path(name).resolve().parent
    with sigterm_raises(), _scratch(config, near) as scratch:
        result.scratch = scratch
        backup = scratch / "backup"
        datadir = scratch / "datadir"
        try:
            if isinstance(source, Path):
                need = _allocated(source)
                _check_space(scratch, need + PREPARE_MARGIN, f"{_mb(need)} of backup data and {_mb(PREPARE_MARGIN)} "
                             "for prepare")
                result.copy_method = copy_backup_tree(source, backup)
                log.info("verify --restore: %s of %s into %s", result.copy_method, source, backup)
            else:
                if archive_size is not None:
                    _check_space(scratch, archive_size + PREPARE_MARGIN, f"at least the archive's "
                                 f"{_mb(archive_size)} and {_mb(PREPARE_MARGIN)} for prepare")
                limits: dict[str, Any] = {} if config.max_size is None else {"max_size": config.max_size}
                extract(source, backup, parallel=config.parallel, fsync=False, fmt=config.fmt,
                        dialect=config.dialect, key=config.key, **limits)
                result.copy_method = "extract"
            # A scratch copy needs no durability: no fsync anywhere.
            prepared = prepare_backup(PrepareConfig(backup, config.server_binary, config.use_memory, config.timeout,
                                                    fsync=False))
            result.recovered_lsn = prepared.recovered_lsn
            result.last_lsn = prepared.last_lsn
            result.server_version = prepared.server_version
            result.already_prepared = prepared.already_prepared
            bd = read_backup_dir(backup)  # before restore --move takes the metadata files away
            # remote_to_datadir: tablespaces that lived outside the datadir stay in the scratch copy, never at
            # their original paths
            restore_backup(RestoreConfig(backup, datadir, move=True, fsync=False, remote_to_datadir=True))
            _start_and_check(datadir, bd, config, result)
        except KeyboardInterrupt:
            raise Interrupted("verify --restore interrupted; the server was stopped and the scratch copy removed",
                              hint="the backup itself was only read") from None
    result.seconds = time.monotonic() - started
    _report(result)
    bad = result.errors
    if bad or result.unchecked:
        names = ", ".join(f"{t.qualified} ({t.status})" for t in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        what = f"the server crashed checking {result.crashed}; " if result.crashed else ""
        skipped = f"; {len(result.unchecked)} tables not checked" if result.unchecked else ""
        raise PrepareError(f"{what}{len(bad)} of {len(result.tables)} tables failed CHECK TABLE: {names}{more}"
                           f"{skipped}",
                           hint="the backup does not restore cleanly; take a new one")
    return result


__all__ = ["ProofConfig", "ProofResult", "TableCheck", "copy_backup_tree", "verify_restore"]
