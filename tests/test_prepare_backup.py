"""``innostream backup`` -> ``prepare`` -> ``restore`` on real servers while a writer commits, then the restored
server must show one consistent moment: a gap-free prefix of the writer's rows, intact money totals, and the
untouched ``sample`` schema equal to the source table by table. Also: the reference ``mariadb-backup --prepare``
accepts our MariaDB backup directory.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import pymysql
import pytest
from innostream.formats.xtrabackup_meta import parse_checkpoints
from innostream.recovery.prepare import PrepareConfig, prepare_backup
from innostream.recovery.restore import RestoreConfig, restore_backup

from tools.sandbox import WRAPPERS, Server, start_server, table_checksums

REPO = Path(__file__).resolve().parents[1]
ACCOUNTS = 20
TOTAL = ACCOUNTS * 1000
REFERENCE_BACKUP = {"mariadb10": "/usr/bin/mariadb-backup", "mariadb11": str(WRAPPERS / "mariadb-backup-sid")}


def payload(i: int) -> bytes:
    return hashlib.sha256(b"row%d" % i).digest() * 4


class Writer(threading.Thread):
    """Commits one row per transaction in id order plus a money transfer, until stopped."""

    def __init__(self, srv: Server, schema: str) -> None:
        super().__init__(daemon=True)
        self.srv, self.schema = srv, schema
        self.stop = threading.Event()
        self.committed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = self.srv.connect(database=self.schema)
            conn.autocommit(False)
            with conn.cursor() as cur:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    cur.execute("INSERT INTO seq (id, v) VALUES (%s, %s)", (i, payload(i)))
                    a, b = i % ACCOUNTS + 1, (i * 7) % ACCOUNTS + 1
                    cur.execute("UPDATE bank SET money = money - 3 WHERE id = %s", (a,))
                    cur.execute("UPDATE bank SET money = money + 3 WHERE id = %s", (b,))
                    conn.commit()
                    self.committed = i
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def setup_schema(srv: Server, schema: str) -> None:
    srv.execute(f"DROP DATABASE IF EXISTS `{schema}`")
    srv.execute(f"CREATE DATABASE `{schema}`")
    srv.execute(f"CREATE TABLE `{schema}`.seq (id INT PRIMARY KEY, v VARBINARY(128) NOT NULL) ENGINE=InnoDB")
    srv.execute(f"CREATE TABLE `{schema}`.bank (id INT PRIMARY KEY, money BIGINT NOT NULL) ENGINE=InnoDB")
    srv.execute(f"INSERT INTO `{schema}`.bank VALUES " + ",".join(f"({i}, 1000)" for i in range(1, ACCOUNTS + 1)))


def innostream_backup(srv: Server, target: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "innostream", "backup", "--target-dir", str(target), "--socket",
                          str(srv.socket), "--user", "root"], capture_output=True, text=True, cwd=REPO,
                         check=False, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]


def backup_under_writes(srv: Server, schema: str, target: Path, min_commits: int) -> tuple[Writer, int]:
    """Back up ``srv`` into ``target`` once the writer has committed ``min_commits`` rows into ``schema``, while it
    keeps committing; return the stopped writer and its commit count when the backup started."""
    writer = Writer(srv, schema)
    writer.start()
    try:
        while writer.committed < min_commits and writer.error is None:
            writer.stop.wait(0.05)
        before = writer.committed
        innostream_backup(srv, target)
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    assert writer.error is None, writer.error
    return writer, before


def check_consistent(restored: Server, schema: str, at_least: int) -> int:
    rows = restored.query(f"SELECT id, v FROM `{schema}`.seq ORDER BY id")
    ids = [r[0] for r in rows]
    assert ids == list(range(1, len(ids) + 1)), "rows missing in the middle: not one consistent moment"
    assert len(ids) >= at_least
    assert all(bytes(v) == payload(i) for i, v in rows)
    assert int(restored.query(f"SELECT SUM(money) FROM `{schema}`.bank")[0][0]) == TOTAL
    return len(ids)


def test_backup_under_writes_prepare_restore(server: Server, tmp_path: Path) -> None:
    schema = "prep_live"
    setup_schema(server, schema)
    sample_before = table_checksums(server)
    backup = tmp_path / "backup"
    writer, before = backup_under_writes(server, schema, backup, 50)
    assert writer.committed > before, "the writer must have committed while the backup ran"

    result = prepare_backup(PrepareConfig(backup, server_binary=server.server_binary, use_memory="64M"))
    assert result.recovered_lsn is not None
    assert result.recovered_lsn >= result.last_lsn
    assert parse_checkpoints((backup / "xtrabackup_checkpoints").read_bytes()).backup_type == "full-prepared"

    datadir = tmp_path / "restored"
    restore_backup(RestoreConfig(backup, datadir, move=True))
    restored = start_server(server.kind, tmp_path / "run", datadir=datadir, initialize=False)
    try:
        n = check_consistent(restored, schema, before)
        assert n <= writer.committed
        assert table_checksums(restored) == sample_before
    finally:
        restored.stop()
    server.execute(f"DROP DATABASE `{schema}`")


@pytest.mark.parametrize("kind", ["mariadb10", "mariadb11"])
def test_reference_prepare_accepts_our_backup(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server: Server = request.getfixturevalue(kind)
    schema = "prep_ref"
    setup_schema(server, schema)
    backup = tmp_path / "backup"
    backup_under_writes(server, schema, backup, 20)
    res = subprocess.run([REFERENCE_BACKUP[kind], "--prepare", f"--target-dir={backup}"], capture_output=True,
                         text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "completed OK!" in res.stderr
    datadir = tmp_path / "restored"
    res = subprocess.run([REFERENCE_BACKUP[kind], "--copy-back", f"--target-dir={backup}", f"--datadir={datadir}"],
                         capture_output=True, text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    restored = start_server(kind, tmp_path / "run", datadir=datadir, initialize=False)
    try:
        check_consistent(restored, schema, 20)
    finally:
        restored.stop()
    server.execute(f"DROP DATABASE `{schema}`")
    with pytest.raises(pymysql.MySQLError):
        server.query(f"SELECT 1 FROM `{schema}`.seq")


@pytest.mark.parametrize("kind", ["mariadb10", "mysql9"])
def test_prepare_refuses_damaged_redo(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """One flipped byte in the middle of the redo copy: prepare fails with one line and exit 7, whichever way the
    damage shows (our block check, the server refusing pages from the future, or recovery ending early), and the
    backup is not marked prepared."""
    server: Server = request.getfixturevalue(kind)
    schema = "prep_damaged"
    setup_schema(server, schema)
    backup = tmp_path / "backup"
    backup_under_writes(server, schema, backup, 50)
    redo = backup / ("xtrabackup_logfile" if server.flavor == "mysql" else "ib_logfile0")
    head = 2048 if server.flavor == "mysql" else 12288
    size = redo.stat().st_size
    assert size - head > 4096, "the backup must hold some redo"
    with open(redo, "r+b") as fh:
        offset = head + (size - head) // 2
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x55]))
    res = subprocess.run([sys.executable, "-m", "innostream", "prepare", "--target-dir", str(backup),
                          "--server-binary", str(server.server_binary)], capture_output=True, text=True, cwd=REPO,
                         check=False, timeout=900)
    assert res.returncode == 7, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("innostream: error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert parse_checkpoints((backup / "xtrabackup_checkpoints").read_bytes()).backup_type == "full-backuped"
    server.execute(f"DROP DATABASE `{schema}`")


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("mariadb10", ["--innodb-page-size=4096", "--innodb-undo-tablespaces=2", "--innodb-log-file-size=8M"]),
        ("mariadb11", ["--innodb-page-size=32768", "--innodb-checksum-algorithm=crc32"]),
        ("mysql9", ["--innodb-page-size=8192", "--innodb-redo-log-capacity=16M"]),
    ],
    ids=["mariadb10-4k-undo2", "mariadb11-32k-crc32", "mysql9-8k"],
)
def test_prepare_nondefault_config(kind: str, options: list[str], fresh_server, tmp_path: Path) -> None:
    """Page size, undo tablespaces and checksum settings travel through backup-my.cnf into prepare: the backup's
    server options are what the prepare server runs with."""
    # Not the sample schema: its KEY_BLOCK_SIZE=8 table cannot exist with 4K/32K pages.
    server = fresh_server(kind, options=options)
    schema = "prep_cfg"
    setup_schema(server, schema)
    backup = tmp_path / "backup"
    writer, before = backup_under_writes(server, schema, backup, 30)
    result = prepare_backup(PrepareConfig(backup, server_binary=server.server_binary, use_memory="64M"))
    assert result.recovered_lsn is not None
    assert result.recovered_lsn >= result.last_lsn
    datadir = tmp_path / "restored"
    restore_backup(RestoreConfig(backup, datadir))
    restored = start_server(kind, tmp_path / "run", datadir=datadir, initialize=False, options=options)
    try:
        n = check_consistent(restored, schema, before)
        assert n <= writer.committed
    finally:
        restored.stop()


def test_prepared_xa_survives_prepare(server: Server, tmp_path: Path) -> None:
    """A client's XA transaction in PREPARED state at backup time stays prepared through prepare and restore
    (only the server's own binlog 2PC transactions are rolled back), and can still be committed."""
    schema = "prep_xa"
    setup_schema(server, schema)
    xa = server.connect(database=schema)
    try:
        with xa.cursor() as cur:
            cur.execute("XA START 'innostream-xa'")
            cur.execute("INSERT INTO seq (id, v) VALUES (1, %s)", (payload(1),))
            cur.execute("XA END 'innostream-xa'")
            cur.execute("XA PREPARE 'innostream-xa'")
        backup = tmp_path / "backup"
        innostream_backup(server, backup)
    finally:
        with xa.cursor() as cur:
            cur.execute("XA ROLLBACK 'innostream-xa'")
        xa.close()
    prepare_backup(PrepareConfig(backup, server_binary=server.server_binary, use_memory="64M"))
    datadir = tmp_path / "restored"
    restore_backup(RestoreConfig(backup, datadir))
    restored = start_server(server.kind, tmp_path / "run", datadir=datadir, initialize=False)
    try:
        pending = [r[3] for r in restored.query("XA RECOVER")]
        assert [bytes(p) if not isinstance(p, str) else p.encode() for p in pending] == [b"innostream-xa"]
        restored.execute("XA COMMIT 'innostream-xa'")
        assert restored.query(f"SELECT COUNT(*) FROM `{schema}`.seq")[0][0] == 1
    finally:
        restored.stop()
    server.execute(f"DROP DATABASE `{schema}`")


@pytest.mark.parametrize("kind", ["mariadb10", "mariadb11", "mysql9"])
def test_binlog_prepared_transaction_rolled_back(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A transaction the backup caught between the binlog's prepare and commit: a restored MariaDB keeps it
    prepared with its locks, or refuses to start without the source's binlog (MDEV-36025). We make one
    deterministically: an XA transaction whose XID has the server's internal form ("MySQLXid" + server id + xid,
    formatID 1, no bqual), which recovery cannot tell from a real one. Prepare rolls it back; a client XA
    transaction next to it stays prepared."""
    server: Server = request.getfixturevalue(kind)
    schema = "prep_2pc"
    setup_schema(server, schema)
    internal = "X'4D7953514C586964' , '', 1".replace("X'4D7953514C586964'", "X'4D7953514C586964" + "00000001"
                                                                             + "00000000DEADBEEF'")
    conns = [server.connect(database=schema), server.connect(database=schema)]
    try:
        with conns[0].cursor() as cur:
            cur.execute(f"XA START {internal}")
            cur.execute("INSERT INTO seq (id, v) VALUES (1, %s)", (payload(1),))
            cur.execute(f"XA END {internal}")
            cur.execute(f"XA PREPARE {internal}")
        with conns[1].cursor() as cur:
            cur.execute("XA START 'client-xa'")
            cur.execute("INSERT INTO seq (id, v) VALUES (2, %s)", (payload(2),))
            cur.execute("XA END 'client-xa'")
            cur.execute("XA PREPARE 'client-xa'")
        backup = tmp_path / "backup"
        innostream_backup(server, backup)
    finally:
        with conns[0].cursor() as cur:
            cur.execute(f"XA ROLLBACK {internal}")
        with conns[1].cursor() as cur:
            cur.execute("XA ROLLBACK 'client-xa'")
        for c in conns:
            c.close()
    res = subprocess.run([sys.executable, "-m", "innostream", "prepare", "--target-dir", str(backup),
                          "--server-binary", str(server.server_binary)], capture_output=True, text=True, cwd=REPO,
                         check=False, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    # MySQL 9.7 keeps such a transaction prepared as well (its binlog is off at prepare), so we roll it back too.
    assert "rolled back 1 transaction(s) left prepared" in res.stderr
    datadir = tmp_path / "restored"
    restore_backup(RestoreConfig(backup, datadir))
    restored = start_server(kind, tmp_path / "run", datadir=datadir, initialize=False)
    try:
        pending = [r[3] for r in restored.query("XA RECOVER")]
        assert [p if isinstance(p, str) else bytes(p).decode() for p in pending] == ["client-xa"]
        restored.execute("XA COMMIT 'client-xa'")
        assert [r[0] for r in restored.query(f"SELECT id FROM `{schema}`.seq")] == [2]
    finally:
        restored.stop()
    server.execute(f"DROP DATABASE `{schema}`")


def test_streamed_backup_prepare_restore(server: Server, tmp_path: Path) -> None:
    """``backup --stream | extract`` gives a directory prepare and restore take like a --target-dir backup."""
    schema = "prep_stream"
    setup_schema(server, schema)
    writer = Writer(server, schema)
    writer.start()
    target = tmp_path / "extracted"
    try:
        while writer.committed < 30 and writer.error is None:
            writer.stop.wait(0.05)
        before = writer.committed
        backup = subprocess.Popen([sys.executable, "-m", "innostream", "backup", "--stream", "--socket",
                                   str(server.socket), "--user", "root"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, cwd=REPO)
        extract = subprocess.run([sys.executable, "-m", "innostream", "extract", "-C", str(target)],
                                 stdin=backup.stdout, capture_output=True, text=True, cwd=REPO, check=False,
                                 timeout=900)
        assert backup.stdout is not None
        backup.stdout.close()
        assert backup.wait(timeout=900) == 0
        assert extract.returncode == 0, extract.stderr[-3000:]
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    assert writer.error is None, writer.error
    result = prepare_backup(PrepareConfig(target, server_binary=server.server_binary, use_memory="64M"))
    assert result.recovered_lsn is not None
    assert result.recovered_lsn >= result.last_lsn
    datadir = tmp_path / "restored"
    restore_backup(RestoreConfig(target, datadir))
    restored = start_server(server.kind, tmp_path / "run", datadir=datadir, initialize=False)
    try:
        assert check_consistent(restored, schema, before) <= writer.committed
    finally:
        restored.stop()
    server.execute(f"DROP DATABASE `{schema}`")
