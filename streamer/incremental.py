"""The base of an incremental backup: where its LSN comes from, and when a base is refused.

An incremental backup copies the pages whose FIL_PAGE_LSN is newer than its base's ``to_lsn`` (the server's
checkpoint when the base ended). The LSN comes from ``--incremental-lsn``, from a backup directory's
``xtrabackup_checkpoints`` (``mariadb_backup_checkpoints`` from MariaDB 11.1 on), or from an archive (innostream:
its trailer, read without decompressing anything; xbstream: its checkpoints member), local or ``s3://``.

A wrong base does not fail loudly later: prepare would lay deltas on pages they do not belong to, or miss the
changes in between. So every base is checked first, and refused with one line when it is not complete, is from
another kind of server, another page size or (MySQL) another ``server_uuid``, or is newer than the server itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from innostream.errors import SourceError
from innostream.formats import xtrabackup_meta as meta
from innostream.formats.archive_crypt import AuthenticationFailed
from innostream.formats.errors import FormatError
from innostream.log import log

if TYPE_CHECKING:
    from innostream.storage.s3 import S3Options

#: Backup types a base may have: a prepared base keeps its to_lsn (XtraBackup accepts one too).
BASE_TYPES = meta.BACKUP_TYPES
#: Metadata members read from an xbstream base (nothing else is kept in memory).
_WANTED = {meta.XTRABACKUP_CHECKPOINTS, meta.MB_CHECKPOINTS, meta.XTRABACKUP_INFO, meta.MB_INFO,
           meta.BACKUP_MY_CNF}
_MAX_META = 1 << 20


class IncrementalBaseError(SourceError):
    """The base of an incremental backup cannot be used (exit 4, before the server is touched or locked)."""


@dataclass(frozen=True)
class IncrementalBase:
    """What the incremental needs from its base: the LSN, and what identifies the server it came from."""

    from_lsn: int
    source: str  # for messages: the directory, archive or "--incremental-lsn"
    backup_type: str = ""
    flavor: str | None = None
    server_version: str | None = None
    server_uuid: str | None = None
    page_size: int | None = None
    to_lsn: int = 0  # the base's own to_lsn (its end checkpoint); 0 for --incremental-lsn


def _from_lsn(flavor: str | None, to_lsn: int, start_lsn: object, source: str) -> int:
    """Where the incremental's pages start. MariaDB (and any base without ``start_lsn``): the base's to_lsn, as
    the tools do, because each link's redo is applied in turn at prepare. MySQL: the base's start checkpoint, so
    the deltas also hold every page changed while the base was copied; a MySQL chain is then prepared by laying
    the deltas over each other and recovering once with the last link's redo (docs/PREPARE.md), since MySQL has
    no redo-only recovery to apply each link's redo with."""
    if flavor == "mysql":
        if isinstance(start_lsn, str) and start_lsn.isdigit():
            start_lsn = int(start_lsn)
        if isinstance(start_lsn, int) and 0 < start_lsn <= to_lsn:
            return start_lsn
        log.warning("The incremental base %s has no start_lsn (made by another tool or an older innostream): "
                    "pages newer than its to_lsn %d are copied; innostream cannot prepare such a MySQL chain",
                    source, to_lsn)
    return to_lsn


def parse_lsn(text: str | int) -> int:
    """``--incremental-lsn``: a positive decimal LSN.

    Raises:
        ValueError: not a number, or not positive (LSN 0 would copy every page: that is a full backup).
    """
    value = str(text).strip()
    if not value.isdigit():
        raise ValueError(f"{text!r} is not an LSN (a decimal number, e.g. to_lsn of the base's "
                         "xtrabackup_checkpoints)")
    lsn = int(value)
    if lsn == 0 or lsn >= 1 << 64:
        raise ValueError(f"LSN {lsn} is out of range; take a full backup instead of an incremental from 0"
                         if lsn == 0 else f"LSN {lsn} does not fit 64 bits")
    return lsn


def resolve_base(basedir: str | Path | None, lsn: int | str | None,
                 s3: S3Options | None = None, key: bytes | None = None) -> IncrementalBase | None:
    """The base of ``--incremental-basedir`` (a backup directory, an archive file or ``s3://`` object) or of
    ``--incremental-lsn``; None for a full backup. ``key``: the base archive is encrypted and must authenticate
    under it (backup's ``--decrypt-key-file``/``--decrypt-key-command``).

    Raises:
        IncrementalBaseError: both or a bad value given, the base is missing, incomplete or unreadable.
    """
    if basedir is not None and lsn is not None:
        raise IncrementalBaseError("give --incremental-basedir or --incremental-lsn, not both")
    if lsn is not None:
        try:
            return IncrementalBase(from_lsn=parse_lsn(lsn), source="--incremental-lsn")
        except ValueError as exc:
            raise IncrementalBaseError(f"--incremental-lsn: {exc}") from None
    if basedir is None:
        return None
    text = str(basedir)
    from innostream.storage import is_object_location

    if is_object_location(text):
        return _archive_base(text, s3, key)
    path = Path(text)
    if path.is_dir():
        return _dir_base(path)
    if path.is_file():
        return _archive_base(text, None, key)
    raise IncrementalBaseError(f"the incremental base {text} does not exist",
                               hint="give the directory or archive of the previous backup")


