"""Partial backups (``backup --databases/--databases-exclude/--tables/--tables-exclude/--tables-file``).

* the selection rules, on member names (no server): XtraBackup's meanings, partitions, MySQL .sdi, encoded names,
  the system schemas always kept, malformed options refused in one line;
* on the three real servers: ``--databases "pa sample.t_plain"`` copies the system tablespace, undo, mysql, the
  selected tables' data and every table's definition (.frm, .par); xtrabackup_info says partial = Y and
  the record lists what was copied; the backup prepares (the tables left out are dropped on the recovery
  server), restores and starts; the included tables have the CHECKSUM TABLE of the source, the excluded ones are
  absent and the server's log has no error about them;
* ``--tables`` / ``--tables-exclude`` / ``--tables-file`` choose the same way on a real server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from innostream.errors import SourceError
from innostream.selection import TableSelection, member_table

from tests.conftest import FreshServer
from tools.sandbox import Server, table_checksums

REPO = Path(__file__).resolve().parents[1]


def sel(**kw: object) -> TableSelection:
    s = TableSelection.from_options(**kw)  # type: ignore[arg-type]
    assert s is not None
    return s


# --- the rules -----------------------------------------------------------------------------------------------------


def test_no_option_is_a_full_backup() -> None:
    assert TableSelection.from_options() is None


def test_databases_whole_and_single_tables() -> None:
    s = sel(databases="db1 db2.t1")
    assert s.keeps("db1/a.ibd")
    assert s.keeps("db1/a.frm")
    assert s.keeps("db2/t1.ibd")
    assert not s.keeps("db2/t2.ibd")
    assert not s.keeps("db3/t1.ibd")
    assert s.keeps("db3/t1.frm")
    assert s.keeps("db2/db.opt")
    assert not s.keeps("db3/db.opt")
    for always in ("ibdata1", "undo_001", "mysql.ibd", "ib_logfile0", "mysql/user.MYD", "sys/sys_config.ibd",
                   "performance_schema/db.opt", "aria_log.00000001"):
        assert s.keeps(always), always


def test_partitions_sdi_and_encoded_names_belong_to_their_table() -> None:
    s = sel(databases="d.part d.my-t")
    assert s.keeps("d/part#p#p0.ibd")  # MySQL
    assert s.keeps("d/part#P#p1.ibd")  # MariaDB
    assert s.keeps("d/part#p#p0#sp#s0.ibd")
    assert s.keeps("d/part.par")
    assert s.keeps("d/my@002dt.ibd")
    assert not s.keeps("d/other.ibd")
    assert not s.keeps("d/other.MYD")
    assert not s.keeps("d/other_12.sdi")
    assert sel(databases="d.t").keeps("d/t_380.sdi")
    assert s.keeps("d/other.frm")
    assert member_table("d/part#P#p1.ibd") == "d.part"
    assert member_table("d/my@002dt.frm") == "d.my-t"
    assert member_table("mysql/user.frm") is None
    assert member_table("ibdata1") is None


def test_excludes_win_and_filters_combine() -> None:
    s = sel(databases="db1", databases_exclude="db1.secret")
    assert s.keeps("db1/a.ibd")
    assert not s.keeps("db1/secret.ibd")
    s = sel(tables=r"^shop\.(orders|items)$", tables_exclude="items")
    assert s.keeps("shop/orders.ibd")
    assert not s.keeps("shop/items.ibd")
    assert not s.keeps("shop/users.ibd")
    assert s.keeps("shop/db.opt")  # the database stays; only tables are filtered
    assert sel(tables="rder").keeps("shop/orders.ibd")  # searched, not anchored, as xtrabackup's regexec
    s = sel(databases="shop other", tables="orders")  # both kinds must let a table through
    assert s.keeps("shop/orders.ibd")
    assert not s.keeps("shop/users.ibd")
    assert not s.keeps("third/orders.ibd")
    assert not sel(databases_exclude="db1").keeps("db1/db.opt")


def test_tables_file(tmp_path: Path) -> None:
    f = tmp_path / "list"
    f.write_text("shop.orders\n\n  shop.items \n")
    s = sel(tables_file=f)
    assert s.keeps("shop/orders.ibd")
    assert s.keeps("shop/items.ibd")
    assert not s.keeps("shop/users.ibd")
    f.write_text("shop\n")
    with pytest.raises(SourceError, match=r"is not db\.table"):
        sel(tables_file=f)
    with pytest.raises(SourceError, match="cannot read it"):
        sel(tables_file=tmp_path / "none")


def test_malformed_options_are_refused() -> None:
    with pytest.raises(SourceError, match=r"--tables: .* is not a regular expression"):
        sel(tables="(")
    with pytest.raises(SourceError, match=r"--databases: 'db\.' is not a database or db\.table"):
        sel(databases="db.")


# --- real servers --------------------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "innostream", *args], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), check=False, timeout=900)
    print(res.stderr[-3000:])
    return res


def make_schemas(srv: Server) -> None:
    srv.execute_script([
        "DROP DATABASE IF EXISTS pa", "DROP DATABASE IF EXISTS pb", "CREATE DATABASE pa", "CREATE DATABASE pb",
        "CREATE TABLE pa.t1 (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB",
        "INSERT INTO pa.t1 SELECT id, name FROM sample.t_plain",
        "CREATE TABLE pa.t2 (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB PARTITION BY HASH (id) PARTITIONS 2",
        "INSERT INTO pa.t2 SELECT id, v FROM sample.t_partitioned",
        "CREATE TABLE pa.t3 (id INT PRIMARY KEY) ENGINE=MyISAM", "INSERT INTO pa.t3 VALUES (1), (2)",
        "CREATE TABLE pb.t1 (id INT PRIMARY KEY) ENGINE=InnoDB", "INSERT INTO pb.t1 VALUES (1)",
        "CREATE TABLE pb.t2 (id INT PRIMARY KEY) ENGINE=MyISAM", "INSERT INTO pb.t2 VALUES (1)",
    ])


def test_databases_partial_backup_prepares_restores_and_starts(server: Server, fresh_server: FreshServer,
                                                                tmp_path: Path) -> None:
    srv = server
    make_schemas(srv)
    want = {"pa": table_checksums(srv, "pa"), "sample": {"t_plain": table_checksums(srv, "sample")["t_plain"]}}
    backup = tmp_path / "b"
    assert cli("backup", "--socket", str(srv.socket), "--user", "root", "--target-dir", str(backup),
               "--databases", "pa sample.t_plain", "--no-fsync").returncode == 0
    assert "partial = Y" in (backup / "xtrabackup_info").read_text()
    record = json.loads((backup / "innostream_partial.json").read_text())
    assert record["options"] == {"databases": "pa sample.t_plain"}
    assert set(record["tables"]) == {"pa.t1", "pa.t2", "pa.t3", "sample.t_plain"}
    assert not [p.name for p in (backup / "pb").glob("*") if p.suffix in (".ibd", ".MYD", ".MYI", ".opt")]
    assert sorted(p.name for p in (backup / "sample").glob("*.ibd")) == ["t_plain.ibd"]
    assert (backup / "ibdata1").is_file()
    assert (backup / "mysql").is_dir()

    res = cli("prepare", "--target-dir", str(backup), "--server-binary", str(srv.server_binary), "--no-fsync")
    assert res.returncode == 0
    assert "partial backup: dropped" in res.stderr
    datadir = tmp_path / "restored"
    assert cli("restore", "--target-dir", str(backup), "--datadir", str(datadir), "--no-fsync").returncode == 0
    restored = fresh_server(srv.kind, datadir=datadir, initialize=False)
    assert table_checksums(restored, "pa") == want["pa"]
    got = table_checksums(restored, "sample")
    assert got == want["sample"], "tables left out must be gone, the one included intact"
    assert not restored.query("SHOW DATABASES LIKE 'pb'")
    restored.stop()
    errors = [line for line in restored.error_log.read_text(errors="replace").splitlines()
              if "[ERROR]" in line and ("sample" in line or "pb" in line)]
    assert not errors, errors


def test_tables_regex_exclude_and_file(server: Server, tmp_path: Path) -> None:
    srv = server
    make_schemas(srv)
    listing = tmp_path / "tables"
    listing.write_text("pb.t2\n")
    backup = tmp_path / "b"
    assert cli("backup", "--socket", str(srv.socket), "--user", "root", "--target-dir", str(backup), "--no-fsync",
               "--tables", r"^pa\.", "--tables-exclude", r"^pa\.t2$", "--tables-file", str(listing)).returncode == 0
    record = json.loads((backup / "innostream_partial.json").read_text())
    assert set(record["tables"]) == {"pa.t1", "pa.t3", "pb.t2"}
    assert not list((backup / "sample").glob("*.ibd"))
