"""What a data directory holds and what its files are called in a backup: every naming rule, written once.

The backup enumerates a server's files with these rules (:func:`enumerate_files`); ``verify`` and ``inspect``
recognise tablespaces and redo files by them; prepare names the system tablespace files the way the backup wrote
them (:func:`local_data_file_path`). Names are file names or ``/``-separated backup member names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

from innostream.copier import SourceFile
from innostream.errors import SourceError, TargetError
from innostream.flavor import Flavor
from innostream.selection import TableSelection

# The redo file names of formats.log0files_io and formats.xtrabackup_logfile, written out so that `extract` and
# `inspect` do not import the redo parsers (and crc32c) at start-up; tests/test_backup_parts.py checks they agree.
LOG_DIRECTORY_NAME = "#innodb_redo"
LOG_FILE_BASE_NAME = "#ib_redo"
XTRABACKUP_LOGFILE = "xtrabackup_logfile"

if TYPE_CHECKING:  # the database client is not needed by verify and inspect, which use the naming rules
    from innostream.connection import ServerFacts, Session

#: Extensions of non-InnoDB files copied from database directories (xtrabackup's backup_copy.cc list, plus .sdi
#: for MySQL 8+). Everything else in a database directory is left out.
NON_INNODB_EXTENSIONS = frozenset({
    "frm", "MYD", "MYI", "MAD", "MAI", "MRG", "TRG", "TRN", "ARM", "ARZ", "CSM", "CSV", "opt", "par", "sdi",
})
#: Non-InnoDB table data that writers can change under BLOCK_DDL: on MySQL these need FLUSH TABLES WITH READ LOCK.
NON_TRANSACTIONAL_DATA = frozenset({"MYD", "MYI", "MAD", "MAI", "ARZ", "ARM", "CSV", "CSM", "MRG"})
#: Log tables are written by the server itself and never locked; copying them as they are is what both tools do.
LOG_TABLES = ("general_log", "slow_log")
#: MySQL 8.0.30+ keeps its redo files (#ib_redoN, spare #ib_redoN_tmp) in this directory of the datadir.
REDO_DIR = LOG_DIRECTORY_NAME
#: Directories in the datadir that are not databases: InnoDB's own and the reference tools'.
SKIP_DIRS = frozenset({"#innodb_temp", REDO_DIR, "#file_purge", "lost+found", ".", ".."})
#: File-per-table and general tablespaces.
IBD_RE = re.compile(r"^.+\.ibd$")
#: The system tablespace's usual names (``innodb_data_file_path`` may choose others).
SYSTEM_RE = re.compile(r"^ibdata\d+$")
#: MySQL/MariaDB undo tablespace names (undo_001 / undo001) and user-created MySQL undo files.
UNDO_RE = re.compile(r"^(undo_?\d{3}|.+\.ibu)$")
#: Temporary tablespaces (ibtmp1, MySQL's #innodb_temp/*.ibt): never copied, the server re-creates them.
TEMPORARY_RE = re.compile(r"^(ibtmp\d+|.+\.ibt)$")
#: Redo files: MariaDB 10.8+ ib_logfile0, MySQL 8.0.30+ #innodb_redo/#ib_redoN, the backup copies of both.
REDO_FILE_RE = re.compile(rf"^(ib_logfile\d+|{re.escape(LOG_FILE_BASE_NAME)}\d+(_tmp)?|{XTRABACKUP_LOGFILE})$")
#: Aria's own log, needed to open Aria tables consistently.
ARIA_RE = re.compile(r"^(aria_log_control|aria_log\.\d{8})$")


def _base(name: str) -> str:
    return name.rpartition("/")[2]


def is_undo(name: str) -> bool:
    """An undo tablespace: a file name or a member name (the backup puts undo tablespaces at its root)."""
    return bool(UNDO_RE.match(_base(name)))


def is_system_continuation(name: str) -> bool:
    """A second or later file of the system tablespace (``ibdata2``...): its first page is not a page 0, so the
    page-0 rules (header, "all zero is refused") do not apply to it. Only the default names are recognised."""
    base = name.rpartition("/")[2]
    return bool(SYSTEM_RE.match(base)) and base != "ibdata1"


def is_tablespace(name: str) -> bool:
    """A tablespace the backup copies page by page and ``verify`` checks: *.ibd, undo tablespaces, ibdataN."""
    base = _base(name)
    return bool(IBD_RE.match(base) or UNDO_RE.match(base) or SYSTEM_RE.match(base))


def is_temporary_tablespace(name: str) -> bool:
    """A temporary tablespace: pages worth inspecting in a data directory, never part of a backup."""
    return bool(TEMPORARY_RE.match(_base(name)))


def is_redo_file(name: str) -> bool:
    """A redo file of either family, live or the backup's copy."""
    return bool(REDO_FILE_RE.match(_base(name)))


