"""The test servers themselves: each kind starts, is the version we expect, holds the sample data, and survives
stop/kill/restart the way a real server does."""

from __future__ import annotations

import subprocess

import pytest

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


def test_server_binary_runs(server: Server) -> None:
    out = subprocess.run([str(server.server_binary), "--version"], capture_output=True, text=True, check=True)
    assert server.version.split("-")[0] in out.stdout


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


def test_start_failure_reports_error_log(tmp_path) -> None:
    with pytest.raises(SandboxError, match=r"unknown variable .innodb-no-such-option"):
        start_server("mariadb10", tmp_path / "bad", options=["--innodb-no-such-option=1"])


def test_chroot_kind_refuses_path_outside_tmp() -> None:
    with pytest.raises(SandboxError, match="under /tmp"):
        start_server("mysql9", "/var/tmp/innostream-not-tmp")


def test_cli_start_status_stop(tmp_path) -> None:
    import sys

    workdir = tmp_path / "cli"
    out = subprocess.run([sys.executable, "-m", "tools.sandbox", "start", "mariadb10", "--workdir", str(workdir),
                          "--sample"], capture_output=True, text=True, check=True)
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
