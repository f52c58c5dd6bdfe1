"""Live redo copiers against real servers: a gap-free copy under load, and the overwritten-redo error."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from formats import log0files_io as my
from formats import mtr0log as ma
from streamer.errors import RedoOverwritten, SourceError
from streamer.redo_copier import open_redo_copier
from streamer.redo_inspect import inspect_redo
from tools.sandbox import Server

COPIER_KINDS = ("mariadb10", "mysql9", "mariadb11")


def flushed_lsn(srv: Server) -> int:
    """The LSN the server has written to its redo files ("Log flushed up to")."""
    status = srv.query("SHOW ENGINE INNODB STATUS")[0][2]
    return int(re.search(r"Log flushed up to\s+(\d+)", status).group(1))


class Load(threading.Thread):
    """Inserts rows on its own connection until stopped (or ``total_bytes`` of row data were written)."""

    def __init__(self, srv: Server, schema: str, row_bytes: int = 200, rows_per_stmt: int = 5, total_bytes=None):
        super().__init__(daemon=True)
        self.srv, self.schema = srv, schema
        self.row_bytes, self.rows_per_stmt, self.total_bytes = row_bytes, rows_per_stmt, total_bytes
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.written = 0
        srv.execute(f"CREATE DATABASE IF NOT EXISTS {schema}")
        srv.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.t (id INT AUTO_INCREMENT PRIMARY KEY, v LONGTEXT) ENGINE=InnoDB"
        )

    def run(self) -> None:
        try:
            conn = self.srv.connect(self.schema)
            cur = conn.cursor()
            values = ",".join([f"(REPEAT(CHAR(65 + FLOOR(RAND() * 26)), {self.row_bytes}))"] * self.rows_per_stmt)
            while not self.halt.is_set():
                cur.execute(f"INSERT INTO t (v) VALUES {values}")
                self.written += self.row_bytes * self.rows_per_stmt
                if self.total_bytes is not None and self.written >= self.total_bytes:
                    break
            conn.close()
        except BaseException as exc:
            self.error = exc


def check_mariadb_copy(data: bytes, start_lsn: int, last_lsn: int) -> None:
    """The copy is a valid, non-wrapping 10.8 log whose mtrs run without a gap from start_lsn to last_lsn."""
    header, cp = ma.find_checkpoint(data[: ma.START_OFFSET])
    assert header.creator.startswith("Backup ")
    assert header.first_lsn == cp.checkpoint_lsn == start_lsn
    assert ma.checkpoints(data[: ma.START_OFFSET], header.first_lsn)[1] is None
    body = data[ma.START_OFFSET :]
    res = ma.scan_mtrs(body, start_lsn, start_lsn, len(data))
    assert res.status == 0
    assert res.end == len(body)
    assert start_lsn + len(body) == last_lsn
    assert all(body[t] == 1 for t in res.terminators)
    # The FILE_CHECKPOINT for the start checkpoint is where end_lsn says.
    pos = cp.end_lsn - start_lsn
    term = ma.find_terminator(body, pos)
    recs = ma.parse_records(body[pos:term])
    assert [ma.file_checkpoint_lsn(r) for r in recs][-1] == start_lsn


def check_mysql_copy(data: bytes, start_lsn: int, last_lsn: int) -> None:
    """The copy is a 2048-byte header plus consecutive valid blocks from align_down(start_lsn) to last_lsn."""
    hdr = my.parse_file_header(data[:512])
    assert hdr.creator.startswith(my.LOG_HEADER_CREATOR_PXB)
    assert hdr.start_lsn == my.align_down(start_lsn)
    cps = my.checkpoints(data[: my.LOG_FILE_HDR_SIZE])
    assert [c.lsn for c in cps] == [start_lsn, start_lsn]
    assert (len(data) - my.LOG_FILE_HDR_SIZE) % 512 == 0
    lsn = hdr.start_lsn
    for off in range(my.LOG_FILE_HDR_SIZE, len(data), 512):
        status, data_len = my.check_block(data, lsn, off)
        assert status is my.BlockStatus.VALID, (off, status)
        if off + 512 < len(data):
            assert data_len == 512
        lsn += data_len
    assert lsn == last_lsn


@pytest.mark.parametrize("kind", COPIER_KINDS)
def test_copy_under_load_is_gap_free(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    srv: Server = request.getfixturevalue(kind)
    out = tmp_path / "copy"
    advanced: list[int] = []
    with out.open("wb") as fh:
        copier = open_redo_copier(srv.flavor, srv.datadir, fh.write, poll_interval=0.05, advance=advanced.append)
        copier.start()
        assert copier.start_lsn > 0
        load = Load(srv, "redo_copier_load")
        load.start()
        time.sleep(2.0)
        load.halt.set()
        load.join()
        assert load.error is None
        target = flushed_lsn(srv)
        assert copier.current_checkpoint() >= copier.start_lsn
        last = copier.stop(target, timeout=60)
    assert last >= target
    assert load.written > 0
    assert advanced
    assert advanced == sorted(advanced)
    assert advanced[-1] <= last
    data = out.read_bytes()
    assert copier.copy_file_name == ("ib_logfile0" if srv.flavor == "mariadb" else "xtrabackup_logfile")
    if srv.flavor == "mariadb":
        check_mariadb_copy(data, copier.start_lsn, last)
    else:
        check_mysql_copy(data, copier.start_lsn, last)
    info = inspect_redo(out)
    assert info["end_lsn"] == last
    assert info["invalid"] is None


TINY_REDO = {
    "mariadb10": ["--innodb-log-file-size=4M", "--innodb-log-buffer-size=2M"],
    "mariadb11": ["--innodb-log-file-size=4M", "--innodb-log-buffer-size=2M"],
    "mysql9": ["--innodb-redo-log-capacity=8M"],
}


@pytest.mark.parametrize("kind", COPIER_KINDS)
def test_slow_copier_under_heavy_load_raises_redo_overwritten(kind: str, fresh_server, tmp_path: Path) -> None:
    srv: Server = fresh_server(kind, options=TINY_REDO[kind])
    chunks: list[int] = []
    copier = open_redo_copier(srv.flavor, srv.datadir, lambda b: chunks.append(len(b)), poll_interval=3600)
    copier.start()
    time.sleep(0.5)  # the first poll happened; the next one only when stop() wakes it
    load = Load(srv, "redo_overwrite", row_bytes=8000, rows_per_stmt=50, total_bytes=40 << 20)
    load.start()
    load.join()
    assert load.error is None
    with pytest.raises(RedoOverwritten) as info:
        copier.stop(flushed_lsn(srv), timeout=60)
    err = info.value
    assert err.exit_code == 5
    assert "innodb_redo_log_capacity" in str(err)
    assert err.lsn is not None
    assert err.lsn >= copier.start_lsn


def test_mariadb_log_resize_during_copy_is_a_source_error(fresh_server) -> None:
    """SET GLOBAL innodb_log_file_size re-creates ib_logfile0: the copy cannot follow it and must say so."""
    srv: Server = fresh_server("mariadb10", options=["--innodb-log-file-size=4M", "--innodb-log-buffer-size=2M"])
    copier = open_redo_copier("mariadb", srv.datadir, lambda b: None, poll_interval=0.05)
    copier.start()
    srv.execute("SET GLOBAL innodb_log_file_size = 8388608")
    load = Load(srv, "redo_resize", row_bytes=1000, rows_per_stmt=10, total_bytes=2 << 20)
    load.start()
    load.join()
    deadline = time.monotonic() + 30
    while srv.query("SELECT @@innodb_log_file_size")[0][0] != 8388608 and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(SourceError, match="resized or re-created"):
        copier.stop(flushed_lsn(srv), timeout=30)
