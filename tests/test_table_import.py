"""``prepare --export`` + ``innostream import`` on the real servers (MariaDB 10.11, MySQL 9.7, MariaDB 11.8).

One backup per server, taken while the bank load (tools/load.py) writes, is prepared with ``--export``; then, on
the live server with the load still writing:

* tables the load never writes (plain, partitioned, ROW_FORMAT=COMPRESSED, INSTANT-altered, FULLTEXT) are dropped
  and imported back: CHECKSUM TABLE equals the one taken before the backup, CHECK TABLE is clean, the FULLTEXT
  index answers; the sample schema is untouched;
* the bank's three tables, under writes during the backup, are imported ``--as`` another schema: together they
  hold the bank's invariants at one point at or after every transfer committed before the backup began;
* ``--as`` and ``--replace`` rename and swap;
* refusals, each one line and nothing changed: an existing table, a table not in the backup, a database that does
  not exist, a table in the system tablespace (and a general tablespace, MySQL), a server of the other family, of
  another version (MariaDB 10.11 <-> 11.8) or with another page size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FreshServer
from tools.load import BankLoad, check_bank
from tools.sandbox import Server, table_checksums

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "imp"
TABLES = ("plain", "part", "comp", "inst", "ft")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "innostream", *args], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), check=False, timeout=900)
    print(res.stderr[-3000:])
    return res


def import_cli(srv: Server, backup: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("import", "--target-dir", str(backup), "--socket", str(srv.socket), "--user", "root", *args)


def make_tables(srv: Server) -> None:
    """The tables to restore: none of them is written by the load."""
    srv.execute_script([
        f"DROP DATABASE IF EXISTS {SCHEMA}", f"CREATE DATABASE {SCHEMA}", f"USE {SCHEMA}",
        "CREATE TABLE plain (id INT PRIMARY KEY, v VARCHAR(100), b BLOB) ENGINE=InnoDB",
        "INSERT INTO plain SELECT id, name, payload FROM sample.t_plain",
        "CREATE TABLE part (id INT PRIMARY KEY, v VARCHAR(32)) ENGINE=InnoDB PARTITION BY HASH (id) PARTITIONS 3",
        "INSERT INTO part SELECT id, v FROM sample.t_partitioned",
        "CREATE TABLE comp (id INT PRIMARY KEY, doc TEXT) ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8",
        "INSERT INTO comp SELECT id, doc FROM sample.t_compressed",
        "CREATE TABLE inst (id INT PRIMARY KEY, a INT, c INT) ENGINE=InnoDB",
        "INSERT INTO inst SELECT id, k, k * 2 FROM sample.t_indexed",
        "ALTER TABLE inst ADD COLUMN extra VARCHAR(20) NOT NULL DEFAULT 'old', ALGORITHM=INSTANT",
        "INSERT INTO inst (id, a, c, extra) VALUES (5000, 1, 2, 'new')",
        "ALTER TABLE inst DROP COLUMN c, ALGORITHM=INSTANT",
        "CREATE TABLE ft (id INT PRIMARY KEY, body TEXT, FULLTEXT KEY body_ft (body)) ENGINE=InnoDB",
        "INSERT INTO ft SELECT id, CONCAT('word', id, ' lorem ipsum') FROM sample.t_indexed",
    ])


@dataclass
class Exported:
    srv: Server
    backup: Path
    before: dict[str, tuple[int, int]]  # imp tables at the backup point
    load: BankLoad
    committed_before_backup: int


@pytest.fixture(scope="module")
def exported(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """A backup of ``server`` taken under the bank load and prepared with --export; the load keeps writing."""
    make_tables(server)
    before = table_checksums(server, SCHEMA)
    load = BankLoad(server, schema="imp_bank", max_transfers=None, max_seconds=600)
    load.setup()
    load.start()
    try:
        load.wait_for(20)
        committed = load.committed
        backup = tmp_path_factory.mktemp("export") / "b"
        res = cli("backup", "--socket", str(server.socket), "--user", "root", "--target-dir", str(backup),
                  "--no-fsync")
        assert res.returncode == 0
        assert load.committed > committed, "the load did not write during the backup"
        res = cli("prepare", "--export", "--target-dir", str(backup), "--server-binary", str(server.server_binary),
                  "--no-fsync")
        assert res.returncode == 0
        yield Exported(server, backup, before, load, committed)
    finally:
        load.stop()


def test_export_writes_cfg_and_definitions(exported: Exported) -> None:
    record = json.loads((exported.backup / "innostream_export.json").read_text())
    tables = {(t["schema"], t["table"]): t for t in record["tables"]}
    for name in (*TABLES, ):
        t = tables[(SCHEMA, name)]
        assert t["create"].startswith(f"CREATE TABLE `{name}`")
        for rel in (*t["files"], *t["cfg"]):
            assert (exported.backup / rel).is_file(), rel
    assert len(tables[(SCHEMA, "part")]["files"]) == 3
    assert tables[(SCHEMA, "part")]["partitioned"]
    assert tables[(SCHEMA, "comp")]["row_format"].lower() == "compressed"
    assert not list(exported.backup.rglob("*.innostream-cfg"))


def test_dropped_tables_come_back_while_writes_go_on(exported: Exported) -> None:
    srv = exported.srv
    sample = table_checksums(srv, "sample")
    srv.execute_script([f"DROP TABLE {SCHEMA}.{t}" for t in TABLES])
    during = exported.load.committed
    for t in TABLES:
        res = import_cli(srv, exported.backup, "--table", f"{SCHEMA}.{t}")
        assert res.returncode == 0
        assert "CHECK TABLE OK" in res.stderr
    assert table_checksums(srv, SCHEMA) == exported.before
    assert srv.query(f"SELECT COUNT(*) FROM {SCHEMA}.ft WHERE MATCH(body) AGAINST('word77')") == [(1,)]
    assert srv.query(f"SELECT extra FROM {SCHEMA}.inst WHERE id = 5000") == [("new",)]
    assert table_checksums(srv, "sample") == sample
    assert exported.load.committed > during, "writes stopped during the import"
    assert exported.load.stats.errors == 0, exported.load.stats.last_error


def test_tables_under_writes_import_consistent_as_another_schema(exported: Exported) -> None:
    srv = exported.srv
    srv.execute_script(["DROP DATABASE IF EXISTS bank_then", "CREATE DATABASE bank_then"])
    for t in ("accounts", "ledger", "head"):
        res = import_cli(srv, exported.backup, "--table", f"imp_bank.{t}", "--as", f"bank_then.{t}")
        assert res.returncode == 0
    conn = srv.connect()
    try:
        n = check_bank(conn, exported.load.accounts, exported.load.initial,
                       min_transfers=exported.committed_before_backup, schema="bank_then")
    finally:
        conn.close()
    assert n < exported.load.committed  # a point in the past: the live bank went on


def test_as_and_replace(exported: Exported) -> None:
    srv = exported.srv
    res = import_cli(srv, exported.backup, "--table", f"{SCHEMA}.plain", "--as", f"{SCHEMA}.plain2")
    assert res.returncode == 0
    assert (srv.query(f"CHECKSUM TABLE {SCHEMA}.plain2")[0][1] == exported.before["plain"][1])
    srv.execute(f"DELETE FROM {SCHEMA}.plain2 WHERE id > 10")
    res = import_cli(srv, exported.backup, "--table", f"{SCHEMA}.plain", "--as", f"{SCHEMA}.plain2", "--replace")
    assert res.returncode == 0
    assert srv.query(f"SELECT COUNT(*) FROM {SCHEMA}.plain2")[0][0] == exported.before["plain"][0]
    assert not srv.query(f"SHOW TABLES FROM {SCHEMA} LIKE '%innostream%'")


def _refused(res: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert res.returncode == code, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("innostream: error:")]
    assert len(lines) == 1, res.stderr
    assert text in lines[0], res.stderr


def test_refusals(exported: Exported, tmp_path: Path) -> None:
    srv, backup = exported.srv, exported.backup
    _refused(import_cli(srv, tmp_path, "--table", f"{SCHEMA}.plain"), 6, "it was not prepared with --export")
    tables = srv.query(f"SHOW TABLES FROM {SCHEMA}")
    _refused(import_cli(srv, backup, "--table", f"{SCHEMA}.plain"), 6, "exists on the server")
    _refused(import_cli(srv, backup, "--table", f"{SCHEMA}.nope"), 6, "is not among the backup's exported tables")
    _refused(import_cli(srv, backup, "--table", f"{SCHEMA}.plain", "--as", "no_such_db.t"), 6,
             "database no_such_db does not exist")
    _refused(import_cli(srv, backup, "--table", "nodot"), 6, "not a table name of the form db.table")
    assert srv.query(f"SHOW TABLES FROM {SCHEMA}") == tables


def test_tables_outside_their_own_tablespace_are_refused(server: Server, tmp_path: Path) -> None:
    """A table in the system tablespace (innodb_file_per_table=OFF) and, on MySQL, one in a general tablespace
    are listed as refused by the export, and import says why. A MariaDB DATA DIRECTORY table imports (into the
    datadir: its saved definition has no DATA DIRECTORY)."""
    srv = server
    stmts = ["DROP DATABASE IF EXISTS imp_sys", "CREATE DATABASE imp_sys", "USE imp_sys",
             "SET GLOBAL innodb_file_per_table = OFF",
             "CREATE TABLE in_system (id INT PRIMARY KEY) ENGINE=InnoDB", "INSERT INTO in_system VALUES (1)",
             "SET GLOBAL innodb_file_per_table = ON"]
    if srv.flavor == "mysql":
        stmts += ["CREATE TABLESPACE imp_gts ADD DATAFILE 'imp_gts.ibd'",
                  "CREATE TABLE in_general (id INT PRIMARY KEY) TABLESPACE imp_gts",
                  "INSERT INTO in_general VALUES (1)"]
    if srv.flavor == "mariadb":
        remote = tmp_path / "remote"
        remote.mkdir()
        remote.chmod(0o777)
        stmts += [f"CREATE TABLE elsewhere (id INT PRIMARY KEY) DATA DIRECTORY='{remote}'",
                  "INSERT INTO elsewhere VALUES (1)"]
    srv.execute_script(stmts)
    try:
        backup = tmp_path / "b"
        assert cli("backup", "--socket", str(srv.socket), "--user", "root", "--target-dir", str(backup),
                   "--no-fsync").returncode == 0
        assert cli("prepare", "--export", "--target-dir", str(backup), "--server-binary", str(srv.server_binary),
                   "--no-fsync").returncode == 0
        _refused(import_cli(srv, backup, "--table", "imp_sys.in_system", "--as", "imp_sys.t2"), 6,
                 "cannot be imported: it lives in the system tablespace")
        if srv.flavor == "mysql":
            _refused(import_cli(srv, backup, "--table", "imp_sys.in_general", "--as", "imp_sys.t3"), 6,
                     "cannot be imported: it lives in a general tablespace")
        else:
            # MariaDB's SHOW CREATE TABLE does not carry DATA DIRECTORY: the table comes back into the datadir.
            assert import_cli(srv, backup, "--table", "imp_sys.elsewhere", "--as", "imp_sys.t3").returncode == 0
            assert srv.query("SELECT id FROM imp_sys.t3") == [(1,)]
    finally:
        srv.execute_script(["SET GLOBAL innodb_file_per_table = ON", "DROP DATABASE IF EXISTS imp_sys"])
        if srv.flavor == "mysql":
            srv.execute("DROP TABLESPACE imp_gts")


def test_another_family_version_or_page_size_is_refused(exported: Exported, mariadb10: Server, mysql9: Server,
                                                         mariadb11: Server, fresh_server: FreshServer) -> None:
    other = mysql9 if exported.srv.flavor == "mariadb" else mariadb10
    _refused(import_cli(other, exported.backup, "--table", f"{SCHEMA}.plain", "--as", "sample.x"), 6,
             "a tablespace imports only into the same server family")
    if exported.srv.flavor == "mariadb":  # 10.11 and 11.8: the same family, another version
        newer = mariadb11 if exported.srv.kind == "mariadb10" else mariadb10
        _refused(import_cli(newer, exported.backup, "--table", f"{SCHEMA}.plain", "--as", "sample.x"), 6,
                 "import needs the same major.minor version")
    small = fresh_server(exported.srv.kind, options=["--innodb-page-size=8k"])
    _refused(import_cli(small, exported.backup, "--table", f"{SCHEMA}.plain", "--as", "mysql.x"), 6,
             "the server's innodb_page_size is 8192, the backup's 16384")
