"""``innostream backup`` end to end against real servers (MariaDB 10.11, MySQL 9.7, MariaDB 11.8).

What is checked: every page of the backup equals the live file or is older than it (a page changed later); no page
is newer than the end of the redo copy; the redo copy parses and spans start..end; the metadata LSNs fit the
server's; the stream path (innostream and xbstream formats) extracts to the same kind of tree; MariaDB's own
``mariadb-backup --prepare`` accepts our output and the result starts with consistent data, also under a write
load; cancelling (SIGINT, closed pipe) exits non-zero with one line and leaves the server unlocked and the MySQL
redo consumer unregistered; existing files in the target are never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from innostream.backup import BackupConfig, run_backup
from innostream.connection import ConnectionOptions, RedoConsumer
from innostream.formats import xtrabackup_meta as meta
from innostream.formats.fsp0fsp import space_info
from innostream.log import log
from innostream.redo_inspect import inspect_redo

from tools.load import BankLoad, DdlLoad, check_ddl
from tools.sandbox import SAMPLE_ROWS, start_server

INNOSTREAM = [sys.executable, "-m", "innostream"]
REPO = Path(__file__).resolve().parent.parent


def _config(srv, **kw) -> BackupConfig:
    return BackupConfig(connection=ConnectionOptions(socket=str(srv.socket), user="root", password=""),
                        datadir=Path(srv.datadir), **kw)


def _cli_conn(srv) -> list[str]:
    return ["--socket", str(srv.socket), "--user", "root", "--datadir", str(srv.datadir)]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _server_lsn(srv) -> int:
    if srv.flavor == "mysql":
        rows = srv.query("SELECT STORAGE_ENGINES FROM performance_schema.log_status")
        return int(json.loads(rows[0][0])["InnoDB"]["LSN"])
    return int(srv.query("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")[0][1])


def _innodb_files(backup: Path) -> list[Path]:
    out = [p for p in backup.rglob("*.ibd")]
    out += [p for p in backup.iterdir() if p.name.startswith(("ibdata", "undo")) or p.name == "mysql.ibd"]
    return sorted(set(out))


def check_pages_against_live(backup: Path, srv, start_lsn: int, end_lsn: int) -> int:
    """Every backup page equals the live one or the live one is newer; none is newer than ``end_lsn``."""
    checked = 0
    for bfile in _innodb_files(backup):
        rel = bfile.relative_to(backup)
        live = Path(srv.datadir) / rel
        data = bfile.read_bytes()
        info = space_info(data[:65536], srv.flavor)
        ps = info.physical_page_size
        with open(live, "rb") as f:
            now = f.read(len(data))
        assert len(data) % ps == 0, rel
        for no in range(len(data) // ps):
            b = data[no * ps : (no + 1) * ps]
            lsn_b = struct.unpack_from(">Q", b, 16)[0]
            assert lsn_b <= end_lsn, f"{rel} page {no}: LSN {lsn_b} newer than the redo copy end {end_lsn}"
            checked += 1
            if info.space_id == 0 and 64 <= no < 192:
                continue  # doublewrite buffer: copies of other pages
            l_page = now[no * ps : (no + 1) * ps]
            if b != l_page:
                lsn_l = struct.unpack_from(">Q", l_page, 16)[0]
                assert lsn_l > lsn_b, f"{rel} page {no} differs from the live file but is not older ({lsn_b})"
                assert lsn_l > start_lsn, f"{rel} page {no} changed, yet before the backup started"
    return checked


def check_metadata(backup: Path, srv, res) -> None:
    cp = meta.parse_checkpoints((backup / "xtrabackup_checkpoints").read_bytes())
    assert cp.backup_type == "full-backuped"
    assert cp.from_lsn == 0
    assert res.start_lsn <= cp.to_lsn <= cp.last_lsn
    assert cp.last_lsn == res.end_lsn >= res.server_lsn
    assert cp.last_lsn <= _server_lsn(srv)
    info = meta.parse_info((backup / "xtrabackup_info").read_bytes())
    assert info["server_version"] == srv.version
    assert info["innodb_to_lsn"] == str(cp.to_lsn)
    assert "--password" not in info["tool_command"] or "--password=..." in info["tool_command"]
    cnf = meta.parse_backup_my_cnf((backup / "backup-my.cnf").read_bytes())
    assert cnf["innodb_page_size"] == str(srv.query("SELECT @@innodb_page_size")[0][0])
    assert cnf["innodb_data_file_path"].startswith("ibdata1:")
    if srv.query("SELECT @@log_bin")[0][0]:
        binlog = meta.parse_binlog_info((backup / "xtrabackup_binlog_info").read_bytes())
        assert binlog.filename.startswith("binlog.")
        assert binlog.position > 0
    else:
        assert not (backup / "xtrabackup_binlog_info").exists()
    redo = inspect_redo(backup / ("ib_logfile0" if srv.flavor == "mariadb" else "xtrabackup_logfile"))
    assert redo["flavor"] == srv.flavor
    assert redo["checkpoint_lsn"] == res.start_lsn
    assert redo["end_lsn"] >= res.end_lsn if srv.flavor == "mysql" else redo["end_lsn"] == res.end_lsn


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines():
    handler = _Lines()
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler.lines
    log.removeHandler(handler)
    log.setLevel(old)


def test_backup_quiet_server_to_target_dir(server, tmp_path, log_lines):
    target = tmp_path / "backup"
    res = run_backup(_config(server, target_dir=target, parallel=2))
    assert res.flavor == server.flavor
    names = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert {"ibdata1", "sample/t_plain.ibd", "sample/t_compressed.ibd", "sample/t_myisam.MYD", "backup-my.cnf",
            "xtrabackup_checkpoints", "xtrabackup_info", "xtrabackup_binlog_info"} <= names
    assert "ibtmp1" not in names
    assert not any(n.startswith(("binlog.", "#innodb_redo", "#innodb_temp")) for n in names)
    if server.flavor == "mysql":
        assert {"mysql.ibd", "undo_001", "undo_002", "xtrabackup_logfile"} <= names
    else:
        assert {"ib_logfile0", "sample/t_plain.frm", "aria_log_control"} <= names
    assert check_pages_against_live(target, server, res.start_lsn, res.end_lsn) > 100
    check_metadata(target, server, res)
    assert any(line.startswith("[01] Copying ") for line in log_lines)
    assert any(line.strip() == "...done" or line.endswith("...done") for line in log_lines)
    assert f"Transaction log of lsn ({res.start_lsn}) to ({res.end_lsn}) was copied." in log_lines
    assert log_lines[-1] == "completed OK!"
    # Locks are gone: DDL works at once.
    server.execute("CREATE TABLE sample.t_after (id INT PRIMARY KEY) ENGINE=InnoDB")
    server.execute("DROP TABLE sample.t_after")


def _run_pipeline(cmd1: list[str], cmd2: list[str], cwd: Path) -> tuple[int, int, str, str]:
    p1 = subprocess.Popen(cmd1, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=_env())
    p2 = subprocess.Popen(cmd2, stdin=p1.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                          env=_env())
    assert p1.stdout is not None
    p1.stdout.close()
    _, err2 = p2.communicate(timeout=300)
    err1 = p1.stderr.read().decode() if p1.stderr else ""
    p1.wait(timeout=60)
    return p1.returncode, p2.returncode, err1, err2.decode()


def test_backup_stream_then_extract(server, tmp_path):
    out = tmp_path / "extracted"
    rc1, rc2, err1, err2 = _run_pipeline(
        [*INNOSTREAM, "backup", *_cli_conn(server), "--stream", "--parallel", "2"],
        [*INNOSTREAM, "extract", "-C", str(out)], tmp_path)
    assert rc1 == 0, err1
    assert rc2 == 0, err2
    assert ">> log scanned up to (" in err1
    assert "Streaming " in err1
    assert err1.rstrip().endswith("completed OK!")
    cp = meta.parse_checkpoints((out / "xtrabackup_checkpoints").read_bytes())
    start = int(err1.split("Transaction log of lsn (")[1].split(")")[0])
    assert check_pages_against_live(out, server, start, cp.last_lsn) > 100
    assert (out / "sample" / "t_indexed.ibd").is_file()


def _start_on(datadir: Path, kind: str, workdir: Path):
    return start_server(kind, workdir, datadir=datadir, initialize=False)


@pytest.mark.parametrize("kind", ["mariadb10", "mariadb11"])
def test_xbstream_through_mbstream_and_mariadb_backup_prepare(kind, request, tmp_path):
    """Our xbstream goes through MariaDB's own mbstream and mariadb-backup --prepare, and the data is all there."""
    srv = request.getfixturevalue(kind)
    out = tmp_path / "xb"
    out.mkdir()
    rc1, rc2, err1, err2 = _run_pipeline(
        [*INNOSTREAM, "backup", *_cli_conn(srv), "--stream", "--format", "xbstream"],
        ["mbstream", "-x", "-C", str(out)], tmp_path)
    assert rc1 == 0, err1
    assert rc2 == 0, err2
    # The host's mariadb-backup (10.11) prepares 10.11 backups; 11.8's lives in its chroot.
    if kind == "mariadb10":
        prep = subprocess.run(["mariadb-backup", "--prepare", f"--target-dir={out}"], capture_output=True, text=True,
                              timeout=300, check=False)
    else:
        root = "/var/tmp/innostream/sid-mariadb"
        prep = subprocess.run(["chroot", root, "mariadb-backup", "--prepare", f"--target-dir={out}"],
                              capture_output=True, text=True, timeout=300, check=False)
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert "completed OK!" in prep.stderr
    restored = _start_on(out, kind, tmp_path / "restored")
    try:
        for table, rows in SAMPLE_ROWS.items():
            assert restored.query(f"SELECT COUNT(*) FROM sample.{table}")[0][0] == rows
    finally:
        restored.stop()


