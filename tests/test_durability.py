"""Durable by default (issue 14, "Durability"): what innostream reports as done survives a power cut.

The order of the syscalls is the observable property: every command runs under ``strace -f -y`` (Debian's strace,
installed by tools/setup.sh) and the test checks that every data file and every directory was fsync'ed before the
commit file ``xtrabackup_checkpoints`` appeared, that it appeared by a rename from a temporary name that was
fsync'ed first, and that its directory was fsync'ed after the rename. Also: full disks give exit 6 and one line,
short writes never leave a truncated ``xtrabackup_checkpoints``, restore's owner, modes and ``--move``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pymysql
import pytest
from innostream.archive import ArchiveWriter
from innostream.errors import TargetError
from innostream.formats.archive import METADATA_FILES as METADATA
from innostream.formats.errors import Corrupt
from innostream.formats.xtrabackup_meta import parse_checkpoints

from tests.archive.builders import make_archive, sample_files
from tests.test_backup import INNOSTREAM, REPO, _cli_conn, _env

CP = "xtrabackup_checkpoints"
TMP = CP + ".innostream-tmp"
TRACE = "trace=fsync,fdatasync,rename,renameat,renameat2,openat,linkat,write,writev"
META = REPO / "fixtures" / "meta"


# --- helpers --------------------------------------------------------------------------------------------------------


def traced(args: list[str], tmp_path: Path, *, stdout: object = subprocess.PIPE,
           name: str = "trace") -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``innostream ARGS`` under strace; return the result and the trace lines (fds shown with their paths)."""
    out = tmp_path / name
    res = subprocess.run(["strace", "-f", "-y", "-s", "120", "-o", str(out), "-e", TRACE, *INNOSTREAM, *args],
                         stdout=stdout, stderr=subprocess.PIPE, text=True, env=_env(), timeout=900)
    return res, out.read_text(errors="replace").splitlines()


def fsyncs(lines: list[str]) -> dict[str, list[int]]:
    """path -> indexes of the lines where it was fsync'ed (fdatasync counts)."""
    out: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        m = re.search(r"\b(?:fsync|fdatasync)\(\d+<([^>]*)>", line)
        if m:
            out.setdefault(m.group(1), []).append(i)
    return out


def synced_before(synced: dict[str, list[int]], path: Path, index: int) -> bool:
    return any(i < index for i in synced.get(str(path), []))


def rename_index(lines: list[str], directory: Path, src: str, dst: str) -> int:
    pat = re.compile(rf'rename\w*\(\d+<{re.escape(str(directory))}>, "{re.escape(src)}", '
                     rf'\d+<{re.escape(str(directory))}>, "{re.escape(dst)}"')
    found = [i for i, line in enumerate(lines) if pat.search(line)]
    assert found, f"no rename of {src} to {dst} in {directory}"
    return found[-1]


def assert_committed_durably(target: Path, lines: list[str], *, data_files: bool = True) -> None:
    """Every file and directory under ``target`` synced before the commit file appeared by a synced rename."""
    synced = fsyncs(lines)
    commit = rename_index(lines, target, TMP, CP)
    assert synced_before(synced, target / TMP, commit), "the commit file's data was not synced before its rename"
    unsynced = [str(d) for d in [target, *target.rglob("*")] if d.is_dir() and not synced_before(synced, d, commit)]
    assert not unsynced, f"directories not synced before the commit file appeared: {unsynced[:5]}"
    assert any(i > commit for i in synced.get(str(target), [])), "no fsync of the directory after the rename"
    if data_files:
        files = [p for p in target.rglob("*") if p.is_file() and not (p.parent == target and p.name in METADATA)]
        assert len(files) > 5
        late = [str(p) for p in files if not synced_before(synced, p, commit)]
        assert not late, f"data files not synced before the commit file appeared: {late[:5]}"
    created_directly = [line for line in lines if re.search(rf'openat\(\d+<[^>]*>, "{CP}", [^)]*O_CREAT', line)]
    assert not created_directly, created_directly


