"""General tablespaces and DATA DIRECTORY tables (issue 14): backed up, prepared without touching the original
files, restored where the server expects them, and the restored server's tables equal to the source's.

On each server: a table in the datadir, a table created with DATA DIRECTORY under the test's tmp_path (MySQL:
``innodb_directories`` names it; MariaDB: a ``.isl`` link), and on MySQL a general tablespace in the datadir
(``ADD DATAFILE 'ts1.ibd'``) and one in ``innodb_directories``. MariaDB has no CREATE TABLESPACE for InnoDB.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from innostream.connection import ServerFacts, parse_version
from innostream.datadir import REMOTE_FILES, RemoteFile, build_remote_files, enumerate_files, parse_remote_files
from innostream.errors import FileExistsInTarget, SourceError, TargetError
from innostream.recovery.prepare import PrepareConfig, prepare_backup
from innostream.recovery.restore import RestoreConfig, restore_backup

from tools.sandbox import Server, start_server, table_checksums

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "ts_test"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_tables(srv: Server, remote: Path) -> list[Path]:
    """Create the tables; return the files that live outside the datadir."""
    srv.execute(f"CREATE DATABASE {SCHEMA}")
    stmts = [
        "CREATE TABLE t_local (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB",
        f"CREATE TABLE t_remote (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB DATA DIRECTORY='{remote}'",
    ]
    files = [remote / SCHEMA / "t_remote.ibd"]
    if srv.flavor == "mysql":
        stmts += [
            "CREATE TABLESPACE ts1 ADD DATAFILE 'ts1.ibd' ENGINE=InnoDB",
            "CREATE TABLE t_gen (id INT PRIMARY KEY, v VARCHAR(100)) TABLESPACE ts1",
            f"CREATE TABLESPACE ts2 ADD DATAFILE '{remote}/ts2.ibd' ENGINE=InnoDB",
            "CREATE TABLE t_gen_remote (id INT PRIMARY KEY, v VARCHAR(100)) TABLESPACE ts2",
        ]
        files.append(remote / "ts2.ibd")
    srv.execute_script(stmts, database=SCHEMA)
    tables = [r[0] for r in srv.query("SELECT table_name FROM information_schema.tables WHERE table_schema=%s",
                                      (SCHEMA,))]
    for t in tables:
        values = ",".join(f"({i}, 'row {i} of {t}')" for i in range(1, 501))
        srv.execute_script([f"INSERT INTO {t} VALUES {values}", f"UPDATE {t} SET v = CONCAT(v, '!') WHERE id % 7 = 0"],
                           database=SCHEMA)
    for f in files:
        assert f.is_file(), f
    return files


def _backup(srv: Server, mode: str, target: Path) -> None:
    conn = ["--socket", str(srv.socket), "--user", "root"]
    if mode == "target-dir":
        res = subprocess.run([sys.executable, "-m", "innostream", "backup", "--target-dir", str(target), *conn],
                             capture_output=True, text=True, cwd=REPO, check=False, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        return
    log = target.with_name("backup.log")
    with open(log, "wb") as err:
        backup = subprocess.Popen([sys.executable, "-m", "innostream", "backup", "--stream", *conn],
                                  stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        extract = subprocess.run([sys.executable, "-m", "innostream", "extract", "-C", str(target)],
                                 stdin=backup.stdout, capture_output=True, text=True, cwd=REPO, check=False,
                                 timeout=900)
        assert backup.stdout is not None
        backup.stdout.close()
        assert backup.wait(timeout=900) == 0, log.read_text(errors="replace")[-3000:]
    assert extract.returncode == 0, extract.stderr[-3000:]


@pytest.mark.parametrize("mode", ["target-dir", "stream"])
@pytest.mark.parametrize("kind", ["mysql9", "mariadb10", "mariadb11"])
def test_remote_and_general_tablespaces_restore(kind: str, mode: str, fresh_server, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    options = [f"--innodb-directories={remote}"] if kind == "mysql9" else []
    srv = fresh_server(kind, options=options)
    remote_files = _make_tables(srv, remote)
    source = table_checksums(srv, SCHEMA)
    assert len(source) == (4 if kind == "mysql9" else 2)

    backup = tmp_path / "backup"
    _backup(srv, mode, backup)
    record = json.loads((backup / REMOTE_FILES).read_text())
    assert sorted(f["path"] for f in record["files"]) == sorted(str(p) for p in remote_files)
    for f in record["files"]:
        assert (backup / f["name"]).is_file()
    assert not list(backup.rglob("*.isl")), "a .isl in the backup would send prepare to the original file"
    if kind == "mysql9":
        assert (backup / "ts1.ibd").is_file()

    # prepare must not touch the originals (the server's own files)
    srv.stop()
    before = {p: _digest(p) for p in remote_files}
    prepare_backup(PrepareConfig(backup, server_binary=srv.server_binary, use_memory="64M"))
    assert {p: _digest(p) for p in remote_files} == before

    # restore refuses to overwrite an original that is still there, then puts it back once it is gone
    datadir = tmp_path / "restored"
    with pytest.raises(FileExistsInTarget):
        restore_backup(RestoreConfig(backup, datadir))
    assert not datadir.exists() or not any(datadir.iterdir())
    for p in remote_files:
        p.unlink()
    restore_backup(RestoreConfig(backup, datadir))
    for p in remote_files:
        assert p.is_file()
    assert not (datadir / SCHEMA / "t_remote.ibd").exists()
    if kind != "mysql9":
        assert (datadir / SCHEMA / "t_remote.isl").read_text().strip() == str(remote_files[0])

    restored = start_server(kind, tmp_path / "run", datadir=datadir, initialize=False, options=options)
    try:
        assert table_checksums(restored, SCHEMA) == source
        if kind == "mysql9":
            paths = {r[0] for r in restored.query("SELECT PATH FROM information_schema.INNODB_DATAFILES")}
            assert {str(p) for p in remote_files} <= paths
    finally:
        restored.stop()


@pytest.mark.parametrize("kind", ["mysql9", "mariadb10", "mariadb11"])
def test_remote_tablespaces_restored_into_datadir(kind: str, fresh_server, tmp_path: Path) -> None:
    """``restore --remote-to-datadir``: the files that lived outside the datadir go into it (the originals are not
    touched), MariaDB's .isl names the new place, and the server (MySQL: without the old innodb_directories)
    opens every table."""
    remote = tmp_path / "remote"
    remote.mkdir()
    options = [f"--innodb-directories={remote}"] if kind == "mysql9" else []
    srv = fresh_server(kind, options=options)
    remote_files = _make_tables(srv, remote)
    source = table_checksums(srv, SCHEMA)
    backup = tmp_path / "backup"
    _backup(srv, "target-dir", backup)
    srv.stop()
    prepare_backup(PrepareConfig(backup, server_binary=srv.server_binary, use_memory="64M"))
    before = {p: _digest(p) for p in remote_files}

    datadir = tmp_path / "restored"
    res = subprocess.run([sys.executable, "-m", "innostream", "restore", "--target-dir", str(backup), "--datadir",
                          str(datadir), "--remote-to-datadir"], capture_output=True, text=True, cwd=REPO,
                         check=False, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p: _digest(p) for p in remote_files} == before
    for p in remote_files:  # the restored server must use its own copies
        p.unlink()
    assert (datadir / SCHEMA / "t_remote.ibd").is_file()
    if kind == "mysql9":
        assert (datadir / "ts1.ibd").is_file()
        assert (datadir / "ts2.ibd").is_file()
    else:
        assert (datadir / SCHEMA / "t_remote.isl").read_text() == str(datadir / SCHEMA / "t_remote.ibd")
    restored = start_server(kind, tmp_path / "run", datadir=datadir, initialize=False)
    try:
        assert table_checksums(restored, SCHEMA) == source
    finally:
        restored.stop()


def test_mysql_general_tablespace_in_datadir(fresh_server, tmp_path: Path) -> None:
    """A general tablespace at its default place (``ADD DATAFILE 'ts1.ibd'``, the datadir root) is a plain file at
    the backup's root; backup, prepare, restore and start give the same table."""
    srv = fresh_server("mysql9")
    srv.execute(f"CREATE DATABASE {SCHEMA}")
    srv.execute_script(["CREATE TABLESPACE ts1 ADD DATAFILE 'ts1.ibd' ENGINE=InnoDB",
                        "CREATE TABLE t_gen (id INT PRIMARY KEY, v VARCHAR(100)) TABLESPACE ts1",
                        "INSERT INTO t_gen VALUES " + ",".join(f"({i}, 'row {i}')" for i in range(1, 1001))],
                       database=SCHEMA)
    source = table_checksums(srv, SCHEMA)
    backup = tmp_path / "backup"
    _backup(srv, "target-dir", backup)
    assert (backup / "ts1.ibd").is_file()
    assert not (backup / REMOTE_FILES).exists()
    prepare_backup(PrepareConfig(backup, server_binary=srv.server_binary, use_memory="64M"))
    datadir = tmp_path / "restored"
    restore_backup(RestoreConfig(backup, datadir))
    restored = start_server("mysql9", tmp_path / "run", datadir=datadir, initialize=False)
    try:
        assert table_checksums(restored, SCHEMA) == source
    finally:
        restored.stop()


