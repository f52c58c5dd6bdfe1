"""Live redo copiers against real servers: a gap-free copy under load, and the overwritten-redo error."""

from __future__ import annotations

import gzip
import json
import re
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from innostream import redo_copier
from innostream.errors import Corrupt, RedoOverwritten, SourceError
from innostream.families import family
from innostream.formats import log0files_io as my
from innostream.formats import mtr0log as ma
from innostream.redo_copier import MariaDBRedoCopier
from innostream.redo_inspect import inspect_redo

from tools.sandbox import WRAPPERS, Server

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
        copier = family(srv.flavor).open_redo_copier(srv.datadir, fh.write, poll_interval=0.05, advance=advanced.append)
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
    copier = family(srv.flavor).open_redo_copier(srv.datadir, lambda b: chunks.append(len(b)), poll_interval=3600)
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
    copier = family("mariadb").open_redo_copier(srv.datadir, lambda b: None, poll_interval=0.05)
    copier.start()
    srv.execute("SET GLOBAL innodb_log_file_size = 8388608")
    load = Load(srv, "redo_resize", row_bytes=1000, rows_per_stmt=10, total_bytes=2 << 20)
    load.start()
    load.join()
    deadline = time.monotonic() + 30
    while srv.query("SELECT @@innodb_log_file_size")[0][0] != 8388608 and time.monotonic() < deadline:
        time.sleep(0.2)
    while copier.error is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the thread polls every 0.05 s and stops at the first error
    assert isinstance(copier.error, SourceError)  # public, for the backup's early check
    with pytest.raises(SourceError, match="resized or re-created"):
        copier.stop(flushed_lsn(srv), timeout=30)


@pytest.mark.parametrize("kind", COPIER_KINDS)
def test_copier_follows_wrap_and_file_rotation(kind: str, fresh_server, tmp_path: Path) -> None:
    """Several laps of a 4 MiB MariaDB log / many 256 KiB MySQL files pass by while the copier keeps up."""
    srv: Server = fresh_server(kind, options=TINY_REDO[kind])
    out = tmp_path / "copy"
    with out.open("wb") as fh:
        copier = family(srv.flavor).open_redo_copier(srv.datadir, fh.write, poll_interval=0.02)
        copier.start()
        load = Load(srv, "redo_wrap", row_bytes=1000, rows_per_stmt=10, total_bytes=12 << 20)
        load.start()
        load.join()
        assert load.error is None
        last = copier.stop(flushed_lsn(srv), timeout=120)
    data = out.read_bytes()
    if srv.flavor == "mariadb":
        size = (srv.datadir / "ib_logfile0").stat().st_size
        assert last - copier.start_lsn > 2 * ma.capacity(size)  # wrapped at least twice
        check_mariadb_copy(data, copier.start_lsn, last)
    else:
        file_size = (srv.datadir / my.LOG_DIRECTORY_NAME).iterdir().__next__().stat().st_size
        assert last - copier.start_lsn > 8 * file_size  # crossed at least 8 #ib_redoN files
        check_mysql_copy(data, copier.start_lsn, last)


# --- offline: the copiers over real, static sample logs (fixtures/redo/) ----------------------------------------------
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "redo"


def sample_image(name: str) -> tuple[bytearray, dict]:
    """A full-size image of the sampled redo file (zeros outside the kept ranges) and what the server reported."""
    meta = json.loads((FIXTURES / f"{name}-redo.json").read_text())
    blob = gzip.decompress((FIXTURES / f"{name}-redo.bin.gz").read_bytes())
    image = bytearray(meta["file_size"])
    image[: meta["prefix_size"]] = blob[: meta["prefix_size"]]
    seg = blob[meta["prefix_size"] :]
    if meta["flavor"] == "mariadb":
        first_lsn = ma.parse_file_header(image).first_lsn
        for i in range(len(seg)):
            image[ma.lsn_to_offset(meta["segment_lsn"] + i, first_lsn, len(image))] = seg[i]
    else:
        image[meta["segment_offset"] : meta["segment_offset"] + len(seg)] = seg
    return image, meta


def place(image: bytes | bytearray, meta: dict, root: Path) -> Path:
    if meta["flavor"] == "mariadb":
        (root / "ib_logfile0").write_bytes(image)
    else:
        (root / my.LOG_DIRECTORY_NAME).mkdir()
        (root / my.LOG_DIRECTORY_NAME / meta["file"]).write_bytes(image)
    return root


def end_lsn(meta: dict) -> int:
    st = meta["server_status"]
    return st["log_sequence_number"] if meta["flavor"] == "mariadb" else st["Innodb_redo_log_current_lsn"]


