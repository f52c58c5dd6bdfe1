"""The backup must never hurt the server it reads (issue 14, "Never stall the production server" and the dead
session / dead server / invalid redo / all-zero page 0 items). Real servers, real processes, real files.

* MySQL's redo log consumer holds back the server's writers while our copy lags; a backup that is stopped (Ctrl-Z,
  SIGSTOP, a frozen container) must not hold them longer than ``--redo-consumer-max-lag-seconds``. (A stopped
  *reader* of the stream does not hold them: the redo copy is spooled locally and keeps advancing; measured.)
* Every privilege the backup needs is checked before anything is copied.
* A KILLed backup session or a dead server stops the backup within seconds, exit 4, in plain words.
* A MySQL redo block that stays invalid (valid log after it) fails the copy after a bound instead of waiting forever.
* An all-zero page 0 fails the backup and ``verify`` (a MariaDB tablespace not flushed yet only warns).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

INNOSTREAM = [sys.executable, "-m", "innostream"]
REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _cli_conn(srv) -> list[str]:
    return ["--socket", str(srv.socket), "--user", "root", "--datadir", str(srv.datadir)]


class _Stderr:
    """Collects a child's stderr in a thread so the child never blocks on it."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._t.start()

    def _run(self, stream) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"{text!r} not logged:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.05)

    def text(self) -> str:
        self._t.join(timeout=30)
        return "\n".join(self.lines)


