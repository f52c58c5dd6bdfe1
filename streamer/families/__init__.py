"""The server families, one module each: everything innostream does differently for MySQL and for MariaDB.

Code above this package asks ``family(flavor)`` instead of comparing flavours; adding a family (or a version's
specifics) means a module here and an entry in :data:`FAMILIES`. The modules may use :mod:`innostream.connection`,
:mod:`innostream.redo_copier` and :mod:`innostream.formats`, which know nothing of families.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pymysql
from innostream.connection import (
    BackupLocks,
    LogStatus,
    PrivilegeProbe,
    ServerFacts,
    Session,
    query_server_facts,
)
from innostream.errors import SourceError
from innostream.families.mariadb import MariaDB
from innostream.families.mysql import MySQL
from innostream.flavor import Flavor
from innostream.redo_copier import RedoCopier, Writer


class Family(Protocol):
    """What differs between server families, for backup and for prepare."""

    flavor: Flavor
    #: Oldest server whose redo format we copy.
    min_version: tuple[int, int, int]
    #: The redo copy's name in a backup (the reference tool's layout).
    redo_copy_name: str
    #: Server binaries prepare looks for on PATH, in order.
    server_binaries: tuple[str, ...]
    #: Commits are stopped with FLUSH TABLES WITH READ LOCK even when no non-InnoDB table needs it.
    read_lock_blocks_commits: bool
    #: How an incremental chain is prepared: False, each link's redo in turn (redo-only recoveries); True, the
    #: deltas laid over each other and one recovery with the last link's redo (incrementals start at their base's
    #: start checkpoint). docs/PREPARE.md, "Incremental chains".
    chain_by_overlay: bool

    # --- backup ---------------------------------------------------------------------------------------------------

    def check_server(self, session: Session, facts: ServerFacts) -> None:
        """Raise :class:`SourceError` if this server cannot be backed up (beyond its version)."""
        ...

    def privilege_probes(self, *, binlog: bool) -> list[PrivilegeProbe]:
        """Harmless statements that fail exactly when the backup user lacks a privilege the backup will need."""
        ...

    def backup_locks(self, session: Session, *, enabled: bool = True) -> BackupLocks:
        """The family's DDL lock and commit block on ``session``."""
        ...

    def current_lsn(self, session: Session) -> int:
        """The server's current LSN (for the redo-lag display and the end of the copy)."""
        ...

    def read_log_status(self, session: Session, *, binlog: bool) -> LogStatus:
        """LSN, checkpoint and (with ``binlog``) binlog coordinates, read under the commit block."""
        ...

    def cut_redo_copy(self, copier: RedoCopier, lsn: int) -> tuple[int, bytes] | None:
        """Where the redo copy must end for recovery to stop at exactly ``lsn`` (the LSN read with the binlog
        position, while commits may go on): ``(offset in the copy, the last piece to write there)``, or None if the
        copy may end where the copier stopped."""
        ...

    def supports_redo_consumer(self, facts: ServerFacts) -> bool:
        """Whether :class:`innostream.connection.RedoConsumer` can keep the server from overwriting our redo."""
        ...

    def open_redo_copier(self, log_dir: Path, write: Writer, *, poll_interval: float = 0.1,
                         advance: Callable[[int], None] | None = None) -> RedoCopier:
        """A live redo copier for the server's redo in ``log_dir``, writing the copy to ``write``."""
        ...

    def encryption_plugin_config(self, session: Session) -> list[str]:
        """The ``backup-my.cnf`` lines prepare needs to read encrypted data (read before the copy)."""
        ...

    def backup_my_cnf(self, facts: ServerFacts, undo_files: int = 0, plugin_config: Sequence[str] = ()) -> bytes:
        """``backup-my.cnf``: the InnoDB settings prepare must start with (innodb-formats.md 6.2 / 6.4)."""
        ...

    # --- prepare --------------------------------------------------------------------------------------------------

    def holds_redo_copy(self, backup: Path) -> bool:
        """Whether the backup directory holds this family's redo copy (or the redo prepare made of it)."""
        ...

    def check_backup_type(self, backup_type: str) -> None:
        """Raise :class:`PrepareError` for a backup state this family's prepare does not handle."""
        ...

    def prepare_server_options(self, target: Path, run: Path, my_cnf: Mapping[str, str]) -> list[str]:
        """The family's options for the server that runs crash recovery on ``target`` (``run``: its private dir)."""
        ...

    def stage_redo(self, target: Path, my_cnf: Mapping[str, str], server_version: str) -> int:
        """Make the redo copy the log the server recovers from, checking it; the LSN where it ends, 0 if unknown."""
        ...

    def recovered_lsn(self, lines: Sequence[str]) -> int | None:
        """The LSN crash recovery reached, from the server's error log lines."""
        ...

    def dictionary_tablespaces(self, conn: pymysql.connections.Connection, target: Path) -> list[str]:
        """The tablespace files the data dictionary knows (paths relative to ``target`` or absolute)."""
        ...

    def needs_heuristic_rollback(self, lines: Sequence[str]) -> bool:
        """Whether the server refused to start (``lines``) until binlog-prepared transactions are rolled back."""
        ...

    def redo_only_options(self) -> list[str]:
        """Server options for a recovery that applies redo and writes nothing else (an incremental chain's
        intermediate step); raises :class:`PrepareError` if the family has no such mode we trust."""
        ...

    def log_checkpoint_lsn(self, target: Path) -> int | None:
        """The checkpoint LSN of the log the server left in ``target`` (after a clean shutdown: all pages flushed
        up to it)."""
        ...

    def unstage_redo(self, target: Path) -> None:
        """Remove the server's own log left by an earlier pass, so the next :meth:`stage_redo` uses the copy."""
        ...


#: Every family, in the order a backup directory is matched against them.
FAMILIES: tuple[Family, ...] = (MySQL(), MariaDB())
_BY_FLAVOR: dict[Flavor, Family] = {f.flavor: f for f in FAMILIES}


def family(flavor: Flavor) -> Family:
    """The family of ``flavor``.

    Raises:
        ValueError: not a family innostream knows.
    """
    try:
        return _BY_FLAVOR[flavor]
    except KeyError:
        raise ValueError(f"unknown server flavor {flavor!r}") from None


def read_server_facts(session: Session) -> ServerFacts:
    """Read version and paths (:func:`innostream.connection.query_server_facts`) and check the family can be backed
    up.

    Raises:
        SourceError: the server is too old for the redo formats we copy, or its family refuses it (MySQL with redo
            logging disabled).
    """
    facts = query_server_facts(session)
    fam = family(facts.flavor)
    if facts.version_tuple < fam.min_version:
        want = ".".join(map(str, fam.min_version))
        raise SourceError(f"{facts.flavor} {facts.version} is not supported; innostream needs {facts.flavor} {want} "
                          "or newer")
    fam.check_server(session, facts)
    return facts


__all__ = ["FAMILIES", "Family", "family", "read_server_facts"]
