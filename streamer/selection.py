"""Which user tables a partial backup copies: XtraBackup's ``--databases``, ``--databases-exclude``, ``--tables``,
``--tables-exclude`` and ``--tables-file``, with its meanings.

* ``--databases "db1 db2.t1"``: whole databases and single tables, separated by spaces;
* ``--databases-exclude`` the same syntax, left out;
* ``--tables REGEX``: a regular expression searched in ``db.table`` (unanchored, as xtrabackup's ``regexec``);
  ``--tables-exclude REGEX`` likewise;
* ``--tables-file FILE``: one ``db.table`` per line, exact.

A table is copied when no exclusion matches it and every kind of inclusion given matches it (a database list and a
table filter must both let it through). The server's own schemas (``mysql``, ``sys``, ``performance_schema``), the
system tablespace, undo, ``mysql.ibd``, Aria logs and everything at the datadir's root are always copied: prepare
and the server need them. Files are matched by the table they belong to: ``t.ibd``, ``t#p#p0.ibd`` (MySQL) /
``t#P#p0.ibd`` (MariaDB) partitions, ``t.frm``, ``t.par``, ``t.MYD`` and MySQL's ``t_123.sdi``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from innostream.errors import SourceError
from innostream.formats.xtrabackup_meta import XTRABACKUP_CHECKPOINTS

#: Schemas every backup keeps whole: the server cannot start without them.
SYSTEM_SCHEMAS = frozenset({"mysql", "sys", "performance_schema"})
#: The backup's record of a partial backup's selection and the tables it copied.
PARTIAL_RECORD = "innostream_partial.json"

#: Table definition files, kept for every table, even one left out: the server must know a table to drop it
#: (MariaDB cannot drop the partitions of a table without its .frm and .par), and prepare drops those left out.
#: Not MySQL's .sdi: its data dictionary (in mysql.ibd) knows every table, and a MyISAM table's .sdi left without
#: its data makes DROP DATABASE fail on the recovery server.
DEFINITION_EXTENSIONS = frozenset({"frm", "par", "TRG", "TRN"})
_PART_RE = re.compile(r"#(p|P)#.*$")
_SDI_RE = re.compile(r"_\d+$")
_ENC_RE = re.compile(r"@([0-9a-fA-F]{4})")


def filename_decode(name: str) -> str:
    """A file name part as the server encodes identifiers (``my@002dt``) back to the name (``my-t``); only the
    ``@XXXX`` form (ASCII and other code points), which is what non-letter characters use."""
    return _ENC_RE.sub(lambda m: chr(int(m.group(1), 16)), name)


def _pairs(text: str, option: str) -> tuple[set[str], set[tuple[str, str]]]:
    dbs: set[str] = set()
    tables: set[tuple[str, str]] = set()
    for item in text.split():
        db, dot, table = item.partition(".")
        if not db or (dot and not table):
            raise SourceError(f"{option}: {item!r} is not a database or db.table")
        if dot:
            tables.add((db, table))
        else:
            dbs.add(db)
    return dbs, tables


def _regex(text: str, option: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise SourceError(f"{option}: {text!r} is not a regular expression: {exc}") from None


@dataclass
class TableSelection:
    """The options of a partial backup, parsed (:meth:`from_options`)."""

    databases: set[str] = field(default_factory=set)
    database_tables: set[tuple[str, str]] = field(default_factory=set)
    exclude_databases: set[str] = field(default_factory=set)
    exclude_tables: set[tuple[str, str]] = field(default_factory=set)
    tables_regex: re.Pattern[str] | None = None
    tables_exclude_regex: re.Pattern[str] | None = None
    tables_list: set[tuple[str, str]] | None = None
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_options(cls, *, databases: str | None = None, databases_exclude: str | None = None,
                     tables: str | None = None, tables_exclude: str | None = None,
                     tables_file: Path | None = None) -> TableSelection | None:
        """The selection, or None when no option is given (a full backup).

        Raises:
            SourceError: a malformed name, regular expression or unreadable ``tables_file``.
        """
        sel = cls()
        if databases is not None:
            sel.databases, sel.database_tables = _pairs(databases, "--databases")
            sel.options["databases"] = databases
        if databases_exclude is not None:
            sel.exclude_databases, sel.exclude_tables = _pairs(databases_exclude, "--databases-exclude")
            sel.options["databases_exclude"] = databases_exclude
        if tables is not None:
            sel.tables_regex = _regex(tables, "--tables")
            sel.options["tables"] = tables
        if tables_exclude is not None:
            sel.tables_exclude_regex = _regex(tables_exclude, "--tables-exclude")
            sel.options["tables_exclude"] = tables_exclude
        if tables_file is not None:
            try:
                lines = Path(tables_file).read_text().split("\n")
            except OSError as exc:
                raise SourceError(f"--tables-file: cannot read it: {exc.strerror}", file=str(tables_file)) from None
            sel.tables_list = set()
            for line in filter(None, (raw.strip() for raw in lines)):
                db, dot, table = line.partition(".")
                if not (db and dot and table):
                    raise SourceError(f"--tables-file: {line!r} is not db.table", file=str(tables_file))
                sel.tables_list.add((db, table))
            sel.options["tables_file"] = str(tables_file)
        return sel if sel.options else None

    def includes(self, db: str, table: str) -> bool:
        """Whether the user table ``db.table`` is copied."""
        if db in SYSTEM_SCHEMAS:
            return True
        name = f"{db}.{table}"
        if db in self.exclude_databases or (db, table) in self.exclude_tables:
            return False
        if self.tables_exclude_regex is not None and self.tables_exclude_regex.search(name):
            return False
        if (self.databases or self.database_tables) and not (
                db in self.databases or (db, table) in self.database_tables):
            return False
        if self.tables_regex is not None or self.tables_list is not None:
            by_regex = self.tables_regex is not None and bool(self.tables_regex.search(name))
            by_list = self.tables_list is not None and (db, table) in self.tables_list
            if not (by_regex or by_list):
                return False
        return True

    def includes_database(self, db: str) -> bool:
        """Whether ``db`` itself (its ``db.opt``) is kept: not excluded whole, and named if databases are."""
        if db in SYSTEM_SCHEMAS:
            return True
        if db in self.exclude_databases:
            return False
        if self.databases or self.database_tables:
            return db in self.databases or any(d == db for d, _ in self.database_tables)
        return True

    def keeps(self, member: str) -> bool:
        """Whether a backup member (``ibdata1``, ``db/t.ibd``, ``db/t#p#p0.ibd``, ``db/db.opt``...) is copied."""
        db_enc, slash, file = member.partition("/")
        if not slash or "/" in file:
            return True  # the datadir's root: system tablespace, undo, mysql.ibd, logs, metadata
        db = filename_decode(db_enc)
        if file == "db.opt":
            return self.includes_database(db)
        stem, dot, ext = file.rpartition(".")
        if not dot:
            return self.includes_database(db)
        if ext in DEFINITION_EXTENSIONS:
            return True
        stem = _PART_RE.sub("", stem)
        if ext == "sdi":
            stem = _SDI_RE.sub("", stem)
        return self.includes(db, filename_decode(stem))

    def record(self, members: list[str]) -> bytes:
        """The :data:`PARTIAL_RECORD`: the options, and the user databases and tables (``db.table``) the backup
        copied (``members``: its file names)."""
        return build_partial_record(self.options, members)


def build_partial_record(options: dict[str, str], members: list[str]) -> bytes:
    """The :data:`PARTIAL_RECORD` of a backup holding ``members`` (file names), chosen by ``options``."""
    data = [m for m in members if is_user_table_member(m)]
    tables = sorted({t for m in data if (t := member_table(m))})
    dbs = sorted({filename_decode(m.partition("/")[0]) for m in [*data, *(m for m in members
                                                                         if m.endswith("/db.opt"))]}
                 - SYSTEM_SCHEMAS)
    return (json.dumps({"version": 1, "options": options, "databases": dbs, "tables": tables},
                       indent=1) + "\n").encode()


def is_user_table_member(member: str) -> bool:
    """A data file of a user table (``db/t.ibd``, ``db/t#P#p0.ibd``, ``db/t.MYD``...), as opposed to what every
    backup keeps: the datadir's root, the system schemas, ``db.opt`` and the definition files
    (:data:`DEFINITION_EXTENSIONS`)."""
    return member_table(member) is not None and member.rpartition(".")[2] not in DEFINITION_EXTENSIONS


def member_table(member: str) -> str | None:
    """``db.table`` of a user table's file (``db/t#p#p0.ibd``, ``db/t.frm``, ``db/t_12.sdi`` -> ``db.t``), else
    None (root files, ``db.opt``, the system schemas)."""
    db_enc, slash, file = member.partition("/")
    stem, dot, ext = file.rpartition(".")
    if not slash or "/" in file or not dot or file == "db.opt":
        return None
    db = filename_decode(db_enc)
    if db in SYSTEM_SCHEMAS:
        return None
    stem = _PART_RE.sub("", stem)
    if ext == "sdi":
        stem = _SDI_RE.sub("", stem)
    return f"{db}.{filename_decode(stem)}"


def is_partial_backup_dir(target: Path) -> bool:
    """A partial backup's directory (its record and xtrabackup_checkpoints), not a data directory restored from one
    (restore copies the record but not the metadata): prepare's server then needs ``innodb_force_recovery = 1``."""
    return (target / PARTIAL_RECORD).is_file() and (target / XTRABACKUP_CHECKPOINTS).is_file()


def read_partial_record(backup: Path) -> tuple[set[str], set[str]] | None:
    """(databases, tables) a partial backup copied, from its :data:`PARTIAL_RECORD`; None without one (a backup
    by another tool)."""
    path = backup / PARTIAL_RECORD
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_bytes())
        return {str(d) for d in doc["databases"]}, {str(t) for t in doc["tables"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"unreadable record of the partial backup: {exc}", file=str(path)) from None


__all__ = [
    "PARTIAL_RECORD",
    "SYSTEM_SCHEMAS",
    "TableSelection",
    "build_partial_record",
    "filename_decode",
    "is_partial_backup_dir",
    "is_user_table_member",
    "member_table",
    "read_partial_record",
]
