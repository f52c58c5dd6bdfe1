"""``innostream backup --incremental-basedir/--incremental-lsn`` against the real servers.

What is proved here (the chain's prepare is tests/test_incremental_prepare*.py): the delta contents — every page
of a ``.delta`` is newer than the base, validates, and equals the live page when the live page has not changed
since the backup started; every live page newer than the base and older than the backup's start is in the delta;
``.meta`` says the live page size and space id; every tablespace has its ``.delta``/``.meta`` (a dropped one none,
a new one whole); the metadata files say incremental; directory, innostream and xbstream outputs; an archive as
the base; real ``mariadb-backup --prepare --incremental-dir`` accepts our MariaDB incremental; and the refusals.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from innostream.backup import BackupConfig, BackupResult, run_backup
from innostream.connection import ConnectionOptions
from innostream.formats import xtrabackup_meta as meta
from innostream.formats.buf0checksum import validate_pages
from innostream.formats.fsp0fsp import space_info
from innostream.formats.xtrabackup_delta import iter_delta, parse_meta
from innostream.incremental import IncrementalBaseError

from tools.sandbox import start_server

INNOSTREAM = [sys.executable, "-m", "innostream"]
SCHEMA = "incb"


def _config(srv, **kw) -> BackupConfig:
    return BackupConfig(connection=ConnectionOptions(socket=str(srv.socket), user="root", password=""),
                        datadir=Path(srv.datadir), **kw)


def _tablespaces(tree: Path) -> set[str]:
    """The InnoDB files of a full backup or of the live datadir, as names relative to it."""
    out = {p.relative_to(tree).as_posix() for p in tree.rglob("*.ibd")}
    out |= {p.name for p in tree.iterdir() if p.is_file() and (p.name.startswith(("ibdata", "undo_"))
                                                              or (p.name[:4] == "undo" and p.name[4:].isdigit()))}
    return {n for n in out if not n.startswith("#")}


def _delta_names(inc: Path) -> set[str]:
    return {p.relative_to(inc).as_posix().removesuffix(".delta") for p in inc.rglob("*.delta")}


def _doublewrite(name: str, page_no: int) -> bool:
    """The doublewrite area of ibdata1 (16K pages 64..191): copies of other pages, rewritten at any time."""
    return name == "ibdata1" and 64 <= page_no < 192


def check_deltas(inc: Path, srv, from_lsn: int, start_lsn: int) -> int:
    """The delta contents against the live files; returns the number of pages checked."""
    checked = 0
    for name in sorted(_delta_names(inc)):
        live = Path(srv.datadir) / name
        m = parse_meta((inc / f"{name}.meta").read_bytes())
        with open(live, "rb") as f:
            head = f.read(65536)
            info = space_info(head, srv.flavor) if not name.startswith("ibdata") or name == "ibdata1" else None
            if info is not None:
                assert m.space_id == info.space_id, name
                assert m.page_size == info.physical_page_size, name
                assert m.zip_size == info.zip_size, name
                if srv.flavor == "mysql":
                    assert m.space_flags == info.flags, name
            ps = m.physical_page_size
            pages = dict(iter_delta((inc / f"{name}.delta").read_bytes(), ps, file=name))
            seen: set[int] = set()
            for no, image in pages.items():
                assert no not in seen, f"{name}: page {no} twice"
                seen.add(no)
                lsn = struct.unpack_from(">Q", image, 16)[0]
                assert lsn > from_lsn, f"{name} page {no}: LSN {lsn} is not newer than the base {from_lsn}"
                if _doublewrite(name, no):
                    continue
                if info is not None:
                    assert not validate_pages(image, info, no), (name, no)
                f.seek(no * ps)
                now = f.read(ps)
                now_lsn = struct.unpack_from(">Q", now, 16)[0]
                assert now_lsn >= lsn, f"{name} page {no}: the delta's page is newer than the live one"
                if now_lsn < start_lsn:
                    assert bytes(image) == now, f"{name} page {no}: differs from the unchanged live page"
            # Completeness: a live page newer than the base, unchanged since the backup started, is in the delta.
            f.seek(0)
            no = 0
            while page := f.read(ps):
                if len(page) == ps and not _doublewrite(name, no):
                    lsn = struct.unpack_from(">Q", page, 16)[0]
                    if from_lsn < lsn < start_lsn:
                        assert no in pages, f"{name} page {no} (LSN {lsn}) changed since the base but is missing"
                no += 1
            checked += no
    return checked


def _from_lsn_of(base: BackupResult, srv) -> int:
    """Where an incremental on ``base`` starts: MySQL, the base's start checkpoint (a MySQL chain is prepared by
    laying the deltas over each other, docs/PREPARE.md); MariaDB, the base's to_lsn, as the tools do."""
    return base.start_lsn if srv.flavor == "mysql" else base.to_lsn