def test_backup_under_write_load(server, tmp_path, log_lines):
    load = BankLoad(server, accounts=100, threads=2, max_seconds=60, schema="bank_backup")
    load.setup()
    load.start()
    try:
        load.wait_for(30)
        before = load.committed
        res = run_backup(_config(server, target_dir=tmp_path / "b", parallel=2, poll_interval=0.05))
        after = load.committed
    finally:
        stats = load.stop()
    assert stats.committed > before
    assert any(line.startswith(">> log scanned up to (") for line in log_lines)
    assert res.end_lsn >= res.server_lsn > res.start_lsn
    cp = meta.parse_checkpoints((tmp_path / "b" / "xtrabackup_checkpoints").read_bytes())
    assert cp.last_lsn == res.end_lsn
    assert check_pages_against_live(tmp_path / "b", server, res.start_lsn, res.end_lsn) > 100
    # Full circle: prepare (MariaDB 10.11 with MariaDB's own mariadb-backup, the others with innostream prepare
    # running the real server), start a server on the result, check the bank: every transfer committed before
    # the backup started is there, nothing committed after it ended, and the invariants hold.
    if server.kind == "mariadb10":
        prep = subprocess.run(["mariadb-backup", "--prepare", f"--target-dir={tmp_path / 'b'}"],
                              capture_output=True, text=True, timeout=300, check=False)
    else:
        prep = subprocess.run([*INNOSTREAM, "prepare", "--target-dir", str(tmp_path / "b"), "--server-binary",
                               str(server.server_binary)], capture_output=True, text=True, timeout=600,
                              env=_env(), check=False)
    assert prep.returncode == 0, prep.stderr[-3000:]
    restored = _start_on(tmp_path / "b", server.kind, tmp_path / "restored")
    try:
        conn = restored.connect()
        try:
            n = load.check(conn, min_transfers=before, max_transfers=after)
        finally:
            conn.close()
        assert before <= n <= after
        for table, rows in SAMPLE_ROWS.items():
            assert restored.query(f"SELECT COUNT(*) FROM sample.{table}")[0][0] == rows
    finally:
        restored.stop()


