"""``verify`` of an incremental backup checks the pages inside its ``.delta`` members, not only their frames.

The deltas come from real servers (MariaDB 10.11 and MySQL 9.7 through innostream, MariaDB 10.11 through the real
``mariadb-backup``); the damaged cases are those real files with one byte changed or cut.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from innostream.backup import BackupConfig, run_backup
from innostream.connection import ConnectionOptions
from innostream.extract import PageValidation
from innostream.formats import archive as fa
from innostream.formats.fil0fil import FIL_PAGE_LSN
from innostream.formats.xtrabackup_delta import iter_delta, parse_meta

INNOSTREAM = [sys.executable, "-m", "innostream"]
SCHEMA = "vdelta"


def _config(srv, **kw) -> BackupConfig:
    return BackupConfig(connection=ConnectionOptions(socket=str(srv.socket), user="root", password=""),
                        datadir=Path(srv.datadir), **kw)


def _changes(srv) -> None:
    srv.execute(f"UPDATE {SCHEMA}.t SET v = REPEAT('u', 180) WHERE id % 13 = 0")
    srv.flush_dirty()


@pytest.fixture
def base(request, tmp_path):
    """A server with a table, a full backup of it, then changes: what an incremental has to carry."""
    srv = request.getfixturevalue(request.param)
    srv.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")
    srv.execute_script([
        f"CREATE DATABASE {SCHEMA}",
        f"CREATE TABLE {SCHEMA}.t (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB",
        f"INSERT INTO {SCHEMA}.t VALUES " + ", ".join(f"({i}, REPEAT('b', 180))" for i in range(1, 3001)),
    ])
    srv.flush_dirty()
    full = tmp_path / "full"
    run_backup(_config(srv, target_dir=full))
    _changes(srv)
    yield srv, full
    srv.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")


def _verify(archive: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*INNOSTREAM, "verify", *extra, str(archive)], capture_output=True, text=True, check=False)


def _checked(stderr: str) -> int:
    m = re.search(r"(\d+) InnoDB pages checked", stderr)
    assert m, stderr[-2000:]
    return int(m.group(1))


def _feed(files: dict[str, bytes], flavor: str | None) -> PageValidation:
    """The observers of ``verify`` over members given in order, each fed in one piece."""
    pv = PageValidation(flavor)
    for name, data in files.items():
        obs = pv(name, {})
        if obs is not None:
            obs.feed(0, data)
            obs.finish(len(data))
    return pv


@pytest.mark.parametrize("base", ["mariadb10", "mysql9"], indirect=True)
def test_verify_checks_the_pages_of_our_deltas(base, tmp_path):
    srv, full = base
    archive = tmp_path / "inc.isx"
    with open(archive, "wb") as out:
        res = run_backup(_config(srv, incremental_basedir=str(full)), out)
    assert res.delta_pages > 0
    # The stream header says the server's page size (how verify cuts a tablespace whose page 0 is unwritten).
    with open(archive, "rb") as f:
        fixed = f.read(fa.STREAM_HEADER_SIZE)
        header = fa.parse_stream_header(fixed, f.read(fa.parse_stream_header_fixed(fixed)[3]))
    assert header.meta["page_size"] == int(srv.query("SELECT @@innodb_page_size")[0][0])
    r = _verify(archive)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "did not come before" not in r.stderr
    # Every delta page is checked: the count is at least the pages the backup put into .delta files.
    assert _checked(r.stderr) >= res.delta_pages
    # Each .meta precedes its .delta in the stream (what lets verify check the delta as it passes).
    r = subprocess.run([*INNOSTREAM, "list", str(archive)], capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in r.stdout.splitlines() if line.strip()]
    deltas = [n for n in names if n.endswith(".delta")]
    assert deltas
    for d in deltas:
        assert names.index(d[: -len(".delta")] + ".meta") < names.index(d), d


@pytest.mark.parametrize("base", ["mariadb10"], indirect=True)
def test_damaged_delta_is_reported(base, tmp_path):
    """The real delta of a changed table: clean, then one byte of a page flipped, cut short, or without .meta."""
    srv, full = base
    inc = tmp_path / "inc"
    run_backup(_config(srv, target_dir=inc, incremental_basedir=str(full)))
    meta = (inc / SCHEMA / "t.ibd.meta").read_bytes()
    delta = (inc / SCHEMA / "t.ibd.delta").read_bytes()
    ps = parse_meta(meta).physical_page_size
    pages = list(iter_delta(delta, ps))
    assert len(pages) >= 2
    clean = _feed({f"{SCHEMA}/t.ibd.meta": meta, f"{SCHEMA}/t.ibd.delta": delta}, "mariadb")
    [v] = clean.validators
    assert (v.pages, v.bad, v.error, v.note) == (len(pages), [], None, None)
    # Without a flavor (an xbstream of unknown dialect): the .meta and the pages still tell enough.
    [v] = _feed({f"{SCHEMA}/t.ibd.meta": meta, f"{SCHEMA}/t.ibd.delta": delta}, None).validators
    assert (v.pages, v.bad, v.error) == (len(pages), [], None)

    # One byte of the second page image changed (not its LSN): that page, by number.
    no, _ = pages[1]
    flipped = bytearray(delta)
    flipped[ps * 2 + FIL_PAGE_LSN + 200] ^= 0x40
    [v] = _feed({f"{SCHEMA}/t.ibd.meta": meta, f"{SCHEMA}/t.ibd.delta": bytes(flipped)}, "mariadb").validators
    assert [b[0] for b in v.bad] == [no], v.bad

    # Cut inside the last page, and cut at a page boundary before the end.
    for cut in (len(delta) - 100, len(delta) - ps):
        [v] = _feed({f"{SCHEMA}/t.ibd.meta": meta, f"{SCHEMA}/t.ibd.delta": delta[:cut]}, "mariadb").validators
        assert "ends inside a page" in str(v.error) or "cut short" in str(v.error), v.error
    # A wrong magic in the cluster header.
    [v] = _feed({f"{SCHEMA}/t.ibd.meta": meta, f"{SCHEMA}/t.ibd.delta": b"nope" + delta[4:]}, "mariadb").validators
    assert "magic" in str(v.error).lower(), v.error
    # The only cluster marked as followed by another (xtra), though not full.
    [v] = _feed({f"{SCHEMA}/t.ibd.meta": meta, f"{SCHEMA}/t.ibd.delta": b"xtra" + delta[4:]}, "mariadb").validators
    assert "is not the last, but not full" in str(v.error), v.error
    # Bytes after the last cluster.
    [v] = _feed({f"{SCHEMA}/t.ibd.meta": meta, f"{SCHEMA}/t.ibd.delta": delta + bytes(ps)}, "mariadb").validators
    assert "after the last cluster" in str(v.error), v.error
    # The .meta after its .delta (innostream before 2026-12): not checked, and said so.
    [v] = _feed({f"{SCHEMA}/t.ibd.delta": delta, f"{SCHEMA}/t.ibd.meta": meta}, "mariadb").validators
    assert v.pages == 0
    assert "did not come before" in str(v.note)


@pytest.mark.parametrize("base", ["mariadb10"], indirect=True)
def test_verify_fails_on_a_damaged_delta_in_a_stream(base, tmp_path):
    """End to end: an xbstream incremental whose delta page was damaged before it was streamed fails ``verify``
    with exit 3 and names the file and the page."""
    srv, full = base
    inc = tmp_path / "inc"
    run_backup(_config(srv, target_dir=inc, incremental_basedir=str(full)))
    delta_path = inc / SCHEMA / "t.ibd.delta"
    delta = bytearray(delta_path.read_bytes())
    ps = parse_meta((inc / SCHEMA / "t.ibd.meta").read_bytes()).physical_page_size
    no = next(iter_delta(bytes(delta), ps))[0]
    delta[ps + 300] ^= 0x01
    delta_path.write_bytes(bytes(delta))
    # xbstream's own writer, meta first as mariadb-backup writes it.
    members = [SCHEMA + "/t.ibd.meta", SCHEMA + "/t.ibd.delta"]
    with open(tmp_path / "inc.xbstream", "wb") as out:
        subprocess.run(["mbstream", "-c", *members], cwd=inc, stdout=out, check=True)
    r = _verify(tmp_path / "inc.xbstream", "--flavor", "mariadb")
    assert r.returncode == 3, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "corrupt page" in line]
    assert errors, r.stderr[-2000:]
    assert f"{SCHEMA}/t.ibd.delta page {no}" in errors[0], r.stderr[-2000:]
    # The same with the .meta after the .delta (an older innostream's order): the pages cannot be checked as they
    # pass, and verify says so in one line rather than calling them good.
    with open(tmp_path / "old.xbstream", "wb") as out:
        subprocess.run(["mbstream", "-c", *reversed(members)], cwd=inc, stdout=out, check=True)
    r = _verify(tmp_path / "old.xbstream", "--flavor", "mariadb")
    assert r.returncode == 0, r.stderr[-2000:]
    late = [line for line in r.stderr.splitlines() if "did not come before" in line]
    assert len(late) == 1, r.stderr[-2000:]
    assert f"1 .delta file(s), first {SCHEMA}/t.ibd.delta" in late[0]


def test_verify_checks_mariadb_backup_deltas(mariadb10, tmp_path):
    """A real mariadb-backup incremental xbstream: its .meta comes first too, so verify checks its delta pages."""
    srv = mariadb10
    srv.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")
    srv.execute_script([
        f"CREATE DATABASE {SCHEMA}",
        f"CREATE TABLE {SCHEMA}.t (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB",
        f"INSERT INTO {SCHEMA}.t VALUES " + ", ".join(f"({i}, REPEAT('b', 180))" for i in range(1, 3001)),
    ])
    try:
        srv.flush_dirty()
        full = tmp_path / "full"
        run_backup(_config(srv, target_dir=full))
        _changes(srv)
        archive = tmp_path / "mb-inc.xbstream"
        with open(archive, "wb") as out:
            r = subprocess.run(["mariadb-backup", "--backup", "--stream=xbstream", f"--socket={srv.socket}",
                                "--user=root", f"--incremental-basedir={full}", f"--target-dir={tmp_path / 'mbt'}"],
                               stdout=out, stderr=subprocess.PIPE, text=True, check=False, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        r = _verify(archive, "--xbstream-dialect", "mariadb")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "did not come before" not in r.stderr
        # Its deltas' pages are among those checked: more than the handful of non-delta tablespaces would give.
        mbt = tmp_path / "mbx"
        mbt.mkdir()
        with open(archive, "rb") as f:
            subprocess.run(["mbstream", "-x", "-C", str(mbt)], stdin=f, check=True)
        delta_pages = sum(sum(1 for _ in iter_delta(p.read_bytes(), parse_meta(
            p.with_suffix(".meta").read_bytes()).physical_page_size)) for p in mbt.rglob("*.delta"))
        assert delta_pages > 0
        assert _checked(r.stderr) >= delta_pages
    finally:
        srv.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")


def test_whole_copies_of_ddl_during_the_backup_are_checked_too() -> None:
    """``NAME.innostream-new`` (a table DDL created or rebuilt during a --lock-ddl=reduced copy, taken whole at the
    end) is checked like the tablespace it becomes: a damaged page fails, and a MariaDB page 0 not written yet is
    a warning as for ``NAME.ibd``."""
    import gzip

    from innostream.ddl_track import NEW_SUFFIX

    pages = gzip.decompress((Path(__file__).resolve().parents[1] / "fixtures/pages/mariadb10-bulkload-head-16k"
                             ".pages.gz").read_bytes())
    name = f"{SCHEMA}/t.ibd{NEW_SUFFIX}"
    [v] = _feed({name: pages}, "mariadb").validators
    assert (v.pages, v.bad, v.note) == (4, [], None)
    damaged = bytearray(pages)
    damaged[2 * 16384 + 500] ^= 0x01
    [v] = _feed({name: bytes(damaged)}, "mariadb").validators
    assert [b[0] for b in v.bad] == [2]
    [v] = _feed({name: bytes(16384) + pages[16384:]}, "mariadb").validators
    assert v.bad == []
    assert "page 0 is all zero but later pages hold data" in str(v.note)


@pytest.mark.parametrize("base", ["mariadb10", "mysql9"], indirect=True)
def test_verify_a_backup_directory(base, tmp_path):
    """``verify DIR``: a full and an incremental backup directory, their pages and deltas checked; a flipped byte
    and a missing xtrabackup_checkpoints found (exit 3)."""
    import shutil

    srv, full = base
    r = _verify(full)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "verified backup directory" in r.stderr
    assert "(full-backuped)" in r.stderr
    ps = int(srv.query("SELECT @@innodb_page_size")[0][0])
    data = (full / SCHEMA / "t.ibd").read_bytes()
    written = sum(1 for i in range(0, len(data), ps) if data.count(0, i, i + ps) != ps)
    assert written > 20
    assert _checked(r.stderr) >= written  # every page holding data (and those of the other tablespaces)
    inc = tmp_path / "inc"
    res = run_backup(_config(srv, target_dir=inc, incremental_basedir=str(full)))
    assert res.delta_pages > 0
    r = _verify(inc)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(incremental)" in r.stderr
    assert _checked(r.stderr) >= res.delta_pages
    # A .delta whose .meta was lost: refused, naming it (prepare could not apply it).
    lost = tmp_path / "lost"
    shutil.copytree(inc, lost)
    (lost / SCHEMA / "t.ibd.meta").unlink()
    r = _verify(lost)
    assert r.returncode == 3, r.stderr[-2000:]
    assert f"{SCHEMA}/t.ibd.delta has no .meta beside it" in r.stderr
    # One byte of a data page of the full changed (past its header): that file and page, exit 3.
    bad = tmp_path / "bad"
    shutil.copytree(full, bad)
    ibd = bad / SCHEMA / "t.ibd"
    with open(ibd, "r+b") as f:
        f.seek(3 * ps + 1000)
        b = f.read(1)
        f.seek(3 * ps + 1000)
        f.write(bytes([b[0] ^ 0x20]))
    r = _verify(bad)
    assert r.returncode == 3, r.stderr[-2000:]
    assert f"corrupt page: {SCHEMA}/t.ibd page 3" in r.stderr
    # mariadb-backup 11's names for the two metadata files, as prepare reads them (recovery/backupdir.py).
    mb = tmp_path / "mb-names"
    shutil.copytree(full, mb)
    (mb / "xtrabackup_checkpoints").rename(mb / "mariadb_backup_checkpoints")
    (mb / "xtrabackup_info").rename(mb / "mariadb_backup_info")
    r = _verify(mb)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(full-backuped)" in r.stderr
    # A backup that never finished has no xtrabackup_checkpoints (it is written last).
    (bad / "xtrabackup_checkpoints").unlink()
    r = _verify(bad)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "not a complete backup: xtrabackup_checkpoints is missing" in r.stderr
    # A key makes no sense for a directory.
    key = tmp_path / "k"
    key.write_bytes(bytes(32))
    key.chmod(0o600)
    r = _verify(full, "--decrypt-key-file", str(key))
    assert r.returncode == 2, r.stderr[-2000:]