def check_incremental_metadata(inc: Path, base_to_lsn: int, res: BackupResult, srv) -> None:
    cp = meta.parse_checkpoints((inc / "xtrabackup_checkpoints").read_bytes())
    assert cp.backup_type == "incremental"
    assert cp.from_lsn == base_to_lsn == res.from_lsn
    assert res.start_lsn <= cp.to_lsn <= cp.last_lsn == res.end_lsn
    info = meta.parse_info((inc / "xtrabackup_info").read_bytes())
    assert info["incremental"] == "Y"
    assert info["innodb_from_lsn"] == str(base_to_lsn)
    if srv.flavor == "mysql":
        assert info["server_uuid"] == srv.query("SELECT @@server_uuid")[0][0]
    assert (inc / ("ib_logfile0" if srv.flavor == "mariadb" else "xtrabackup_logfile")).stat().st_size > 0
    assert (inc / "backup-my.cnf").is_file()


@pytest.fixture
def schema(server):
    server.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")
    server.execute_script([
        f"CREATE DATABASE {SCHEMA}",
        f"CREATE TABLE {SCHEMA}.kept (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB",
        f"INSERT INTO {SCHEMA}.kept VALUES " + ", ".join(f"({i}, REPEAT('b', 150))" for i in range(1, 2001)),
        f"CREATE TABLE {SCHEMA}.dropped (id INT PRIMARY KEY) ENGINE=InnoDB",
        f"INSERT INTO {SCHEMA}.dropped VALUES (1)",
        f"CREATE TABLE {SCHEMA}.untouched (id INT PRIMARY KEY) ENGINE=InnoDB",
        f"INSERT INTO {SCHEMA}.untouched VALUES (1)",
    ])
    server.flush_dirty()
    yield server
    server.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")


def test_incremental_to_dir_delta_contents(schema, tmp_path):
    """Base, changes (update, drop, create), incremental to a directory: the deltas hold exactly the new pages."""
    srv = schema
    base, inc = tmp_path / "base", tmp_path / "inc"
    base_res = run_backup(_config(srv, target_dir=base))
    srv.execute_script([f"UPDATE {SCHEMA}.kept SET v = REPEAT('i', 150) WHERE id % 97 = 0",
                        f"DROP TABLE {SCHEMA}.dropped",
                        f"CREATE TABLE {SCHEMA}.created (id INT PRIMARY KEY) ENGINE=InnoDB",
                        f"INSERT INTO {SCHEMA}.created VALUES (1), (2)"])
    srv.flush_dirty()
    res = run_backup(_config(srv, target_dir=inc, incremental_basedir=str(base)))
    check_incremental_metadata(inc, _from_lsn_of(base_res, srv), res, srv)
    # Every tablespace of the server: as .delta + .meta, or whole as .new (MariaDB, page 0 not written yet).
    live = _tablespaces(Path(srv.datadir))
    news = {p.relative_to(inc).as_posix()[:-4] + ".ibd" for p in inc.rglob("*.new")}
    assert _delta_names(inc) | news == live
    assert not news & _delta_names(inc)
    assert all((inc / f"{n}.meta").is_file() for n in _delta_names(inc))
    assert not list(inc.rglob("*.ibd")), "an incremental holds no whole .ibd"
    assert f"{SCHEMA}/dropped.ibd" in _tablespaces(base)
    assert not (inc / SCHEMA / "dropped.ibd.delta").exists()
    assert f"{SCHEMA}/created.ibd" in _delta_names(inc) | news
    assert check_deltas(inc, srv, _from_lsn_of(base_res, srv), res.start_lsn) > 100
    kept = dict(iter_delta((inc / SCHEMA / "kept.ibd.delta").read_bytes(), 16384))
    assert kept, "the updated rows' pages are in the delta"
    delta_bytes = sum(p.stat().st_size for p in inc.rglob("*.delta"))
    assert delta_bytes < sum((base / n).stat().st_size for n in _tablespaces(base)) / 2
    # An unchanged tablespace: a lone XTRA header, as mariadb-backup writes it.
    assert (inc / SCHEMA / "untouched.ibd.delta").read_bytes() == b"XTRA" + b"\xff" * 4 + bytes(16384 - 8)


