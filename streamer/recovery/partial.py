"""Prepare of a partial backup (``backup --databases/--tables...``): the tables left out are dropped on the
throwaway server that runs recovery, so the prepared backup starts clean.

The servers would otherwise keep them in their dictionaries without files: MySQL lists them in its data
dictionary and fails every statement that opens one; MariaDB warns at each start and keeps them in InnoDB's
dictionary. ``DROP TABLE`` on the recovery server removes them from both, as if they had been dropped before the
backup; the dropped tables are logged. A table whose file is missing from a full backup is still an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import pymysql
from innostream.errors import PrepareError
from innostream.log import log
from innostream.recovery.export import quote
from innostream.selection import PARTIAL_RECORD, SYSTEM_SCHEMAS, TableSelection, member_table, read_partial_record

#: MySQL's hidden FULLTEXT auxiliary tables (fts_<table id>_<index id or name>): dropped with their table.
_FTS_AUX = re.compile(r"^fts_[0-9a-f]{16}_", re.IGNORECASE)


def is_partial(target: Path, info: Mapping[str, str]) -> bool:
    """A partial backup: ``partial = Y`` in xtrabackup_info, or our record of one (also left by ``extract
    --include``)."""
    return info.get("partial") == "Y" or (target / PARTIAL_RECORD).is_file()


def drop_tables_not_copied(conn: pymysql.connections.Connection, target: Path, missing: list[str],
                           recheck: Callable[[], list[str]]) -> list[str]:
    """Drop the user tables whose tablespace files (``missing``: paths as the dictionary names them) were left
    out of the partial backup in ``target``; returns what ``recheck`` then still finds missing.

    Raises:
        PrepareError: the server refused to drop one.
    """
    tables: dict[str, tuple[str, str]] = {}
    for path in missing:
        rel = Path(path)
        if rel.is_absolute():
            continue  # outside the datadir (general tablespaces, DATA DIRECTORY): not ours to drop
        member = rel.as_posix().removeprefix("./")
        name = member_table(member)
        if name is not None:
            db, _, table = name.partition(".")
            if _FTS_AUX.match(table):
                continue  # MySQL's FULLTEXT index tables: they go with their table
            tables[name] = (db, table)
    copied = read_partial_record(target)
    schemas_to_drop: list[str] = []
    if copied is not None:
        # MySQL's data dictionary also knows the non-InnoDB tables (MyISAM...) and the databases left out.
        dbs, kept = copied
        # InnoDB's dictionary: MariaDB recovery re-creates the files of tables created within the redo copied,
        # without their .frm; they exist only there.
        view = "INNODB_SYS_TABLES" if _is_mariadb(conn) else "INNODB_TABLES"
        for (dict_name,) in _rows(conn, f"SELECT NAME FROM information_schema.{view}"):
            name = member_table(dict_name + ".ibd")
            db, _, table = (name or "").partition(".")
            if name and name not in kept and not _FTS_AUX.match(table):
                tables[name] = (db, table)
        listed = ", ".join(f"'{s}'" for s in (*SYSTEM_SCHEMAS, "information_schema"))
        for db, table in _rows(conn, "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE "
                                     f"TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ({listed})"):
            if f"{db}.{table}" not in kept:
                tables[f"{db}.{table}"] = (db, table)
        options = json.loads((target / PARTIAL_RECORD).read_bytes()).get("options", {})
        sel = TableSelection.from_options(databases=options.get("databases"),
                                          databases_exclude=options.get("databases_exclude"))
        schemas_to_drop = [db for (db,) in _rows(conn, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
                                                       f"WHERE SCHEMA_NAME NOT IN ({listed})")
                           if db not in dbs and sel is not None and not sel.includes_database(db)]
    for name, (db, table) in sorted(tables.items()):
        _execute(conn, f"DROP TABLE IF EXISTS {quote(db)}.{quote(table)}", name)
    for db in list(schemas_to_drop):
        try:
            _execute(conn, f"DROP DATABASE IF EXISTS {quote(db)}", db)
        except PrepareError as exc:  # its tables are gone; an empty database is no harm
            log.warning("prepare: partial backup: database %s stays, empty: %s", db, exc.message)
            schemas_to_drop.remove(db)
    if tables or schemas_to_drop:
        log.info("prepare: partial backup: dropped %d table(s) and %d database(s) it did not copy: %s",
                 len(tables), len(schemas_to_drop),
                 ", ".join([*sorted(tables)[:10], *schemas_to_drop[:5]]) + (" ..." if len(tables) > 10 else ""))
    return recheck()


def _is_mariadb(conn: pymysql.connections.Connection) -> bool:
    return "mariadb" in _rows(conn, "SELECT VERSION()")[0][0].lower()


def _rows(conn: pymysql.connections.Connection, sql: str) -> list[tuple[str, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(str(v) for v in row) for row in cur.fetchall()]


def _execute(conn: pymysql.connections.Connection, sql: str, name: str) -> None:
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION foreign_key_checks = 0")
            cur.execute(sql)
    except pymysql.MySQLError as exc:
        raise PrepareError(f"partial backup: cannot drop {name}, which the backup did not copy: {exc.args[-1]}",
                           hint="see the server's error log") from None


__all__ = ["drop_tables_not_copied"]
