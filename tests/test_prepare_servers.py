"""prepare + restore on real servers of both families: backups are prepared with the flavour's own server binary,
restored into an empty datadir, a server is started on it and every table is compared with the source.

Backups come from the reference tool where there is one (mariadb-backup 10.11 / 11.8) and, for MySQL 9.7 (no
xtrabackup for it in Debian), from a hand-made PXB-layout copy of a quiet server (:func:`mysql_hand_backup`).
"""

from __future__ import annotations

import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import crc32c
import pymysql
import pytest
from innostream.formats.xtrabackup_meta import (
    Checkpoints,
    build_backup_my_cnf,
    build_checkpoints,
    build_info,
    parse_checkpoints,
)
from innostream.recovery.prepare import PrepareConfig, prepare_backup
from innostream.recovery.restore import RestoreConfig, restore_backup

from tools.sandbox import WRAPPERS, Server, start_server, table_checksums

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "prep"
BACKUP_TOOL = {"mariadb10": "/usr/bin/mariadb-backup", "mariadb11": str(WRAPPERS / "mariadb-backup-sid")}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "innostream", *args], capture_output=True, text=True, cwd=REPO,
                          check=False, timeout=900)


def make_changes(srv: Server, tag: str) -> None:
    """Committed changes that live only in redo and the buffer pool for a while (small, so it stays quick)."""
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{SCHEMA}`")
            cur.execute(f"CREATE TABLE IF NOT EXISTS `{SCHEMA}`.t (id INT AUTO_INCREMENT PRIMARY KEY, tag "
                        "VARCHAR(32), v VARBINARY(200)) ENGINE=InnoDB")
            for i in range(200):
                cur.execute(f"INSERT INTO `{SCHEMA}`.t (tag, v) VALUES (%s, %s)", (tag, bytes([i % 256]) * 150))
            cur.execute(f"UPDATE `{SCHEMA}`.t SET v = REVERSE(v) WHERE id % 7 = 0")
            cur.execute(f"DELETE FROM `{SCHEMA}`.t WHERE id % 11 = 0")
    finally:
        conn.close()


def all_checksums(srv: Server) -> dict[str, dict[str, tuple[int, int]]]:
    return {schema: table_checksums(srv, schema) for schema in ("sample", SCHEMA)}


def reference_backup(srv: Server, target: Path) -> None:
    res = subprocess.run([BACKUP_TOOL[srv.kind], "--backup", f"--target-dir={target}", f"--socket={srv.socket}",
                          "--user=root"], capture_output=True, text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


# --- MySQL: a hand-made PXB-layout backup --------------------------------------------------------------------------

BLOCK = 512
HDR = 2048
HAND_SKIP = {"#innodb_redo", "#innodb_temp", "ibtmp1", "auto.cnf"}


def innodb_status(conn: pymysql.Connection) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW ENGINE INNODB STATUS")
        text = cur.fetchone()[2]

    def get(label: str) -> int:
        return int(re.search(label + r"\s+(\d+)", text).group(1))

    return {"lsn": get("Log sequence number"), "flushed": get("Log flushed up to"),
            "checkpoint": get("Last checkpoint at")}


def copy_mysql_redo(datadir: Path, checkpoint: int) -> tuple[bytes, int]:
    """Header of the #ib_redoN holding ``checkpoint`` + valid 512-byte blocks from align_down(checkpoint, 512)
    to the end of the log, across files (parsed here with the minimal fields, independent of the code under test)."""
    files = []
    for p in (datadir / "#innodb_redo").iterdir():
        if re.fullmatch(r"#ib_redo\d+", p.name):
            start = struct.unpack_from(">Q", p.read_bytes()[:HDR], 8)[0]
            files.append((start, start + p.stat().st_size - HDR, p))
    files.sort()
    first = next(f for f in files if f[0] <= checkpoint < f[1])
    out = bytearray(first[2].read_bytes()[:HDR])
    # As PXB's backup does (update_log_temp_checkpoint): both checkpoint blocks name the start checkpoint.
    for off in (512, 1536):
        out[off:off + BLOCK] = bytes(BLOCK)
        struct.pack_into(">Q", out, off + 8, checkpoint)
        struct.pack_into(">I", out, off + 508, crc32c.crc32c(bytes(out[off:off + 508])))
    lsn = checkpoint // BLOCK * BLOCK
    end = lsn
    for start, stop, path in files:
        if stop <= lsn:
            continue
        data = path.read_bytes()
        while lsn < stop:
            blk = data[HDR + lsn - start:HDR + lsn - start + BLOCK]
            hdr_no, data_len = struct.unpack_from(">IH", blk)
            if (hdr_no & 0x7FFFFFFF) != 1 + (lsn // BLOCK) % 0x40000000:
                return bytes(out), end
            if struct.unpack_from(">I", blk, 508)[0] != crc32c.crc32c(blk[:508]):
                return bytes(out), end
            out += blk
            data_len &= 0x7FFF
            end = lsn + data_len
            if data_len < BLOCK:
                return bytes(out), end
            lsn += BLOCK
    return bytes(out), end


def mysql_hand_backup(srv: Server, target: Path) -> Checkpoints:
    """Take the checkpoint LSN, write (so redo past the checkpoint matters), copy the data files, wait for the log
    flush, then copy the redo from the checkpoint and write the metadata files."""
    conn = srv.connect()
    try:
        checkpoint = innodb_status(conn)["checkpoint"]
        make_changes(srv, "hand")
        target.mkdir(parents=True)
        for p in sorted(srv.datadir.rglob("*")):
            rel = p.relative_to(srv.datadir)
            if rel.parts[0] in HAND_SKIP or p.suffix in (".pem", ".dblwr") or rel.name.startswith("binlog"):
                continue
            if p.is_dir():
                (target / rel).mkdir(exist_ok=True)
            else:
                shutil.copyfile(p, target / rel)
        for _ in range(200):
            st = innodb_status(conn)
            if st["flushed"] >= st["lsn"]:
                break
            time.sleep(0.05)
        redo, last = copy_mysql_redo(srv.datadir, checkpoint)
    finally:
        conn.close()
    (target / "xtrabackup_logfile").write_bytes(redo)
    cp = Checkpoints("full-backuped", 0, checkpoint, last, flushed_lsn=last)
    info = dict.fromkeys(("uuid", "name", "tool_name", "tool_command", "tool_version", "ibbackup_version",
                          "start_time", "end_time", "lock_time", "binlog_pos", "partial", "incremental",
                          "format", "compressed", "encrypted"), "")
    info.update(server_version=srv.version, innodb_from_lsn=0, innodb_to_lsn=checkpoint, tool_name="test")
    (target / "xtrabackup_info").write_bytes(build_info(info, "mysql"))
    (target / "backup-my.cnf").write_bytes(build_backup_my_cnf({
        "innodb_checksum_algorithm": "crc32", "innodb_log_checksums": "ON",
        "innodb_data_file_path": "ibdata1:12M:autoextend", "innodb_log_file_size": 50331648,
        "innodb_page_size": 16384, "innodb_undo_directory": "./", "innodb_undo_tablespaces": 2, "server_id": 1,
        "innodb_redo_log_encrypt": "OFF", "innodb_undo_log_encrypt": "OFF"}, "mysql"))
    (target / "xtrabackup_checkpoints").write_bytes(build_checkpoints(cp, "mysql"))
    return cp


def take_backup(srv: Server, target: Path) -> None:
    if srv.flavor == "mysql":
        mysql_hand_backup(srv, target)
    else:
        make_changes(srv, "ref")
        reference_backup(srv, target)


def server_binary(srv: Server) -> Path:
    return srv.server_binary


# --- the round trip ------------------------------------------------------------------------------------------------


def test_prepare_restore_roundtrip(server: Server, tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    take_backup(server, backup)
    expected = all_checksums(server)  # the source is quiet from here on
    assert expected[SCHEMA]["t"][0] > 0

    result = prepare_backup(PrepareConfig(backup, server_binary=server_binary(server), use_memory="64M"))
    assert not result.already_prepared
    assert result.recovered_lsn is not None
    assert result.recovered_lsn >= result.last_lsn > 0
    cp_file = next(p for p in (backup / "xtrabackup_checkpoints", backup / "mariadb_backup_checkpoints")
                   if p.exists())
    assert parse_checkpoints(cp_file.read_bytes()).backup_type == "full-prepared"
    assert not (backup / "auto.cnf").exists()

    # Prepare twice: idempotent, exit 0, says so.
    again = run_cli("prepare", "--target-dir", str(backup), "--server-binary", str(server_binary(server)))
    assert again.returncode == 0, again.stderr
    assert "already prepared" in again.stderr

    datadir = tmp_path / "restored"
    restore_backup(RestoreConfig(backup, datadir))
    assert not (datadir / cp_file.name).exists()
    assert not (datadir / "backup-my.cnf").exists()
    if server.flavor == "mysql":
        assert (datadir / "mysql.ibd").exists()
        assert any((datadir / "#innodb_redo").iterdir())
        assert not (datadir / "xtrabackup_logfile").exists()
    else:
        assert (datadir / "ib_logfile0").exists()

    restored = start_server(server.kind, tmp_path / "run", datadir=datadir, initialize=False)
    try:
        assert all_checksums(restored) == expected
        if server.flavor == "mysql":
            # No binlog expected, no original auto.cnf needed: the server made a new server_uuid.
            assert restored.query("SELECT @@server_uuid")[0][0] != server.query("SELECT @@server_uuid")[0][0]
    finally:
        restored.stop()

    # Restore into the (now non-empty) datadir again: refused, one line, exit code 6.
    refused = run_cli("restore", "--target-dir", str(backup), "--datadir", str(datadir))
    assert refused.returncode == 6
    assert refused.stderr.strip().count("\n") == 0
    assert "not empty" in refused.stderr
    server.execute(f"DROP DATABASE IF EXISTS `{SCHEMA}`")


# --- failures: one line on stderr, non-zero exit -------------------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb_backup_dir(mariadb10: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("prep-mariadb") / "backup"
    take_backup(mariadb10, path)
    yield path
    mariadb10.execute(f"DROP DATABASE IF EXISTS `{SCHEMA}`")


@pytest.fixture(scope="module")
def mysql_backup_dir(mysql9: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("prep-mysql") / "backup"
    take_backup(mysql9, path)
    yield path
    mysql9.execute(f"DROP DATABASE IF EXISTS `{SCHEMA}`")


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst, symlinks=True)
    return dst


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    errors = [line for line in res.stderr.splitlines() if line.startswith("innostream: error:")]
    assert len(errors) == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    kept = re.search(r"full log kept in (/tmp/innostream-prepare-[^/\s]+)/", errors[0])
    if kept:  # the failed server's log is kept for the user; the test has read what it needs
        shutil.rmtree(kept.group(1), ignore_errors=True)


def test_truncated_redo_mysql(mysql_backup_dir: Path, mysql9: Server, tmp_path: Path) -> None:
    backup = copy_of(mysql_backup_dir, tmp_path)
    logfile = backup / "xtrabackup_logfile"
    data = logfile.read_bytes()
    assert len(data) > HDR + 3 * BLOCK, "the test backup must hold several redo blocks"
    logfile.write_bytes(data[:HDR + 2 * BLOCK])
    res = run_cli("prepare", "--target-dir", str(backup), "--server-binary", str(mysql9.server_binary))
    assert_one_line_error(res, 7, "redo log copy ends at LSN", "last_lsn")
    # Nothing was started: the data files are untouched.
    assert parse_checkpoints((backup / "xtrabackup_checkpoints").read_bytes()).backup_type == "full-backuped"


def test_truncated_redo_mariadb(mariadb_backup_dir: Path, mariadb10: Server, tmp_path: Path) -> None:
    backup = copy_of(mariadb_backup_dir, tmp_path)
    log0 = backup / "ib_logfile0"
    size = log0.stat().st_size
    assert size > 12288 + 100
    with open(log0, "rb+") as fh:
        fh.truncate(size - 100)
    res = run_cli("prepare", "--target-dir", str(backup), "--server-binary", str(mariadb10.server_binary))
    assert_one_line_error(res, 7, "redo log copy ends at LSN")


@pytest.mark.parametrize(
    ("victim", "needle"),
    [
        # Not in the redo since the checkpoint: found missing through the data dictionary after recovery.
        ("mysql/gtid_slave_pos.ibd", "mysql/gtid_slave_pos.ibd"),
        # Changed since the checkpoint: the server itself stops, we pass on its reason.
        ("mysql/innodb_index_stats.ibd", "innodb_index_stats.ibd"),
    ],
)
def test_missing_data_file(mariadb_backup_dir: Path, mariadb10: Server, tmp_path: Path, victim: str,
                           needle: str) -> None:
    backup = copy_of(mariadb_backup_dir, tmp_path)
    (backup / victim).unlink()
    res = run_cli("prepare", "--target-dir", str(backup), "--server-binary", str(mariadb10.server_binary))
    assert_one_line_error(res, 7, needle)
    assert parse_checkpoints((backup / "xtrabackup_checkpoints").read_bytes()).backup_type == "full-backuped"


def test_missing_data_file_mysql(mysql_backup_dir: Path, mysql9: Server, tmp_path: Path) -> None:
    backup = copy_of(mysql_backup_dir, tmp_path)
    (backup / "sample" / "t_indexed.ibd").unlink()
    res = run_cli("prepare", "--target-dir", str(backup), "--server-binary", str(mysql9.server_binary))
    assert_one_line_error(res, 7, "tablespace")
    assert parse_checkpoints((backup / "xtrabackup_checkpoints").read_bytes()).backup_type == "full-backuped"


def test_wrong_server_binary(mariadb_backup_dir: Path, mysql_backup_dir: Path, mysql9: Server, tmp_path: Path) -> None:
    res = run_cli("prepare", "--target-dir", str(mariadb_backup_dir), "--server-binary", str(mysql9.server_binary))
    assert_one_line_error(res, 7, "wrong server binary", "the backup is mariadb")
    res = run_cli("prepare", "--target-dir", str(mysql_backup_dir), "--server-binary", "/usr/sbin/mariadbd")
    assert_one_line_error(res, 7, "wrong server binary")
    res = run_cli("prepare", "--target-dir", str(mysql_backup_dir), "--server-binary", "/bin/true")
    assert_one_line_error(res, 7, "does not look like")
    # MariaDB 11.8 binary on a 10.11 backup: the version is checked too.
    res = run_cli("prepare", "--target-dir", str(mariadb_backup_dir), "--server-binary",
                  str(WRAPPERS / "mariadbd-sid"))
    assert_one_line_error(res, 7, "wrong server binary", "10.11")


def test_incomplete_backup(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    res = run_cli("prepare", "--target-dir", str(tmp_path / "b"))
    assert_one_line_error(res, 7, "no xtrabackup_checkpoints")
    res = run_cli("restore", "--target-dir", str(tmp_path / "b"), "--datadir", str(tmp_path / "d"))
    assert_one_line_error(res, 7)


def test_restore_unprepared_refused(mariadb_backup_dir: Path, tmp_path: Path) -> None:
    res = run_cli("restore", "--target-dir", str(mariadb_backup_dir), "--datadir", str(tmp_path / "d"))
    assert_one_line_error(res, 7, "full-prepared")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_interrupted_prepare_then_rerun(mariadb_backup_dir: Path, mariadb10: Server, tmp_path: Path) -> None:
    """SIGTERM while the server recovers: the server is stopped, exit 130 with one line, the backup is not marked
    prepared, nothing keeps running on it, and a second prepare finishes the job."""
    backup = copy_of(mariadb_backup_dir, tmp_path)
    # An init file that sleeps holds the real server between recovery and "ready for connections", so the
    # signal surely arrives while it runs.
    init = tmp_path / "slow-start.sql"
    init.write_text("DO SLEEP(30);\n")
    proc = subprocess.Popen([sys.executable, "-m", "innostream", "prepare", "--target-dir", str(backup),
                             "--server-binary", str(mariadb10.server_binary), f"--server-option=--init-file={init}"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "End of log at LSN" in line:  # recovery ran; the server now sleeps in the init file
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    errors = [line for line in rest.splitlines() if line.startswith("innostream: error:")]
    assert len(errors) == 1, rest
    assert "interrupted" in errors[0], rest
    assert parse_checkpoints((backup / "xtrabackup_checkpoints").read_bytes()).backup_type == "full-backuped"
    holders = subprocess.run(["pgrep", "-f", f"--datadir={backup}"], capture_output=True, text=True, check=False)
    assert holders.stdout.strip() == "", "a server still runs on the backup"
    # The rerun also finds the server by itself (mariadbd on PATH or in /usr/sbin, version 10.11 as recorded).
    res = run_cli("prepare", "--target-dir", str(backup))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "/usr/sbin/mariadbd" in res.stderr
    assert parse_checkpoints((backup / "xtrabackup_checkpoints").read_bytes()).backup_type == "full-prepared"