@pytest.mark.parametrize("name", ["mariadb-10.11", "mariadb-11.8", "mysql-9.7"])
def test_copier_on_static_sample_copies_checkpoint_to_end(name: str, tmp_path: Path) -> None:
    image, meta = sample_image(name)
    root = place(image, meta, tmp_path)
    chunks: list[bytes] = []
    copier = family(meta["flavor"]).open_redo_copier(root, chunks.append, poll_interval=0.01)
    at_thread_start: list[int] = []
    run = copier._run
    copier._run = lambda: (at_thread_start.append(copier.scanned_lsn), run())  # type: ignore[method-assign]
    copier.start()
    cp = meta["server_status"]["last_checkpoint_at"]
    assert copier.start_lsn == cp
    # start() itself copied the backlog up to the end of the log (only a partial last MySQL block is left)
    assert end_lsn(meta) - at_thread_start[0] < my.OS_FILE_LOG_BLOCK_SIZE
    assert copier.error is None
    assert copier.current_checkpoint() == cp
    last = copier.stop(end_lsn(meta), timeout=10)
    assert last == end_lsn(meta)
    data = b"".join(chunks)
    if meta["flavor"] == "mariadb":
        check_mariadb_copy(data, cp, last)
    else:
        check_mysql_copy(data, cp, last)
    copy = tmp_path / "copy" / copier.copy_file_name
    copy.parent.mkdir()
    copy.write_bytes(data)
    info = inspect_redo(copy)
    assert (info["kind"], info["end_lsn"], info["invalid"]) == ("backup copy", last, None)


def test_start_copies_at_most_the_backlog_bound_then_the_thread_goes_on(tmp_path: Path, monkeypatch) -> None:
    """start() stops its synchronous catch-up once backlog_bound bytes are copied; the thread copies the rest."""
    image, meta = sample_image("mariadb-10.11")

    class Bounded(MariaDBRedoCopier):
        def _begin(self) -> None:
            super()._begin()
            self.backlog_bound = 1  # as if the log were tiny: one poll is enough

        def _run(self) -> None:
            self.scanned_at_thread_start = self.scanned_lsn
            super()._run()

    monkeypatch.setattr(redo_copier, "MAX_BYTES_PER_POLL", 4096)
    monkeypatch.setattr(redo_copier, "MARIADB_WINDOW_MIN", 1024)
    chunks: list[bytes] = []
    copier = Bounded(place(image, meta, tmp_path), chunks.append, poll_interval=0.01)
    copier.start()
    assert copier.start_lsn < copier.scanned_at_thread_start < end_lsn(meta)
    assert copier.stop(end_lsn(meta), timeout=10) == end_lsn(meta)
    check_mariadb_copy(b"".join(chunks), copier.start_lsn, end_lsn(meta))


@pytest.mark.parametrize("name", ["mariadb-10.11", "mysql-9.7"])
def test_corrupt_log_below_the_servers_lsn_is_an_error_not_a_hang(name: str, tmp_path: Path) -> None:
    image, meta = sample_image(name)
    cp = meta["server_status"]["last_checkpoint_at"]
    if meta["flavor"] == "mariadb":
        header, ckpt = ma.find_checkpoint(image[: ma.START_OFFSET])
        bad_lsn = ckpt.end_lsn + 1  # inside the checkpoint's own mtr: below what the server wrote, not below end_lsn
        image[ma.lsn_to_offset(bad_lsn, header.first_lsn, len(image))] ^= 0x01
    else:
        start = my.parse_file_header(image[:512]).start_lsn
        bad_lsn = my.align_down(cp) + 512
        image[my.lsn_to_offset(start, bad_lsn) + 100] ^= 0x01
    copier = family(meta["flavor"]).open_redo_copier(place(image, meta, tmp_path), lambda b: None, poll_interval=0.01)
    copier.stall_timeout = 0.5
    copier.start()
    with pytest.raises(Corrupt, match="does not advance") as info:
        copier.stop(end_lsn(meta), timeout=10)
    assert info.value.lsn < end_lsn(meta)
    assert info.value.lsn <= bad_lsn


def test_mariadb_invalid_log_before_the_checkpoint_end_is_overwritten(tmp_path: Path) -> None:
    """Data the checkpoint proves was written, but that no longer validates, was lapped by the server."""
    image, meta = sample_image("mariadb-10.11")
    header, cp = ma.find_checkpoint(image[: ma.START_OFFSET])
    image[ma.lsn_to_offset(cp.checkpoint_lsn + 1, header.first_lsn, len(image))] ^= 0x01
    copier = family("mariadb").open_redo_copier(place(image, meta, tmp_path), lambda b: None, poll_interval=0.01)
    with pytest.raises(RedoOverwritten) as info:
        copier.start()  # found while copying the backlog: start() raises it, no thread is left behind
    assert info.value.lsn == cp.checkpoint_lsn
    assert copier.error is None
    assert copier._fd is None