def _extract(archive: Path, out: Path) -> None:
    with open(archive, "rb") as f:
        r = subprocess.run([*INNOSTREAM, "extract", "-C", str(out)], stdin=f, capture_output=True, text=True,
                           check=False)
    assert r.returncode == 0, r.stderr[-2000:]


def test_incremental_streams_and_archive_base(mariadb11, tmp_path):
    """Both stream formats carry the deltas; an innostream archive (and an xbstream) is a base as good as a dir."""
    srv = mariadb11
    full = tmp_path / "full.isx"
    with open(full, "wb") as out:
        base_res = run_backup(_config(srv), out)
    srv.execute("UPDATE sample.t_plain SET amount = amount + 1 WHERE id < 30")
    srv.flush_dirty()
    results = {}
    for fmt in ("innostream", "xbstream"):
        archive = tmp_path / f"inc.{fmt}"
        with open(archive, "wb") as out:
            res = run_backup(_config(srv, stream_format=fmt, incremental_basedir=str(full)), out)
        assert res.from_lsn == base_res.to_lsn
        results[fmt] = res
        tree = tmp_path / f"x-{fmt}"
        if fmt == "innostream":
            _extract(archive, tree)
        else:
            tree.mkdir()
            with open(archive, "rb") as f:
                subprocess.run(["mbstream", "-x", "-C", str(tree)], stdin=f, check=True)
        check_incremental_metadata(tree, base_res.to_lsn, res, srv)
        assert _delta_names(tree) == _tablespaces(Path(srv.datadir))
        assert check_deltas(tree, srv, base_res.to_lsn, res.start_lsn) > 100
        assert dict(iter_delta((tree / "sample/t_plain.ibd.delta").read_bytes(), 16384))
    # The incremental archive is itself the base of the next one: its trailer's to_lsn is the new from_lsn.
    inc2 = tmp_path / "inc2"
    res2 = run_backup(_config(srv, target_dir=inc2, incremental_basedir=str(tmp_path / "inc.xbstream")))
    assert res2.from_lsn == results["xbstream"].to_lsn
    res3 = run_backup(_config(srv, target_dir=tmp_path / "inc3", incremental_basedir=str(tmp_path / "inc.innostream")))
    assert res3.from_lsn == results["innostream"].to_lsn


#: The flavour's own mariadb-backup: the host's for 10.11, the sid chroot's for 11.8 (only /tmp is shared with it).
MARIADB_BACKUP = {"mariadb10": ["mariadb-backup"],
                  "mariadb11": [str(Path(__file__).resolve().parent.parent / "tools" / "server-wrappers"
                                    / "mariadb-backup-sid")]}