def _prepare(srv, target: Path) -> None:
    prep = subprocess.run([*INNOSTREAM, "prepare", "--target-dir", str(target), "--server-binary",
                           str(srv.server_binary)], capture_output=True, text=True, timeout=600, env=_env(),
                          check=False)
    assert prep.returncode == 0, prep.stderr[-3000:]


@pytest.mark.parametrize("lock_ddl", ["full", "reduced"])
def test_backup_during_ddl_churn(server, lock_ddl, tmp_path, log_lines):
    """Tables created, renamed, rebuilt and dropped around the backup: DDL waits for the backup lock (full) or
    runs on during the copy and is settled at the end (reduced), and the restored copy has every table whole."""
    load = DdlLoad(server, keep=6, max_seconds=60)
    load.setup()
    load.start()
    try:
        load.wait_for(4)
        # reduced: throttled, so the copy lasts long enough for DDL steps to run during it
        res = run_backup(_config(server, target_dir=tmp_path / "b", lock_ddl=lock_ddl,
                                 throttle=20e6 if lock_ddl == "reduced" else None))
        steps_at_end = load.committed
        load.wait_for(load.committed + 1, timeout=30)  # DDL resumes after the backup
    finally:
        stats = load.stop()
    assert stats.errors == 0, stats.last_error
    assert res.end_lsn >= res.server_lsn
    if lock_ddl == "reduced":
        assert res.ddl_settled > 0, "no DDL ran during the copy: the test proves nothing"
        assert steps_at_end > 4
    _prepare(server, tmp_path / "b")
    restored = _start_on(tmp_path / "b", server.kind, tmp_path / "restored")
    try:
        conn = restored.connect()
        try:
            assert check_ddl(conn) >= 3
        finally:
            conn.close()
    finally:
        restored.stop()