def _incomplete(source: str, why: str) -> IncrementalBaseError:
    return IncrementalBaseError(f"the incremental base {source} is not a complete backup: {why}",
                                hint="use a backup that completed OK (or extract its archive again)")


def _from_files(source: str, files: dict[str, bytes]) -> IncrementalBase:
    """The base from its metadata files (checkpoints required; info and backup-my.cnf when present)."""
    name = meta.XTRABACKUP_CHECKPOINTS if meta.XTRABACKUP_CHECKPOINTS in files else meta.MB_CHECKPOINTS
    if name not in files:
        raise _incomplete(source, f"no {meta.XTRABACKUP_CHECKPOINTS} (the backup did not finish, or an "
                          "extract was stopped)")
    try:
        cp = meta.parse_checkpoints(files[name], file=f"{source}/{name}")
    except FormatError as exc:
        raise _incomplete(source, f"{name}: {exc.message}") from None
    if cp.to_lsn <= 0:
        raise _incomplete(source, f"{name} says to_lsn = {cp.to_lsn}")
    info: dict[str, str] = {}
    for info_name in (meta.XTRABACKUP_INFO, meta.MB_INFO):
        if info_name in files:
            with contextlib.suppress(FormatError):
                info = meta.parse_info(files[info_name], file=f"{source}/{info_name}")
            break
    version = info.get("server_version") or None
    cnf: dict[str, str] = {}
    if meta.BACKUP_MY_CNF in files:
        with contextlib.suppress(FormatError):
            cnf = meta.parse_backup_my_cnf(files[meta.BACKUP_MY_CNF])
    size = cnf.get("innodb_page_size", "")
    # MySQL: backup-my.cnf has server_uuid (PXB and innostream); innostream's xtrabackup_info too.
    uuid = info.get("server_uuid") or cnf.get("server_uuid") or None
    flavor = _flavor_of(version)
    return IncrementalBase(from_lsn=_from_lsn(flavor, cp.to_lsn, dict(cp.extra).get("start_lsn"), source),
                           source=source, backup_type=cp.backup_type, flavor=flavor, server_version=version,
                           server_uuid=uuid, page_size=int(size) if size.isdigit() else None, to_lsn=cp.to_lsn)


def _flavor_of(version: str | None) -> str | None:
    if not version:
        return None
    return "mariadb" if "mariadb" in version.lower() else "mysql"


def _dir_base(path: Path) -> IncrementalBase:
    files: dict[str, bytes] = {}
    for name in _WANTED:
        try:
            with open(path / name, "rb") as f:
                files[name] = f.read(_MAX_META)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise IncrementalBaseError(f"cannot read the incremental base: {exc.strerror}",
                                       file=str(path / name)) from None
    return _from_files(str(path), files)