@pytest.mark.parametrize("kind", ["mariadb10", "mariadb11"])
def test_mariadb_backup_prepares_our_incremental(kind, request, tmp_path):
    """Interop: real ``mariadb-backup --prepare`` then ``--prepare --incremental-dir`` on our base + incremental
    gives the live tables (CHECKSUM TABLE), with a table created, one dropped, one rebuilt, one created just before
    the incremental (MariaDB has not written its page 0 yet: it comes whole as ``.new``)."""
    srv = request.getfixturevalue(kind)
    srv.execute_script([f"DROP DATABASE IF EXISTS {SCHEMA}i", f"CREATE DATABASE {SCHEMA}i",
                        f"CREATE TABLE {SCHEMA}i.kept (id INT PRIMARY KEY, v VARCHAR(50))",
                        f"INSERT INTO {SCHEMA}i.kept VALUES (1, 'base'), (2, 'base')",
                        f"CREATE TABLE {SCHEMA}i.dropped (id INT PRIMARY KEY)",
                        f"CREATE TABLE {SCHEMA}i.rebuilt (id INT PRIMARY KEY, v INT)",
                        f"INSERT INTO {SCHEMA}i.rebuilt VALUES (1, 1)"])
    try:
        base, inc = tmp_path / "base", tmp_path / "inc"
        run_backup(_config(srv, target_dir=base))
        srv.execute_script([f"UPDATE {SCHEMA}i.kept SET v = 'inc' WHERE id = 2",
                            f"INSERT INTO {SCHEMA}i.kept VALUES (3, 'inc')",
                            f"DROP TABLE {SCHEMA}i.dropped", f"ALTER TABLE {SCHEMA}i.rebuilt FORCE",
                            f"CREATE TABLE {SCHEMA}i.created (id INT PRIMARY KEY)",
                            f"INSERT INTO {SCHEMA}i.created VALUES (7)",
                            "UPDATE sample.t_plain SET amount = amount + 1 WHERE id <= 40"])
        srv.flush_dirty()
        srv.execute_script([f"CREATE TABLE {SCHEMA}i.created_late (id INT PRIMARY KEY)",
                            f"INSERT INTO {SCHEMA}i.created_late VALUES (42)"])
        run_backup(_config(srv, target_dir=inc, incremental_basedir=str(base)))
        tables = [f"{SCHEMA}i.{t}" for t in ("kept", "rebuilt", "created", "created_late")] + [
            f"sample.{t}" for t in ("t_plain", "t_indexed", "t_compressed", "t_blob", "t_partitioned", "t_myisam")]
        expected = srv.query(f"CHECKSUM TABLE {', '.join(tables)}")
        for args in (["--prepare", f"--target-dir={base}"],
                     ["--prepare", f"--target-dir={base}", f"--incremental-dir={inc}"]):
            r = subprocess.run([*MARIADB_BACKUP[kind], *args], capture_output=True, text=True, timeout=300,
                               check=False)
            assert r.returncode == 0, r.stderr[-3000:]
            assert "completed OK!" in r.stderr
        assert not (base / f"{SCHEMA}i" / "dropped.ibd").exists()
        restored = start_server(kind, tmp_path / "restored", datadir=base, initialize=False)
        try:
            assert restored.query(f"CHECKSUM TABLE {', '.join(tables)}") == expected
            assert all(row[3] == "OK" for row in restored.query(f"CHECK TABLE {', '.join(tables)}"))
        finally:
            restored.stop()
    finally:
        srv.execute(f"DROP DATABASE IF EXISTS {SCHEMA}i")


# --- refusals ------------------------------------------------------------------------------------------------------


def _edited_base(src: Path, dst: Path, *edits: tuple[str, str, str]) -> Path:
    """A copy of a real base's metadata with values changed (what a base of another server would say)."""
    dst.mkdir()
    for name in ("xtrabackup_checkpoints", "xtrabackup_info", "backup-my.cnf"):
        shutil.copy(src / name, dst / name)
    for file, old, new in edits:
        text = (dst / file).read_text()
        assert old in text, (file, old)
        (dst / file).write_text(text.replace(old, new, 1))
    return dst


