"""The backup engine's parts, each against real files and real servers: sink, option files, enumeration, page
copier (torn and corrupt pages), locks and the MySQL redo log consumer."""

from __future__ import annotations

import errno
import shutil
import struct
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pymysql
import pytest
from innostream.backup import backup_target
from innostream.connection import (
    ConnectionOptions,
    RedoConsumer,
    ServerFacts,
    Session,
    parse_version,
    read_option_files,
    resolve_options,
)
from innostream.copier import FileCopier, SourceFile
from innostream.datadir import (
    enumerate_files,
    is_redo_file,
    is_tablespace,
    is_temporary_tablespace,
    local_data_file_path,
    parse_data_file_path,
)
from innostream.errors import FileExistsInTarget, Interrupted, SourceError, UnsafePath
from innostream.families import family, read_server_facts
from innostream.formats import xtrabackup_meta as meta
from innostream.formats.buf0checksum import validate_pages
from innostream.formats.errors import Corrupt
from innostream.formats.fsp0fsp import space_info
from innostream.metadata import build_metadata

# --- the --target-dir writer (TargetDir) ------------------------------------------------------------------------------


def test_backup_target_creates_missing_relative_target_and_writes_holes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sink = backup_target(Path("a/b/backup"))
    assert sink.root == tmp_path / "a/b/backup"
    fid = sink.begin_file("db/t.ibd")
    sink.write(fid, 0, b"x" * 10)
    sink.write(fid, 1 << 20, b"y" * 10)  # gap of ~1 MiB becomes a hole
    sink.end_file(fid, (2 << 20))  # trailing gap too
    sink.add_bytes("meta", b"hello")
    sink.close()
    path = tmp_path / "a/b/backup/db/t.ibd"
    data = path.read_bytes()
    assert len(data) == 2 << 20
    assert data[:10] == b"x" * 10
    assert data[(1 << 20):(1 << 20) + 10] == b"y" * 10
    assert data[10:(1 << 20)] == bytes((1 << 20) - 10)
    assert path.stat().st_blocks * 512 < len(data)  # sparse
    assert (tmp_path / "a/b/backup/meta").read_bytes() == b"hello"


def test_backup_target_existing_empty_target_ok_but_never_overwrites(tmp_path):
    (tmp_path / "t").mkdir()
    sink = backup_target(tmp_path / "t")
    sink.add_bytes("ibdata1", b"new")
    (tmp_path / "t2").mkdir()
    (tmp_path / "t2" / "ibdata1").write_bytes(b"old")
    sink2 = backup_target(tmp_path / "t2")
    with pytest.raises(FileExistsInTarget) as info:
        sink2.begin_file("ibdata1")
    assert info.value.exit_code == 6
    assert f"[Errno {errno.EEXIST}] File exists" in str(info.value)
    assert "t2/ibdata1" in str(info.value)
    assert (tmp_path / "t2" / "ibdata1").read_bytes() == b"old"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "a//b", "./a", "a\0b"])
def test_backup_target_rejects_unsafe_names(tmp_path, name):
    sink = backup_target(tmp_path)
    with pytest.raises(UnsafePath):
        sink.begin_file(name)


def test_backup_target_refuses_symlinked_directory_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "db").symlink_to(outside)
    sink = backup_target(target)
    with pytest.raises(UnsafePath):
        sink.begin_file("db/t.ibd")
    assert not list(outside.iterdir())


def test_backup_target_close_refuses_unfinished_and_abort_closes(tmp_path):
    sink = backup_target(tmp_path)
    sink.begin_file("a")
    with pytest.raises(Exception, match="unfinished"):
        sink.close()
    sink.abort()
    sink.abort()  # idempotent


# --- option files and parsing -------------------------------------------------------------------------------------


def test_option_files_client_group_include_and_precedence(tmp_path):
    inc = tmp_path / "inc.cnf"
    inc.write_text("[client]\nsocket = /tmp/from-include.sock\n")
    cnf = tmp_path / "my.cnf"
    cnf.write_text(
        "# comment\n[mysqld]\nuser=mysql\n[client]\nuser = backup\npassword = \"se#cret\"\nport=3307 # inline\n"
        f"!include {inc}\n[mysql]\nuser=ignored\n"
    )
    opts = read_option_files(str(cnf))
    assert opts == {"user": "backup", "password": "se#cret", "port": "3307", "socket": "/tmp/from-include.sock"}
    args = resolve_options(ConnectionOptions(defaults_file=str(cnf), user="cli"))
    assert args["user"] == "cli"
    assert args["password"] == "se#cret"
    assert args["unix_socket"] == "/tmp/from-include.sock"
    args = resolve_options(ConnectionOptions(defaults_file=str(cnf), host="db.example", socket=None))
    # an explicit host wins over the file's socket only when no socket is given on the command line
    assert args.get("unix_socket") == "/tmp/from-include.sock"