def assert_server_modes(target: Path) -> None:
    """Directories 0750 and files 0640 like mysqld makes them (never readable by others)."""
    for p in [target, *target.rglob("*")]:
        mode = p.stat().st_mode & 0o777
        if p.is_dir():
            assert mode == 0o750, (p, oct(mode))
        else:
            assert mode & 0o117 == 0, (p, oct(mode))
            assert mode in (0o640, 0o660), (p, oct(mode))


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A real small filesystem (tmpfs of ``size`` bytes) that fills up."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def one_line_error(res: subprocess.CompletedProcess[str], code: int) -> str:
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("innostream: error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    return errors[0]


# --- backup --target-dir, extract, backup --stream > FILE -----------------------------------------------------------


@pytest.fixture(scope="module")
def traced_backup(mariadb10, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    work = tmp_path_factory.mktemp("durable")
    target = work / "made" / "backup"  # parents made by us: their entries are synced too
    res, lines = traced(["backup", *_cli_conn(mariadb10), "--target-dir", str(target)], work)
    assert res.returncode == 0, res.stderr[-3000:]
    return target, lines


def test_backup_target_dir_commits_checkpoints_last_by_synced_rename(traced_backup) -> None:
    target, lines = traced_backup
    assert_committed_durably(target, lines)
    synced = fsyncs(lines)
    assert str(target.parent) in synced
    assert str(target.parent.parent) in synced
    assert_server_modes(target)


def test_extract_is_durable_by_default_and_no_fsync_skips_it(mariadb10, tmp_path: Path) -> None:
    archive = tmp_path / "b.inno"
    with archive.open("wb") as out:
        subprocess.run([*INNOSTREAM, "backup", *_cli_conn(mariadb10), "--stream"], stdout=out, check=True,
                       env=_env(), stderr=subprocess.DEVNULL)
    target = tmp_path / "x"
    res, lines = traced(["extract", "-C", str(target), str(archive)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert_committed_durably(target, lines)
    assert_server_modes(target)

    fast = tmp_path / "fast"
    res, lines = traced(["extract", "--no-fsync", "-C", str(fast), str(archive)], tmp_path, name="trace2")
    assert res.returncode == 0, res.stderr
    assert not fsyncs(lines)
    rename_index(lines, fast, TMP, CP)  # the commit is still atomic
    # --fsync is still accepted (it was the opt-in before durability became the default)
    again = subprocess.run([*INNOSTREAM, "extract", "--fsync", "-C", str(tmp_path / "y"), str(archive)],
                           capture_output=True, text=True, env=_env())
    assert again.returncode == 0, again.stderr


def test_backup_stream_into_a_regular_file_is_synced_before_completed_ok(mariadb10, tmp_path: Path) -> None:
    archive = tmp_path / "b.inno"
    with archive.open("wb") as out:
        res, lines = traced(["backup", *_cli_conn(mariadb10), "--stream"], tmp_path, stdout=out)
    assert res.returncode == 0, res.stderr[-3000:]
    synced = [i for i, line in enumerate(lines) if re.search(rf"fsync\(1<{re.escape(str(archive))}>", line)]
    done = [i for i, line in enumerate(lines) if "completed OK!" in line]
    assert synced
    assert done
    assert synced[-1] < done[0]
    with archive.open("wb") as out:
        res, lines = traced(["backup", *_cli_conn(mariadb10), "--stream", "--no-fsync"], tmp_path, stdout=out,
                            name="trace2")
    assert res.returncode == 0
    assert not [line for line in lines if re.search(r"fsync\(1<", line)]


# --- prepare and restore --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(mariadb10, traced_backup, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    work = tmp_path_factory.mktemp("prepared")
    backup = work / "backup"
    shutil.copytree(traced_backup[0], backup)
    res, lines = traced(["prepare", "--target-dir", str(backup), "--server-binary", str(mariadb10.server_binary)],
                        work)
    assert res.returncode == 0, res.stderr[-3000:]
    return backup, lines


def test_prepare_commits_the_new_checkpoints_by_synced_rename(prepared) -> None:
    backup, lines = prepared
    assert parse_checkpoints((backup / CP).read_bytes()).backup_type == "full-prepared"
    assert_committed_durably(backup, lines, data_files=False)  # the server synced its own files at shutdown


def _restorable(prepared_dir: Path, tmp_path: Path) -> Path:
    backup = tmp_path / "backup"
    shutil.copytree(prepared_dir, backup)
    return backup


def test_restore_syncs_every_directory_and_gives_files_to_the_datadir_owner(prepared, tmp_path: Path) -> None:
    backup = _restorable(prepared[0], tmp_path)
    mysql = pwd.getpwnam("mysql")
    datadir = tmp_path / "datadir"
    datadir.mkdir(mode=0o750)
    os.chown(datadir, mysql.pw_uid, mysql.pw_gid)
    res, lines = traced(["restore", "--target-dir", str(backup), "--datadir", str(datadir)], tmp_path)
    assert res.returncode == 0, res.stderr
    synced = fsyncs(lines)
    for p in [datadir, *datadir.rglob("*")]:
        assert str(p) in synced, f"{p} was not synced"
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (mysql.pw_uid, mysql.pw_gid), p
    assert (datadir / "mysql").is_dir()
    assert_server_modes(datadir)

    other = tmp_path / "other"
    res = subprocess.run([*INNOSTREAM, "restore", "--target-dir", str(backup), "--datadir", str(other),
                          "--owner", "nobody:nogroup"], capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr
    nobody = pwd.getpwnam("nobody")
    assert {p.lstat().st_uid for p in other.rglob("*")} == {nobody.pw_uid}
    bad = subprocess.run([*INNOSTREAM, "restore", "--target-dir", str(backup), "--datadir", str(tmp_path / "o3"),
                          "--owner", "no-such-user-x"], capture_output=True, text=True, env=_env())
    assert "no-such-user-x" in one_line_error(bad, 6)


def test_restored_datadir_starts_under_the_mysql_user(mariadb10, prepared) -> None:
    # What the owner is for: mariadbd running as mysql (as Debian's service does) opens every restored file. A
    # datadir restored with root as owner makes it fail ("Permission denied" on ibdata1 / the redo log).
    mysql = pwd.getpwnam("mysql")
    work = Path(tempfile.mkdtemp(prefix="p14-owner-", dir="/var/tmp"))  # every parent traversable by mysql
    try:
        work.chmod(0o755)
        datadir = work / "data"
        datadir.mkdir()
        os.chown(datadir, mysql.pw_uid, mysql.pw_gid)  # the one chown a DBA does once, as for /var/lib/mysql
        run = work / "run"
        for d in (run, run / "tmp"):
            d.mkdir()
            os.chown(d, mysql.pw_uid, mysql.pw_gid)
        res = subprocess.run([*INNOSTREAM, "restore", "--target-dir", str(prepared[0]), "--datadir", str(datadir)],
                             capture_output=True, text=True, env=_env())
        assert res.returncode == 0, res.stderr
        # tools.sandbox passes --user=root first, and the server keeps the first --user it sees: start it here
        sock = run / "s.sock"
        argv = [str(mariadb10.server_binary), "--no-defaults", "--user=mysql", f"--datadir={datadir}",
                f"--socket={sock}", "--skip-networking", f"--log-error={run / 'error.log'}",
                f"--pid-file={run / 'pid'}", f"--tmpdir={run / 'tmp'}", "--innodb-buffer-pool-size=64M"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            conn = None
            for _ in range(600):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(pymysql.err.OperationalError):
                    conn = pymysql.connect(unix_socket=str(sock), user="root")
                    break
                time.sleep(0.1)
            assert conn is not None, (run / "error.log").read_text()[-3000:]
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM mysql.user")
                assert cur.fetchone()[0] > 0
            conn.close()
            assert Path(f"/proc/{proc.pid}").stat().st_uid == mysql.pw_uid  # it really runs as mysql
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_restore_move_consumes_the_backup(prepared, tmp_path: Path) -> None:
    backup = _restorable(prepared[0], tmp_path)
    datadir = tmp_path / "datadir"
    res = subprocess.run([*INNOSTREAM, "restore", "--move", "--target-dir", str(backup), "--datadir", str(datadir)],
                         capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr
    assert not backup.exists(), sorted(str(p) for p in backup.rglob("*"))  # metadata and emptied dirs removed
    assert (datadir / "ibdata1").is_file()
    assert (datadir / "mysql").is_dir()


def test_restore_move_failing_halfway_is_refused_on_a_rerun(prepared, tmp_path: Path) -> None:
    backup = _restorable(prepared[0], tmp_path)
    sizes = {p.relative_to(backup): p.stat().st_size for p in backup.rglob("*") if p.is_file()}
    # The datadir on another, small filesystem: --move copies there and the disk fills halfway.
    with tmpfs(tmp_path / "small", 3 << 20) as small:
        datadir = small / "datadir"
        res = subprocess.run([*INNOSTREAM, "restore", "--move", "--target-dir", str(backup), "--datadir",
                              str(datadir)], capture_output=True, text=True, env=_env())
        one_line_error(res, 6)
        left = [p for p in datadir.rglob("*") if p.is_file()]
        assert left, "nothing was moved before the disk was full: the test proves nothing"
        for p in left:  # copy_sparse removed its partial file: what is there is whole
            assert p.stat().st_size == sizes[p.relative_to(datadir)], p
    rerun = subprocess.run([*INNOSTREAM, "restore", "--target-dir", str(backup), "--datadir",
                            str(tmp_path / "again")], capture_output=True, text=True, env=_env())
    assert "stopped halfway" in one_line_error(rerun, 7)
    assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())


# --- short writes and full disks --------------------------------------------------------------------------------------


def test_cut_checkpoints_file_is_an_error_never_a_silent_default() -> None:
    raw = gzip.decompress((META / "mariadb-10.11-full-xtrabackup_checkpoints.gz").read_bytes())
    whole = parse_checkpoints(raw)
    for cut in range(len(raw)):
        try:
            cp = parse_checkpoints(raw[:cut])
        except Corrupt:
            continue
        # the only cuts that parse lose a line the readers default anyway (recover_binlog_info = 0)
        assert (cp.backup_type, cp.from_lsn, cp.to_lsn, cp.last_lsn) == (
            whole.backup_type, whole.from_lsn, whole.to_lsn, whole.last_lsn), cut


def test_short_write_of_the_checkpoints_file_is_an_error(tmp_path: Path) -> None:
    # One free 4 KiB page on a real tmpfs and a 6000-byte xtrabackup_checkpoints: write() writes the first page
    # and returns short; the old extract ignored the count and left a truncated commit file with exit 0.
    checkpoints = (b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 42\nlast_lsn = 50\n"
                   + b"".join(b"note_%04d = %s\n" % (i, b"x" * 40) for i in range(125)))
    assert 4096 < len(checkpoints) < 8192
    archive = tmp_path / "a.inno"
    archive.write_bytes(make_archive({CP: checkpoints}))
    with tmpfs(tmp_path / "small", 16 * 4096) as small:
        (small / "filler").write_bytes(b"f" * (15 * 4096))  # one page left
        res = subprocess.run([*INNOSTREAM, "extract", "-C", str(small / "t"), str(archive)], capture_output=True,
                             text=True, env=_env())
        line = one_line_error(res, 6)
        assert CP in line
        assert not (small / "t" / CP).exists()
        assert not (small / "t" / TMP).exists()


def test_disk_full_at_the_trailer_is_exit_6(tmp_path: Path) -> None:
    # Everything but the last few bytes of the trailer fits on a real tmpfs: the error comes at the very end.
    data = os.urandom(300_000)

    def write(out: BinaryIO, n: int) -> ArchiveWriter:
        writer = ArchiveWriter(out, compress=False)
        fid = writer.begin_file("a.ibd")
        writer.write(fid, 0, data[:n])
        writer.end_file(fid, n)
        return writer

    def size(n: int) -> int:
        out = io.BytesIO()
        write(out, n).close()
        return len(out.getvalue())

    n = 200_000
    n += (64 * 4096 + 16) - size(n)  # the archive overflows the 64 pages by 16 bytes
    assert size(n) == 64 * 4096 + 16
    with tmpfs(tmp_path / "small", 64 * 4096) as small, (small / "a.inno").open("wb") as out:
        writer = write(out, n)
        with pytest.raises(TargetError) as err:
            writer.close()
        assert err.value.exit_code == 6
        assert "\n" not in str(err.value)
        assert "No space left" in str(err.value)


def test_disk_full_cli_is_one_line_exit_6(mariadb10, tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        res = subprocess.run([*INNOSTREAM, "backup", *_cli_conn(mariadb10), "--stream"], stdout=full,
                             stderr=subprocess.PIPE, text=True, env=_env())
    assert "No space left" in one_line_error(res, 6)
    archive = tmp_path / "b.inno"
    archive.write_bytes(make_archive(sample_files()))
    with tmpfs(tmp_path / "small", 8192) as small:
        res = subprocess.run([*INNOSTREAM, "extract", "-C", str(small / "t"), str(archive)], capture_output=True,
                             text=True, env=_env())
        assert "No space left" in one_line_error(res, 6)