# --- innodb_data_file_path ----------------------------------------------------------------------------------------

_DATA_FILE_RE = re.compile(
    r"^(?P<name>.+?):(?P<size>\d+)(?P<unit>[KMGTkmgt]?)(?P<raw>newraw|raw)?(?P<extend>:autoextend(?::max:.*)?)?$")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _data_file_entries(value: str) -> list[re.Match[str]]:
    """The entries of an ``innodb_data_file_path`` value, each matched by the one grammar."""
    out = []
    for item in filter(None, (part.strip() for part in value.split(";"))):
        m = _DATA_FILE_RE.match(item)
        if not m:
            raise SourceError(f"cannot parse innodb_data_file_path entry {item!r}")
        if m["raw"]:
            raise SourceError(f"system tablespace on a raw device ({item}) is not supported")
        out.append(m)
    if not out:
        raise SourceError("innodb_data_file_path is empty")
    return out


def parse_data_file_path(value: str) -> list[tuple[str, int | None]]:
    """``ibdata1:12M;ibdata2:50M:autoextend`` -> [(name, fixed size in bytes or None for autoextend), ...].

    Raises:
        SourceError: raw devices (``newraw``/``raw``) or an unparsable value.
    """
    return [(m["name"], None if m["extend"] else int(m["size"]) * _UNITS[(m["unit"] or "M").upper()])
            for m in _data_file_entries(value)]


def system_member_name(name: str) -> str:
    """A system tablespace file's name in a backup: at the root, like the reference tools put it.

    The server runs on POSIX, so only ``/`` separates directories; a backslash is part of the file's name.
    """
    return PurePosixPath(name).name


def local_data_file_path(value: str) -> str:
    """``innodb_data_file_path`` naming the files as they are in a backup (``/data/ibdata1:12M:autoextend`` ->
    ``ibdata1:12M:autoextend``): what backup-my.cnf says and what prepare starts its server with.

    Raises:
        SourceError: raw devices or an unparsable value.
    """
    return ";".join(system_member_name(m["name"]) + m.string[m.end("name"):] for m in _data_file_entries(value))


# --- the directories of a server ----------------------------------------------------------------------------------


class SourceDirs(NamedTuple):
    """The directories a backup reads, resolved."""

    datadir: Path
    data_home: Path
    log_dir: Path
    undo_dir: Path


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return Path(a).samefile(b)
    except OSError:
        return False


def find_source_dirs(facts: ServerFacts, *, datadir: Path | None = None, data_home_dir: Path | None = None,
                     log_dir: Path | None = None, undo_dir: Path | None = None,
                     target_dir: Path | None = None) -> SourceDirs:
    """The server's directories, or the ones given instead; checked to exist, to be readable, and not to hold
    ``target_dir``.

    A ``datadir`` that is not the directory the server reports is a server in a container or chroot seen from
    the host (a Docker volume's ``_data``, a Kubernetes PV): the server's other directories are found under it
    when they lie under the server's datadir, and must be given otherwise. That such a directory really holds
    this server's files is proven later, against the live server (:mod:`innostream.datadir_proof`).

    Raises:
        SourceError: a directory is missing or unreadable, or one of the server's directories lies outside its
            datadir when ``datadir`` is seen at another path.
        TargetError: ``target_dir`` is inside one of the server's directories.
    """
    data = facts.datadir
    if datadir is not None:
        if not Path(datadir).is_dir():
            raise SourceError("--datadir is not a directory", file=str(datadir))
        data = Path(datadir).resolve()
    elif not data.is_dir():
        raise SourceError(f"the server's datadir {data} does not exist here",
                          hint="for a server in a container or chroot, give --datadir as the path its datadir is "
                               "seen at from here")
    mapped = not _same_dir(data, facts.datadir)

    def server_dir(label: str, given: Path | None, server: Path, option: str) -> Path:
        if given:
            return Path(given).resolve()
        if not mapped:
            return server
        if server.is_relative_to(facts.datadir):
            return data / server.relative_to(facts.datadir)
        raise SourceError(f"the server's {label} directory {server} is outside its datadir {facts.datadir}, which "
                          f"is {data} here", hint=f"give that directory as seen from here with {option}")

    home = server_dir("innodb data home", data_home_dir, facts.data_home_dir, "--innodb-data-home-dir")
    logd = server_dir("redo log", log_dir, facts.log_dir, "--innodb-log-group-home-dir")
    undo = server_dir("undo", undo_dir, facts.undo_dir, "--innodb-undo-directory")
    for label, p in (("innodb data home", home), ("redo log", logd), ("undo", undo)):
        if not p.is_dir():
            raise SourceError(f"{label} directory not found", file=str(p))
    if target_dir is not None:
        target = Path(target_dir).absolute().resolve()
        for d in (data, home, logd, undo):
            if target == d or target.is_relative_to(d):
                raise TargetError("the target directory is inside the server's directories", file=str(target),
                                  hint="back up to a directory outside the datadir, InnoDB and log directories")
    if not os.access(data, os.R_OK | os.X_OK):
        raise SourceError("cannot read the data directory", file=str(data),
                          hint="run innostream as the mysql user or root")
    return SourceDirs(data, home, logd, undo)


