"""``innostream prepare --export``: leave, for every InnoDB table of a prepared backup, what ``ALTER TABLE ...
IMPORT TABLESPACE`` needs on a live server.

The flavour's own server is started on the prepared backup (as prepare runs it) and writes each table's ``.cfg``
itself with ``FLUSH TABLES ... FOR EXPORT``, so the file is exactly what that server expects. The server deletes
the ``.cfg`` files at ``UNLOCK TABLES``: we copy them aside while the lock is held and put them in place after.
``SHOW CREATE TABLE`` on the same server gives each table's definition. Tables are exported in batches of
:data:`BATCH` (bounded open files and lock scope). The server is then shut down slowly (``innodb_fast_shutdown =
0``: purge and change buffer merged), so every ``.ibd`` is clean.

The result is one record at the backup's root, :data:`EXPORT_RECORD` (JSON): the server's flavour, version and page
size, and per table its definition and files; tables that cannot be imported (system or general tablespace, a
name we cannot map to its file) are listed with the reason, so ``innostream import`` can refuse them in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
from innostream.errors import PrepareError, TargetError
from innostream.log import log
from innostream.recovery.backupdir import BackupDir
from innostream.recovery.server import RunDir, run_dir, running_server
from innostream.target import replace_file

#: The export record at the root of a backup directory.
EXPORT_RECORD = "innostream_export.json"
EXPORT_RECORD_VERSION = 1
#: Tables locked by one ``FLUSH TABLES ... FOR EXPORT``.
BATCH = 64
#: Schemas never exported: the server's own.
SYSTEM_SCHEMAS = ("mysql", "sys", "performance_schema", "information_schema")
_CFG_ASIDE = ".innostream-cfg"


def filename_encode(name: str) -> str | None:
    """A schema or table name as the server names its file (``my-t`` -> ``my@002dt``), or None for a name with
    non-ASCII characters (the servers' special codes for letters are not reproduced here)."""
    if not name.isascii():
        return None
    return "".join(c if (c.isalnum() or c == "_") else f"@{ord(c):04x}" for c in name)


def quote(name: str) -> str:
    """A backquoted identifier."""
    return "`" + name.replace("`", "``") + "`"


@dataclass
class ExportedTable:
    """One table in the export record."""

    schema: str
    table: str
    create: str
    files: list[str]  # .ibd member names (one per partition), relative to the backup
    cfg: list[str]  # .cfg member names written by FLUSH TABLES ... FOR EXPORT
    row_format: str = ""
    partitioned: bool = False


@dataclass
class Refused:
    """A table export leaves out, and why."""

    schema: str
    table: str
    reason: str


@dataclass
class ExportRecord:
    """The whole record (:data:`EXPORT_RECORD`)."""

    flavor: str
    server_version: str
    page_size: int
    tables: list[ExportedTable] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        doc = {
            "version": EXPORT_RECORD_VERSION, "flavor": self.flavor, "server_version": self.server_version,
            "page_size": self.page_size,
            "tables": [vars(t) for t in self.tables],
            "refused": [vars(r) for r in self.refused],
        }
        return (json.dumps(doc, indent=1) + "\n").encode()

    def find(self, schema: str, table: str) -> ExportedTable | Refused | None:
        for t in self.tables:
            if (t.schema, t.table) == (schema, table):
                return t
        for r in self.refused:
            if (r.schema, r.table) == (schema, table):
                return r
        return None


def read_export_record(backup: Path) -> ExportRecord:
    """The export record of a backup directory.

    Raises:
        TargetError: there is none (the backup was not prepared with --export) or it is unreadable.
    """
    path = backup / EXPORT_RECORD
    if not path.is_file():
        raise TargetError(f"{backup} has no {EXPORT_RECORD}: it was not prepared with --export",
                          hint=f"run: innostream prepare --export --target-dir {backup}")
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("version") != EXPORT_RECORD_VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
        rec = ExportRecord(str(doc["flavor"]), str(doc["server_version"]), int(doc["page_size"]))
        rec.tables = [ExportedTable(**t) for t in doc["tables"]]
        rec.refused = [Refused(**r) for r in doc["refused"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise TargetError(f"unreadable export record: {exc}", file=str(path)) from None
    for t in rec.tables:
        for rel in (*t.files, *t.cfg):
            if rel.startswith("/") or ".." in rel.split("/"):
                raise TargetError(f"unsafe file name {rel!r} in the export record", file=str(path))
    return rec


# --- on the server ------------------------------------------------------------------------------------------------


def _query(conn: pymysql.connections.Connection, sql: str, args: object = None) -> list[tuple[object, ...]]:
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    except pymysql.MySQLError as exc:
        raise PrepareError(f"export: {sql.split()[0]} failed on the prepare server: {exc.args[-1]}",
                           hint=f"statement: {sql[:200]}") from None


def _dictionary(conn: pymysql.connections.Connection, flavor: str) -> dict[str, tuple[str, str]]:
    """InnoDB's tables: ``{dictionary name ("db/t", "db/t#p#p0"): (space type, row format)}``."""
    table = "INNODB_TABLES" if flavor == "mysql" else "INNODB_SYS_TABLES"
    rows = _query(conn, f"SELECT NAME, SPACE_TYPE, ROW_FORMAT FROM information_schema.{table}")
    return {str(n): (str(st or ""), str(rf or "")) for n, st, rf in rows}


def _plan(conn: pymysql.connections.Connection, backup: Path, flavor: str,
          record: ExportRecord) -> list[ExportedTable]:
    """The InnoDB tables to export, with their files; the others go to ``record.refused``."""
    dictionary = _dictionary(conn, flavor)
    rows = _query(conn, "SELECT TABLE_SCHEMA, TABLE_NAME, CREATE_OPTIONS FROM information_schema.TABLES "
                        "WHERE ENGINE = 'InnoDB' AND TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN "
                        f"({', '.join(repr(s) for s in SYSTEM_SCHEMAS)}) ORDER BY TABLE_SCHEMA, TABLE_NAME")
    out = []
    for schema, table, options in ((str(a), str(b), str(c or "")) for a, b, c in rows):
        es, et = filename_encode(schema), filename_encode(table)
        if es is None or et is None:
            record.refused.append(Refused(schema, table, "a name with non-ASCII characters (not supported yet)"))
            continue
        base = f"{es}/{et}"
        names = sorted(n for n in dictionary if n == base or n.lower().startswith(base.lower() + "#p#"))
        if not names:
            record.refused.append(Refused(schema, table, "not found in InnoDB's dictionary"))
            continue
        space_types = {dictionary[n][0] for n in names}
        if space_types != {"Single"}:
            kind = "the system tablespace" if "System" in space_types else "a general tablespace"
            record.refused.append(Refused(schema, table, f"it lives in {kind}, not in its own .ibd file "
                                                         "(IMPORT TABLESPACE needs file-per-table)"))
            continue
        files = [f"{n}.ibd" for n in names]
        if not all((backup / f).is_file() for f in files):
            record.refused.append(Refused(schema, table, "its .ibd file is not in the backup"))
            continue
        create = str(_query(conn, f"SHOW CREATE TABLE {quote(schema)}.{quote(table)}")[0][1])
        if "DATA DIRECTORY=" in create.upper().replace(" = ", "="):
            record.refused.append(Refused(schema, table, "a DATA DIRECTORY table (its file lives outside the "
                                                         "datadir; restore the backup instead)"))
            continue
        out.append(ExportedTable(schema, table, create, files, [f"{n}.cfg" for n in names],
                                 row_format=dictionary[names[0]][1],
                                 partitioned=names != [base] or "partitioned" in options.lower()))
    return out


def _batches(items: Sequence[ExportedTable], n: int) -> Iterator[Sequence[ExportedTable]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _export_batch(conn: pymysql.connections.Connection, backup: Path, batch: Sequence[ExportedTable]) -> None:
    """``FLUSH TABLES ... FOR EXPORT`` for ``batch``; each .cfg is copied aside while the lock is held (UNLOCK
    TABLES deletes them) and put in place after."""
    names = ", ".join(f"{quote(t.schema)}.{quote(t.table)}" for t in batch)
    _query(conn, f"FLUSH TABLES {names} FOR EXPORT")
    try:
        for t in batch:
            for cfg in t.cfg:
                src = backup / cfg
                if not src.is_file():
                    raise PrepareError(f"export: the server wrote no {cfg} for {t.schema}.{t.table}",
                                       hint="see the server's error log")
                replace_file(backup / (cfg + _CFG_ASIDE), src.read_bytes(), fsync=False)
    finally:
        _query(conn, "UNLOCK TABLES")
    for t in batch:
        for cfg in t.cfg:
            (backup / (cfg + _CFG_ASIDE)).replace(backup / cfg)


@dataclass
class ExportResult:
    tables: int
    refused: int


def export_tables(bd: BackupDir, server_argv: Callable[[RunDir], list[str]], timeout: float, *,
                  fsync: bool = True) -> ExportResult:
    """Start the server on the prepared backup ``bd`` (``server_argv``: its command line for a run directory),
    export every InnoDB table and write :data:`EXPORT_RECORD`.

    Raises:
        PrepareError: the server failed, or a statement of the export did.
    """
    backup = bd.path
    for stale in backup.rglob("*" + _CFG_ASIDE):
        stale.unlink()
    lines: list[str] = []
    with run_dir() as run, running_server(server_argv(run), run, timeout, lines) as conn:
        version = str(_query(conn, "SELECT VERSION()")[0][0])
        flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        page_size = int(str(_query(conn, "SELECT @@innodb_page_size")[0][0]))
        record = ExportRecord(flavor, version, page_size)
        tables = _plan(conn, backup, flavor, record)
        for batch in _batches(tables, BATCH):
            _export_batch(conn, backup, batch)
        record.tables = tables
        # Purge and the change buffer are finished before the files are final: an import needs clean pages.
        _query(conn, "SET GLOBAL innodb_fast_shutdown = 0")
    replace_file(backup / EXPORT_RECORD, record.to_bytes(), fsync=fsync)
    for r in record.refused:
        log.warning("export: %s.%s not exported: %s", r.schema, r.table, r.reason)
    log.info("export: %d table(s) exported (.cfg by FLUSH TABLES ... FOR EXPORT, definitions in %s), %d refused",
             len(tables), EXPORT_RECORD, len(record.refused))
    return ExportResult(len(tables), len(record.refused))


__all__ = ["EXPORT_RECORD", "ExportRecord", "ExportResult", "ExportedTable", "Refused", "export_tables",
           "filename_encode", "quote", "read_export_record"]