def test_option_file_missing_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="option file not found"):
        read_option_files(str(tmp_path / "nope.cnf"))


def test_tcp_host_and_port(tmp_path):
    cnf = tmp_path / "empty.cnf"
    cnf.write_text("")
    args = resolve_options(ConnectionOptions(defaults_file=str(cnf), host="10.0.0.1", port=3310, password="pw"))
    assert args["host"] == "10.0.0.1"
    assert args["port"] == 3310
    assert "unix_socket" not in args


def test_parse_data_file_path():
    assert parse_data_file_path("ibdata1:12M:autoextend") == [("ibdata1", None)]
    assert parse_data_file_path("ibdata1:12M;ibdata2:1G:autoextend:max:2G") == [("ibdata1", 12 << 20),
                                                                                ("ibdata2", None)]
    assert parse_data_file_path("/abs/ib1:64K;ib2:10M") == [("/abs/ib1", 64 << 10), ("ib2", 10 << 20)]
    with pytest.raises(SourceError, match="raw"):
        parse_data_file_path("/dev/sdb:10Gnewraw")


def _facts(datadir: Path, home: Path, flavor: str = "mariadb", **variables: str) -> ServerFacts:
    version = "10.11.6-MariaDB" if flavor == "mariadb" else "9.1.0"
    return ServerFacts(flavor=flavor, version=version, version_tuple=parse_version(version), datadir=datadir,
                       data_home_dir=home, log_dir=datadir, undo_dir=datadir, variables=variables)


def test_backup_my_cnf_names_the_system_files_as_the_backup_wrote_them(tmp_path):
    """The innodb_data_file_path of backup-my.cnf (prepare starts its server with it) must name the system
    tablespace files as the backup wrote them: at the root, under their file name. The server runs on POSIX,
    where a backslash is part of a file name: stripping at backslashes (prepare's old copy) loses the file."""
    datadir, home, other = tmp_path / "data", tmp_path / "home", tmp_path / "other"
    for d in (datadir, home, other):
        d.mkdir()
    for path in (home / "sub\\ibdata1", other / "ibdata2"):
        with open(path, "wb") as f:
            f.truncate(12 << 20)
    value = f"sub\\ibdata1:12M; {other}/ibdata2:12M:autoextend;"
    inv = enumerate_files(_facts(datadir, home, innodb_data_file_path=value), datadir, home, datadir)
    members = [f.name for f in sorted(inv.innodb, key=lambda f: f.first_page_no) if f.system]
    assert members == ["sub\\ibdata1", "ibdata2"]
    assert [f.first_page_no for f in sorted(inv.innodb, key=lambda f: f.first_page_no)] == [0, 768]
    local = local_data_file_path(value)
    assert local == "sub\\ibdata1:12M;ibdata2:12M:autoextend"
    assert [name for name, _size in parse_data_file_path(local)] == members
    assert local_data_file_path("/data/ibdata1:12M;/d2/ibdata2:100M:autoextend:max:1G") == (
        "ibdata1:12M;ibdata2:100M:autoextend:max:1G")


def test_naming_rules():
    from innostream import datadir
    from innostream.formats import log0files_io, xtrabackup_logfile

    assert datadir.LOG_DIRECTORY_NAME == log0files_io.LOG_DIRECTORY_NAME
    assert datadir.LOG_FILE_BASE_NAME == log0files_io.LOG_FILE_BASE_NAME
    assert datadir.XTRABACKUP_LOGFILE == xtrabackup_logfile.XTRABACKUP_LOGFILE
    for name in ("ibdata1", "ibdata12", "undo_001", "undo001", "user_undo.ibu", "mysql.ibd", "db/t.ibd",
                 "db/t#p#p0.ibd"):
        assert is_tablespace(name), name
    for name in ("ibtmp1", "db/t.frm", "db/t.MYD", "ib_logfile0", "xtrabackup_logfile", "undo", "ibdata",
                 "db/.ibd", "#innodb_temp/temp_1.ibt", "ib_buffer_pool"):
        assert not is_tablespace(name), name
    assert is_temporary_tablespace("ibtmp1")
    assert is_temporary_tablespace("#innodb_temp/temp_1.ibt")
    assert not is_temporary_tablespace("db/t.ibd")
    for name in ("ib_logfile0", "#innodb_redo/#ib_redo12", "#ib_redo13_tmp", "xtrabackup_logfile"):
        assert is_redo_file(name), name
    for name in ("ib_logfile", "#ib_redo", "ibdata1", "xtrabackup_checkpoints"):
        assert not is_redo_file(name), name