def test_refusals_before_anything_is_written(mysql9, tmp_path):
    """A base from another server (server_uuid, flavor, page size), newer than the server, incomplete or cut: one
    line, exit 4, nothing written. A prepared base is accepted."""
    srv = mysql9
    base = tmp_path / "base"
    run_backup(_config(srv, target_dir=base))
    cp = meta.parse_checkpoints((base / "xtrabackup_checkpoints").read_bytes())
    uuid = srv.query("SELECT @@server_uuid")[0][0]
    other = "00000000-0000-0000-0000-000000000000"
    info = (base / "xtrabackup_info").read_text()
    version = next(line.split(" = ", 1)[1] for line in info.splitlines() if line.startswith("server_version = "))
    cases = {
        "uuid": (_edited_base(base, tmp_path / "b1",
                              ("xtrabackup_info", f"server_uuid = {uuid}", f"server_uuid = {other}"),
                              ("backup-my.cnf", f"server_uuid={uuid}", f"server_uuid={other}")),
                 f"is from server_uuid {other}; this server is {uuid}"),
        "flavor": (_edited_base(base, tmp_path / "b2", ("xtrabackup_info", f"server_version = {version}",
                                                        "server_version = 10.11.19-MariaDB-log")),
                   "is a MariaDB backup"),
        "page size": (_edited_base(base, tmp_path / "b3", ("backup-my.cnf", "innodb_page_size=16384",
                                                           "innodb_page_size=8192")),
                      "has innodb_page_size 8192; this server has 16384"),
        "newer": (_edited_base(base, tmp_path / "b4", ("xtrabackup_checkpoints", f"to_lsn = {cp.to_lsn}",
                                                       f"to_lsn = {cp.to_lsn * 1000}")),
                  "after this server's checkpoint"),
        "incomplete": (tmp_path / "b5", "is not a complete backup: no xtrabackup_checkpoints"),
    }
    (tmp_path / "b5").mkdir()
    shutil.copy(base / "xtrabackup_info", tmp_path / "b5")
    for why, (bad, message) in cases.items():
        target = tmp_path / f"t-{why.replace(' ', '-')}"
        with pytest.raises(IncrementalBaseError, match=message):
            run_backup(_config(srv, target_dir=target, incremental_basedir=str(bad)))
        assert not target.exists(), why
    # Through the CLI: one line, exit 4.
    r = subprocess.run([*INNOSTREAM, "backup", "--socket", str(srv.socket), "--user", "root", "--target-dir",
                        str(tmp_path / "t-cli"), "--incremental-basedir", str(tmp_path / "b4")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 4
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr[-2000:]
    assert "after this server's checkpoint" in errors[0]
    for lsn, message in (("0", "out of range"), ("12ab", "is not an LSN")):
        r = subprocess.run([*INNOSTREAM, "backup", "--socket", str(srv.socket), "--target-dir",
                            str(tmp_path / "t-lsn"), "--incremental-lsn", lsn], capture_output=True, text=True,
                           check=False)
        assert r.returncode == 2, r.stderr
        assert message in r.stderr
    assert not (tmp_path / "t-lsn").exists()
    # A prepared base keeps its to_lsn: accepted; so is --incremental-lsn with that LSN.
    prepared = _edited_base(base, tmp_path / "b6", ("xtrabackup_checkpoints", "backup_type = full-backuped",
                                                    "backup_type = full-prepared"))
    res = run_backup(_config(srv, target_dir=tmp_path / "inc-prepared", incremental_basedir=str(prepared)))
    # MySQL: from the base's start checkpoint, which the checkpoint may have moved past while the base was copied.
    assert res.from_lsn == int(dict(cp.extra)["start_lsn"]) <= cp.to_lsn
    res = run_backup(_config(srv, target_dir=tmp_path / "inc-lsn", incremental_lsn=cp.to_lsn))
    assert meta.parse_checkpoints((tmp_path / "inc-lsn" / "xtrabackup_checkpoints").read_bytes()).from_lsn == cp.to_lsn


def test_cut_archive_base_is_refused(mariadb10, tmp_path):
    srv = mariadb10
    full = tmp_path / "full.isx"
    with open(full, "wb") as out:
        run_backup(_config(srv), out)
    cut = tmp_path / "cut.isx"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(IncrementalBaseError, match="is not a complete backup"):
        run_backup(_config(srv, target_dir=tmp_path / "t", incremental_basedir=str(cut)))
    assert not (tmp_path / "t").exists()
    with pytest.raises(IncrementalBaseError, match="does not exist"):
        run_backup(_config(srv, target_dir=tmp_path / "t", incremental_basedir=str(tmp_path / "nothing")))


def test_mysql_page_tracking(mysql9, tmp_path, caplog):
    """With component_mysqlbackup tracking since before the base, the incremental reads only the listed pages and
    its deltas are complete (check_deltas); a later full-scan incremental finds no page it missed; a base older
    than the tracking falls back to the scan with a note."""
    srv = mysql9
    installed = srv.query("SELECT COUNT(*) FROM mysql.component WHERE component_urn = 'file://component_mysqlbackup'")
    if not installed[0][0]:
        srv.execute("INSTALL COMPONENT 'file://component_mysqlbackup'")
    try:
        since = int(srv.query("SELECT mysqlbackup_page_track_set(1)")[0][0])
        srv.execute("UPDATE sample.t_plain SET amount = amount + 1 WHERE id < 20")
        srv.flush_dirty()  # the base's checkpoint is past the start of the tracking
        base = tmp_path / "base"
        base_res = run_backup(_config(srv, target_dir=base, page_tracking=True))
        assert since <= base_res.to_lsn
        srv.execute_script(["UPDATE sample.t_plain SET amount = amount + 1 WHERE id < 200",
                            f"CREATE DATABASE IF NOT EXISTS {SCHEMA}",
                            f"CREATE TABLE {SCHEMA}.tracked_new (id INT PRIMARY KEY, v VARCHAR(100))",
                            f"INSERT INTO {SCHEMA}.tracked_new VALUES (1, 'a'), (2, 'b')"])
        srv.flush_dirty()
        tracked, scanned = tmp_path / "tracked", tmp_path / "scanned"
        res = run_backup(_config(srv, target_dir=tracked, incremental_basedir=str(base), page_tracking=True))
        assert res.page_tracking
        assert check_deltas(tracked, srv, base_res.to_lsn, res.start_lsn) > 100
        res2 = run_backup(_config(srv, target_dir=scanned, incremental_basedir=str(base)))
        assert not res2.page_tracking
        assert _delta_names(tracked) == _delta_names(scanned)
        changed = 0
        for name in _delta_names(scanned):
            ps = parse_meta((scanned / f"{name}.meta").read_bytes()).physical_page_size
            a = {no for no, _ in iter_delta((tracked / f"{name}.delta").read_bytes(), ps)}
            b = {no for no, _ in iter_delta((scanned / f"{name}.delta").read_bytes(), ps)}
            assert a <= b, f"{name}: the tracked incremental has pages the scan does not: {sorted(a - b)[:5]}"
            changed += len(a)
        assert changed > 5
        assert dict(iter_delta((tracked / "sample/t_plain.ibd.delta").read_bytes(), 16384))
        # A base from before the tracking started: every page is scanned, with a note.
        caplog.set_level("INFO", logger="innostream")
        res3 = run_backup(_config(srv, target_dir=tmp_path / "old", incremental_lsn=since - 1, page_tracking=True))
        assert not res3.page_tracking
        assert any("after the base's LSN" in r.getMessage() and "scanning every page" in r.getMessage()
                   for r in caplog.records)
    finally:
        srv.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")
        if not installed[0][0]:
            srv.execute("UNINSTALL COMPONENT 'file://component_mysqlbackup'")


def test_s3_archive_as_the_base(mariadb10, objstore, tmp_path):
    """``--incremental-basedir s3://BUCKET/KEY``: the base archive is read from object storage (read-only)."""
    import os

    from innostream.incremental import resolve_base

    env = {**os.environ, **objstore.env()}
    conn = ["--socket", str(mariadb10.socket), "--user", "root", "--datadir", str(mariadb10.datadir)]
    key = f"s3://backups/incremental-base-{tmp_path.name}"
    r = subprocess.run([*INNOSTREAM, "backup", *conn, "--stream", "--to", key], capture_output=True, text=True,
                       env=env, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    inc = tmp_path / "inc"
    r = subprocess.run([*INNOSTREAM, "backup", *conn, "--target-dir", str(inc), "--incremental-basedir", key],
                       capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    local = tmp_path / "base.inno"
    with open(local, "wb") as f:
        subprocess.run([*INNOSTREAM, "get", key], stdout=f, env=env, check=True)
    base = resolve_base(local, None)
    assert base is not None
    cp = meta.parse_checkpoints((inc / "xtrabackup_checkpoints").read_bytes())
    assert (cp.backup_type, cp.from_lsn) == ("incremental", base.from_lsn)
    r = subprocess.run([*INNOSTREAM, "backup", *conn, "--target-dir", str(tmp_path / "x"), "--incremental-basedir",
                        key + "-missing"], capture_output=True, text=True, env=env, check=False)
    assert r.returncode != 0
    assert not (tmp_path / "x").exists()


def test_delta_pages_are_still_validated(mariadb10, tmp_path):
    """In incremental mode (full scan and tracked list alike) a torn page is re-read and a corrupt one fails the
    backup with its page number and LSN; the LSN filter keeps exactly the pages newer than the base."""
    import threading

    from innostream.backup import backup_target
    from innostream.copier import FileCopier, SourceFile
    from innostream.errors import Corrupt

    from tests.test_backup_parts import _corrupt_copy, _flush_table, _written_page

    _flush_table(mariadb10, "sample.t_plain")
    good = tmp_path / "good.ibd"
    shutil.copyfile(Path(mariadb10.datadir) / "sample" / "t_plain.ibd", good)
    data = good.read_bytes()
    info = space_info(data[:65536], "mariadb")
    ps = info.physical_page_size
    victim = _written_page(good, ps)
    lsns = {no: struct.unpack_from(">Q", data, no * ps + 16)[0] for no in range(len(data) // ps)}
    cut = sorted(set(lsns.values()))[len(set(lsns.values())) // 2]  # about half the pages are newer
    newer = sorted(no for no, lsn in lsns.items() if lsn > cut)
    for tracked in (None, {info.space_id: [victim, *newer]}):
        out = tmp_path / f"out-{tracked is not None}"
        copier = FileCopier(backup_target(out), "mariadb", cancel=threading.Event(), chunk_size=1 << 16, retries=2,
                            retry_sleep=0.01, incremental_lsn=cut, tracked=tracked)
        copier.copy(SourceFile(good, "t.ibd", "innodb"))
        pages = dict(iter_delta((out / "t.ibd.delta").read_bytes(), ps))
        assert sorted(pages) == newer
        assert all(bytes(img) == data[no * ps : (no + 1) * ps] for no, img in pages.items())
        assert parse_meta((out / "t.ibd.meta").read_bytes()).space_id == info.space_id
        bad = tmp_path / f"bad-{tracked is not None}.ibd"
        _corrupt_copy(good, bad, victim, ps)
        with pytest.raises(Corrupt) as err:
            copier.copy(SourceFile(bad, "bad.ibd", "innodb"))
        assert err.value.page == victim
        assert err.value.lsn == lsns[victim]