class _MetaCapture:
    """A sink that keeps only the base's small metadata members (xbstream bases) and drops everything else."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}

    def begin_file(self, name: str, *, mode: int = 0o640) -> Any:
        if name in _WANTED:
            self.files[name] = bytearray()
        return name

    def write(self, handle: Any, offset: int, data: bytes | bytearray | memoryview) -> None:
        buf = self.files.get(handle)
        if buf is not None and offset + len(data) <= _MAX_META:
            buf[len(buf):] = bytes(offset - len(buf)) if offset > len(buf) else b""
            buf[offset:offset + len(data)] = data

    def end_file(self, handle: Any, size: int) -> None:
        return None

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        if name in _WANTED:
            self.files[name] = bytearray(data[:_MAX_META])

    def close(self, trailer: dict[str, Any] | None = None) -> None:
        return None

    def abort(self) -> None:
        return None


def _archive_base(location: str, s3: S3Options | None, key: bytes | None = None) -> IncrementalBase:
    """Read an archive through to its end without extracting it (innostream: payloads are checksummed, not
    decompressed); a cut or damaged archive is refused, as it would be at extract."""
    from innostream.archive.detect import detect
    from innostream.archive.reader import read_archive
    from innostream.archive.xbstream import read_xbstream

    inp: BinaryIO
    try:
        if location.startswith("s3://"):
            from innostream.storage import open_read

            inp = open_read(location, s3)
        else:
            inp = open(location, "rb")
    except OSError as exc:
        raise IncrementalBaseError(f"cannot read the incremental base: {exc.strerror or exc}", file=location) \
            from None
    capture = _MetaCapture()
    try:
        with inp:
            kind, stream = detect(inp)
            if kind == "innostream":  # an encrypted one: its trailer and members authenticated with the key
                summary = read_archive(stream, capture, verify_data=False, key=key)
            elif key is not None:
                raise AuthenticationFailed(f"the incremental base is {kind}, which has no authenticated "
                                           "encryption, but a key was given", file=location)
            elif kind == "xbstream":
                summary = read_xbstream(stream, capture)
            else:
                raise IncrementalBaseError(f"the incremental base {location} is a compressed xbstream",
                                           hint="extract it and give the directory")
    except (IncrementalBaseError, AuthenticationFailed):  # a wrong or missing key says so itself (exit 3)
        raise
    except FormatError as exc:
        raise _incomplete(location, exc.message) from None
    except OSError as exc:
        raise IncrementalBaseError(f"cannot read the incremental base: {exc.strerror or exc}", file=location) \
            from None
    if summary.format == "innostream":
        return _from_trailer(location, summary.meta, summary.trailer)
    return _from_files(location, {k: bytes(v) for k, v in capture.files.items()})


def _from_trailer(location: str, header: dict[str, Any], trailer: dict[str, Any]) -> IncrementalBase:
    to_lsn = trailer.get("to_lsn")
    if not isinstance(to_lsn, int) or to_lsn <= 0:
        raise _incomplete(location, "its trailer has no to_lsn")
    version = trailer.get("server_version") or header.get("server_version")
    page_size = trailer.get("page_size")
    flavor = str(trailer.get("flavor") or header.get("flavor") or "") or _flavor_of(version)
    return IncrementalBase(from_lsn=_from_lsn(flavor, to_lsn, trailer.get("start_lsn"), location),
                           source=location, to_lsn=to_lsn,
                           backup_type=str(trailer.get("backup_type") or meta.BACKUP_TYPE_FULL),
                           flavor=flavor,
                           server_version=str(version) if version else None,
                           server_uuid=str(trailer.get("server_uuid") or "") or None,
                           page_size=page_size if isinstance(page_size, int) else None)


def check_server(base: IncrementalBase, *, flavor: str, version: str, page_size: int,
                 server_uuid: str | None) -> None:
    """Refuse a base from another kind of server, page size or (MySQL) server; before anything is locked.

    MariaDB has no server UUID: there the LSN check (:func:`check_lsn`) is what catches most foreign bases.
    """
    if base.flavor is not None and base.flavor != flavor:
        raise IncrementalBaseError(f"the incremental base {base.source} is a {_name(base.flavor)} backup "
                                   f"({base.server_version}); this server is {_name(flavor)} {version}",
                                   hint="use a base taken from this server")
    if base.page_size is not None and base.page_size != page_size:
        raise IncrementalBaseError(f"the incremental base {base.source} has innodb_page_size {base.page_size}; "
                                   f"this server has {page_size}", hint="use a base taken from this server")
    if base.server_uuid and server_uuid and base.server_uuid != server_uuid:
        raise IncrementalBaseError(f"the incremental base {base.source} is from server_uuid {base.server_uuid}; "
                                   f"this server is {server_uuid}", hint="use a base taken from this server")
    if base.backup_type in (meta.BACKUP_TYPE_LOG_APPLIED, meta.BACKUP_TYPE_FULL_PREPARED):
        log.info("The incremental base %s is prepared (%s); its LSNs still mark where it was taken", base.source,
                 base.backup_type)


def check_lsn(base: IncrementalBase, checkpoint_lsn: int) -> None:
    """Refuse a base newer than the server's checkpoint: it is not from this server's past (another server, or
    this one restored from an older backup since), and its deltas would silently miss changes."""
    end = max(base.from_lsn, base.to_lsn)
    if end > checkpoint_lsn:
        what = (f"LSN {base.from_lsn} is" if base.source == "--incremental-lsn"
                else f"base {base.source} ends at LSN {end},")
        raise IncrementalBaseError(f"the incremental {what} after this server's checkpoint {checkpoint_lsn}: "
                                   "it is not from this server's past",
                                   hint="use a base taken from this server (after a restore: a new full backup)")


def _name(flavor: str) -> str:
    return {"mariadb": "MariaDB", "mysql": "MySQL"}.get(flavor, flavor)