def test_metadata_from_lsns_and_facts(tmp_path):
    started = datetime(2024, 5, 1, 10, 0, 0)
    common = {"my_cnf": b"[mysqld]\n", "to_lsn": 200, "last_lsn": 300, "flushed_lsn": 250, "lock_seconds": 1.4,
              "started": started, "ended": started + timedelta(seconds=5), "server_uuid": "u-1",
              "argv": ("backup", "--password", "...", "-psecret", "--target-dir", "/b")}
    files = build_metadata(_facts(tmp_path, tmp_path, "mysql"), binlog=meta.BinlogInfo("binlog.000002", 157, ""),
                           stream_format=None, compressed=True, **common)
    assert list(files) == [meta.XTRABACKUP_BINLOG_INFO, meta.BACKUP_MY_CNF, meta.XTRABACKUP_INFO,
                           meta.XTRABACKUP_CHECKPOINTS]
    cp = meta.parse_checkpoints(files[meta.XTRABACKUP_CHECKPOINTS])
    assert (cp.backup_type, cp.from_lsn, cp.to_lsn, cp.last_lsn, cp.flushed_lsn) == ("full-backuped", 0, 200, 300,
                                                                                      250)
    info = meta.parse_info(files[meta.XTRABACKUP_INFO])
    assert info["innodb_to_lsn"] == "200"
    assert info["lock_time"] == "1"
    assert info["format"] == "file"
    assert info["compressed"] == "N"
    assert info["tool_command"] == "backup --password ... -p... --target-dir /b"
    assert info["binlog_pos"] == "filename 'binlog.000002', position '157'"
    assert files[meta.BACKUP_MY_CNF] == b"[mysqld]\n"
    files = build_metadata(_facts(tmp_path, tmp_path), binlog=None, stream_format="xbstream", compressed=True,
                           **common)
    assert meta.XTRABACKUP_BINLOG_INFO not in files
    assert meta.parse_checkpoints(files[meta.XTRABACKUP_CHECKPOINTS]).flushed_lsn == 0
    info = meta.parse_info(files[meta.XTRABACKUP_INFO])
    assert (info["format"], info["compressed"], info["binlog_pos"]) == ("xbstream", "compressed", "")


# --- against real servers -----------------------------------------------------------------------------------------


def _session(srv) -> Session:
    return Session({"unix_socket": str(srv.socket), "user": "root", "password": "", "autocommit": True}, "test")


def test_enumerate_real_datadir(server):
    s = _session(server)
    try:
        facts = read_server_facts(s)
        assert facts.flavor == server.flavor
        assert facts.datadir == Path(server.datadir).resolve()
        inv = enumerate_files(facts, facts.datadir, facts.data_home_dir, facts.undo_dir)
    finally:
        s.close()
    innodb = {f.name for f in inv.innodb}
    other = {f.name for f in inv.other}
    assert "ibdata1" in innodb
    assert "sample/t_plain.ibd" in innodb
    assert "sample/t_compressed.ibd" in innodb
    assert any(n.startswith("sample/t_partitioned#") for n in innodb)
    assert "ibtmp1" not in innodb | other
    assert not any("#innodb_redo" in n or "#innodb_temp" in n or n.startswith("ib_logfile") for n in innodb | other)
    assert not any(n.startswith("binlog.") for n in innodb | other)
    if server.flavor == "mysql":
        assert {"mysql.ibd", "undo_001", "undo_002"} <= innodb
        assert "sample/t_myisam.MYD" in other
        assert "sample/t_myisam.MYI" in other
        assert any(n.startswith("sample/t_myisam_") and n.endswith(".sdi") for n in other)
        assert inv.needs_read_lock
    else:
        assert "sample/t_plain.frm" in other
        assert "sample/db.opt" in other
        assert "aria_log_control" in other
        assert "sample/t_myisam.MYD" in other
    # the largest InnoDB file first, so parallel copies end together
    sizes = [f.size for f in inv.innodb]
    assert sizes == sorted(sizes, reverse=True)


def _corrupt_copy(src: Path, dst: Path, page_no: int, page_size: int) -> bytes:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(page_no * page_size + 200)
        orig = f.read(1)
        f.seek(page_no * page_size + 200)
        f.write(bytes([orig[0] ^ 0xFF]))
    return orig