def test_mysql_block_numbered_ahead_is_overwritten(tmp_path: Path) -> None:
    image, meta = sample_image("mysql-9.7")
    start = my.parse_file_header(image[:512]).start_lsn
    lsn = my.align_down(meta["server_status"]["last_checkpoint_at"]) + 512
    off = my.lsn_to_offset(start, lsn)
    block = bytearray(image[off : off + 512])
    struct.pack_into(">I", block, 0, my.block_hdr_no(lsn + 8 * 1024 * 1024))  # a block of a later lap
    struct.pack_into(">I", block, 508, my.crc32c(bytes(block[:508])))
    image[off : off + 512] = block
    copier = family("mysql").open_redo_copier(place(image, meta, tmp_path), lambda b: None, poll_interval=0.01)
    with pytest.raises(RedoOverwritten, match="block numbers mismatch") as info:
        copier.start()
    assert info.value.lsn == lsn


def test_mysql_redo_file_removed_is_overwritten(tmp_path: Path) -> None:
    image, meta = sample_image("mysql-9.7")
    root = place(image, meta, tmp_path)
    copier = family("mysql").open_redo_copier(root, lambda b: None, poll_interval=3600)
    copier.start()
    time.sleep(0.2)
    copier._close()  # drop the cached descriptor so that the next poll resolves the files again
    (root / my.LOG_DIRECTORY_NAME / meta["file"]).unlink()
    hdr = bytearray(image[: my.LOG_FILE_HDR_SIZE])
    later = my.file_end_lsn(my.parse_file_header(hdr[:512]).start_lsn, len(image)) + 10 * len(image)
    hdr[:512] = my.build_file_header(later, "MySQL 9.7.4", meta["server_status"]["Innodb_redo_log_uuid"])
    (root / my.LOG_DIRECTORY_NAME / "#ib_redo999").write_bytes(bytes(hdr) + bytes(len(image) - len(hdr)))
    with pytest.raises(RedoOverwritten, match="removed before it was copied"):
        copier.stop(end_lsn(meta) + 10**6, timeout=10)


def test_unreadable_or_missing_logs_are_source_errors(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(SourceError, match="not found"):
        family("mariadb").open_redo_copier(tmp_path / "a", lambda b: None).start()
    with pytest.raises(SourceError, match="not found"):
        family("mysql").open_redo_copier(tmp_path / "a", lambda b: None).start()
    (tmp_path / "a" / "ib_logfile0").mkdir()  # reading it fails with EISDIR: one line, not a traceback
    with pytest.raises(SourceError, match="cannot read the redo log"):
        family("mariadb").open_redo_copier(tmp_path / "a", lambda b: None).start()
    (tmp_path / "a" / my.LOG_DIRECTORY_NAME).mkdir()
    with pytest.raises(SourceError, match="no valid checkpoint"):
        family("mysql").open_redo_copier(tmp_path / "a", lambda b: None).start()
    with pytest.raises(ValueError, match="flavor"):
        family("postgres").open_redo_copier(tmp_path, lambda b: None)


REFERENCE_BACKUP = {"mariadb10": ["/usr/bin/mariadb-backup"], "mariadb11": [str(WRAPPERS / "mariadb-backup-sid")]}


@pytest.mark.parametrize("kind", ["mariadb10", "mariadb11"])
def test_mariadb_backup_copy_has_our_layout(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The reference tool's own ib_logfile0 copy: our reader parses it to its last_lsn, and our prefix builder
    reproduces its first 12288 bytes exactly."""
    srv: Server = request.getfixturevalue(kind)
    target = tmp_path / "bk"
    load = Load(srv, "redo_reference", row_bytes=1000, rows_per_stmt=10, total_bytes=1 << 20)
    load.start()
    run = subprocess.run(
        [
            *REFERENCE_BACKUP[kind],
            "--backup",
            f"--target-dir={target}",
            "--user=root",
            f"--socket={srv.socket}",
            f"--datadir={srv.datadir}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    load.halt.set()
    load.join()
    assert run.returncode == 0, run.stderr[-2000:]
    checkpoints = next(
        p for p in (target / "xtrabackup_checkpoints", target / "mariadb_backup_checkpoints") if p.exists()
    )
    last_lsn = int(re.search(r"last_lsn = (\d+)", checkpoints.read_text()).group(1))
    data = (target / "ib_logfile0").read_bytes()
    header, cp = ma.find_checkpoint(data[: ma.START_OFFSET])
    assert header.creator == "Backup " + srv.version.split("-")[0]
    assert data[: ma.START_OFFSET] == ma.build_log_prefix(
        cp.checkpoint_lsn, header.creator, cp.checkpoint_lsn, cp.end_lsn
    )
    check_mariadb_copy(data, cp.checkpoint_lsn, last_lsn)
    info = inspect_redo(target / "ib_logfile0")
    assert (info["kind"], info["end_lsn"], info["invalid"]) == ("backup copy", last_lsn, None)
