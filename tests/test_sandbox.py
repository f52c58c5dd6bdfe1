"""The test servers themselves: each kind starts, is the version we expect, holds the sample data, and survives
stop/kill/restart the way a real server does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tools.load import BankLoad, DdlLoad, InvariantViolation, check_ddl, sysbench_prepare, sysbench_run
from tools.sandbox import KINDS, SAMPLE_ROWS, SandboxError, Server, attach, start_server, table_checksums

EXPECTED = {"mariadb10": ("mariadb", "10.11."), "mysql9": ("mysql", "9.7."), "mariadb11": ("mariadb", "11.8.")}


def test_version_and_flavor(server: Server) -> None:
    flavor, prefix = EXPECTED[server.kind]
    assert server.flavor == flavor
    (version,) = server.query("SELECT VERSION()")[0]
    assert version.startswith(prefix), version
    assert server.version == version
    assert ("MariaDB" in version) == (flavor == "mariadb")


def test_sample_schema(server: Server) -> None:
    sums = table_checksums(server)
    assert {t: c for t, (c, _) in sums.items()} == SAMPLE_ROWS
    engines = dict(server.query("SELECT table_name, engine FROM information_schema.tables WHERE table_schema='sample'"))
    assert engines["t_myisam"] == "MyISAM"
    assert engines["t_plain"] == "InnoDB"
    (create,) = server.query("SHOW CREATE TABLE sample.t_compressed")[0][1:]
    assert "ROW_FORMAT=COMPRESSED" in create
    assert "KEY_BLOCK_SIZE=8" in create
    (create,) = server.query("SHOW CREATE TABLE sample.t_partitioned")[0][1:]
    assert "PARTITION BY RANGE" in create
    # Files of the server are where the host (and the backup tool) can read them, even for chroot servers.
    assert (server.datadir / "sample" / "t_plain.ibd").stat().st_size > 0
    assert list((server.datadir / "sample").glob("t_partitioned#*p0.ibd"))


def test_server_binary_and_backup_tool_run(server: Server) -> None:
    out = subprocess.run([str(server.server_binary), "--version"], capture_output=True, text=True, check=True)
    assert server.version.split("-")[0] in out.stdout
    if server.flavor == "mysql":
        assert server.backup_tool is None
    else:
        assert server.backup_tool is not None
        out = subprocess.run([str(server.backup_tool), "--version"], capture_output=True, text=True, check=True)
        assert server.version.split("-")[0] in out.stdout + out.stderr


def test_datadir_and_socket_agree_with_server(server: Server) -> None:
    datadir, socket = server.query("SELECT @@datadir, @@socket")[0]
    assert datadir.rstrip("/") == str(server.datadir)
    assert socket == str(server.socket)


@pytest.mark.parametrize("kind", list(KINDS))
def test_fresh_server_kill_and_recover(fresh_server, kind: str) -> None:
    redo = "--innodb-redo-log-capacity=8M" if kind == "mysql9" else "--innodb-log-file-size=8M"
    srv = fresh_server(kind, options=[redo])
    srv.execute("CREATE DATABASE crash")
    srv.execute("CREATE TABLE crash.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
    srv.execute("INSERT INTO crash.t VALUES (1, 'committed'), (2, 'also')")
    pid = srv.pid
    srv.kill()
    assert not srv.running()
    srv.start_again()
    assert srv.pid != pid
    assert srv.query("SELECT id, v FROM crash.t ORDER BY id") == [(1, "committed"), (2, "also")]
    log = srv.error_log.read_text(errors="replace")
    assert "crash recovery" in log.lower() or "recovery" in log.lower()
    srv.restart()
    assert srv.query("SELECT COUNT(*) FROM crash.t") == [(2,)]


def test_long_workdir_gets_short_socket(tmp_path) -> None:
    workdir = tmp_path / ("w" * 120)
    srv = start_server("mariadb10", workdir)
    try:
        assert len(str(srv.socket)) <= 100
        assert srv.query("SELECT 1") == [(1,)]
        assert attach(workdir).pid == srv.pid
    finally:
        srv.stop()
    assert not srv.running()
    assert not srv.socket.parent.exists()


def test_start_failure_reports_error_log(tmp_path) -> None:
    with pytest.raises(SandboxError, match=r"unknown variable .innodb-no-such-option"):
        start_server("mariadb10", tmp_path / "bad", options=["--innodb-no-such-option=1"])


def test_chroot_kind_refuses_path_outside_tmp() -> None:
    with pytest.raises(SandboxError, match="under /tmp"):
        start_server("mysql9", "/var/tmp/innostream-not-tmp")
    assert not Path("/var/tmp/innostream-not-tmp").exists()


def test_cli_start_status_stop(tmp_path) -> None:
    import sys

    workdir = tmp_path / "cli"
    out = subprocess.run([sys.executable, "-m", "tools.sandbox", "start", "mariadb10", "--workdir", str(workdir),
                          "--sample"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    info = dict(line.split("=", 1) for line in out.stdout.splitlines())
    srv = attach(workdir)
    try:
        assert info["SOCKET"] == str(srv.socket)
        assert srv.query("SELECT COUNT(*) FROM sample.t_plain") == [(SAMPLE_ROWS["t_plain"],)]
        assert subprocess.run([sys.executable, "-m", "tools.sandbox", "status", "--workdir", str(workdir)],
                              capture_output=True, check=False).returncode == 0
    finally:
        subprocess.run([sys.executable, "-m", "tools.sandbox", "stop", "--workdir", str(workdir)], check=True)
    assert not srv.running()


# --- load generators ------------------------------------------------------------------------------------------


def test_bank_load_invariant_holds(server: Server) -> None:
    load = BankLoad(server, accounts=50, threads=2, max_transfers=600, max_seconds=20, schema="bank_t")
    load.setup()
    stats = load.start().wait(timeout=60)
    assert stats.errors == 0, stats.last_error
    assert stats.committed >= 600  # both threads may each commit one past the bound
    conn = server.connect()
    try:
        assert load.check(conn, min_transfers=stats.committed, max_transfers=stats.committed) == stats.committed
    finally:
        conn.close()


def test_bank_check_detects_torn_state(mariadb10: Server) -> None:
    """A restore whose accounts come from an earlier moment than its ledger (a torn copy) must fail the check,
    and so must a lost ledger row or a commit that is missing."""
    load = BankLoad(mariadb10, accounts=30, max_transfers=200, schema="bank_torn")
    load.setup()
    load.start().wait(timeout=60)
    mariadb10.execute("CREATE TABLE bank_torn.accounts_then AS SELECT * FROM bank_torn.accounts")
    load2 = BankLoad(mariadb10, accounts=30, max_transfers=100, schema="bank_torn", seed=5)
    n = load2.start().wait(timeout=60).committed
    conn = mariadb10.connect()
    try:
        total = load.check(conn)
        assert total == 200 + n
        with pytest.raises(InvariantViolation, match="lost commits"):
            load.check(conn, min_transfers=total + 1)
        with pytest.raises(InvariantViolation, match="more than"):
            load.check(conn, max_transfers=total - 1)
        with conn.cursor() as cur:
            cur.execute("RENAME TABLE bank_torn.accounts TO bank_torn.accounts_now,"
                        " bank_torn.accounts_then TO bank_torn.accounts")
        with pytest.raises(InvariantViolation, match="balance"):
            load.check(conn)
        with conn.cursor() as cur:
            cur.execute("DROP TABLE bank_torn.accounts")
            cur.execute("RENAME TABLE bank_torn.accounts_now TO bank_torn.accounts")
            cur.execute("DELETE FROM bank_torn.ledger WHERE seq = 17")
        with pytest.raises(InvariantViolation, match="seq"):
            load.check(conn)
    finally:
        conn.close()


@pytest.mark.parametrize("kind", list(KINDS))
def test_bank_survives_crash(fresh_server, kind: str) -> None:
    """kill -9 mid-load, crash recovery: every acknowledged transfer is there and the invariants hold."""
    srv = fresh_server(kind)
    load = BankLoad(srv, accounts=40, threads=2, max_transfers=None, max_seconds=30)
    load.setup()
    load.start()
    load.wait_for(300)
    srv.kill()
    stats = load.stop()
    assert stats.committed >= 300
    srv.start_again()
    conn = srv.connect()
    try:
        n = load.check(conn, min_transfers=stats.committed, max_transfers=stats.committed + load.threads)
    finally:
        conn.close()
    assert n >= stats.committed


def test_ddl_load(server: Server) -> None:
    load = DdlLoad(server, keep=6, max_steps=40, max_seconds=30)
    load.setup()
    stats = load.start().wait(timeout=60)
    assert stats.errors == 0, stats.last_error
    assert stats.committed == 40
    assert stats.extra["drop"] == 40 - 6
    assert stats.extra["rename"] > 0
    assert stats.extra["rebuild"] > 0
    assert stats.extra["truncate"] > 0
    conn = server.connect()
    try:
        assert check_ddl(conn) == 6
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema='ddl'"
                        " AND table_name LIKE 't\\_%' LIMIT 1")
            (name,) = cur.fetchone()
            cur.execute(f"DELETE FROM ddl.{name} LIMIT 1")
        with pytest.raises(InvariantViolation, match=name):
            check_ddl(conn)
    finally:
        conn.close()


def test_sysbench(server: Server) -> None:
    sysbench_prepare(server, tables=2, table_size=1000, db="sbtest_t")
    res = sysbench_run(server, seconds=2, threads=2, tables=2, table_size=1000, db="sbtest_t")
    assert res["transactions"] > 0
    assert res["queries"] > res["transactions"]
    assert server.query("SELECT COUNT(*) FROM sbtest_t.sbtest1") == [(1000,)]
    server.execute("DROP DATABASE sbtest_t")


@pytest.mark.parametrize(("kind", "options"), [
    ("mysql9", ["--innodb-page-size=4k", "--innodb-redo-log-capacity=8M"]),
    ("mariadb10", ["--innodb-page-size=4k", "--innodb-log-file-size=4M"]),
])
def test_options_reach_initialize_and_server(fresh_server, kind: str, options: list[str]) -> None:
    """Options such as the page size must be given when the datadir is created, not only at start."""
    srv = fresh_server(kind, options=options, sample=True)
    size, = srv.query("SELECT @@innodb_page_size")[0]
    assert size == 4096
    if kind == "mysql9":
        assert srv.query("SELECT @@innodb_redo_log_capacity") == [(8 << 20,)]
    else:
        assert srv.query("SELECT @@innodb_log_file_size") == [(4 << 20,)]
    assert srv.query("SELECT COUNT(*) FROM sample.t_compressed") == [(1000,)]


def test_setup_sh_second_run_is_a_quick_check() -> None:
    """tools/setup.sh already ran (tools/test.sh runs it first): running it again changes nothing and says so."""
    repo = Path(__file__).resolve().parent.parent
    res = subprocess.run(["bash", str(repo / "tools" / "setup.sh")], capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "host packages already installed" in res.stderr
    assert "debootstrap" not in res.stderr
    assert res.stderr.count("complete: ") == 2
    assert "Ver 9.7." in res.stderr
    assert "Ver 11.8." in res.stderr