def seen_elsewhere(facts: ServerFacts, dirs: SourceDirs) -> bool:
    """True when the server's datadir is seen here at another path (a server in a container or chroot)."""
    return not _same_dir(dirs.datadir, facts.datadir)


def host_path(facts: ServerFacts, dirs: SourceDirs, server_path: Path) -> Path:
    """Where a path the server names is seen here: rebased under ``dirs.datadir`` when the server's datadir is
    seen at another path.

    Raises:
        SourceError: the server's datadir is seen elsewhere and ``server_path`` lies outside it (a general
            tablespace or DATA DIRECTORY table outside the volume: nothing here proves which file it is).
    """
    if not seen_elsewhere(facts, dirs):
        return server_path
    path = Path(os.path.normpath(facts.datadir / server_path))
    if path.is_relative_to(facts.datadir):
        return dirs.datadir / path.relative_to(facts.datadir)
    raise SourceError(f"tablespace {server_path} lies outside the server's datadir {facts.datadir}, which is "
                      f"{dirs.datadir} here: it cannot be found from here",
                      hint="back up from where the server's own paths are valid (inside its container)")


# --- the inventory ------------------------------------------------------------------------------------------------


#: The backup's record of tablespaces that lived outside the datadir (JSON: ``{"version": 1, "files": [{"name":
#: member, "path": absolute path, "link": MariaDB .isl member or null}]}``). Restore puts each file back at its
#: path and writes the .isl link; prepare finds them under their member names.
REMOTE_FILES = "innostream_remote_files"


@dataclass(frozen=True)
class RemoteFile:
    """A tablespace file that lived outside the datadir: its member name in the backup and its absolute path."""

    name: str
    path: str
    link: str | None = None  # MariaDB: the <db>/<table>.isl to write at restore


def read_isl(path: Path) -> Path:
    """The absolute path a MariaDB ``.isl`` link file names."""
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape").strip("\r\n\0 ")
    except OSError as exc:
        raise SourceError(f"cannot read the link file: {exc.strerror}", file=str(path)) from None
    if not text.startswith("/"):
        raise SourceError("a .isl link file that does not name an absolute path", file=str(path))
    return Path(text)


def build_remote_files(files: Sequence[RemoteFile]) -> bytes:
    """The :data:`REMOTE_FILES` record."""
    return (json.dumps({"version": 1, "files": [
        {"name": f.name, "path": f.path, "link": f.link} for f in files]}, indent=1) + "\n").encode()


