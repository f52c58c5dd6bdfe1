"""``innostream import``: bring one table of a prepared, exported backup back into a running server.

The backup holds, per table, the ``.ibd`` files, the ``.cfg`` files its own server wrote at ``prepare --export``
and the ``CREATE TABLE`` statement (:mod:`innostream.recovery.export`). Import creates the table from that
statement (under ``--as`` if given), discards the new table's tablespace, copies the files into the server's
datadir with the datadir's owner and mode 0640, runs ``ALTER TABLE ... IMPORT TABLESPACE`` and checks the result
(``CHECK TABLE``, row count). With ``--replace`` an existing table is swapped out only once the imported copy
passed its check (``RENAME TABLE`` both at once, then the old one is dropped).

The server must be local: its datadir is written directly. What cannot work is refused before anything changes:
another flavour, major.minor version or page size than the backup's, a table that was not in its own tablespace,
a table that exists (without ``--replace``).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
from innostream.connection import ConnectionOptions, connect, parse_version, resolve_options
from innostream.errors import TargetError
from innostream.log import log
from innostream.recovery.export import ExportedTable, Refused, filename_encode, quote, read_export_record
from innostream.recovery.restore import copy_sparse

#: Suffix of a file being copied into the datadir, renamed into place when complete.
_PARTIAL = ".innostream-tmp"
#: Suffix of the name an imported table gets while an existing one (``--replace``) is still in place.
_NEW = "_innostream_new"
_OLD = "_innostream_old"
_STAGE = "_innostream_part"
MAX_NAME = 64
#: Seconds to wait for MariaDB's checkpoint after an import (:func:`checkpoint_after_import`).
CHECKPOINT_TIMEOUT = 300.0


@dataclass(frozen=True)
class ImportConfig:
    """Options of ``innostream import``."""

    target_dir: Path
    table: str  # db.t as in the backup
    connection: ConnectionOptions
    as_table: str | None = None  # db.t2
    replace: bool = False
    fsync: bool = True


@dataclass
class ImportResult:
    """What import did (the CLI's summary, tests)."""

    schema: str
    table: str
    rows: int
    files: int
    bytes: int
    check: str
    seconds: float


def split_name(text: str) -> tuple[str, str]:
    """``db.t`` -> (db, t); backquotes allowed (```my.db`.t``).

    Raises:
        TargetError: not of the form db.table.
    """
    m = re.fullmatch(r"(?:`((?:[^`]|``)+)`|([^.`]+))\.(?:`((?:[^`]|``)+)`|([^`]+))", text)
    if not m:
        raise TargetError(f"{text!r} is not a table name of the form db.table")
    schema = (m.group(1) or "").replace("``", "`") or m.group(2)
    table = (m.group(3) or "").replace("``", "`") or m.group(4)
    return schema, table


class _Live:
    """The live server's session: every failure is one :class:`TargetError` line with the server's words."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.conn = connect(args)

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        except pymysql.MySQLError as exc:
            raise TargetError(f"{' '.join(sql.split()[:4])[:80]}: the server said: {exc.args[-1]}") from None

    def value(self, sql: str, args: Any = None) -> Any:
        rows = self.query(sql, args)
        return rows[0][0] if rows else None

    def close(self) -> None:
        self.conn.close()


def _renamed_create(create: str, name: str) -> str:
    """``SHOW CREATE TABLE`` output with the table's name replaced."""
    m = re.match(r"CREATE TABLE `(?:[^`]|``)+`", create)
    if not m:
        raise TargetError("the saved definition does not start with CREATE TABLE `name`")
    return f"CREATE TABLE {quote(name)}" + create[m.end():]


def _dictionary_files(live: _Live, flavor: str, schema: str, table: str) -> dict[str, str]:
    """The live table's tablespaces: ``{partition suffix ("" or "#p#p0", lower case): space type}``."""
    es, et = filename_encode(schema), filename_encode(table)
    if es is None or et is None:
        raise TargetError(f"{schema}.{table}: names with non-ASCII characters are not supported yet")
    base = f"{es}/{et}"
    view = "INNODB_TABLES" if flavor == "mysql" else "INNODB_SYS_TABLES"
    rows = live.query(f"SELECT NAME, SPACE_TYPE FROM information_schema.{view} WHERE NAME = %s OR NAME LIKE %s",
                      (base, base.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "#p#%"))
    return {str(n)[len(base):].lower(): str(st or "") for n, st in rows}


def _suffix(member: str, exported: ExportedTable, ext: str) -> str:
    """The partition suffix of an exported file (``sample/t#P#p0.ibd`` -> ``#p#p0``), lower case."""
    stem = member.rpartition("/")[2][: -len(ext)]
    et = filename_encode(exported.table) or ""
    return stem[len(et):].lower()


def _copy_in(src: Path, dst: Path, owner: tuple[int, int], fsync: bool) -> int:
    """Copy ``src`` to ``dst`` in the server's datadir: a new file under a temporary name, the datadir's owner,
    0640, synced, then renamed into place."""
    if dst.exists():
        raise TargetError(f"{dst} exists after DISCARD TABLESPACE", file=str(dst),
                          hint="remove the stray file (the server does not know it) and retry")
    tmp = dst.with_name(dst.name + _PARTIAL)
    tmp.unlink(missing_ok=True)
    size = src.stat().st_size
    copy_sparse(src, tmp)
    os.chown(tmp, *owner)
    tmp.chmod(0o640)
    tmp.replace(dst)
    if fsync:
        fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return size


_FULLTEXT_RE = re.compile(r"^\s*(FULLTEXT KEY `(?:[^`]|``)+` .*?),?$", re.MULTILINE)


def fulltext_keys(create: str) -> list[str]:
    """The ``FULLTEXT KEY ...`` clauses of a ``SHOW CREATE TABLE`` statement."""
    return _FULLTEXT_RE.findall(create)


def _rebuild_fulltext(live: _Live, schema: str, table: str, create: str) -> None:
    """Build the FULLTEXT indexes again. Neither family imports them: MySQL marks them corrupted ("you should
    recreate this index"), MariaDB leaves them unusable, and MariaDB 10.11 crashes if one is added back without a
    rebuild in between (seen here). So: drop them, rebuild the table, add them one by one."""
    keys = fulltext_keys(create)
    if not keys:
        return
    q = f"{quote(schema)}.{quote(table)}"
    names = [re.match(r"FULLTEXT KEY (`(?:[^`]|``)+`)", k).group(1) for k in keys]  # type: ignore[union-attr]
    log.info("import: %s.%s: rebuilding %d FULLTEXT index(es) (tablespace import does not carry them)", schema,
             table, len(keys))
    live.query(f"ALTER TABLE {q} " + ", ".join(f"DROP INDEX {n}" for n in names))
    live.query(f"ALTER TABLE {q} FORCE")
    for key in keys:
        live.query(f"ALTER TABLE {q} ADD {key}")


def _check(live: _Live, schema: str, table: str) -> str:
    rows = live.query(f"CHECK TABLE {quote(schema)}.{quote(table)}")
    bad = [str(r[3]) for r in rows if str(r[2]).lower() in ("error", "warning") or str(r[3]).lower() not in (
        "ok", "table is already up to date")]
    return "OK" if not bad else "; ".join(bad[:3])


def import_table(config: ImportConfig) -> ImportResult:
    """Import one table of the exported backup ``config.target_dir`` into the running server.

    Raises:
        TargetError: the table cannot be imported (refusal or the server's error), with the reason.
        SourceError: the server cannot be connected to.
    """
    started = time.monotonic()
    backup = Path(config.target_dir)
    record = read_export_record(backup)
    schema, table = split_name(config.table)
    entry = record.find(schema, table)
    if entry is None:
        raise TargetError(f"{schema}.{table} is not among the backup's exported tables",
                          hint=f"the tables are listed in {backup}/innostream_export.json")
    if isinstance(entry, Refused):
        raise TargetError(f"{schema}.{table} cannot be imported: {entry.reason}")
    new_schema, new_table = split_name(config.as_table) if config.as_table else (schema, table)
    if len(new_table) + len(_NEW) > MAX_NAME and config.replace:
        raise TargetError(f"table name {new_table!r} is too long for --replace (at most {MAX_NAME - len(_NEW)})")
    for rel in (*entry.files, *entry.cfg):
        if not (backup / rel).is_file():
            raise TargetError(f"{rel} is missing from the backup", file=str(backup / rel))

    live = _Live(resolve_options(config.connection))
    try:
        version = str(live.value("SELECT VERSION()"))
        flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        if flavor != record.flavor:
            raise TargetError(f"the backup is of {record.flavor} {record.server_version}, the server is {flavor} "
                              f"{version}: a tablespace imports only into the same server family")
        if parse_version(version)[:2] != parse_version(record.server_version)[:2]:
            raise TargetError(f"the backup is of {record.flavor} {record.server_version}, the server runs {version}: "
                              "import needs the same major.minor version")
        page_size = int(live.value("SELECT @@innodb_page_size"))
        if page_size != record.page_size:
            raise TargetError(f"the server's innodb_page_size is {page_size}, the backup's {record.page_size}: "
                              "a tablespace imports only into a server with the same page size")
        datadir = Path(str(live.value("SELECT @@datadir")))
        if not live.value("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (new_schema,)):
            raise TargetError(f"database {new_schema} does not exist on the server",
                              hint=f"CREATE DATABASE {quote(new_schema)} first")
        db_dir = datadir / (filename_encode(new_schema) or new_schema)
        if not db_dir.is_dir() or not os.access(db_dir, os.W_OK | os.X_OK):
            raise TargetError(f"the server's datadir {datadir} is not writable here: import copies files into it, so "
                              "it runs on the server's machine", file=str(db_dir),
                              hint="run innostream import on the database host as root or the datadir's owner")
        st = db_dir.stat()
        if os.geteuid() not in (0, st.st_uid):
            raise TargetError(f"cannot give the imported files to the owner of {db_dir} (uid {st.st_uid})",
                              hint="run innostream import as root or as that user")
        exists = bool(live.value("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND "
                                 "TABLE_NAME = %s", (new_schema, new_table)))
        if exists and not config.replace:
            raise TargetError(f"{new_schema}.{new_table} exists on the server",
                              hint="pass --replace to swap it for the backup's copy, or --as db.other_name")
        work = new_table + _NEW if exists else new_table
        if live.value("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                      (new_schema, work)):
            raise TargetError(f"{new_schema}.{work} exists (left by an interrupted import?)",
                              hint="drop it and retry")

        live.query("SET SESSION foreign_key_checks = 0")
        live.query(f"USE {quote(new_schema)}")
        live.query(_renamed_create(entry.create, work))
        created = True
        try:
            files, size = _import_files(live, flavor, backup, entry, new_schema, work, db_dir,
                                        (st.st_uid, st.st_gid), config.fsync)
            _rebuild_fulltext(live, new_schema, work, entry.create)
            check = _check(live, new_schema, work)
            if check != "OK":
                raise TargetError(f"CHECK TABLE {new_schema}.{new_table} after the import: {check}")
            rows = int(live.value(f"SELECT COUNT(*) FROM {quote(new_schema)}.{quote(work)}"))
            if exists:
                if flavor == "mariadb":
                    checkpoint_after_import(live)
                old = new_table[: MAX_NAME - len(_OLD)] + _OLD
                live.query(f"RENAME TABLE {quote(new_schema)}.{quote(new_table)} TO {quote(new_schema)}.{quote(old)}, "
                           f"{quote(new_schema)}.{quote(work)} TO {quote(new_schema)}.{quote(new_table)}")
                created = False
                live.query(f"DROP TABLE {quote(new_schema)}.{quote(old)}")
            created = False
        finally:
            if created:
                # Leave nothing half-imported behind: the table we created goes, with any file copied.
                try:
                    live.query(f"DROP TABLE IF EXISTS {quote(new_schema)}.{quote(work)}")
                except TargetError as exc:
                    log.warning("import: could not drop %s.%s after the failure: %s", new_schema, work, exc.message)
                for p in db_dir.glob("*" + _PARTIAL):
                    p.unlink(missing_ok=True)
    finally:
        live.close()
    result = ImportResult(new_schema, new_table, rows, files, size, check, time.monotonic() - started)
    log.info("import: %s.%s -> %s.%s: %d file(s), %d bytes, CHECK TABLE %s, %d rows, %.1f s", schema, table,
             new_schema, new_table, files, size, check, rows, result.seconds)
    return result


def _import_files(live: _Live, flavor: str, backup: Path, entry: ExportedTable, schema: str, table: str,
                  db_dir: Path, owner: tuple[int, int], fsync: bool) -> tuple[int, int]:
    """DISCARD TABLESPACE, copy the files in, IMPORT TABLESPACE. Returns (files, bytes) copied."""
    spaces = _dictionary_files(live, flavor, schema, table)
    ours = {_suffix(f, entry, ".ibd"): f for f in entry.files}
    if set(spaces) != set(ours):
        raise TargetError(f"the table the server created from the saved definition has tablespaces "
                          f"{sorted(spaces) or 'none'}, the backup {sorted(ours)}",
                          hint="its partitioning differs from the backup's")
    not_own = sorted(k for k, v in spaces.items() if v != "Single")
    if not_own:
        raise TargetError(f"the server did not create {schema}.{table} in its own tablespace "
                          "(innodb_file_per_table is OFF?): IMPORT TABLESPACE needs a file-per-table table")
    et = filename_encode(table) or table
    if flavor == "mariadb" and entry.partitioned:
        return _import_partitions_mariadb(live, backup, entry, schema, table, db_dir, owner, fsync, ours)
    live.query(f"ALTER TABLE {quote(schema)}.{quote(table)} DISCARD TABLESPACE")
    files = size = 0
    cfgs = {_suffix(f, entry, ".cfg"): f for f in entry.cfg}
    for suffix, member in ours.items():
        n, b = _copy_tablespace(backup, member, cfgs.get(suffix), db_dir / f"{et}{_part(member, entry)}", owner,
                                fsync)
        files, size = files + n, size + b
    live.query(f"ALTER TABLE {quote(schema)}.{quote(table)} IMPORT TABLESPACE")
    for member in ours.values():
        # The server leaves the .cfg after a successful import; it has no use once imported.
        (db_dir / f"{et}{_part(member, entry)}.cfg").unlink(missing_ok=True)
    return files, size


def _part(member: str, entry: ExportedTable) -> str:
    """A partition's part of a member's file name (``#p#p0``; empty for a table); the server names partition
    files with its own case (#p# / #P#): the backup's spelling is kept."""
    stem = member.rpartition("/")[2][: -len(".ibd")]
    return stem[len(filename_encode(entry.table) or ""):]


def _copy_tablespace(backup: Path, member: str, cfg: str | None, dest_stem: Path, owner: tuple[int, int],
                     fsync: bool) -> tuple[int, int]:
    """Copy a member's ``.ibd`` and, if the export has one, its ``.cfg`` to ``dest_stem`` + suffix; returns
    (files, bytes)."""
    size = _copy_in(backup / member, dest_stem.with_name(dest_stem.name + ".ibd"), owner, fsync)
    if cfg is not None and (backup / cfg).is_file():
        return 2, size + _copy_in(backup / cfg, dest_stem.with_name(dest_stem.name + ".cfg"), owner, fsync)
    return 1, size


def _import_partitions_mariadb(live: _Live, backup: Path, entry: ExportedTable, schema: str, table: str,
                               db_dir: Path, owner: tuple[int, int], fsync: bool,
                               ours: dict[str, str]) -> tuple[int, int]:
    """MariaDB cannot DISCARD/IMPORT the tablespace of a partitioned table. Its documented way: per partition,
    a non-partitioned copy of the table imports the partition's files and is swapped in with ``ALTER TABLE ...
    EXCHANGE PARTITION`` (which checks every row belongs to that partition)."""
    cfgs = {_suffix(f, entry, ".cfg"): f for f in entry.cfg}
    files = size = 0
    q = f"{quote(schema)}.{quote(table)}"
    stages: list[tuple[str, str]] = []  # (partition, staging table)
    try:
        for i, (suffix, member) in enumerate(sorted(ours.items())):
            m = re.fullmatch(r"#p#([0-9A-Za-z_]+)", suffix)
            if not m:
                raise TargetError(f"{schema}.{table}: partition {suffix!r} cannot be imported on MariaDB "
                                  "(subpartitions, or a name with special characters)")
            stage = f"{table[: MAX_NAME - len(_STAGE) - 6]}{_STAGE}{i}"
            es, qs = filename_encode(stage) or stage, f"{quote(schema)}.{quote(stage)}"
            live.query(f"DROP TABLE IF EXISTS {qs}")
            live.query(f"CREATE TABLE {qs} LIKE {q}")
            stages.append((m.group(1), stage))
            live.query(f"ALTER TABLE {qs} REMOVE PARTITIONING")
            live.query(f"ALTER TABLE {qs} DISCARD TABLESPACE")
            n, b = _copy_tablespace(backup, member, cfgs.get(suffix), db_dir / es, owner, fsync)
            files, size = files + n, size + b
            live.query(f"ALTER TABLE {qs} IMPORT TABLESPACE")
            (db_dir / f"{es}.cfg").unlink(missing_ok=True)
        checkpoint_after_import(live)
        for part, stage in stages:
            live.query(f"ALTER TABLE {q} EXCHANGE PARTITION {quote(part)} WITH TABLE {quote(schema)}.{quote(stage)}")
    finally:
        for _, stage in stages:
            live.query(f"DROP TABLE IF EXISTS {quote(schema)}.{quote(stage)}")
    return files, size


def _innodb_status(live: _Live) -> tuple[int, int]:
    text = str(live.query("SHOW ENGINE INNODB STATUS")[0][2])
    lsn = re.search(r"Log sequence number\s+(\d+)", text)
    checkpoint = re.search(r"Last checkpoint at\s+(\d+)", text)
    if not (lsn and checkpoint):
        raise TargetError("cannot read the LSN and checkpoint from SHOW ENGINE INNODB STATUS")
    return int(lsn.group(1)), int(checkpoint.group(1))


def checkpoint_after_import(live: _Live, timeout: float = CHECKPOINT_TIMEOUT) -> None:
    """MariaDB: wait until a checkpoint covers the import before the imported tablespace is renamed (RENAME
    TABLE, EXCHANGE PARTITION). Seen on 10.11: killed after such a rename and before the next checkpoint, the
    server's recovery replays the redo of the table's CREATE onto the imported file and the table comes back
    empty. The page cleaner is asked to flush everything (``innodb_max_dirty_pages_pct = 0``, restored after)
    until the checkpoint passes the LSN of the import.

    Raises:
        TargetError: no checkpoint within ``timeout`` seconds.
    """
    lsn, checkpoint = _innodb_status(live)
    if checkpoint >= lsn:
        return
    old = live.value("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
    live.query("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    try:
        deadline = time.monotonic() + timeout
        while _innodb_status(live)[1] < lsn:
            if time.monotonic() > deadline:
                raise TargetError(f"the server made no checkpoint past the import (LSN {lsn}) within {timeout:.0f} s; "
                                  "the table was not renamed into place", hint="retry when the server is less busy")
            time.sleep(0.2)
    finally:
        live.query("SET GLOBAL innodb_max_dirty_pages_pct = %s", (old,))


__all__ = ["ImportConfig", "ImportResult", "import_table", "split_name"]
