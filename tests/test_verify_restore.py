"""``innostream verify --restore`` on real servers (MariaDB 10.11, MySQL 9.7, MariaDB 11.8): a real backup of the
server's sample data is prepared on a scratch copy, restored, started and every table CHECKed and counted.

* a good backup directory passes with the server's table count and the sample tables' row counts, and its files
  (bytes and mtimes) are untouched;
* an archive streamed on stdin (a pipe) and an archive file pass the same way; a damaged archive is exit 3;
* a scratch file system without room is refused up front (exit 6); SIGTERM while the check server runs stops it,
  removes the scratch directory and exits 130;
* a backup with one byte flipped in a leaf page of ``sample.t_plain`` fails (exit 7) naming that table.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tools.sandbox import SAMPLE_ROWS, SAMPLE_SCHEMA, Server

REPO = Path(__file__).resolve().parents[1]
INNOSTREAM = [sys.executable, "-m", "innostream"]
FIL_PAGE_TYPE = 24
FIL_PAGE_INDEX = 17855
PAGE_LEVEL = 38 + 26  # FIL_PAGE_DATA + PAGE_LEVEL


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), **extra)


def _user_tables(srv: Server) -> int:
    """Tables verify --restore checks: every base table outside performance_schema, information_schema, sys."""
    rows = srv.query("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema NOT IN "
                     "('performance_schema', 'information_schema', 'sys') "
                     "AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED')")
    return int(rows[0][0])


@pytest.fixture
def archive(server: Server, tmp_path: Path) -> tuple[Server, Path, int]:
    """An innostream archive of ``server`` in a file, and the number of tables it holds."""
    tables = _user_tables(server)
    out = tmp_path / "backup.inno"
    with open(out, "wb") as fh:
        res = subprocess.run([*INNOSTREAM, "backup", "--socket", str(server.socket), "--user", "root", "--datadir",
                              str(server.datadir), "--stream"], stdout=fh, stderr=subprocess.PIPE, text=True,
                             env=_env(), cwd=REPO, check=False, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _user_tables(server) == tables, "a table was created or dropped during the backup"
    return server, out, tables


def _extract(archive: Path, target: Path) -> None:
    with open(archive, "rb") as fh:
        res = subprocess.run([*INNOSTREAM, "extract", "-C", str(target)], stdin=fh, capture_output=True, text=True,
                             env=_env(), cwd=REPO, check=False, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """``{relative path: (sha256, size, mtime_ns)}`` of every file under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size,
                                                   st.st_mtime_ns)
    return out


def _verify_restore(srv: Server, *args: str, stdin: object = None, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*INNOSTREAM, "--verbose", "verify", "--restore", "--server-binary", str(srv.server_binary),
                          *args], stdin=stdin, capture_output=True, text=True, env=env or _env(), cwd=REPO,
                         check=False, timeout=1800)
    print(res.stderr)  # shown when a test fails
    return res


def _check_report(stderr: str, tables: int) -> None:
    m = re.search(r"verify --restore: (\d+) tables checked .*, (\d+) with errors; recovered LSN (\d+) .*; OK", stderr)
    assert m, stderr[-3000:]
    assert int(m.group(1)) == tables
    assert int(m.group(2)) == 0
    for table, rows in SAMPLE_ROWS.items():
        assert re.search(rf"{SAMPLE_SCHEMA}\.{table}: OK, {rows} rows", stderr), (table, stderr[-3000:])


def test_good_backup_dir_passes_and_stays_untouched(archive: tuple[Server, Path, int], tmp_path: Path) -> None:
    srv, arch, tables = archive
    backup = tmp_path / "extracted"
    _extract(arch, backup)
    before = _snapshot(backup)
    res = _verify_restore(srv, str(backup))
    assert res.returncode == 0, res.stderr[-3000:]
    _check_report(res.stderr, tables)
    assert re.search(r"verify --restore: (copy|reflink) of ", res.stderr), res.stderr[-3000:]
    assert _snapshot(backup) == before, "verify --restore changed the original backup"
    # the scratch directory next to the backup is gone
    assert not list(tmp_path.glob("innostream-verify-*"))


def test_archive_on_stdin_passes(archive: tuple[Server, Path, int], tmp_path: Path) -> None:
    srv, arch, tables = archive
    scratch_root = tmp_path / "tmpdir"
    scratch_root.mkdir()
    cat = subprocess.Popen(["cat", str(arch)], stdout=subprocess.PIPE)
    try:
        res = _verify_restore(srv, "-", stdin=cat.stdout, env=_env(TMPDIR=str(scratch_root)))
    finally:
        assert cat.stdout is not None
        cat.stdout.close()
        cat.wait()
    assert res.returncode == 0, res.stderr[-3000:]
    _check_report(res.stderr, tables)
    assert "verify --restore: scratch directory " + str(scratch_root) in res.stderr
    assert not list(scratch_root.iterdir()), "the scratch directory in $TMPDIR was not removed"


