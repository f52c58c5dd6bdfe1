"""Honest about consistency on MySQL (issue 14): the binlog position and GTID set recorded in
``xtrabackup_binlog_info`` are exactly the data the prepared backup holds, even while commits go on at the end of
the backup and a user's DDL waits for the backup lock; and a long query does not make writers queue behind
FLUSH TABLES WITH READ LOCK (an InnoDB-only server is backed up without it).

One MySQL 9.7 server with GTIDs and the binlog on, InnoDB tables only, a writer committing all through the backup.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymysql
import pytest
from innostream.backup import BackupConfig, run_backup
from innostream.connection import ConnectionOptions
from innostream.families.mysql import cut_log_block
from innostream.formats import log0files_io as lf
from innostream.formats import xtrabackup_meta as meta

from tools.sandbox import Server, start_server

INNOSTREAM = [sys.executable, "-m", "innostream"]
REPO = Path(__file__).resolve().parent.parent
GTID_OPTIONS = ["--server-id=1", "--gtid-mode=ON", "--enforce-gtid-consistency=ON"]


@pytest.fixture(scope="module")
def gtid_mysql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server("mysql9", tmp_path_factory.mktemp("gtid_mysql"), options=GTID_OPTIONS)
    try:
        srv.execute_script([
            "CREATE DATABASE g",
            "CREATE TABLE g.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
            "CREATE TABLE g.d (id INT PRIMARY KEY) ENGINE=InnoDB",
            "CREATE TABLE g.s (id INT PRIMARY KEY) ENGINE=InnoDB",
            "INSERT INTO g.s VALUES (1)",
        ])
        yield srv
    finally:
        srv.stop()


class Writer:
    """Autocommitted INSERTs, one GTID each, until stopped."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.stop = threading.Event()
        self.count = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            conn = self.srv.connect()
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute("INSERT INTO g.t (v) VALUES (%s)", (self.count,))
                    self.count += 1
            conn.close()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def _in_background(srv: Server, sql: str) -> tuple[threading.Thread, list[Any], pymysql.connections.Connection]:
    """Run ``sql`` on its own connection in a thread; returns the thread, where its outcome goes, the connection."""
    conn = srv.connect()
    outcome: list[Any] = []

    def run() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
            outcome.append("ok")
        except Exception as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome, conn


def _wait_for_state(srv: Server, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.query("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE = %s", (state,))[0][0]:
            return
        time.sleep(0.02)
    raise AssertionError(f"no session reached state {state!r}")


def _config(srv: Server, target: Path) -> BackupConfig:
    return BackupConfig(connection=ConnectionOptions(socket=str(srv.socket), user="root", password=""),
                        datadir=Path(srv.datadir), target_dir=target)


def _once(action: Callable[[], None]) -> Callable[[str, Any], None]:
    """A backup ``on_event`` hook running ``action`` on the first progress tick (the data files are being copied:
    the backup holds its DDL lock and has not reached its end yet)."""
    done: list[bool] = []

    def hook(name: str, value: Any) -> None:
        if not done:
            done.append(True)
            action()

    return hook


def _gtids(text: str) -> str:
    return "".join(text.split())


@pytest.mark.mysql
def test_gtid_set_of_restored_backup_equals_recorded_with_ddl_queued(gtid_mysql, tmp_path):
    """An ALTER waits for the backup lock at the end of the backup and a writer commits all through it: the
    restored server's gtid_executed is exactly the recorded GTID set (before: transactions past it were in the
    data, so a replica seeded from it would apply them twice)."""
    srv = gtid_mysql
    target = tmp_path / "b"
    alter: list[Any] = []

    def queue_alter() -> None:
        alter.append(_in_background(srv, "ALTER TABLE g.d ADD COLUMN c INT"))
        _wait_for_state(srv, "Waiting for backup lock")

    with Writer(srv) as writer:
        while writer.count < 200:
            time.sleep(0.01)
        # --lock-ddl=full: the ALTER queues behind the lock taken at the start (reduced takes it only at the end)
        res = run_backup(replace(_config(srv, target), lock_ddl="full"), on_event=_once(queue_alter))
        time.sleep(0.2)
    assert writer.error is None, writer.error
    t, outcome, conn = alter[0]
    t.join(60)
    conn.close()
    assert outcome == ["ok"]  # the user's DDL ran once the backup ended
    recorded = meta.parse_binlog_info((target / meta.XTRABACKUP_BINLOG_INFO).read_bytes())
    assert res.binlog is not None
    assert recorded.gtid
    prep = subprocess.run([*INNOSTREAM, "prepare", "--target-dir", str(target), "--server-binary",
                           str(srv.server_binary)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
    assert prep.returncode == 0, prep.stderr[-3000:]
    restored = start_server("mysql9", tmp_path / "restored", datadir=target, initialize=False, options=GTID_OPTIONS)
    try:
        executed = restored.query("SELECT @@GLOBAL.gtid_executed")[0][0]
        rows = restored.query("SELECT COUNT(*) FROM g.t")[0][0]
    finally:
        restored.stop()
    assert _gtids(executed) == _gtids(recorded.gtid)
    assert 200 <= rows < writer.count


@pytest.mark.mysql
def test_long_query_does_not_make_writers_wait(gtid_mysql, tmp_path):
    """A long SELECT runs all through the backup: no session ever waits for a global read lock or a table flush
    (FLUSH TABLES WITH READ LOCK is not taken on an InnoDB-only server), and the SELECT is still running when the
    backup has completed."""
    srv = gtid_mysql
    select, outcome, conn = _in_background(srv, "SELECT id, SLEEP(600) FROM g.s")
    _wait_for_state(srv, "User sleep")
    seen: list[str] = []
    done = threading.Event()

    def monitor() -> None:
        while not done.is_set():
            rows = srv.query("SELECT STATE FROM information_schema.PROCESSLIST WHERE STATE IN "
                             "('Waiting for global read lock', 'Waiting for table flush')")
            seen.extend(r[0] for r in rows)
            time.sleep(0.01)

    mon = threading.Thread(target=monitor, daemon=True)
    try:
        with Writer(srv) as writer:
            mon.start()
            res = run_backup(_config(srv, tmp_path / "b"))
            done.set()
            mon.join(30)
        assert writer.error is None, writer.error
        assert res.binlog is not None
        assert seen == []
        assert select.is_alive()
        assert outcome == []
    finally:
        done.set()
        srv.execute(f"KILL {conn.thread_id()}")
        select.join(30)
        conn.close()


def test_cut_log_block_ends_the_log_where_asked():
    """The block holding the end LSN: data_len cut, a record group starting after the cut dropped, checksum redone
    (a valid block ending there, as recovery and prepare's scan read it)."""
    block_lsn = 512 * 4321
    full = lf.build_log_block(block_lsn, bytes(range(256)) + bytes(240), first_rec_group=300)
    for end, first in ((100, 0), (300, 0), (400, 300)):
        cut = cut_log_block(full, end)
        assert lf.check_block(cut, block_lsn) == (lf.BlockStatus.VALID, end)
        assert lf.parse_block_header(cut).first_rec_group == first
        assert cut[lf.LOG_BLOCK_HDR_SIZE:end] == full[lf.LOG_BLOCK_HDR_SIZE:end]