def test_stopped_backup_never_stalls_mysql_writers(fresh_server, tmp_path):
    """``backup --stream | reader`` with the backup stopped (SIGSTOP) for 20 s while a client writes 1 MB rows into
    an 8 MB redo log: the redo consumer must let go after the bound (2 s here) instead of holding every writer of
    the server for the whole pause. The longest single INSERT is measured; the old code blocks it ~20 s."""
    srv = fresh_server("mysql9", options=["--innodb-redo-log-capacity=8M"])
    srv.execute("CREATE DATABASE w")
    srv.execute("CREATE TABLE w.fill (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB NOT NULL) ENGINE=InnoDB")
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            for _ in range(120):  # ~120 MB to copy: the stream is mid-copy when its reader stops
                cur.execute("INSERT INTO w.fill (b) VALUES (RANDOM_BYTES(1024) )")
                cur.execute("UPDATE w.fill SET b = REPEAT(b, 1000) WHERE id = LAST_INSERT_ID()")
    finally:
        conn.close()
    srv.execute("CREATE TABLE w.t (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB NOT NULL) ENGINE=InnoDB")

    archive = tmp_path / "b.isa"
    with open(archive, "wb") as out:
        backup = subprocess.Popen([*INNOSTREAM, "backup", *_cli_conn(srv), "--stream", "--compress", "none",
                                   "--parallel", "1", "--redo-consumer-max-lag-seconds", "2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        reader = subprocess.Popen(["cat"], stdin=backup.stdout, stdout=out)
        assert backup.stdout is not None
        backup.stdout.close()
        err = _Stderr(backup.stderr)
        stalls: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            c = srv.connect()
            try:
                with c.cursor() as cur:
                    while not stop.is_set():
                        t0 = time.monotonic()
                        cur.execute("INSERT INTO w.t (b) VALUES (REPEAT('z', 1000000))")
                        stalls.append(time.monotonic() - t0)
                        cur.execute("DELETE FROM w.t WHERE id + 5 < LAST_INSERT_ID()")
            finally:
                c.close()

        try:
            err.wait_for("Registered as redo log consumer", timeout=120)
            err.wait_for("Streaming", timeout=120)
            os.kill(backup.pid, signal.SIGSTOP)
            t = threading.Thread(target=writer, daemon=True)
            t.start()
            time.sleep(20)
            assert backup.poll() is None, "the backup should still be stopped"
        finally:
            os.kill(backup.pid, signal.SIGCONT)
        stop.set()
        t.join(timeout=120)
        backup.wait(timeout=300)
        reader.wait(timeout=60)
    stderr = err.text()
    assert stalls, "the writer never committed"
    longest = max(stalls)
    print(f"longest INSERT {longest:.1f} s; backup exit {backup.returncode}")
    assert longest < 15, f"a writer waited {longest:.1f} s behind the redo consumer\n{stderr[-3000:]}"
    assert any("unregistered the redo log consumer" in line and "--redo-consumer-max-lag-seconds" in line
               for line in stderr.splitlines()), stderr[-3000:]
    # Let go of the consumer, the backup either still has all the redo (exit 0, and the stream verifies) or says
    # that redo was lost (exit 5): never "completed OK!" over missing redo.
    assert backup.returncode in (0, 5), stderr[-3000:]
    if backup.returncode == 0:
        ver = subprocess.run([*INNOSTREAM, "verify", str(archive)], capture_output=True, text=True, env=_env(),
                             timeout=300, check=False)
        assert ver.returncode == 0, ver.stderr[-2000:]
    else:
        assert "completed OK!" not in stderr
        assert "overwritten" in stderr or "removed" in stderr or "mismatch" in stderr


def _user_backup(srv, tmp_path: Path, user: str, grants: list[str]) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A backup by a real user holding only ``grants`` (into a fresh --target-dir)."""
    srv.execute(f"DROP USER IF EXISTS '{user}'@'localhost'")
    srv.execute(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw'")
    for grant in grants:
        srv.execute(f"GRANT {grant} TO '{user}'@'localhost'")
    cnf = tmp_path / f"{user}.cnf"
    cnf.write_text(f"[client]\nuser={user}\npassword=pw\nsocket={srv.socket}\n")
    cnf.chmod(0o600)
    target = tmp_path / f"b-{user}-{srv.kind}"
    try:
        res = subprocess.run([*INNOSTREAM, "backup", "--defaults-file", str(cnf), "--datadir", str(srv.datadir),
                              "--target-dir", str(target)], capture_output=True, text=True, env=_env(), timeout=300,
                             check=False)
    finally:
        srv.execute(f"DROP USER IF EXISTS '{user}'@'localhost'")
    return res, target


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("innostream: error:")]


def test_missing_reload_is_found_before_copying_mysql(mysql9, tmp_path):
    """MySQL, a user with everything but RELOAD: today LOCK INSTANCE FOR BACKUP and the consumer work, every file
    is copied, and only FLUSH ... at the end fails. It must fail first, naming the privilege, exit 4."""
    res, target = _user_backup(mysql9, tmp_path, "norel", [
        "BACKUP_ADMIN, PROCESS, REPLICATION CLIENT, SELECT ON *.*"])
    assert res.returncode == 4, res.stderr[-3000:]
    errors = _error_lines(res.stderr)
    assert len(errors) == 1, res.stderr[-3000:]
    assert "lacks RELOAD" in errors[0]
    assert "Copying" not in res.stderr, res.stderr[-3000:]
    assert "Log copying started" not in res.stderr
    assert not (target / "xtrabackup_checkpoints").exists()


def test_missing_binlog_monitor_is_found_before_copying_mariadb(mariadb10, tmp_path):
    """MariaDB with the binlog on, a user without BINLOG MONITOR: SHOW MASTER STATUS at the very end fails today,
    after the copy."""
    res, _ = _user_backup(mariadb10, tmp_path, "nomon", ["RELOAD, PROCESS, SELECT ON *.*"])
    assert res.returncode == 4, res.stderr[-3000:]
    errors = _error_lines(res.stderr)
    assert len(errors) == 1, res.stderr[-3000:]
    assert "lacks BINLOG MONITOR" in errors[0]
    assert "Copying" not in res.stderr, res.stderr[-3000:]


def test_privileges_the_backup_needs_are_enough(mysql9, mariadb10, tmp_path):
    """The documented grants (docs/BACKUP.md) are enough: the check does not refuse a user that can back up."""
    for srv, grants in ((mysql9, ["BACKUP_ADMIN, RELOAD, PROCESS, SELECT ON *.*"]),
                        (mariadb10, ["RELOAD, PROCESS, BINLOG MONITOR, SELECT ON *.*"])):
        res, target = _user_backup(srv, tmp_path, "okuser", grants)
        assert res.returncode == 0, res.stderr[-3000:]
        assert (target / "xtrabackup_checkpoints").exists()


def _slow_stream_backup(srv, tmp_path: Path):
    """A streamed backup read at ~6 MB/s (so it lasts well over 10 s); returns (process, stderr collector, reader
    thread, bytes read so far)."""
    proc = subprocess.Popen([*INNOSTREAM, "backup", *_cli_conn(srv), "--stream", "--compress", "none",
                             "--parallel", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    err = _Stderr(proc.stderr)
    got = [0]

    def read() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(64 << 10):
            got[0] += len(chunk)
            time.sleep(0.01)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return proc, err, t, got


def _fill(srv, mb: int) -> None:
    srv.execute("CREATE DATABASE IF NOT EXISTS big")
    srv.execute("CREATE TABLE big.t (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB NOT NULL) ENGINE=InnoDB")
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            for _ in range(mb):
                cur.execute("INSERT INTO big.t (b) VALUES (REPEAT(MD5(RAND()), 32768))")
    finally:
        conn.close()


def test_killed_backup_connection_stops_the_backup_at_once_mariadb(fresh_server, tmp_path):
    """MariaDB 10.11: a DBA KILLs the backup's connection 2 s into a backup that needs 15 s or more: its BACKUP
    STAGE locks are gone (DDL would get through), so the backup must stop within seconds with exit 4 and say so,
    not copy on and fail at the end with "(0)"."""
    srv = fresh_server("mariadb10")
    _fill(srv, 100)
    proc, err, reader, got = _slow_stream_backup(srv, tmp_path)
    try:
        err.wait_for("Streaming", timeout=120)
        time.sleep(2)
        ids = srv.query("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND "
                        "USER = 'root'")
        assert len(ids) == 1, ids  # the backup's one connection (MariaDB has no redo consumer)
        srv.execute(f"KILL CONNECTION {int(ids[0][0])}")
        killed = time.monotonic()
        proc.wait(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=30)
    stderr = err.text()
    assert proc.returncode == 4, stderr[-3000:]
    errors = _error_lines(stderr)
    assert len(errors) == 1, stderr[-3000:]
    assert "the backup's connection was killed; DDL was no longer blocked" in errors[0]
    assert "Traceback" not in stderr
    assert got[0] < 60 << 20, "the backup copied on after its connection was killed"
    assert took < 30, f"noticed {took:.1f} s after the KILL"


def test_dead_server_stops_the_backup_at_once(fresh_server, tmp_path):
    """kill -9 of the server mid-backup: exit 4, "the server went away", within seconds (not after the copy)."""
    srv = fresh_server("mariadb10")
    _fill(srv, 100)
    proc, err, reader, got = _slow_stream_backup(srv, tmp_path)
    try:
        err.wait_for("Streaming", timeout=120)
        time.sleep(2)
        srv.kill()
        killed = time.monotonic()
        proc.wait(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=30)
    stderr = err.text()
    assert proc.returncode == 4, stderr[-3000:]
    errors = _error_lines(stderr)
    assert len(errors) == 1, stderr[-3000:]
    assert "the server went away" in errors[0]
    assert "Traceback" not in stderr
    assert got[0] < 60 << 20, "the backup copied on after the server died"
    assert took < 30, f"noticed {took:.1f} s after the server died"


def test_mysql_block_that_stays_invalid_fails_the_copy_in_bounded_time(tmp_path):
    """A real MySQL 9.7 redo log (tests/test_redo_copier's sample) with one block damaged after the checkpoint and
    valid log after it: while the backup copies (no stop() yet) the copier must not wait at that block forever
    (its redo consumer would hold the server's writers): it fails with Corrupt (exit 3) after its stall bound."""
    from innostream.errors import Corrupt
    from innostream.families import family
    from innostream.formats import log0files_io as my

    from tests.test_redo_copier import place, sample_image

    image, meta = sample_image("mysql-9.7")
    start = my.parse_file_header(image[:512]).start_lsn
    bad_lsn = my.align_down(meta["server_status"]["last_checkpoint_at"]) + 512
    image[my.lsn_to_offset(start, bad_lsn) + 100] ^= 0x01
    advanced: list[int] = []
    copier = family("mysql").open_redo_copier(place(image, meta, tmp_path), lambda b: None, poll_interval=0.01,
                                              advance=advanced.append)
    copier.stall_timeout = 1.0
    copier.start()
    try:
        deadline = time.monotonic() + 30
        while copier.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        err = copier.error
        assert isinstance(err, Corrupt), f"the copier still waits at lsn {copier.scanned_lsn} ({copier.frontier})"
        assert "stays invalid" in err.message
        assert err.exit_code == 3
        assert err.lsn == bad_lsn
        assert max(advanced, default=0) <= bad_lsn  # never told the server more than was copied
    finally:
        copier.abort()


def test_zeroed_page0_fails_the_backup_mysql(fresh_server, tmp_path):
    """MySQL 9.7: a tablespace whose page 0 was zeroed on disk (its other pages intact) used to be copied and pass;
    InnoDB refuses it ("Header page consists of zero bytes"). The backup must fail with exit 3 naming it."""
    srv = fresh_server("mysql9")
    srv.execute("CREATE DATABASE z")
    srv.execute_script(["CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB",
                        "INSERT INTO t SELECT n, REPEAT('v', 200) FROM (WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL "
                        "SELECT n + 1 FROM s WHERE n < 1000) SELECT n FROM s) x",
                        "FLUSH TABLES t FOR EXPORT", "UNLOCK TABLES"], database="z")
    path = Path(srv.datadir) / "z" / "t.ibd"
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(16384), 0)
    finally:
        os.close(fd)
    target = tmp_path / "b"
    res = subprocess.run([*INNOSTREAM, "backup", *_cli_conn(srv), "--target-dir", str(target)], capture_output=True,
                         text=True, env=_env(), timeout=300, check=False)
    assert res.returncode == 3, res.stderr[-3000:]
    errors = _error_lines(res.stderr)
    assert len(errors) == 1, res.stderr[-3000:]
    assert "page 0 is all zero" in errors[0]
    assert str(path) in errors[0]
    assert not (target / "xtrabackup_checkpoints").exists()


def test_new_mariadb_table_with_page0_not_yet_flushed_is_not_refused(fresh_server, tmp_path):
    """MariaDB writes page 0 of a new .ibd lazily: a backup right after CREATE TABLE must not fail over it (it warns
    if it still finds the file all zero; the redo copy rebuilds it)."""
    srv = fresh_server("mariadb10")
    srv.execute("CREATE DATABASE n")
    for i in range(5):
        srv.execute(f"CREATE TABLE n.t{i} (id INT PRIMARY KEY) ENGINE=InnoDB")
    target = tmp_path / "b"
    res = subprocess.run([*INNOSTREAM, "backup", *_cli_conn(srv), "--target-dir", str(target)], capture_output=True,
                         text=True, env=_env(), timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (target / "n" / "t0.ibd").exists()
    print("all-zero new tablespaces warned about:", res.stderr.count("every page is zero"))


def _archive(path: Path, flavor: str, members: dict[str, bytes]) -> None:
    from innostream.archive import ArchiveWriter

    with open(path, "wb") as out:
        w = ArchiveWriter(out, meta={"flavor": flavor, "server_version": "test"}, compress=False)
        for name, data in members.items():
            fid = w.begin_file(name)
            if data.count(0) != len(data):
                w.write(fid, 0, data)
            w.end_file(fid, len(data))
        w.close({"flavor": flavor})


def test_verify_reports_a_zero_page0(mysql9, tmp_path):
    """``verify`` of an archive holding a real MySQL tablespace whose page 0 is zeroed: exit 3 (it said OK). A
    MariaDB all-zero tablespace (a new, unflushed one) is a warning; a MySQL one an error."""
    real = (Path(mysql9.datadir) / "sample" / "t_plain.ibd").read_bytes()
    cases = [("mysql", "db/t.ibd", bytes(16384) + real[16384:], 3),
             ("mysql", "db/t.ibd", bytes(len(real)), 3),
             ("mariadb", "db/t.ibd", bytes(65536), 0)]
    for n, (flavor, name, data, code) in enumerate(cases):
        archive = tmp_path / f"a{n}.isa"
        _archive(archive, flavor, {name: data, "db/ok.ibd": real} if flavor == "mysql" else {name: data})
        res = subprocess.run([*INNOSTREAM, "verify", str(archive)], capture_output=True, text=True, env=_env(),
                             timeout=120, check=False)
        assert res.returncode == code, (n, res.stderr[-2000:])
        if code:
            assert "page 0 is all zero" in res.stderr, res.stderr[-2000:]
        else:
            assert "every page is zero" in res.stderr, res.stderr[-2000:]
