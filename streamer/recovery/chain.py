"""``innostream prepare --incremental-dir``: prepare a chain (a full backup and its incrementals) into one datadir.

The server's crash recovery applies redo, then rolls back incomplete transactions and lets purge run: writes of its
own, with LSNs past the redo it applied. Laid under the next incremental's deltas, such a page would be newer than
that incremental's redo (which recovery then skips for it) and hold changes no backup made. So every link but the
last is recovered in a redo-only mode (the family's ``redo_only_options``: no rollback, no purge, no change buffer
merge, no statistics) and then PROVEN redo-only: after its clean shutdown the server's log checkpoint is at or past
the end of the link's redo (every redo change is on the pages) and no page of any tablespace carries an LSN past
that end (nothing else was written). Only then are the next deltas laid on. The last link gets a normal prepare.
The argument is in docs/PREPARE.md ("Incremental chains").

MySQL has no redo-only recovery we can prove (its startup writes pages past the redo), so a MySQL chain is made the
other way round (``Family.chain_by_overlay``): a MySQL incremental copies the pages newer than its base's START
checkpoint (not its to_lsn), so the deltas laid over each other in order, later winning, give pages that a normal
crash recovery from the last link's checkpoint makes consistent: BASE becomes, link by link, a full backup taken at
that link, and only the last link's redo is ever applied, once.

Before anything is written the whole chain is checked (types, flavour, page size, LSN continuity, every delta's
structure). While a link is applied, a journal file in BASE names it and the phase; a rerun after a crash redoes
the link (delta pages are written as they are, so laying them again is idempotent) or reruns its recovery (applying
redo is idempotent), and refuses a chain that does not continue with that link.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from innostream.ddl_track import NEW_SUFFIX, RECORD, read_record
from innostream.errors import Interrupted, PrepareError
from innostream.families import Family, family
from innostream.fileio import pwrite_all
from innostream.formats import fsp0fsp
from innostream.formats.errors import FormatError
from innostream.formats.xtrabackup_delta import DeltaMeta, check_cluster, parse_cluster_header, parse_meta
from innostream.formats.xtrabackup_meta import (
    BACKUP_TYPE_FULL,
    BACKUP_TYPE_FULL_PREPARED,
    BACKUP_TYPE_INCREMENTAL,
    BACKUP_TYPE_LOG_APPLIED,
    MB_CHECKPOINTS,
    XTRABACKUP_CHECKPOINTS,
    Checkpoints,
    parse_key_values,
)
from innostream.log import log
from innostream.recovery.backupdir import CHAIN_JOURNAL, BackupDir, read_backup_dir
from innostream.recovery.prepare import (
    PrepareConfig,
    PrepareResult,
    _server_argv,
    _start_and_recover,
    apply_ddl_side_files,
    find_server_binary,
    prepare_backup,
)
from innostream.recovery.server import ServerExited, run_dir, running_server
from innostream.signals import sigterm_raises
from innostream.target import replace_file

#: Files of a backup directory that describe the backup, never copied from an incremental onto the base.
_METADATA = {XTRABACKUP_CHECKPOINTS, MB_CHECKPOINTS, CHAIN_JOURNAL}
#: InnoDB data files at the datadir's root (system tablespace, undo tablespaces of both families).
_ROOT_TABLESPACE = re.compile(r"ibdata\d+|undo\d+|undo_\d+\.ibu|mysql\.ibd")
_LSN = struct.Struct(">Q")
FIL_PAGE_LSN = 16
#: Bytes read at a time when scanning pages (whole pages).
SCAN_CHUNK = 4 << 20


# --- the chain and its checks -------------------------------------------------------------------------------------


def _page_size(bd: BackupDir) -> int:
    return int(bd.my_cnf.get("innodb_page_size", "16384") or 16384)


def _is_tablespace(rel: Path) -> bool:
    return rel.suffix in (".ibd", ".ibu") or (len(rel.parts) == 1 and bool(_ROOT_TABLESPACE.fullmatch(rel.name)))


def _walk(root: Path) -> Iterator[Path]:
    """Every regular file under ``root``, as a path relative to it (symlinks are not followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p.relative_to(root)


@dataclass(frozen=True)
class Delta:
    """One ``<file>.delta`` of an incremental with its ``.meta``."""

    rel: Path  # the tablespace file it patches, relative to the datadir
    path: Path
    meta: DeltaMeta


def _check_delta(path: Path, meta: DeltaMeta) -> int:
    """Walk the cluster headers of a ``.delta`` without reading its pages: returns the page count.

    Raises:
        PrepareError: a header is damaged or the file length does not match them.
    """
    size = path.stat().st_size
    ps = meta.physical_page_size
    offset = pages = 0
    with open(path, "rb") as fh:
        while True:
            try:
                header = parse_cluster_header(os.pread(fh.fileno(), ps, offset), ps, file=str(path), offset=offset)
                check_cluster(header, ps, file=str(path), offset=offset)
            except FormatError as exc:  # a bad magic, or a cluster not full but not the last
                raise PrepareError(f"damaged incremental: {exc}", hint="take the incremental again") from None
            offset += ps * (1 + len(header.page_nos))
            pages += len(header.page_nos)
            if header.last:
                break
    if offset != size:
        raise PrepareError(f"damaged incremental: {path} is {size} bytes, its clusters say {offset}",
                           hint="take the incremental again")
    return pages


def incremental_deltas(inc: Path) -> list[Delta]:
    """Every ``.delta`` of an incremental with its parsed ``.meta``; each checked structurally."""
    out = []
    for rel in _walk(inc):
        if rel.suffix != ".delta":
            continue
        meta_path = inc / rel.with_suffix(".meta")
        if not meta_path.is_file():
            raise PrepareError(f"incomplete incremental: {inc / rel} has no {meta_path.name}",
                               hint="take the incremental again")
        try:
            meta = parse_meta(meta_path.read_bytes(), file=str(meta_path))
        except FormatError as exc:
            raise PrepareError(f"damaged incremental: {exc}", hint="take the incremental again") from None
        _check_delta(inc / rel, meta)
        out.append(Delta(rel.with_suffix(""), inc / rel, meta))
    return out


@dataclass(frozen=True)
class Link:
    """One incremental of the chain."""

    bd: BackupDir
    deltas: tuple[Delta, ...]


def _uuid(bd: BackupDir) -> str:
    return bd.info.get("server_uuid", "")


def start_lsn(cp: Checkpoints) -> int:
    """The checkpoint a backup's redo copy starts at, when it says (innostream MySQL backups); else 0."""
    value = dict(cp.extra).get("start_lsn", "")
    return int(value) if value.isdigit() else 0


def check_chain(base: BackupDir, incs: Sequence[Path]) -> list[Link]:
    """Read every incremental and check the chain continues BASE link by link; nothing is written.

    Raises:
        PrepareError: a link is not an incremental, comes from another server/flavour/page size, does not start
            where the previous one ended (missing, swapped, repeated or of another base), or is damaged.
    """
    links: list[Link] = []
    prev = base
    seen: set[Path] = set()
    overlay = family(base.flavor).chain_by_overlay
    for path in incs:
        if path.resolve() in seen:
            raise PrepareError(f"{path} is given twice", hint="name each incremental once, oldest first")
        seen.add(path.resolve())
        bd = read_backup_dir(path)
        cp = bd.checkpoints
        if cp.backup_type != BACKUP_TYPE_INCREMENTAL:
            raise PrepareError(f"{path} is not an incremental backup (backup_type = {cp.backup_type})",
                               file=str(bd.checkpoints_file))
        if bd.flavor != base.flavor:
            raise PrepareError(f"{path} is a {bd.flavor} backup, the base is {base.flavor}")
        if _page_size(bd) != _page_size(base):
            raise PrepareError(f"{path} has innodb_page_size {_page_size(bd)}, the base {_page_size(base)}")
        if _uuid(bd) and _uuid(base) and _uuid(bd) != _uuid(base):
            raise PrepareError(f"{path} was taken from server {_uuid(bd)}, the base from {_uuid(base)}")
        what = "BASE" if prev is base else str(prev.path)
        # MySQL (overlay): an incremental starts at the previous backup's start checkpoint; MariaDB at its to_lsn.
        want, field = (start_lsn(prev.checkpoints), "start_lsn") if overlay else (prev.checkpoints.to_lsn, "to_lsn")
        if not want:
            raise PrepareError(f"{what} has no start_lsn in xtrabackup_checkpoints (made by another tool or an "
                               "older innostream): innostream cannot prepare a MySQL chain on it; nothing was "
                               "changed", hint="prepare the chain with the tool that made it, or restore a full "
                                               "backup")
        if cp.from_lsn != want:
            order = ("it is a later incremental: one is missing before it" if cp.from_lsn > want else
                     "it starts before the previous link: out of order, repeated, or of another base")
            raise PrepareError(f"broken chain: {path} starts at LSN {cp.from_lsn} (from_lsn) but {what} "
                               f"{'starts' if overlay else 'ends'} at {want} ({field}); {order}; nothing was "
                               "changed", hint="give the incrementals of this base, oldest first, with none left "
                                               "out")
        if cp.last_lsn < prev.checkpoints.last_lsn:
            # from_lsn alone cannot order links: to_lsn is the server's checkpoint, which may not move between
            # backups (then every link has the same from_lsn and to_lsn). A link's redo must end after the previous.
            raise PrepareError(f"broken chain: {path} ends at LSN {cp.last_lsn} (last_lsn), before "
                               f"{'BASE' if prev is base else prev.path} ({prev.checkpoints.last_lsn}): the "
                               "incrementals are out of order; nothing was changed",
                               hint="give the incrementals of this base, oldest first")
        if any(p.suffix == ".ren" for p in _walk(path)):
            raise PrepareError(f"{path} holds rename side files (.ren), which are not supported",
                               hint="prepare this chain with the tool that made it")
        if cp.to_lsn < cp.from_lsn or (cp.last_lsn and cp.last_lsn < cp.to_lsn):
            raise PrepareError(f"{path}: xtrabackup_checkpoints has from_lsn {cp.from_lsn}, to_lsn {cp.to_lsn}, "
                               f"last_lsn {cp.last_lsn}: not a complete incremental", file=str(bd.checkpoints_file))
        replaced, _deleted = read_record(path)
        for name in replaced:  # DDL during the incremental (--lock-ddl=reduced): the whole copies must be there
            if not (path / (name + NEW_SUFFIX)).is_file():
                raise PrepareError(f"incomplete incremental: {path / RECORD} names {name}, but "
                                   f"{name + NEW_SUFFIX} is missing; nothing was changed",
                                   hint="extract or take the incremental again")
        links.append(Link(bd, tuple(incremental_deltas(path))))
        prev = bd
    return links


# --- the journal --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Journal:
    """What BASE's journal says: the link being applied (by its LSNs) and how far (``deltas`` or ``recover``)."""

    link: str
    from_lsn: int
    to_lsn: int
    last_lsn: int
    phase: str
    final: bool

    def build(self) -> bytes:
        return (f"link = {self.link}\nfrom_lsn = {self.from_lsn}\nto_lsn = {self.to_lsn}\nlast_lsn = {self.last_lsn}\n"
                f"phase = {self.phase}\nfinal = {int(self.final)}\n").encode()

    def names(self, cp: Checkpoints) -> bool:
        """Whether ``cp`` is the checkpoints of the link this journal names."""
        return (cp.from_lsn, cp.to_lsn, cp.last_lsn) == (self.from_lsn, self.to_lsn, self.last_lsn)


def read_journal(base: Path) -> Journal | None:
    path = base / CHAIN_JOURNAL
    if not path.is_file():
        return None
    try:
        kv = parse_key_values(path.read_bytes(), file=str(path))
        return Journal(kv["link"], int(kv["from_lsn"]), int(kv["to_lsn"]), int(kv["last_lsn"]), kv["phase"],
                       kv["final"] == "1")
    except (FormatError, KeyError, ValueError):
        raise PrepareError(f"{path} is damaged: an earlier prepare of an incremental chain stopped in an unknown "
                           "state", hint="start again from a copy of the original base and incrementals") from None


def _write_journal(base: Path, journal: Journal, fsync: bool) -> None:
    replace_file(base / CHAIN_JOURNAL, journal.build(), fsync=fsync)


# --- laying an incremental on the base ----------------------------------------------------------------------------


def _space_id(path: Path) -> int | None:
    """The space id in page 0 of a tablespace file (None if it has no page 0 yet)."""
    with open(path, "rb") as fh:
        head = fh.read(fsp0fsp.FSP_HEADER_OFFSET + 4)
    if len(head) < fsp0fsp.FSP_HEADER_OFFSET + 4:
        return None
    return int.from_bytes(head[fsp0fsp.FSP_HEADER_OFFSET:fsp0fsp.FSP_HEADER_OFFSET + 4], "big")


def apply_delta(base: Path, delta: Delta, fsync: bool) -> int:
    """Write every page of ``delta`` into its file in BASE (created if missing; a file of the same name with another
    space id is a table rebuilt or re-created since: it is replaced), then size the file to page 0's FSP_SIZE.
    Idempotent: a rerun writes the same images. Returns the pages written."""
    dst = base / delta.rel
    ps = delta.meta.physical_page_size
    if dst.exists() and delta.meta.space_id is not None:
        sid = _space_id(dst)
        if sid is not None and sid != delta.meta.space_id and not _is_system(delta.rel):
            log.info("prepare: %s: space id %d replaced by %d (table re-created since the base)", delta.rel, sid,
                     delta.meta.space_id)
            dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    fsp_size: int | None = None
    fd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        with open(delta.path, "rb") as src:
            offset = 0
            while True:
                header = parse_cluster_header(os.pread(src.fileno(), ps, offset), ps, file=str(delta.path),
                                              offset=offset)
                offset += ps
                for page_no in header.page_nos:
                    image = os.pread(src.fileno(), ps, offset)
                    offset += ps
                    if len(image) != ps:
                        raise PrepareError(f"{delta.path} ends inside a page", hint="take the incremental again")
                    pwrite_all(fd, image, page_no * ps)
                    if page_no == 0:
                        fsp_size = fsp0fsp.FSP_HEADER_FAST.unpack_from(image, fsp0fsp.FSP_HEADER_OFFSET)[2]
                    written += 1
                if header.last:
                    break
        if fsp_size is not None and not re.fullmatch(r"ibdata\d+", delta.rel.name):
            # A single-file tablespace is exactly FSP_SIZE pages: a shrunk (rebuilt) table loses its old tail.
            os.ftruncate(fd, fsp_size * ps)
        elif fsp_size is not None and delta.rel == Path("ibdata1") and os.fstat(fd).st_size < fsp_size * ps and \
                not any(base.glob("ibdata[2-9]*")):
            # The system tablespace's FSP_SIZE counts all its files: only a lone ibdata1 is grown to it.
            os.ftruncate(fd, fsp_size * ps)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _is_system(rel: Path) -> bool:
    return len(rel.parts) == 1 and bool(_ROOT_TABLESPACE.fullmatch(rel.name))


def _copy_file(src: Path, dst: Path, fsync: bool) -> None:
    """Copy ``src`` over ``dst`` through a temporary name and a rename (a crash leaves the old or the new one)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".innostream-tmp")
    shutil.copyfile(src, tmp)
    if fsync:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    tmp.replace(dst)


def lay_incremental(base: BackupDir, link: Link, fam: Family, fsync: bool) -> None:
    """Make BASE's files those of the incremental, except for the redo still to apply: delta pages written,
    tablespaces and other files the incremental lacks removed (dropped since), its other files copied, its redo
    copy staged as BASE's."""
    inc = link.bd.path
    inc_files = set(_walk(inc))
    patched = {d.rel for d in link.deltas}
    pages = 0
    for d in link.deltas:
        pages += apply_delta(base.path, d, fsync)
    # DDL side files (mariadb-backup: a tablespace created or rebuilt after the incremental's checkpoint is copied
    # whole at its end as t.new; t.del drops t.ibd): applied after the deltas, as the tools do.
    for rel in sorted(r for r in inc_files if r.suffix == ".del"):
        (base.path / rel.with_suffix(".ibd")).unlink(missing_ok=True)
    news = sorted(r for r in inc_files if r.suffix == ".new")
    for rel in news:
        _copy_file(inc / rel, base.path / rel.with_suffix(".ibd"), fsync)
    patched |= {r.with_suffix(".ibd") for r in news}
    # Our record of DDL during the incremental (--lock-ddl=reduced, innostream.ddl_track): files created or changed
    # during its copy come whole, taken under the DDL block at its end, so they win over the deltas; names gone
    # are dropped. Copied, not moved: the incremental stays as it was, and a rerun does the same.
    replaced, deleted = read_record(inc)
    for name in deleted:
        (base.path / name).unlink(missing_ok=True)
    for name in replaced:
        _copy_file(inc / (name + NEW_SUFFIX), base.path / name, fsync)
    patched |= {Path(n) for n in replaced}
    removed = 0
    for rel in list(_walk(base.path)):
        if rel.name in _METADATA or rel.name.endswith((".delta", ".meta", ".innostream-tmp")):
            continue
        gone = rel not in inc_files and rel not in patched
        if gone and (_is_tablespace(rel) or len(rel.parts) > 1) and not rel.parts[0].startswith("#innodb"):
            # A tablespace the incremental has no delta for, or a file of a database directory it lacks (.frm,
            # .MYD, db.opt, ...): dropped between the backups.
            log.info("prepare: %s: not in %s, removed (dropped since)", rel, inc)
            (base.path / rel).unlink()
            removed += 1
    for dirpath, _dirs, _files in sorted(os.walk(base.path), reverse=True):
        folder = Path(dirpath)
        if folder != base.path and not any(folder.iterdir()) and not (inc / folder.relative_to(base.path)).is_dir():
            folder.rmdir()  # a database dropped since
    copied = 0
    for rel in inc_files:
        if (rel.name in _METADATA or rel.suffix in (".delta", ".meta", ".new", ".del")
                or rel.name.endswith(NEW_SUFFIX) or rel == Path(RECORD)):
            continue
        _copy_file(inc / rel, base.path / rel, fsync)
        copied += 1
    fam.unstage_redo(base.path)
    log.info("prepare: laid %s on the base: %d delta pages in %d files, %d whole tablespaces, %d other files "
             "copied, %d removed", inc, pages, len(link.deltas), len(news) + len(replaced), copied,
             removed + len(deleted))


# --- the redo-only pass and its proof -----------------------------------------------------------------------------


def _tablespace_files(target: Path) -> Iterator[Path]:
    for rel in _walk(target):
        if _is_tablespace(rel) and not rel.name.startswith("ibtmp") and "#innodb_temp" not in rel.parts:
            yield target / rel


def _physical_size(path: Path, default: int, flavor: str) -> int:
    with open(path, "rb") as fh:
        page0 = fh.read(fsp0fsp.FSP_FLAGS_ABS + 4)
    if len(page0) < fsp0fsp.FSP_FLAGS_ABS + 4 or re.fullmatch(r"ibdata([2-9]|\d\d+)", path.name):
        return default
    flags = int.from_bytes(page0[fsp0fsp.FSP_FLAGS_ABS:], "big")
    if not fsp0fsp.flags_valid(flags, flavor):
        return default
    return fsp0fsp.page_size_from_flags(flags, flavor)[1] or default


def newest_page(target: Path, page_size: int, flavor: str) -> tuple[int, Path | None, int]:
    """The highest FIL_PAGE_LSN of any page of any tablespace in ``target``: (lsn, file, page number)."""
    best: tuple[int, Path | None, int] = (0, None, 0)
    for path in _tablespace_files(target):
        ps = _physical_size(path, page_size, flavor)
        per_chunk = max(1, SCAN_CHUNK // ps)
        page_no = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(per_chunk * ps):
                for i in range(len(chunk) // ps):
                    (lsn,) = _LSN.unpack_from(chunk, i * ps + FIL_PAGE_LSN)
                    if lsn > best[0]:
                        best = (lsn, path, page_no + i)
                page_no += len(chunk) // ps
    return best


def _redo_only_pass(binary: Path, bd: BackupDir, config: PrepareConfig, fam: Family, end: int) -> None:
    """Recover BASE with redo only, shut it down cleanly, and prove it: the server's checkpoint is at or past
    ``end`` (the redo it was given is all on the pages) and no page is newer than ``end`` (it wrote nothing else)."""
    lines: list[str] = []
    with run_dir() as run:
        argv = _server_argv(binary, bd, run, config, fam) + fam.redo_only_options()
        try:
            with running_server(argv, run, config.timeout, lines):
                pass  # nothing is asked of it: every statement could write
        except ServerExited as exc:
            if fam.needs_heuristic_rollback(exc.lines):
                # Rolling them back would write, and the next link's redo may commit them.
                raise PrepareError(f"{bd.path} holds transactions prepared for the binlog's two-phase commit, which "
                                   "the server refuses to start with and a redo-only pass cannot resolve",
                                   hint="prepare this chain with mariadb-backup --prepare, or restore the last "
                                        "full backup") from None
            raise
    recovered = fam.recovered_lsn(lines)
    checkpoint = fam.log_checkpoint_lsn(bd.path)
    if recovered is None or recovered < end or checkpoint is None or checkpoint < end:
        raise PrepareError(f"the redo-only recovery of {bd.path} reached LSN {recovered} with checkpoint "
                           f"{checkpoint}, not the link's end {end}", lsn=recovered,
                           hint="the redo copy is damaged; start again from copies of the original backups")
    lsn, path, page_no = newest_page(bd.path, _page_size(bd), bd.flavor.value)
    if lsn > end:
        raise PrepareError(f"page {page_no} of {path} has LSN {lsn}, past the redo applied (LSN {end}): written by "
                           "something other than that redo, so the next incremental's redo would be skipped for it",
                           file=str(path), page=page_no, lsn=lsn,
                           hint="start again from copies of the original backups and report this server version")
    log.info("prepare: redo-only recovery proven: checkpoint %d, newest page LSN %d <= %d", checkpoint, lsn, end)


# --- the whole chain ----------------------------------------------------------------------------------------------


def _recover_link(binary: Path, bd: BackupDir, config: PrepareConfig, fam: Family, link_cp: Checkpoints,
                  final: bool, result: PrepareResult) -> None:
    # 0 when the log is the server's own (a rerun after a crash): recovery then continues from it.
    copy_end = fam.stage_redo(bd.path, bd.my_cnf, bd.info.get("server_version", ""))
    if link_cp.last_lsn and copy_end and copy_end < link_cp.last_lsn:
        raise PrepareError(f"the redo log copy ends at LSN {copy_end}, before last_lsn {link_cp.last_lsn}: it is "
                           "truncated or damaged", lsn=copy_end, hint="the backup is incomplete")
    end = max(copy_end, link_cp.last_lsn)
    with sigterm_raises():
        try:
            if final:
                _start_and_recover(binary, bd, config, fam, result)
                if result.recovered_lsn is None or result.recovered_lsn < link_cp.last_lsn:
                    raise PrepareError(f"crash recovery reached LSN {result.recovered_lsn}, not last_lsn "
                                       f"{link_cp.last_lsn}", lsn=result.recovered_lsn,
                                       hint="start again from copies of the original backups")
            else:
                _redo_only_pass(binary, bd, config, fam, end)
        except KeyboardInterrupt:
            raise Interrupted("prepare interrupted; the server was stopped",
                              hint="run the same prepare command again: it resumes the link it was applying") from None


def _still_to_apply(base: BackupDir, incs: list[Path], *, overlay: bool) -> list[Path]:
    """The same command again after a crash: the links up to the one BASE's checkpoints describe are done; the
    rest. Matched by to_lsn and last_lsn (and start_lsn for an overlay chain, whose BASE must record one). A
    redo-per-link chain never skips the last link given: applying it twice is a step repeated, which
    :func:`check_chain` refuses; laying an overlay link twice changes nothing, so there it is skipped too."""
    cp = base.checkpoints

    def key(c: Checkpoints) -> tuple[int, ...]:
        return (c.to_lsn, c.last_lsn, start_lsn(c)) if overlay else (c.to_lsn, c.last_lsn)

    if overlay and not start_lsn(cp):
        return incs
    for j in range(len(incs) - (1 if overlay else 2), -1, -1):
        done = read_backup_dir(incs[j]).checkpoints
        if done.backup_type == BACKUP_TYPE_INCREMENTAL and key(done) == key(cp):
            log.info("prepare: %s and the links before it are %s already; continuing after it", incs[j],
                     f"laid on {base.path}" if overlay else "applied")
            return incs[j + 1:]
    return incs


def _journal_leads(base: BackupDir, journal: Journal, incs: Sequence[Path], doing: str) -> None:
    """Refuse a rerun that does not start with the link an interrupted prepare was ``doing`` (its journal)."""
    first = read_backup_dir(incs[0]).checkpoints if incs else None
    if first is None or not journal.names(first):
        raise PrepareError(f"an earlier prepare of {base.path} stopped while {doing} {journal.link} "
                           f"(LSN {journal.from_lsn}..{journal.to_lsn}): run prepare again with that incremental "
                           "first", file=str(base.path / CHAIN_JOURNAL),
                           hint=f"prepare --target-dir {base.path} --incremental-dir {journal.link} ...")


def prepare_chain(config: PrepareConfig, incremental_dirs: Sequence[Path], apply_log_only: bool) -> PrepareResult:
    """Apply BASE's redo and each incremental in turn; the last link gets a full prepare unless ``apply_log_only``.

    Raises:
        PrepareError: the chain is broken or damaged (BASE unchanged), the server cannot do a redo-only pass, a
            pass wrote beyond its redo, or recovery failed.
    """
    started = time.monotonic()
    base = read_backup_dir(Path(config.target_dir))
    fam = family(base.flavor)
    cp = base.checkpoints
    result = PrepareResult(flavor=base.flavor, last_lsn=cp.last_lsn)
    if cp.backup_type == BACKUP_TYPE_INCREMENTAL:
        raise PrepareError(f"{base.path} is an incremental backup; --target-dir must be the full backup (the base)",
                           hint="prepare --target-dir BASE --incremental-dir THIS")
    if cp.backup_type == BACKUP_TYPE_FULL_PREPARED:
        last = read_backup_dir(incremental_dirs[-1]).checkpoints if incremental_dirs else None
        if last is not None and (last.to_lsn, last.last_lsn) == (cp.to_lsn, cp.last_lsn):
            # The same command again (or after a crash between the checkpoints and the journal's removal).
            log.info("prepare: %s is already prepared with this chain (last_lsn %d); nothing to do", base.path,
                     cp.last_lsn)
            (base.path / CHAIN_JOURNAL).unlink(missing_ok=True)
            result.already_prepared = True
            return result
        if incremental_dirs:
            raise PrepareError(f"{base.path} is already fully prepared (rolled back): no incremental can be laid on "
                               "it", file=str(base.checkpoints_file),
                               hint="start again from a copy of the base; use --apply-log-only on every step but "
                                    "the last")
        result.already_prepared = True
        return result
    if cp.backup_type not in (BACKUP_TYPE_FULL, BACKUP_TYPE_LOG_APPLIED):
        raise PrepareError(f"cannot prepare a backup of type {cp.backup_type!r}", file=str(base.checkpoints_file))
    if fam.chain_by_overlay:
        return _prepare_by_overlay(config, base, incremental_dirs, apply_log_only, result, started)
    journal = read_journal(base.path)
    if journal is not None and (journal.phase == "base") != (cp.backup_type == BACKUP_TYPE_FULL):
        journal = None  # the link it names finished (its checkpoints were written); only the journal was left
    incs = list(incremental_dirs)
    if cp.backup_type == BACKUP_TYPE_LOG_APPLIED:
        incs = _still_to_apply(base, incs, overlay=False)
    if journal is not None and journal.phase != "base":
        _journal_leads(base, journal, incs, "applying")
    links = check_chain(base, incs)
    fam.redo_only_options()  # refuses a family whose redo-only pass is not proven before anything is written
    binary, line = find_server_binary(base, config.server_binary)
    result.server_version = line
    log.info("prepare: %s chain in %s: base %s + %d incremental(s), with %s", base.flavor, base.path,
             cp.backup_type, len(links), line)

    if cp.backup_type == BACKUP_TYPE_FULL:
        # The base's own redo, without rollback: a later delta may hold the pages rollback would touch.
        final = not links and not apply_log_only
        if journal is None:
            _write_journal(base.path, Journal(str(base.path), cp.to_lsn, cp.to_lsn, cp.last_lsn, "base", final),
                           config.fsync)
            apply_ddl_side_files(base.path)
        _recover_link(binary, base, config, fam, cp, final, result)
        cp = cp.with_type(BACKUP_TYPE_FULL_PREPARED if final else BACKUP_TYPE_LOG_APPLIED)
        base.write_checkpoints(cp, fsync=config.fsync)
        (base.path / CHAIN_JOURNAL).unlink(missing_ok=True)
    for i, link in enumerate(links):
        lcp = link.bd.checkpoints
        final = i == len(links) - 1 and not apply_log_only
        if journal is not None and i == 0 and journal.phase == "recover":
            log.info("prepare: resuming the recovery of %s after an interruption", link.bd.path)
        else:
            _write_journal(base.path, Journal(str(link.bd.path), lcp.from_lsn, lcp.to_lsn, lcp.last_lsn, "deltas",
                                              final), config.fsync)
            lay_incremental(base, link, fam, config.fsync)
            _write_journal(base.path, Journal(str(link.bd.path), lcp.from_lsn, lcp.to_lsn, lcp.last_lsn, "recover",
                                              final), config.fsync)
        base = read_backup_dir(base.path)  # backup-my.cnf and xtrabackup_info now those of the link
        _recover_link(binary, base, config, fam, lcp, final, result)
        cp = Checkpoints(backup_type=BACKUP_TYPE_FULL_PREPARED if final else BACKUP_TYPE_LOG_APPLIED,
                         from_lsn=cp.from_lsn, to_lsn=max(cp.to_lsn, lcp.to_lsn), last_lsn=lcp.last_lsn,
                         extra=lcp.extra)
        base.write_checkpoints(cp, fsync=config.fsync)
        (base.path / CHAIN_JOURNAL).unlink(missing_ok=True)
        log.info("prepare: %s applied; base at to_lsn %d (%s)", link.bd.path, cp.to_lsn, cp.backup_type)
    result.last_lsn = cp.last_lsn
    result.seconds = time.monotonic() - started
    log.info("prepare: chain prepared to LSN %d in %.1f s; backup_type = %s", cp.last_lsn, result.seconds,
             cp.backup_type)
    return result


def _prepare_by_overlay(config: PrepareConfig, base: BackupDir, incremental_dirs: Sequence[Path],
                        apply_log_only: bool, result: PrepareResult, started: float) -> PrepareResult:
    """A MySQL chain: each link's files laid on BASE in order (BASE's checkpoints then say it is a full backup
    taken at that link), then one normal prepare with the last link's redo, unless ``apply_log_only``.

    A rerun after a crash skips the links BASE's checkpoints show laid and lays again the one the journal names
    (later pages win, so laying a link again over a partly laid one gives the same files)."""
    fam = family(base.flavor)
    cp = base.checkpoints
    if cp.backup_type != BACKUP_TYPE_FULL:
        raise PrepareError(f"{base.path} is {cp.backup_type}: a MySQL base takes its incrementals before any "
                           "recovery has run on it", file=str(base.checkpoints_file),
                           hint="start again from a copy of the original base")
    incs = _still_to_apply(base, list(incremental_dirs), overlay=True)
    journal = read_journal(base.path)
    if journal is not None:
        _journal_leads(base, journal, incs, "laying")
    links = check_chain(base, incs)
    _binary, line = find_server_binary(base, config.server_binary)  # before anything is written
    result.server_version = line
    log.info("prepare: %s chain in %s: %d incremental(s) laid over the base, then one recovery with the last "
             "link's redo, with %s", base.flavor, base.path, len(links), line)
    if links and journal is None:
        # The base's own DDL record first (its end state), and never again: later links replace its files.
        apply_ddl_side_files(base.path)
        (base.path / RECORD).unlink(missing_ok=True)
    for link in links:
        lcp = link.bd.checkpoints
        resumed = journal is not None and journal.names(lcp)
        _write_journal(base.path, Journal(str(link.bd.path), lcp.from_lsn, lcp.to_lsn, lcp.last_lsn, "deltas",
                                          not apply_log_only), config.fsync)
        if resumed:
            log.info("prepare: laying %s again after an interruption", link.bd.path)
        lay_incremental(base, link, fam, config.fsync)
        base.write_checkpoints(replace(lcp, backup_type=BACKUP_TYPE_FULL, from_lsn=0), fsync=config.fsync)
        (base.path / CHAIN_JOURNAL).unlink(missing_ok=True)
        base = read_backup_dir(base.path)
        log.info("prepare: %s laid; %s is now a full backup at LSN %d..%d", link.bd.path, base.path,
                 start_lsn(lcp), lcp.last_lsn)
    if apply_log_only:
        result.pending = True
        result.last_lsn = base.checkpoints.last_lsn
        result.seconds = time.monotonic() - started
        log.info("prepare: MySQL: no recovery yet; the redo of the last link is applied once, by the last step "
                 "(without --apply-log-only)")
        return result
    final = prepare_backup(config)
    final.seconds = time.monotonic() - started
    return final


__all__ = ["Journal", "apply_delta", "check_chain", "incremental_deltas", "newest_page", "prepare_chain",
           "read_journal", "start_lsn"]
