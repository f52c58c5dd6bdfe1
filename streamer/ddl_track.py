"""``--lock-ddl=reduced``: DDL runs while the InnoDB files are copied; what it changed is settled at the end.

The copy runs without the DDL block (MariaDB ``BACKUP STAGE START`` only; MySQL no lock). Before the copy, every
InnoDB file's identity is noted: its inode and the space id on its first page, and on MySQL the ids of the indexes
in each tablespace (a MySQL index build writes its pages without redo and logs only ``MLOG_INDEX_LOAD``, so a copy
taken before the build cannot be completed by the redo). At the end, with DDL blocked (no statement can change
the files any more), the datadir is listed again and compared:

* a file whose name is new (CREATE, RENAME's new name, CREATE DATABASE ...) is copied whole now;
* a file whose inode or space id changed (ALTER ... FORCE, OPTIMIZE, TRUNCATE, DROP + CREATE, IMPORT TABLESPACE,
  MySQL undo truncation), that vanished before it was opened, or (MySQL) whose set of index ids changed (ADD
  INDEX) is copied whole again as ``NAME.innostream-new``;
* a file gone (DROP, RENAME's old name) is recorded as deleted.

In an incremental backup the copies are whole too (not deltas), every one named ``NAME.innostream-new``, and
``prepare`` lays the record on the base after the incremental's deltas (``recovery.chain.lay_incremental``).

:data:`RECORD` lists what ``prepare`` must replace and delete before the server's recovery runs; the copy of each
changed file is newer than any redo that touches it, and recovery skips redo older than a page. Every other change
to a file (any DML, MariaDB index builds: all fully logged) is in the redo copy, as in a backup under the full
DDL block.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from innostream.connection import Session
from innostream.copier import SourceFile
from innostream.flavor import Flavor
from innostream.formats.fil0fil import BE32, FIL_PAGE_SPACE_ID

#: The backup's record of DDL settled at the end (JSON ``{"version": 1, "replaced": [member], "deleted":
#: [member]}``): prepare renames ``member + NEW_SUFFIX`` over ``member`` and deletes the deleted ones first.
RECORD = "innostream_ddl"
NEW_SUFFIX = ".innostream-new"


@dataclass(frozen=True)
class Identity:
    """What makes a tablespace file the same one: the inode, and the space id its first page names."""

    dev: int
    ino: int
    space_id: int | None  # None: no page header yet (a file being created)


def identity(path: Path) -> Identity | None:
    """The file's identity now, or None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, FIL_PAGE_SPACE_ID + 4, 0)
    finally:
        os.close(fd)
    space = BE32.unpack_from(head, FIL_PAGE_SPACE_ID)[0] if len(head) == FIL_PAGE_SPACE_ID + 4 else None
    return Identity(st.st_dev, st.st_ino, space)


def index_ids(session: Session, flavor: Flavor) -> dict[int, frozenset[int]]:
    """MySQL: ``{space id: its index ids}``. MariaDB logs every index build in full, so nothing is needed."""
    if flavor != Flavor.MYSQL:
        return {}
    spaces: dict[int, set[int]] = {}
    for space, index_id in session.query("SELECT SPACE, INDEX_ID FROM information_schema.INNODB_INDEXES"):
        spaces.setdefault(int(space), set()).add(int(index_id))
    return {k: frozenset(v) for k, v in spaces.items()}


@dataclass
class Settlement:
    """What the end of the backup must do: copy these files now, and record replaced and deleted members."""

    copy: list[SourceFile] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def record(self) -> bytes:
        return (json.dumps({"version": 1, "replaced": sorted(self.replaced), "deleted": sorted(self.deleted)},
                           indent=1) + "\n").encode()

    def __bool__(self) -> bool:
        return bool(self.copy or self.deleted)


class DdlTracker:
    """Notes the InnoDB files' identities before the copy and settles what DDL changed at the end."""

    def __init__(self, session: Session, flavor: Flavor, files: Iterable[SourceFile]) -> None:
        self.session = session
        self.flavor = flavor
        self.indexes = index_ids(session, flavor)
        self.before = {f.name: identity(f.path) for f in files}
        self._vanished: set[str] = set()
        self._lock = threading.Lock()

    def vanished(self, src: SourceFile) -> None:
        """The copier found ``src`` gone before it opened it (called from copy threads)."""
        with self._lock:
            self._vanished.add(src.name)

    def settle(self, files_now: Sequence[SourceFile], *, incremental: bool = False) -> Settlement:
        """Compare with the InnoDB files listed again under the DDL block. In an ``incremental`` backup a new name
        is recorded as replaced too (copied whole as ``NAME`` + :data:`NEW_SUFFIX`): prepare lays it on the base
        after the deltas, and a whole ``.ibd`` in an incremental would read as a file to copy as it is."""
        out = Settlement()
        indexes_now = index_ids(self.session, self.flavor)
        names_now = set()
        for f in files_now:
            names_now.add(f.name)
            if f.name not in self.before:
                if incremental:
                    out.copy.append(replace(f, name=f.name + NEW_SUFFIX))
                    out.replaced.append(f.name)
                else:
                    out.copy.append(f)
                continue
            was, now = self.before[f.name], identity(f.path)
            changed = f.name in self._vanished or was is None or now != was
            if not changed and now is not None and now.space_id is not None:
                changed = indexes_now.get(now.space_id) != self.indexes.get(now.space_id)
            if changed:
                out.copy.append(replace(f, name=f.name + NEW_SUFFIX))
                out.replaced.append(f.name)
        out.deleted = sorted(set(self.before) - names_now)
        return out


def read_record(backup: Path) -> tuple[list[str], list[str]]:
    """``(replaced, deleted)`` member names from a backup directory's :data:`RECORD` (empty when absent)."""
    try:
        data = json.loads((backup / RECORD).read_text())
    except FileNotFoundError:
        return [], []
    return [str(n) for n in data.get("replaced", [])], [str(n) for n in data.get("deleted", [])]


def apply_record(backup: Path) -> int:
    """Before recovery: put each replaced member's new copy in its place and delete the deleted members (and
    their incremental .delta/.meta). Idempotent, so a prepare interrupted here is simply run again. Returns the
    number of files changed."""
    replaced, deleted = read_record(backup)
    done = 0
    for name in deleted:
        for path in (backup / name, backup / (name + ".delta"), backup / (name + ".meta")):
            if path.is_file():
                path.unlink()
                done += 1
    for name in replaced:
        new = backup / (name + NEW_SUFFIX)
        if new.is_file():
            new.replace(backup / name)
            done += 1
    return done