def test_archive_file_passes_and_damaged_archive_is_exit_3(archive: tuple[Server, Path, int], tmp_path: Path) -> None:
    srv, arch, tables = archive
    res = _verify_restore(srv, str(arch))
    assert res.returncode == 0, res.stderr[-3000:]
    _check_report(res.stderr, tables)
    assert "verify --restore: scratch directory " + str(tmp_path) in res.stderr  # next to the archive
    assert not list(tmp_path.glob("innostream-verify-*"))
    # one byte flipped in the middle of the archive: a frame checksum fails during the extract, nothing is started
    data = bytearray(arch.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged = tmp_path / "damaged.inno"
    damaged.write_bytes(bytes(data))
    res = _verify_restore(srv, str(damaged))
    assert res.returncode == 3, res.stderr[-3000:]
    assert "prepare:" not in res.stderr
    assert not list(tmp_path.glob("innostream-verify-*"))


def _flip_leaf_page_byte(ibd: Path) -> int:
    """Flip one byte in the middle of the first leaf index page (past the root) of ``ibd``; return its number."""
    data = bytearray(ibd.read_bytes())
    page_size = 16384
    for page_no in range(4, len(data) // page_size):
        page = data[page_no * page_size:(page_no + 1) * page_size]
        if int.from_bytes(page[FIL_PAGE_TYPE:FIL_PAGE_TYPE + 2], "big") == FIL_PAGE_INDEX and \
                int.from_bytes(page[PAGE_LEVEL:PAGE_LEVEL + 2], "big") == 0:
            data[page_no * page_size + page_size // 2] ^= 0x55
            ibd.write_bytes(bytes(data))
            return page_no
    raise AssertionError(f"no leaf page in {ibd}")


def test_corrupt_leaf_page_fails_naming_the_table(archive: tuple[Server, Path, int], tmp_path: Path) -> None:
    srv, arch, _ = archive
    assert int(srv.query("SELECT @@innodb_page_size")[0][0]) == 16384
    backup = tmp_path / "extracted"
    _extract(arch, backup)
    # Prepared first: the server flushes every page at its clean shutdown, so the leaf page is on disk (in the raw
    # backup it may still live only in the redo copy) and the flipped byte meets the server only at CHECK TABLE.
    res = subprocess.run([*INNOSTREAM, "prepare", "--target-dir", str(backup), "--server-binary",
                          str(srv.server_binary)], capture_output=True, text=True, env=_env(), cwd=REPO, check=False,
                         timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    _flip_leaf_page_byte(backup / SAMPLE_SCHEMA / "t_plain.ibd")
    before = _snapshot(backup)
    res = _verify_restore(srv, str(backup))
    assert res.returncode == 7, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("innostream: error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert f"{SAMPLE_SCHEMA}.t_plain" in errors[0], res.stderr[-3000:]
    assert "failed CHECK TABLE" in errors[0], res.stderr[-3000:]
    assert re.search(r"verify --restore: \d+ tables checked .*, [1-9]\d* with errors", res.stderr), res.stderr[-3000:]
    assert _snapshot(backup) == before
    assert not list(tmp_path.glob("innostream-verify-*"))


def test_scratch_dir_without_room_is_refused_up_front(mariadb10: Server, tmp_path: Path) -> None:
    """A scratch file system too small for the copy: refused before anything is copied, one line, exit 6."""
    backup = tmp_path / "backup"
    res = subprocess.run([*INNOSTREAM, "backup", "--socket", str(mariadb10.socket), "--user", "root", "--datadir",
                          str(mariadb10.datadir), "--target-dir", str(backup)], capture_output=True, text=True,
                         env=_env(), cwd=REPO, check=False, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        res = _verify_restore(mariadb10, "--scratch-dir", str(small), str(backup))
        assert res.returncode == 6, res.stderr[-3000:]
        errors = [line for line in res.stderr.splitlines() if line.startswith("innostream: error:")]
        assert len(errors) == 1, res.stderr[-3000:]
        assert re.search(r"the scratch copy needs \d+ MB .* but \S+ has \d+ MB free", errors[0]), errors[0]
        assert "--scratch-dir" in errors[0]
        assert not list(small.iterdir()), "the scratch directory was left behind"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_sigterm_stops_the_check_server_and_cleans_up(archive: tuple[Server, Path, int], tmp_path: Path) -> None:
    srv, arch, _ = archive
    backup = tmp_path / "extracted"
    _extract(arch, backup)
    proc = subprocess.Popen([*INNOSTREAM, "--verbose", "verify", "--restore", "--server-binary",
                             str(srv.server_binary), str(backup)], stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=REPO)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        # the second server start is the check server, on the restored datadir in the scratch directory
        if re.search(r"prepare: \S+ --no-defaults --datadir=\S*/innostream-verify-[^/ ]+/datadir ", line):
            proc.send_signal(signal.SIGTERM)
            break
    else:
        raise AssertionError("".join(seen[-30:]))
    rest = proc.stderr.read()
    rc = proc.wait(timeout=300)
    assert rc == 130, "".join(seen[-10:]) + rest[-3000:]
    assert "innostream: error: verify --restore interrupted" in rest, rest[-3000:]
    assert not list(tmp_path.glob("innostream-verify-*")), "the scratch directory was left behind"
    assert not _processes_mentioning(f"{tmp_path}/innostream-verify-"), "a server outlived verify --restore"