def _blank_datadir(root: Path) -> ServerFacts:
    datadir = root / "data"
    (datadir / "db").mkdir(parents=True)
    with open(datadir / "ibdata1", "wb") as f:
        f.truncate(12 << 20)
    return ServerFacts(flavor="mysql", version="9.7.4", version_tuple=parse_version("9.7.4"), datadir=datadir,
                       data_home_dir=datadir, log_dir=datadir, undo_dir=datadir, variables={})


def test_inventory_names_remote_files_and_refuses_a_clash(tmp_path: Path) -> None:
    """Outside the datadir: <db>/<file> when the directory is named after a database, else <file>; two files that
    would get one name are refused before anything is copied (no server needed: the inventory's rules)."""
    facts = _blank_datadir(tmp_path)
    (facts.datadir / "ts1.ibd").write_bytes(b"\0" * 65536)
    for rel in ("r1/db/t.ibd", "r1/g.ibd", "r2/g.ibd"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\0" * 65536)
    known = [facts.datadir / "./ts1.ibd", tmp_path / "r1/db/t.ibd", tmp_path / "r1/g.ibd"]
    inv = enumerate_files(facts, facts.datadir, facts.datadir, facts.datadir, known)
    assert {"ts1.ibd", "db/t.ibd", "g.ibd"} <= {f.name for f in inv.innodb}
    assert inv.remote == [RemoteFile("db/t.ibd", str(tmp_path / "r1/db/t.ibd")),
                          RemoteFile("g.ibd", str(tmp_path / "r1/g.ibd"))]
    with pytest.raises(SourceError, match=r"two tablespaces would be stored as g\.ibd"):
        enumerate_files(facts, facts.datadir, facts.datadir, facts.datadir, [*known, tmp_path / "r2/g.ibd"])


def test_remote_record_round_trip_and_unsafe_names() -> None:
    files = [RemoteFile("db/t.ibd", "/srv/remote/db/t.ibd", "db/t.isl"), RemoteFile("g.ibd", "/srv/g.ibd")]
    assert parse_remote_files(build_remote_files(files)) == files
    for bad in (RemoteFile("../t.ibd", "/srv/t.ibd"), RemoteFile("/etc/t.ibd", "/srv/t.ibd"),
                RemoteFile("t.ibd", "relative/t.ibd"), RemoteFile("t.ibd", "/srv/t.ibd", "../x.isl")):
        with pytest.raises(TargetError):
            parse_remote_files(build_remote_files([bad]))


@pytest.mark.parametrize("kind", ["mysql9", "mariadb10"])
def test_verify_restore_keeps_remote_files_in_its_scratch_copy(kind: str, fresh_server, tmp_path: Path) -> None:
    """``verify --restore`` of a backup with tablespaces outside the datadir works while the originals are still
    there (the source host) and never writes to them: its restore keeps them in the scratch datadir."""
    from innostream.recovery.proof import ProofConfig, verify_restore

    remote = tmp_path / "remote"
    remote.mkdir()
    options = [f"--innodb-directories={remote}"] if kind == "mysql9" else []
    srv = fresh_server(kind, options=options)
    remote_files = _make_tables(srv, remote)
    backup = tmp_path / "backup"
    _backup(srv, "target-dir", backup)
    srv.stop()
    before = {p: _digest(p) for p in remote_files}
    result = verify_restore(backup, ProofConfig(server_binary=srv.server_binary, scratch_dir=tmp_path,
                                                use_memory="64M"))
    assert {p: _digest(p) for p in remote_files} == before
    checked = {t.qualified for t in result.tables if t.checked}
    assert {f"{SCHEMA}.t_remote", f"{SCHEMA}.t_local"} <= checked, checked
    assert not result.errors
