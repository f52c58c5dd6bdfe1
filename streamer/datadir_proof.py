"""Proof that a ``--datadir`` seen at another path than the server's own holds this server's live files.

A server in a container or chroot reports its datadir as it sees it (``/var/lib/mysql``); the host sees the same
files elsewhere (``/var/lib/docker/volumes/db/_data``). Before anything is copied from such a directory, three
facts must agree with the running server, or the backup would copy some other server's files, or a stale copy of
this one, and report success:

1. the redo log there is the live one: the checkpoint it holds lies between the server's last checkpoint read
   just before and just after reading the file (the server publishes a checkpoint only once it is written, so a
   copy taken before the latest checkpoint, or another server's log, fails);
2. every tablespace the server lists is there, with the server's space id on its first page (MariaDB: or a
   first page not written yet, all zero, as a new table's may be);
3. MySQL: ``auto.cnf`` holds the server's ``server_uuid``.
"""

from __future__ import annotations

import time

from innostream.connection import ServerFacts, Session
from innostream.datadir import SourceDirs, host_path, is_temporary_tablespace, server_tablespace_ids
from innostream.errors import SourceError
from innostream.families import Family
from innostream.flavor import Flavor
from innostream.formats.fil0fil import BE32, FIL_PAGE_SPACE_ID
from innostream.log import log

#: how long a checkpoint the server published may take to show in the file (a torn read of its header block)
CHECKPOINT_SETTLE_SECONDS = 3.0


def _not_this_server(dirs: SourceDirs, facts: ServerFacts, why: str) -> SourceError:
    return SourceError(f"--datadir {dirs.datadir} is not the server's datadir {facts.datadir} and does not hold its "
                       f"live files: {why}", hint="give the directory where this server's datadir is mounted here")


def _check_redo(session: Session, fam: Family, facts: ServerFacts, dirs: SourceDirs) -> None:
    reader = fam.open_redo_copier(dirs.log_dir, lambda _data: None)
    deadline = time.monotonic() + CHECKPOINT_SETTLE_SECONDS
    while True:
        before = fam.read_log_status(session, binlog=False).checkpoint_lsn
        try:
            in_file = reader.current_checkpoint()
        except (OSError, SourceError) as exc:
            raise _not_this_server(dirs, facts, f"no readable redo log in {dirs.log_dir} ({exc})") from exc
        after = fam.read_log_status(session, binlog=False).checkpoint_lsn
        if before <= in_file <= after:
            log.info("Redo log in %s is the server's live log (checkpoint LSN %d)", dirs.log_dir, in_file)
            return
        if time.monotonic() > deadline:
            raise _not_this_server(dirs, facts, f"the redo log there has checkpoint LSN {in_file}, the server's "
                                   f"is {after}")
        time.sleep(0.2)


def _check_tablespaces(session: Session, facts: ServerFacts, dirs: SourceDirs) -> int:
    checked = 0
    for space_id, server_path in server_tablespace_ids(session, facts):
        if is_temporary_tablespace(server_path.name):
            continue
        path = host_path(facts, dirs, server_path)
        try:
            with open(path, "rb") as fh:
                head = fh.read(FIL_PAGE_SPACE_ID + 4)
        except OSError as exc:
            raise _not_this_server(dirs, facts, f"{path} cannot be read ({exc.strerror})") from exc
        if len(head) < FIL_PAGE_SPACE_ID + 4:
            raise _not_this_server(dirs, facts, f"{path} is shorter than a page header")
        found = BE32.unpack_from(head, FIL_PAGE_SPACE_ID)[0]
        if facts.flavor == Flavor.MARIADB and not any(head):
            continue  # a new MariaDB table whose first page the server has not written yet (docs/PAGES.md)
        if found != space_id:
            raise _not_this_server(dirs, facts, f"{path} holds space id {found}, the server's {server_path} has "
                                   f"{space_id}")
        checked += 1
    return checked


def _check_server_uuid(facts: ServerFacts, dirs: SourceDirs) -> None:
    want = facts.var("server_uuid")
    try:
        text = (dirs.datadir / "auto.cnf").read_text(errors="replace")
    except OSError as exc:
        raise _not_this_server(dirs, facts, f"no auto.cnf ({exc.strerror})") from exc
    found = {line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("server-uuid")}
    if want not in found:
        raise _not_this_server(dirs, facts, f"auto.cnf names server_uuid {', '.join(found) or 'none'}, the server "
                               f"is {want}")


def prove_live_datadir(session: Session, fam: Family, facts: ServerFacts, dirs: SourceDirs) -> None:
    """Refuse (SourceError) unless the files under ``dirs`` are the running server's; call with DDL blocked, so
    the server's list of tablespaces cannot change while it is compared with the files."""
    if facts.flavor == Flavor.MYSQL:
        _check_server_uuid(facts, dirs)
    _check_redo(session, fam, facts, dirs)
    n = _check_tablespaces(session, facts, dirs)
    log.info("The server's datadir %s is %s here: live redo, %d tablespaces and their space ids match",
             facts.datadir, dirs.datadir, n)
