"""A server in a container or chroot (issue 13): its datadir is at another path for the host than for the server.

The MySQL 9.7 and MariaDB 11.8 chroot servers run on a datadir kept inside the chroot (``ROOT/var/lib/...`` on the
host, ``/var/lib/...`` for the server), like a Docker volume. ``backup --datadir HOST_PATH`` proves the files are the
server's live ones and backs them up; the restored server's tables equal the source's. A stale copy of the datadir,
another server's datadir and a missing --datadir are refused with one line, exit 4, before anything is written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.restored import prepared_and_started
from tools.sandbox import KINDS, Server, table_checksums

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def chroot_datadir() -> Iterator[Callable[[str], Path]]:
    """Factory: a fresh directory inside the chroot of a server kind, removed at teardown (list this fixture
    before ``fresh_server`` in a test's arguments: it is set up first, so torn down after the servers stop)."""
    made: list[Path] = []

    def make(kind: str) -> Path:
        root = KINDS[kind].root
        assert root is not None
        path = root / "var" / "lib" / f"innostream-ct-{uuid.uuid4().hex[:12]}"
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def _backup(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "innostream", "backup", "--socket", str(srv.socket), "--user", "root",
                           *args], capture_output=True, text=True, cwd=REPO, check=False, timeout=600)


def _container_server(kind: str, fresh_server, chroot_datadir) -> Server:
    srv = fresh_server(kind, datadir=chroot_datadir(kind), sample=True)
    (reported,) = srv.query("SELECT @@datadir")[0]
    assert Path(reported).resolve() != srv.datadir.resolve()
    assert not Path(reported).exists(), "the server's own path must not exist on the host for this test"
    return srv


@pytest.mark.parametrize("kind", ["mysql9", "mariadb11"])
def test_backup_of_a_server_seeing_its_datadir_elsewhere(kind: str, chroot_datadir, fresh_server,
                                                         tmp_path: Path) -> None:
    srv = _container_server(kind, fresh_server, chroot_datadir)
    source = table_checksums(srv)

    # Without --datadir the server's own path does not exist here: say what to do.
    res = _backup(srv, "--target-dir", str(tmp_path / "nope"))
    assert res.returncode == 4, res.stderr[-2000:]
    assert "does not exist here" in res.stderr
    assert "--datadir" in res.stderr
    assert not (tmp_path / "nope").exists()

    backup = tmp_path / "backup"
    res = _backup(srv, "--datadir", str(srv.datadir), "--target-dir", str(backup))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "live redo" in res.stderr
    assert str(srv.datadir) in res.stderr
    srv.stop()
    with prepared_and_started(srv, backup, tmp_path) as restored:
        assert table_checksums(restored) == source


def _wait_for_new_checkpoint(srv: Server, old: int) -> None:
    """Write until the server's checkpoint passes ``old`` (MariaDB checkpoints once dirty pages are flushed)."""
    if srv.flavor == "mariadb":
        srv.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    deadline = time.monotonic() + 120
    i = 0
    while _checkpoint(srv) <= old:
        assert time.monotonic() < deadline, "the server's checkpoint did not advance"
        srv.execute(f"CREATE TABLE IF NOT EXISTS test.ct_churn{i % 3} (id INT PRIMARY KEY) ENGINE=InnoDB")
        srv.execute(f"INSERT INTO test.ct_churn{i % 3} VALUES ({i})")
        i += 1
        time.sleep(0.3)


def _checkpoint(srv: Server) -> int:
    if srv.flavor == "mysql":
        return int(srv.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_checkpoint_lsn'")[0][1])
    return int(srv.query("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_last_checkpoint'")[0][1])


@pytest.mark.parametrize("kind", ["mysql9", "mariadb11"])
def test_stale_copy_and_other_servers_datadir_are_refused(kind: str, chroot_datadir, fresh_server,
                                                          tmp_path: Path) -> None:
    srv = _container_server(kind, fresh_server, chroot_datadir)
    srv.execute("CREATE DATABASE IF NOT EXISTS test")
    stale = tmp_path / "stale"
    srv.execute("FLUSH TABLES")
    shutil.copytree(srv.datadir, stale, ignore=shutil.ignore_patterns("*.sock", "*.pid"))
    _wait_for_new_checkpoint(srv, _checkpoint(srv))

    res = _backup(srv, "--datadir", str(stale), "--target-dir", str(tmp_path / "b1"))
    assert res.returncode == 4, res.stderr[-2000:]
    assert "does not hold its live files" in res.stderr, res.stderr[-2000:]
    assert "checkpoint" in res.stderr
    assert not (tmp_path / "b1").exists()

    other = fresh_server(kind, name="other")
    res = _backup(srv, "--datadir", str(other.datadir), "--target-dir", str(tmp_path / "b2"))
    assert res.returncode == 4, res.stderr[-2000:]
    assert "does not hold its live files" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "b2").exists()