def parse_remote_files(data: bytes, *, file: str = REMOTE_FILES) -> list[RemoteFile]:
    """Read a :data:`REMOTE_FILES` record; every name relative and every path absolute.

    Raises:
        TargetError: not such a record.
    """
    try:
        doc = json.loads(data)
        out = [RemoteFile(str(f["name"]), str(f["path"]), None if f.get("link") is None else str(f["link"]))
               for f in doc["files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise TargetError(f"unreadable record of tablespaces outside the datadir: {exc}", file=file) from None
    for f in out:
        for rel in (f.name, f.link):
            if rel is not None and (rel.startswith("/") or ".." in rel.split("/")):
                raise TargetError(f"unsafe name {rel!r} in the record of remote tablespaces", file=file)
        if not f.path.startswith("/") or ".." in f.path.split("/"):
            raise TargetError(f"not an absolute path: {f.path!r}", file=file)
    return out


def read_remote_files(backup: Path) -> list[RemoteFile]:
    """A backup directory's record of tablespaces that lived outside the datadir (none without a record).

    Raises:
        TargetError: an unreadable record.
    """
    record = backup / REMOTE_FILES
    if not record.is_file():
        return []
    return parse_remote_files(record.read_bytes(), file=str(record))


@dataclass
class Inventory:
    """The files of one backup, split by when they are copied."""

    innodb: list[SourceFile] = field(default_factory=list)
    other: list[SourceFile] = field(default_factory=list)  # copied under the commit block
    skipped: list[Path] = field(default_factory=list)
    remote: list[RemoteFile] = field(default_factory=list)  # tablespaces outside the datadir

    @property
    def needs_read_lock(self) -> bool:
        """MySQL only: non-InnoDB tables whose data DML can change (MyISAM, CSV, ...) need FTWRL."""
        for f in self.other:
            ext = f.name.rsplit(".", 1)[-1]
            table = f.name.rsplit("/", 1)[-1].split(".")[0]
            if ext in NON_TRANSACTIONAL_DATA and not (f.name.startswith("mysql/") and table in LOG_TABLES):
                return True
        return False

    @property
    def undo_files(self) -> int:
        """Undo tablespaces copied (backup-my.cnf's ``innodb_undo_tablespaces`` where the server has none)."""
        return sum(1 for f in self.innodb if is_undo(f.name))


def _stat_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def server_tablespace_ids(session: Session, facts: ServerFacts) -> list[tuple[int, Path]]:
    """Space id and path (as the server names it, relative ones under its datadir) of every tablespace file the
    server knows."""
    if facts.flavor == Flavor.MYSQL:
        rows = session.query("SELECT f.SPACE, f.PATH FROM information_schema.INNODB_DATAFILES f")
    else:
        rows = session.query("SELECT SPACE, FILENAME FROM information_schema.INNODB_SYS_TABLESPACES")
    out = []
    for space, path in rows:
        if path:
            # MySQL's INNODB_DATAFILES.SPACE is VARBINARY holding the decimal id
            sid = int(space.decode() if isinstance(space, bytes) else space)
            out.append((sid, facts.datadir / (path.decode() if isinstance(path, bytes) else str(path))))
    return out


def server_tablespaces(session: Session, facts: ServerFacts, dirs: SourceDirs | None = None) -> list[Path]:
    """Paths of the tablespaces the server knows (to find ones outside the datadir), as seen here."""
    # As the server names them (not resolved): the remote ones are recorded and restored at that path.
    paths = [path for _, path in server_tablespace_ids(session, facts)]
    if dirs is None or not seen_elsewhere(facts, dirs):
        return paths
    return [host_path(facts, dirs, p) for p in paths if not is_temporary_tablespace(p.name)]


def _database_dirs(datadir: Path) -> list[Path]:
    return sorted(p for p in datadir.iterdir() if p.is_dir() and p.name not in SKIP_DIRS)


def enumerate_files(facts: ServerFacts, datadir: Path, data_home: Path, undo_dir: Path,
                    server_paths: Sequence[Path] = (), selection: TableSelection | None = None) -> Inventory:
    """Find what to copy, as PXB and mariadb-backup do.

    Copied: the system tablespace files of ``innodb_data_file_path``, undo tablespaces, ``mysql.ibd``,
    ``<db>/*.ibd``; non-InnoDB files of database directories by extension (:data:`NON_INNODB_EXTENSIONS`) and
    Aria's logs. Skipped: the live redo (copied by the log thread instead), ``ibtmp1``, ``#innodb_temp``, MySQL
    doublewrite files (prepare does not use them), binary and relay logs, pid/socket files, ``auto.cnf``, keys
    and certificates, ``ib_buffer_pool`` and anything else the server re-creates.

    Also copied: every tablespace the server knows (``server_paths``) that the scan did not find: general
    tablespaces and DATA DIRECTORY tables (MySQL paths, MariaDB ``.isl`` links). In the datadir they keep their
    relative path; outside it they are stored as ``<db>/<file>`` (``<file>`` when the directory is not named
    after a database) and listed in ``Inventory.remote`` with their absolute path.

    Raises:
        SourceError: two tablespaces would get the same name in the backup.
    """
    inv = Inventory()
    seen: set[Path] = set()

    def add(path: Path, name: str, kind: str, *, first_page_no: int = 0, system: bool = False) -> None:
        real = path.resolve()
        if real in seen:
            return
        seen.add(real)
        (inv.innodb if kind == "innodb" else inv.other).append(
            SourceFile(path=path, name=name, kind=kind, size=_stat_size(path), first_page_no=first_page_no,
                       system=system))

    # System tablespace: later files continue the page numbering of the first.
    first_page = 0
    page_size = int(facts.var("innodb_page_size", "16384") or 16384)
    for name, fixed in parse_data_file_path(facts.var("innodb_data_file_path", "ibdata1:12M:autoextend")):
        path = Path(name) if Path(name).is_absolute() else data_home / name
        if not path.is_file():
            raise SourceError("system tablespace file not found", file=str(path),
                              hint="check --innodb-data-home-dir")
        add(path, system_member_name(name), "innodb", first_page_no=first_page, system=True)
        first_page += (fixed if fixed is not None else _stat_size(path)) // page_size

    # Undo tablespaces (MySQL undo_NNN and *.ibu; MariaDB undoNNN), placed at the backup root like the tools do.
    for d in dict.fromkeys([undo_dir, datadir]):
        if d.is_dir():
            for child in sorted(d.iterdir()):
                if is_undo(child.name) and child.is_file():
                    add(child, child.name, "innodb")

    # MariaDB remote tablespaces (DATA DIRECTORY=...): <db>/<table>.isl holds the file's absolute path.
    isl_links: dict[Path, str] = {}
    for dbdir in _database_dirs(datadir):
        for child in sorted(dbdir.iterdir()):
            if child.suffix == ".isl" and child.is_file():
                isl_links[read_isl(child)] = f"{dbdir.name}/{child.name}"

    if (datadir / "mysql.ibd").is_file():
        add(datadir / "mysql.ibd", "mysql.ibd", "innodb")
    for child in sorted(datadir.iterdir()):
        if ARIA_RE.match(child.name) and child.is_file():
            add(child, child.name, "other")
    for dbdir in _database_dirs(datadir):
        for child in sorted(dbdir.iterdir()):
            if not child.is_file():
                continue
            name = f"{dbdir.name}/{child.name}"
            ext = child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            if ext == "ibd":
                add(child, name, "innodb")
            elif ext in NON_INNODB_EXTENSIONS:
                add(child, name, "other")
            else:
                inv.skipped.append(child)

    # Tablespaces the server knows that the scan above did not find: general tablespaces (in the datadir, in
    # innodb_directories) and DATA DIRECTORY tables. One in the datadir keeps its relative path; one outside is
    # stored under a name the prepare server finds by its scan (<db>/<file> or <file>), and its absolute path is
    # recorded (:data:`REMOTE_FILES`) so restore puts it back where the server expects it.
    root = datadir.resolve()
    names = {f.name for f in inv.innodb} | {f.name for f in inv.other}
    dbs = {d.name for d in _database_dirs(datadir)}
    links = {p.resolve(): link for p, link in isl_links.items()}
    for path in list(isl_links) + list(server_paths):
        real = path.resolve()
        if real in seen or is_temporary_tablespace(path.name) or not real.is_file():
            continue
        if real.is_relative_to(root):
            name = real.relative_to(root).as_posix()
        else:
            name = f"{real.parent.name}/{real.name}" if real.parent.name in dbs else real.name
        if name in names:
            raise SourceError(f"two tablespaces would be stored as {name} in the backup", file=str(path),
                              hint="rename one of the tablespace files")
        names.add(name)
        add(real, name, "innodb")
        if not real.is_relative_to(root):
            inv.remote.append(RemoteFile(name=name, path=str(path), link=links.get(real)))
    if selection is not None:  # a partial backup: only the selected user tables (innostream.selection)
        inv.skipped += [f.path for f in (*inv.innodb, *inv.other) if not selection.keeps(f.name)]
        inv.innodb = [f for f in inv.innodb if selection.keeps(f.name)]
        inv.other = [f for f in inv.other if selection.keeps(f.name)]
        inv.remote = [r for r in inv.remote if selection.keeps(r.name)]
    # Largest first keeps all threads busy until the end.
    inv.innodb.sort(key=lambda f: f.size, reverse=True)
    return inv