def _ddl_works(srv) -> None:
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 5")
            cur.execute("CREATE TABLE sample.t_probe (id INT PRIMARY KEY) ENGINE=InnoDB")
            cur.execute("DROP TABLE sample.t_probe")
    finally:
        conn.close()


def _consumer_free(srv) -> None:
    if srv.flavor == "mysql":
        c = RedoConsumer({"unix_socket": str(srv.socket), "user": "root", "password": "", "autocommit": True})
        c.close()


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("innostream: error:")]


def _signal_mid_stream(srv, tmp_path: Path, sig: int, expect: str) -> None:
    proc = subprocess.Popen([*INNOSTREAM, "backup", *_cli_conn(srv), "--stream", "--compress", "none",
                             "--parallel", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert proc.stdout is not None
    got = b""
    while len(got) < (1 << 20):  # read slowly: the backup is mid-copy, blocked on the pipe
        chunk = proc.stdout.read1(65536)
        if not chunk:
            break
        got += chunk
        time.sleep(0.02)
    assert proc.poll() is None, "the backup should still be running"
    proc.send_signal(sig)
    rest = proc.stdout.read()  # keep draining so the writer can notice
    proc.wait(timeout=120)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 130, stderr[-2000:]
    assert len(_error_lines(stderr)) == 1, stderr[-2000:]
    assert expect in _error_lines(stderr)[0]
    assert "Traceback" not in stderr
    assert "completed OK!" not in stderr
    _ddl_works(srv)
    _consumer_free(srv)
    partial = tmp_path / "partial.isa"
    partial.write_bytes(got + rest)
    ver = subprocess.run([*INNOSTREAM, "verify", str(partial)], capture_output=True, text=True, env=_env(),
                         timeout=120, check=False)
    assert ver.returncode != 0


def test_sigint_mid_stream_exits_nonzero_and_unlocks(server, tmp_path):
    _signal_mid_stream(server, tmp_path, signal.SIGINT, "interrupted")


def test_sigterm_mid_stream_exits_nonzero_and_unlocks(mysql9, tmp_path):
    _signal_mid_stream(mysql9, tmp_path, signal.SIGTERM, "SIGTERM")


def test_no_lock_warns_and_completes(mariadb10, tmp_path, log_lines):
    res = run_backup(_config(mariadb10, target_dir=tmp_path / "b", lock=False))
    assert res.end_lsn >= res.server_lsn
    assert any(line.startswith("--no-lock: DDL is not blocked") for line in log_lines)
    assert not any("BACKUP STAGE" in line for line in log_lines)
    assert (tmp_path / "b" / "xtrabackup_checkpoints").is_file()


def test_closed_pipe_exits_nonzero_and_unlocks(server, tmp_path):
    p1 = subprocess.Popen([*INNOSTREAM, "backup", *_cli_conn(server), "--stream"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=_env())
    p2 = subprocess.Popen(["head", "-c", "1000"], stdin=p1.stdout, stdout=subprocess.PIPE)
    assert p1.stdout is not None
    p1.stdout.close()
    head_out, _ = p2.communicate(timeout=60)
    p1.wait(timeout=120)
    stderr = p1.stderr.read().decode() if p1.stderr else ""
    assert len(head_out) == 1000
    assert p1.returncode == 130, stderr[-2000:]
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr[-2000:]
    assert "pipe closed" in lines[0]
    assert "Traceback" not in stderr
    _ddl_works(server)
    _consumer_free(server)


def test_existing_file_in_target_is_errno_17(mariadb10, tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "ibdata1").write_bytes(b"precious")
    res = subprocess.run([*INNOSTREAM, "backup", *_cli_conn(mariadb10), "--target-dir", str(target)],
                         capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert res.returncode == 6
    lines = _error_lines(res.stderr)
    assert len(lines) == 1, res.stderr[-2000:]
    assert "[Errno 17] File exists" in lines[0]
    assert str(target / "ibdata1") in lines[0]
    assert (target / "ibdata1").read_bytes() == b"precious"
    assert not (target / "xtrabackup_checkpoints").exists()
    _ddl_works(mariadb10)


def test_relative_target_dir_is_created_under_cwd(mariadb10, tmp_path):
    res = subprocess.run([*INNOSTREAM, "backup", *_cli_conn(mariadb10), "--target-dir", "rel/backup"],
                         capture_output=True, text=True, env=_env(), timeout=120, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "rel" / "backup" / "xtrabackup_checkpoints").is_file()
    assert (tmp_path / "rel" / "backup" / "ibdata1").is_file()


def test_wrong_datadir_is_refused(mariadb10, tmp_path):
    (tmp_path / "not-data").mkdir()
    res = subprocess.run([*INNOSTREAM, "backup", "--socket", str(mariadb10.socket), "--user", "root",
                          "--datadir", str(tmp_path / "not-data"), "--target-dir", str(tmp_path / "b")],
                         capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert res.returncode == 4
    assert "is not the server's datadir" in res.stderr
    assert not (tmp_path / "b").exists()


def test_password_user_from_defaults_file_and_masking(mariadb10, tmp_path):
    mariadb10.execute("CREATE USER IF NOT EXISTS 'bk'@'localhost' IDENTIFIED BY 's3cret-pw'")
    mariadb10.execute("GRANT ALL ON *.* TO 'bk'@'localhost'")
    cnf = tmp_path / "my.cnf"
    cnf.write_text(f"[client]\nuser = bk\npassword = s3cret-pw\nsocket = {mariadb10.socket}\n")
    res = subprocess.run([*INNOSTREAM, "backup", "--defaults-file", str(cnf), "--target-dir", str(tmp_path / "a")],
                         capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    for n, form in enumerate((["--password", "s3cret-pw"], ["--password=s3cret-pw"], ["-ps3cret-pw"])):
        target = tmp_path / f"b{n}"
        res = subprocess.run([*INNOSTREAM, "backup", "--socket", str(mariadb10.socket), "--user", "bk", *form,
                              "--target-dir", str(target)], capture_output=True, text=True, env=_env(),
                             timeout=120, check=False)
        assert res.returncode == 0, res.stderr[-2000:]
        info = (target / "xtrabackup_info").read_text()
        assert "s3cret" not in info
        assert "tool_command = backup --socket" in info
    bad = subprocess.run([*INNOSTREAM, "backup", "--socket", str(mariadb10.socket), "--user", "bk",
                          "--password=wrong", "--target-dir", str(tmp_path / "c")], capture_output=True, text=True,
                         env=_env(), timeout=120, check=False)
    assert bad.returncode == 4
    assert _error_lines(bad.stderr)[0].startswith("innostream: error: cannot connect to the server")
    assert "wrong" not in bad.stderr


@pytest.mark.parametrize("kind", ["mariadb10", "mysql9"])
def test_files_outside_the_datadir(kind, fresh_server, tmp_path):
    """System tablespace in two files under their own home, undo tablespaces and redo in their own directories:
    found from the server's variables, placed at the backup root, prepared and started."""
    home, undo, logs = tmp_path / "home", tmp_path / "undo", tmp_path / "logs"
    for d in (home, undo, logs):
        d.mkdir()
    opts = [f"--innodb-data-home-dir={home}", "--innodb-data-file-path=ibdata1:12M;ibdata2:12M:autoextend",
            f"--innodb-undo-directory={undo}", f"--innodb-log-group-home-dir={logs}"]
    if kind == "mariadb10":
        opts.append("--innodb-undo-tablespaces=2")
    srv = fresh_server(kind, options=opts, sample=True)
    assert (home / "ibdata2").is_file()
    assert sorted(p.name for p in undo.iterdir() if p.name.startswith("undo"))
    target = tmp_path / "b"
    res = run_backup(_config(srv, target_dir=target))
    names = {p.name for p in target.iterdir()}
    assert {"ibdata1", "ibdata2"} <= names
    assert {p.name for p in undo.iterdir() if p.name.startswith("undo")} <= names
    check_metadata(target, srv, res)
    assert "ibdata1:12M;ibdata2:12M:autoextend" in (target / "backup-my.cnf").read_text()
    # ibdata2's pages are numbered after ibdata1's: every page validated with the right number
    assert check_pages_against_live_files(target, srv, {"ibdata1": home / "ibdata1", "ibdata2": home / "ibdata2"})
    if kind == "mariadb10":
        prep = subprocess.run(["mariadb-backup", "--prepare", f"--target-dir={target}"], capture_output=True,
                              text=True, timeout=300, check=False)
        assert prep.returncode == 0, prep.stderr[-3000:]
    else:
        _prepare(srv, target)
    restored = start_server(kind, tmp_path / "restored", datadir=target, initialize=False,
                            options=["--innodb-data-file-path=ibdata1:12M;ibdata2:12M:autoextend"]
                            + (["--innodb-undo-tablespaces=2"] if kind == "mariadb10" else []))
    try:
        for table, rows in SAMPLE_ROWS.items():
            assert restored.query(f"SELECT COUNT(*) FROM sample.{table}")[0][0] == rows
    finally:
        restored.stop()


def check_pages_against_live_files(backup: Path, srv, files: dict[str, Path]) -> int:
    """Backup pages of the system tablespace files carry the page numbers of their position in the space."""
    from innostream.formats.buf0checksum import validate_pages

    info = space_info((backup / "ibdata1").read_bytes()[:65536], srv.flavor)
    first = 0
    checked = 0
    for name in ("ibdata1", "ibdata2"):
        data = (backup / name).read_bytes()
        assert validate_pages(data, info, first) == [], name
        assert files[name].stat().st_size >= len(data)
        checked += len(data) // info.physical_page_size
        first += len(data) // info.physical_page_size
    return checked


@pytest.mark.parametrize("kind", ["mariadb10", "mariadb11"])
def test_mariadb_page_compressed_table(kind, request, tmp_path):
    """PAGE_COMPRESSED tables (holes punched in the file, compressed pages with their own checksum layout) copy,
    validate, prepare with mariadb-backup and read back."""
    srv = request.getfixturevalue(kind)
    srv.execute("CREATE TABLE sample.t_pc (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB PAGE_COMPRESSED=1")
    try:
        srv.execute("INSERT INTO sample.t_pc SELECT seq, REPEAT(CONCAT('row ', seq), 20) FROM sample.seq_1_to_3000")
        conn = srv.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("FLUSH TABLES sample.t_pc FOR EXPORT")  # pages on disk, compressed
                cur.execute("UNLOCK TABLES")
        finally:
            conn.close()
        out = tmp_path / "xb"
        out.mkdir()
        rc1, rc2, err1, err2 = _run_pipeline(
            [*INNOSTREAM, "backup", *_cli_conn(srv), "--stream", "--format", "xbstream"],
            ["mbstream", "-x", "-C", str(out)], tmp_path)
        assert rc1 == 0, err1
        assert rc2 == 0, err2
        assert "corruption" not in err1
    finally:
        srv.execute("DROP TABLE sample.t_pc")
    tool = ["mariadb-backup"] if kind == "mariadb10" else ["chroot", "/var/tmp/innostream/sid-mariadb",
                                                          "mariadb-backup"]
    prep = subprocess.run([*tool, "--prepare", f"--target-dir={out}"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert prep.returncode == 0, prep.stderr[-3000:]
    restored = _start_on(out, kind, tmp_path / "restored")
    try:
        assert restored.query("SELECT COUNT(*), SUM(LENGTH(v)) FROM sample.t_pc")[0][0] == 3000
    finally:
        restored.stop()


def test_mariadb_encrypted_tables(fresh_server, tmp_path):
    """Data-at-rest encryption: pages are copied encrypted and validated by their post-encryption checksum;
    backup-my.cnf carries the key plugin's settings, so mariadb-backup --prepare can load it by itself."""
    keys = tmp_path / "keys.txt"
    keys.write_text("1;" + "a1" * 32 + "\n")
    plugin = ["--plugin-load-add=file_key_management", f"--file-key-management-filename={keys}",
              "--innodb-encrypt-tables=ON"]
    srv = fresh_server("mariadb10", options=plugin)
    srv.execute("CREATE DATABASE e")
    srv.execute("CREATE TABLE e.t (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB ENCRYPTED=YES")
    srv.execute("INSERT INTO e.t SELECT seq, REPEAT('secret', 30) FROM e.seq_1_to_4000")
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("FLUSH TABLES e.t FOR EXPORT")
            cur.execute("UNLOCK TABLES")
    finally:
        conn.close()
    assert b"secretsecret" not in (Path(srv.datadir) / "e" / "t.ibd").read_bytes()
    target = tmp_path / "b"
    res = subprocess.run([*INNOSTREAM, "backup", *_cli_conn(srv), "--target-dir", str(target)],
                         capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    cnf = meta.parse_backup_my_cnf((target / "backup-my.cnf").read_bytes())
    assert cnf["plugin_load"] == "file_key_management=file_key_management"
    assert cnf["file_key_management_filename"] == str(keys)
    prep = subprocess.run(["mariadb-backup", "--prepare", f"--target-dir={target}"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert "Loading encryption plugin" in prep.stderr
    restored = start_server("mariadb10", tmp_path / "restored", datadir=target, initialize=False, options=plugin)
    try:
        assert restored.query("SELECT COUNT(*) FROM e.t WHERE v LIKE 'secret%'")[0][0] == 4000
    finally:
        restored.stop()


def test_interrupt_during_target_dir_copy_leaves_no_backup(server, tmp_path):
    """Ctrl-C while files are being copied into a directory (raised from the main thread's progress tick, where a
    real SIGINT lands): Interrupted, no xtrabackup_checkpoints, locks released, consumer unregistered."""
    from innostream.errors import Interrupted

    def on_event(name, value):
        raise KeyboardInterrupt

    target = tmp_path / "b"
    with pytest.raises(Interrupted):
        run_backup(_config(server, target_dir=target, parallel=1), on_event=on_event)
    assert target.is_dir()
    assert not (target / "xtrabackup_checkpoints").exists()
    assert not (target / "xtrabackup_info").exists()
    _ddl_works(server)
    _consumer_free(server)
    assert not [t for t in threading.enumerate() if t.name.startswith(("copy-", "redo-copier"))]


def test_killed_lock_session_fails_the_backup(server, tmp_path):
    """A DBA kills our connections mid-copy: the locks are gone, so the backup must fail, never finish quietly."""
    from innostream.errors import SourceError

    killed: list[int] = []

    def on_event(name, value):
        if killed:
            return
        conn = server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'root' AND ID <> "
                            "CONNECTION_ID() AND COMMAND <> 'Daemon'")
                for (pid,) in cur.fetchall():
                    cur.execute(f"KILL CONNECTION {int(pid)}")
                    killed.append(pid)
        finally:
            conn.close()

    target = tmp_path / "b"
    with pytest.raises(SourceError):
        run_backup(_config(server, target_dir=target), on_event=on_event)
    assert killed
    assert not (target / "xtrabackup_checkpoints").exists()
    _ddl_works(server)
    _consumer_free(server)


def test_sigint_while_waiting_for_the_backup_lock_leaves_nothing_queued(mariadb10, tmp_path):
    """Ctrl-C while BACKUP STAGE waits (another session holds LOCK TABLES ... WRITE): the waiting statement must not
    stay queued on the server after we exit (it would hold up DDL for lock_wait_timeout)."""
    holder = mariadb10.connect()
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLES sample.t_plain WRITE")
        proc = subprocess.Popen([*INNOSTREAM, "backup", *_cli_conn(mariadb10), "--target-dir", str(tmp_path / "b")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
        deadline = time.monotonic() + 30
        while not mariadb10.query("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP STAGE%'"):
            assert time.monotonic() < deadline, "the backup never waited for its lock"
            assert proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.returncode == 130, stderr[-2000:]
        assert len(_error_lines(stderr)) == 1, stderr[-2000:]
        deadline = time.monotonic() + 5
        while mariadb10.query("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP STAGE%'"):
            assert time.monotonic() < deadline, "our BACKUP STAGE statement is still queued on the server"
            time.sleep(0.05)
    finally:
        with holder.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        holder.close()
    _ddl_works(mariadb10)


@pytest.mark.parametrize(("kind", "option"), [("mysql9", "--innodb-redo-log-capacity=8M"),
                                              ("mariadb10", "--innodb-log-file-size=8M")])
def test_small_redo_slow_stream_heavy_writes(kind, option, fresh_server, tmp_path):
    """An 8 MB redo log, a stream read slowly and a writer pushing several times the log's capacity through it
    during the backup: the redo copy is spooled locally, so the log copier never waits for the reader, the
    server neither overwrites uncopied redo nor stalls, and the backup completes and restores."""
    srv = fresh_server(kind, options=[option], sample=True)
    srv.execute("CREATE DATABASE w")
    srv.execute("CREATE TABLE w.blobs (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB NOT NULL) ENGINE=InnoDB")
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        conn = srv.connect()
        try:
            with conn.cursor() as cur:
                while not stop.is_set() and len(written) < 30:
                    cur.execute("INSERT INTO w.blobs (b) VALUES (REPEAT('z', 1000000))")
                    written.append(1)
                    # ~6 MB/s of redo: an 8 MB log then holds over a second of it, which a log copier reading
                    # local files keeps up with even on a busy machine. (Faster than the log copier can read,
                    # MariaDB overwrites redo whatever the tool: that fails cleanly, see the redo copier tests.)
                    time.sleep(0.15)
        finally:
            conn.close()

    archive = tmp_path / "backup.isa"
    proc = subprocess.Popen([*INNOSTREAM, "backup", *_cli_conn(srv), "--stream", "--compress", "none",
                             "--parallel", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert proc.stdout is not None
    with open(archive, "wb") as out:
        while True:
            chunk = proc.stdout.read1(256 << 10)
            if not chunk:
                break
            out.write(chunk)
            time.sleep(0.02)  # about 12 MB/s
    proc.wait(timeout=300)
    stop.set()
    t.join(timeout=60)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 0, stderr[-3000:]
    lsns = [int(x.split(")")[0]) for x in stderr.split("Transaction log of lsn (")[1].split(" to (")]
    assert lsns[1] - lsns[0] > 8 << 20, "the backup should span more redo than the log holds"
    target = tmp_path / "b"
    ext = subprocess.run([*INNOSTREAM, "extract", "-C", str(target), str(archive)], capture_output=True, text=True,
                         env=_env(), timeout=300, check=False)
    assert ext.returncode == 0, ext.stderr[-2000:]
    _prepare(srv, target)
    restored = _start_on(target, kind, tmp_path / "restored")
    try:
        n, bad = restored.query("SELECT COUNT(*), SUM(LENGTH(b) <> 1000000) FROM w.blobs")[0]
        assert 0 < n <= len(written)
        assert bad == 0
        for table, rows in SAMPLE_ROWS.items():
            assert restored.query(f"SELECT COUNT(*) FROM sample.{table}")[0][0] == rows
    finally:
        restored.stop()


def test_target_inside_the_datadir_is_refused(mariadb10, tmp_path):
    target = Path(mariadb10.datadir) / "mybackup"
    res = subprocess.run([*INNOSTREAM, "backup", *_cli_conn(mariadb10), "--target-dir", str(target)],
                         capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert res.returncode == 6
    assert "inside the server's directories" in res.stderr
    assert not target.exists()
