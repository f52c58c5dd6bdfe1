"""``--lock-ddl=reduced`` (issue 13): DDL runs while the InnoDB files are copied and is settled at the end.

On each real server (MariaDB 10.11, MySQL 9.7, MariaDB 11.8): a backup is slowed with ``--throttle`` so that its
InnoDB copy lasts several seconds; during it CREATE, DROP, RENAME, ALTER ... FORCE, TRUNCATE, ADD INDEX, an
instant ADD COLUMN, partition ADD/DROP, CREATE and DROP DATABASE and DML all complete (none waits for the
backup). The prepared, restored backup starts, every table passes CHECK TABLE, and the set of tables and their
contents equal the source's at the end of the backup (no writes happen after the DDL).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from innostream.ddl_track import NEW_SUFFIX, RECORD

from tests.restored import prepared_and_started
from tools.sandbox import Server, table_checksums

REPO = Path(__file__).resolve().parents[1]
DB, DB2, GONE = "ddl", "ddl_new", "ddl_gone"

SETUP = [
    f"CREATE DATABASE {DB}",
    # big enough that the throttled copy lasts well beyond the DDL below
    "CREATE TABLE t_big (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(1000)) ENGINE=InnoDB",
    *[f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(100), n INT) ENGINE=InnoDB"
      for t in ("t_drop", "t_ren", "t_force", "t_trunc", "t_idx", "t_inst", "t_keep")],
    "CREATE TABLE t_part (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB PARTITION BY RANGE (id) "
    "(PARTITION p0 VALUES LESS THAN (100), PARTITION p1 VALUES LESS THAN (200))",
    f"CREATE DATABASE {GONE}",
    f"CREATE TABLE {GONE}.t (id INT PRIMARY KEY) ENGINE=InnoDB",
]
DDL = [
    "CREATE TABLE t_new (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB",
    "INSERT INTO t_new VALUES (1, 'made during the backup'), (2, 'also')",
    "DROP TABLE t_drop",
    "RENAME TABLE t_ren TO t_ren2",
    "ALTER TABLE t_force FORCE",
    "TRUNCATE TABLE t_trunc",
    "INSERT INTO t_trunc VALUES (7, 'after truncate', 7)",
    "ALTER TABLE t_idx ADD INDEX v_idx (v)",
    "ALTER TABLE t_inst ADD COLUMN c INT NOT NULL DEFAULT 7",
    "UPDATE t_keep SET n = n + 1 WHERE id % 3 = 0",
    "UPDATE t_big SET v = CONCAT('changed ', v) WHERE id % 50 = 0",
    f"CREATE DATABASE {DB2}",
    f"CREATE TABLE {DB2}.t (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB",
    f"INSERT INTO {DB2}.t VALUES (1, 'new database')",
    "ALTER TABLE t_part ADD PARTITION (PARTITION p2 VALUES LESS THAN (300))",
    "INSERT INTO t_part VALUES (250, 'in the new partition')",
    "ALTER TABLE t_part DROP PARTITION p0",
    f"DROP DATABASE {GONE}",
]


def _load(srv: Server) -> None:
    srv.execute_script(SETUP[:1])
    srv.execute_script(SETUP[1:], database=DB)
    rows = ",".join(f"({i}, 'row {i}', {i})" for i in range(1, 301))
    srv.execute_script([f"INSERT INTO {t} VALUES {rows}" for t in
                        ("t_drop", "t_ren", "t_force", "t_trunc", "t_idx", "t_inst", "t_keep")], database=DB)
    srv.execute_script(["INSERT INTO t_part VALUES " + ",".join(f"({i}, 'p{i}')" for i in range(1, 200))],
                       database=DB)
    srv.execute_script(["INSERT INTO t_big (v) VALUES (REPEAT('x', 900))",
                        *["INSERT INTO t_big (v) SELECT REPEAT('y', 900) FROM t_big"] * 15], database=DB)


def _state(srv: Server) -> dict[str, dict[str, tuple[int, int]]]:
    return {db: table_checksums(srv, db) for db in (DB, DB2)}


def _check_tables(srv: Server) -> None:
    for db in (DB, DB2):
        for (table,) in srv.query("SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (db,)):
            rows = srv.query(f"CHECK TABLE `{db}`.`{table}`")
            assert rows[-1][3] == "OK", (db, table, rows)


def _check_restored(restored: Server, prepared: Path, source: dict[str, dict[str, tuple[int, int]]]) -> None:
    """The prepared backup, restored and started, equals the source after the DDL."""
    assert not list(prepared.rglob(f"*{NEW_SUFFIX}"))
    assert not (prepared / DB / "t_drop.ibd").exists()
    assert _state(restored) == source
    assert set(source[DB]) == {"t_big", "t_new", "t_ren2", "t_force", "t_trunc", "t_idx", "t_inst", "t_keep",
                               "t_part"}
    assert not restored.query("SELECT 1 FROM information_schema.schemata WHERE schema_name=%s", (GONE,))
    _check_tables(restored)


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in the backup's log"
        time.sleep(0.05)


@pytest.mark.parametrize(("kind", "mode"), [("mariadb10", "target-dir"), ("mariadb10", "stream"),
                                            ("mysql9", "target-dir"), ("mariadb11", "target-dir")])
def test_ddl_runs_during_the_copy_and_the_backup_equals_the_source(kind: str, mode: str, fresh_server,
                                                                  tmp_path: Path) -> None:
    srv = fresh_server(kind)
    _load(srv)
    backup = tmp_path / "backup"
    log_path = tmp_path / "backup.log"
    argv = [sys.executable, "-m", "innostream", "backup", "--socket", str(srv.socket), "--user", "root",
            "--lock-ddl=reduced", "--throttle", "6", "--parallel", "1"]
    with open(log_path, "wb") as err:
        if mode == "target-dir":
            proc = subprocess.Popen([*argv, "--target-dir", str(backup)], stderr=err, cwd=REPO)
            extract = None
        else:
            proc = subprocess.Popen([*argv, "--stream"], stdout=subprocess.PIPE, stderr=err, cwd=REPO)
            extract = subprocess.Popen([sys.executable, "-m", "innostream", "extract", "-C", str(backup)],
                                       stdin=proc.stdout, stderr=subprocess.PIPE, cwd=REPO)
            assert proc.stdout is not None
            proc.stdout.close()
        try:
            _wait_for(log_path, "Log copying started", proc)
            srv.execute_script(DDL, database=DB)  # would wait for the whole backup under --lock-ddl=full
            log_now = log_path.read_text(errors="replace")
            assert proc.poll() is None, "the backup ended before the DDL did: the test proves nothing"
            assert "DDL was blocked" not in log_now
            assert "throttled to 6.0 MB/s" in log_now
            source = _state(srv)
            assert proc.wait(timeout=600) == 0, log_path.read_text(errors="replace")[-3000:]
            if extract is not None:
                _, extract_err = extract.communicate(timeout=600)
                assert extract.returncode == 0, extract_err.decode()[-3000:]
        finally:
            for p in (proc, extract):
                if p is not None and p.poll() is None:
                    p.kill()
    text = log_path.read_text(errors="replace")
    assert "DDL was blocked for" in text
    assert "the end of the backup: --lock-ddl=reduced" in text

    record = json.loads((backup / RECORD).read_text())
    assert f"{DB}/t_drop.ibd" in record["deleted"]
    assert f"{DB}/t_ren.ibd" in record["deleted"]
    for rebuilt in ("t_force", "t_trunc"):
        assert f"{DB}/{rebuilt}.ibd" in record["replaced"]
        assert (backup / DB / f"{rebuilt}.ibd{NEW_SUFFIX}").is_file()
    if srv.flavor == "mysql":  # the index build wrote its pages without redo: copied again
        assert f"{DB}/t_idx.ibd" in record["replaced"]
    for new in (f"{DB}/t_new.ibd", f"{DB}/t_ren2.ibd", f"{DB2}/t.ibd"):
        assert (backup / new).is_file()

    srv.stop()
    with prepared_and_started(srv, backup, tmp_path) as restored:
        _check_restored(restored, backup, source)


@pytest.mark.parametrize("kind", ["mariadb10", "mysql9"])
def test_ddl_during_an_incremental_copy(kind: str, fresh_server, tmp_path: Path) -> None:
    """An incremental takes the reduced lock too: the same DDL runs during its (throttled) copy, the files it
    created or changed come whole as ``NAME.innostream-new`` with the record, and the chain prepared by
    innostream equals the source."""
    srv = fresh_server(kind)
    _load(srv)
    srv.flush_dirty()
    base, inc = tmp_path / "base", tmp_path / "inc"
    run = [sys.executable, "-m", "innostream", "backup", "--socket", str(srv.socket), "--user", "root"]
    subprocess.run([*run, "--target-dir", str(base)], check=True, capture_output=True, cwd=REPO)
    srv.execute_script(["UPDATE t_keep SET v = 'between the backups' WHERE id < 50"], database=DB)
    log_path = tmp_path / "inc.log"
    with open(log_path, "wb") as err:
        proc = subprocess.Popen([*run, "--target-dir", str(inc), "--incremental-basedir", str(base),
                                 "--throttle", "6", "--parallel", "1"], stderr=err, cwd=REPO)
        try:
            _wait_for(log_path, "Incremental backup: pages newer than", proc)
            srv.execute_script(DDL, database=DB)  # would wait for the whole copy under --lock-ddl=full
            assert proc.poll() is None, "the incremental ended before the DDL did: the test proves nothing"
            assert "DDL was blocked" not in log_path.read_text(errors="replace")
            source = _state(srv)
            assert proc.wait(timeout=600) == 0, log_path.read_text(errors="replace")[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text(errors="replace")
    assert "the end of the backup: --lock-ddl=reduced" in text
    assert "DDL ran during this incremental" in text

    record = json.loads((inc / RECORD).read_text())
    assert {f"{DB}/t_drop.ibd", f"{DB}/t_ren.ibd"} <= set(record["deleted"])
    # New names come whole too in an incremental (never as a plain .ibd), like the rebuilt ones.
    for name in (f"{DB}/t_force.ibd", f"{DB}/t_trunc.ibd", f"{DB}/t_new.ibd", f"{DB}/t_ren2.ibd", f"{DB2}/t.ibd"):
        assert name in record["replaced"], name
        assert (inc / (name + NEW_SUFFIX)).is_file(), name
    assert not list(inc.rglob("*.ibd"))
    assert (inc / DB / "t_keep.ibd.delta").is_file()

    # An incremental whose record names a whole copy that is not there: refused before anything is changed.
    broken = tmp_path / "inc-broken"
    shutil.copytree(inc, broken)
    (broken / (f"{DB}/t_force.ibd" + NEW_SUFFIX)).unlink()
    before = {p.relative_to(base): p.read_bytes() for p in base.rglob("*") if p.is_file()}
    r = subprocess.run([sys.executable, "-m", "innostream", "prepare", "--target-dir", str(base),
                        "--incremental-dir", str(broken), "--server-binary", str(srv.server_binary)],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 7, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, r.stderr[-2000:]
    assert f"names {DB}/t_force.ibd, but {DB}/t_force.ibd{NEW_SUFFIX} is missing; nothing was changed" in errors[0]
    assert {p.relative_to(base): p.read_bytes() for p in base.rglob("*") if p.is_file()} == before

    srv.stop()
    with prepared_and_started(srv, base, tmp_path, incrementals=[inc]) as restored:
        _check_restored(restored, base, source)
    # The incremental is unchanged by the prepare (its whole copies were copied, not moved).
    assert all((inc / (n + NEW_SUFFIX)).is_file() for n in record["replaced"])


def test_redo_logging_disabled_during_a_reduced_lock_copy_fails_the_backup(fresh_server, tmp_path: Path) -> None:
    """Nothing blocks MySQL's ALTER INSTANCE DISABLE INNODB REDO_LOG while a --lock-ddl=reduced backup copies: the
    changes made meanwhile are in no redo, so the backup must fail, not complete."""
    srv = fresh_server("mysql9")
    _load(srv)
    log_path = tmp_path / "backup.log"
    with open(log_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "innostream", "backup", "--socket", str(srv.socket),
                                 "--user", "root", "--lock-ddl=reduced", "--throttle", "4", "--parallel", "1",
                                 "--target-dir", str(tmp_path / "backup")], stderr=err, cwd=REPO)
        try:
            _wait_for(log_path, "Log copying started", proc)
            srv.execute("ALTER INSTANCE DISABLE INNODB REDO_LOG")
            try:
                srv.execute("UPDATE ddl.t_keep SET n = n + 100")
                assert proc.wait(timeout=300) == 4, log_path.read_text(errors="replace")[-3000:]
            finally:
                srv.execute("ALTER INSTANCE ENABLE INNODB REDO_LOG")
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text(errors="replace")
    assert "during the backup: redo logging is disabled" in text, text[-3000:]
    assert not (tmp_path / "backup" / "xtrabackup_checkpoints").exists()