def _written_page(path: Path, page_size: int) -> int:
    """A page the server has written (non-zero, LSN set), so that flipping a byte must be detected."""
    data = path.read_bytes()
    for no in range(1, len(data) // page_size):
        page = data[no * page_size : (no + 1) * page_size]
        if struct.unpack_from(">Q", page, 16)[0] and page.count(0) < page_size - 64:
            return no
    pytest.fail(f"no written page in {path}")


def _flush_table(srv, table: str) -> None:
    """FLUSH TABLES ... FOR EXPORT writes the table's dirty pages to its file (both flavours)."""
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"FLUSH TABLES {table} FOR EXPORT")
            cur.execute("UNLOCK TABLES")
    finally:
        conn.close()


def _first_page(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(65536)


def test_copier_copies_valid_pages_and_fails_on_stable_corruption(server, tmp_path):
    _flush_table(server, "sample.t_indexed")
    src = Path(server.datadir) / "sample" / "t_indexed.ibd"
    snapshot = tmp_path / "snap.ibd"
    shutil.copyfile(src, snapshot)
    info = space_info(_first_page(snapshot), server.flavor)
    ps = info.physical_page_size
    if validate_pages(snapshot.read_bytes()[: (snapshot.stat().st_size // ps) * ps], info, 0):
        pytest.fail("the snapshot of a quiet table should validate")  # cold copy of a quiet server
    sink = backup_target(tmp_path / "out")
    copier = FileCopier(sink, server.flavor, cancel=threading.Event(), chunk_size=1 << 16, retries=2,
                        retry_sleep=0.01)
    n = copier.copy(SourceFile(snapshot, "sample/t_indexed.ibd", "innodb"))
    assert n == snapshot.stat().st_size
    assert (tmp_path / "out/sample/t_indexed.ibd").read_bytes() == snapshot.read_bytes()

    bad = tmp_path / "bad.ibd"
    victim = _written_page(snapshot, ps)
    _corrupt_copy(snapshot, bad, victim, ps)
    with pytest.raises(Corrupt) as err:
        copier.copy(SourceFile(bad, "sample/bad.ibd", "innodb"))
    assert err.value.page == victim
    assert err.value.file == str(bad)
    assert "after 2 re-reads" in str(err.value)
    lsn = struct.unpack_from(">Q", snapshot.read_bytes(), victim * ps + 16)[0]
    assert err.value.lsn == lsn


def test_copier_rereads_a_torn_page_until_it_is_whole(mariadb10, tmp_path):
    _flush_table(mariadb10, "sample.t_plain")
    src = Path(mariadb10.datadir) / "sample" / "t_plain.ibd"
    good = tmp_path / "good.ibd"
    shutil.copyfile(src, good)
    ps = space_info(_first_page(good), "mariadb").physical_page_size
    torn = tmp_path / "torn.ibd"
    victim = _written_page(good, ps)
    orig = _corrupt_copy(good, torn, victim, ps)

    def heal() -> None:  # the "server" finishes writing the page while we retry
        time.sleep(0.15)
        with open(torn, "r+b") as f:
            f.seek(victim * ps + 200)
            f.write(orig)

    sink = backup_target(tmp_path / "out")
    copier = FileCopier(sink, "mariadb", cancel=threading.Event(), chunk_size=1 << 16, retries=10,
                        retry_sleep=0.05)
    t = threading.Thread(target=heal)
    t.start()
    copier.copy(SourceFile(torn, "t.ibd", "innodb"))
    t.join()
    assert copier.retried_pages == 1
    assert (tmp_path / "out/t.ibd").read_bytes() == good.read_bytes()


def test_copier_cancel_stops_between_chunks(mariadb10, tmp_path):
    src = Path(mariadb10.datadir) / "ibdata1"
    cancel = threading.Event()
    cancel.set()
    copier = FileCopier(backup_target(tmp_path / "out"), "mariadb", cancel=cancel)
    with pytest.raises(Interrupted):
        copier.copy(SourceFile(src, "ibdata1", "innodb", system=True))


def test_ddl_lock_blocks_ddl_until_released(server):
    s = _session(server)
    other = server.connect()
    try:
        facts = read_server_facts(s)
        locks = family(facts.flavor).backup_locks(s)
        locks.lock_ddl()
        with other.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 1")
            with pytest.raises(pymysql.err.OperationalError) as err:
                cur.execute("CREATE TABLE sample.t_lock_probe (id INT PRIMARY KEY) ENGINE=InnoDB")
            assert err.value.args[0] == 1205  # ER_LOCK_WAIT_TIMEOUT
            cur.execute("INSERT INTO sample.t_plain VALUES (900001, 'x', 'y', 1.00)")  # DML goes on
        with locks.block_commits(need_read_lock=True):
            status = family(facts.flavor).read_log_status(s, binlog=True)
            assert status.lsn >= status.checkpoint_lsn > 0
            assert status.binlog_file.startswith("binlog.")
            assert family(facts.flavor).current_lsn(s) >= status.checkpoint_lsn
        locks.release()
        locks.release()  # idempotent
        with other.cursor() as cur:
            cur.execute("CREATE TABLE sample.t_lock_probe (id INT PRIMARY KEY) ENGINE=InnoDB")
            cur.execute("DROP TABLE sample.t_lock_probe")
            cur.execute("DELETE FROM sample.t_plain WHERE id = 900001")
    finally:
        other.close()
        s.close()


def test_redo_consumer_registers_advances_and_unregisters_on_mysql(mysql9):
    args = {"unix_socket": str(mysql9.socket), "user": "root", "password": "", "autocommit": True}
    consumer = RedoConsumer(args)
    s = Session(args, "test")
    try:
        lsn = family("mysql").current_lsn(s)
        consumer.advance(lsn)
        assert consumer.advanced_to == lsn
        # A second consumer on another session shows that ours is still registered and working.
        with pytest.raises(SourceError):
            RedoConsumer(args)
    finally:
        consumer.close()
        s.close()
    # After unregistering, registering again succeeds.
    again = RedoConsumer(args)
    again.close()
    assert not again.registered


def test_redo_consumer_really_holds_back_redo_overwrite_on_mysql(fresh_server):
    """With our consumer registered and not advancing, a writer producing more redo than the capacity stalls
    instead of overwriting; advancing lets it go on. This is what keeps a slow backup from losing redo."""
    srv = fresh_server("mysql9", options=["--innodb-redo-log-capacity=8M"])
    args = {"unix_socket": str(srv.socket), "user": "root", "password": "", "autocommit": True}
    srv.execute("CREATE DATABASE c")
    srv.execute("CREATE TABLE c.t (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB")
    consumer = RedoConsumer(args, max_lag=600)  # held on purpose here (see test_server_safety for the bound)
    s = Session(args, "test")
    done = threading.Event()

    def writer() -> None:
        conn = srv.connect()
        try:
            with conn.cursor() as cur:
                for _ in range(30):  # ~30 MB of redo through an 8 MB log
                    cur.execute("INSERT INTO c.t (b) VALUES (REPEAT('x', 1000000))")
        finally:
            conn.close()
            done.set()

    try:
        start = family("mysql").current_lsn(s)
        threading.Thread(target=writer, daemon=True).start()
        assert not done.wait(5), "the writer should stall behind our consumer"
        stalled_at = family("mysql").current_lsn(s) - start
        assert stalled_at < 8 << 20
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            consumer.advance(family("mysql").current_lsn(s))
            time.sleep(0.1)
        assert done.is_set()
        assert family("mysql").current_lsn(s) - start > 25 << 20
    finally:
        consumer.close()
        s.close()


def test_refuses_mysql_with_redo_logging_disabled(mysql9):
    mysql9.execute("ALTER INSTANCE DISABLE INNODB REDO_LOG")
    s = _session(mysql9)
    try:
        with pytest.raises(SourceError, match="redo logging is disabled"):
            read_server_facts(s)
    finally:
        mysql9.execute("ALTER INSTANCE ENABLE INNODB REDO_LOG")
        s.close()


def test_progress_line_and_live_rendering():
    import io

    from innostream.progress import Progress, human_bytes

    out = io.StringIO()
    p = Progress(4 << 20, 4, live=True, stream=out)
    try:
        p.add(1 << 20)
        p.file_done()
        p.set_redo(1000, 1000 + (3 << 20))
        line = p.line()
        assert line.startswith("1.0 MiB/4.0 MiB  25% 1/4 files")
        assert "redo lag 3.0 MiB" in line
        p.render()
        assert out.getvalue().startswith("\r1.0 MiB/4.0 MiB")
        p.clear()
        assert out.getvalue().endswith("\r\x1b[K")
    finally:
        p.close()
    assert human_bytes(512) == "512 B"
    quiet = Progress(1, 1, live=False, stream=out)
    before = out.getvalue()
    quiet.render()
    assert out.getvalue() == before
