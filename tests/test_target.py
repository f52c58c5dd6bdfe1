"""The one safe directory writer (innostream.target.TargetDir) under every command that writes a directory: backup
--target-dir, extract and restore. A symlink planted inside the target, before or during the run, never gets a byte
or a directory written outside it, and a file is never replaced."""

from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path

import pytest
from innostream.backup import backup_target
from innostream.errors import FileExistsInTarget, TargetError, UnsafePath
from innostream.formats.xtrabackup_meta import Checkpoints, build_checkpoints
from innostream.log import LOGGER_NAME
from innostream.recovery.restore import RestoreConfig, restore_backup
from innostream.target import MAX_DIR_FDS, TargetDir

from tests.archive.builders import make_archive, run_cli
from tests.test_backup import INNOSTREAM, _cli_conn, _ddl_works, _env, _error_lines


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Where a planted symlink points; must stay empty."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def _nothing_in(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- the writer itself ----------------------------------------------------------------------------------------------


def test_symlinked_intermediate_directory_creates_nothing_outside(tmp_path: Path, outside: Path) -> None:
    # The old --target-dir writer made outside/b (mkdir -p through the link) before it noticed the escape.
    target = tmp_path / "t"
    target.mkdir()
    (target / "a").symlink_to(outside)
    sink = backup_target(target)
    with pytest.raises(UnsafePath, match="symlink") as info:
        sink.begin_file("a/b/c.ibd")
    assert info.value.exit_code == 6
    sink.abort()
    assert _nothing_in(outside) == []


def test_directory_swapped_for_a_symlink_mid_write_is_not_followed(tmp_path: Path, outside: Path) -> None:
    # The old writer checked a directory once and then opened paths through it: a swap redirected later files.
    target = tmp_path / "t"
    sink = backup_target(target)
    sink.add_bytes("db/a.ibd", b"a" * 100)
    (target / "db").rename(target / "db.real")
    (target / "db").symlink_to(outside)
    sink.add_bytes("db/b.ibd", b"b" * 100)
    sink.close()
    assert _nothing_in(outside) == []
    assert (target / "db.real" / "b.ibd").read_bytes() == b"b" * 100


def test_primitives_refuse_symlinks_and_existing_files(tmp_path: Path, outside: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    (target / "db").symlink_to(outside)
    (target / "ibdata1").write_bytes(b"precious")
    (target / "ib_logfile0").symlink_to(outside / "redo")
    src = tmp_path / "src.ibd"
    src.write_bytes(b"data")
    with TargetDir(target) as out:
        for make in (lambda: out.open_new("db/t.ibd"), lambda: out.make_dir("db/sub"),
                     lambda: out.link_in(src, "db/t.ibd")):
            with pytest.raises(UnsafePath):
                make()
        with pytest.raises(FileExistsInTarget, match=r"File exists \(errno 17\)"):
            out.open_new("ibdata1")
        with pytest.raises(FileExistsInTarget):
            out.link_in(src, "ibdata1")
        with pytest.raises(FileExistsInTarget):  # O_EXCL: a dangling link is not followed either
            out.open_new("ib_logfile0")
        out.make_dir("db2/sub")
        assert out.link_in(src, "db2/sub/t.ibd")
    assert _nothing_in(outside) == []
    assert (target / "ibdata1").read_bytes() == b"precious"
    assert (target / "db2" / "sub" / "t.ibd").read_bytes() == b"data"
    with pytest.raises(TargetError, match="closed"):
        out.open_new("late")


def test_zero_pages_from_the_page_copier_become_holes(tmp_path: Path) -> None:
    # The page copier hands over memoryviews; aligned zero blocks are not written.
    with backup_target(tmp_path / "t") as sink:
        h = sink.begin_file("t.ibd")
        sink.write(h, 0, memoryview(b"x" * 4096 + bytes(1 << 20) + b"y" * 4096))
        sink.end_file(h, (1 << 20) + 8192)
    data = (tmp_path / "t" / "t.ibd").read_bytes()
    assert data == b"x" * 4096 + bytes(1 << 20) + b"y" * 4096
    assert (tmp_path / "t" / "t.ibd").stat().st_blocks * 512 < 1 << 20


def test_metadata_last_and_never_over_an_existing_one(tmp_path: Path) -> None:
    target = tmp_path / "t"
    sink = backup_target(target)
    sink.add_bytes("xtrabackup_checkpoints", b"backup_type = full-backuped\n")
    assert not (target / "xtrabackup_checkpoints").exists()  # the commit point comes at close
    sink.close()
    assert (target / "xtrabackup_checkpoints").read_bytes() == b"backup_type = full-backuped\n"
    again = backup_target(target)
    with pytest.raises(FileExistsInTarget, match=r"\[Errno 17\] File exists"):
        again.add_bytes("xtrabackup_checkpoints", b"other")
    again.abort()
    assert (target / "xtrabackup_checkpoints").read_bytes() == b"backup_type = full-backuped\n"


def test_target_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(TargetError, match="exists and is not a directory"):
        TargetDir(tmp_path / "f")


def test_parallel_writers_over_more_directories_than_cached_descriptors(tmp_path: Path) -> None:
    # Directory descriptors are closed to make room while other threads create files: each file must still land
    # in its own directory.
    target = tmp_path / "t"
    names = [f"db{i}/t{j}.ibd" for i in range(MAX_DIR_FDS + 60) for j in range(2)]
    sink = TargetDir(target)

    def work(part: list[str]) -> None:
        for name in part:
            sink.add_bytes(name, name.encode())

    threads = [threading.Thread(target=work, args=(names[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert all((target / n).read_bytes() == n.encode() for n in names)


# --- backup --target-dir (a real server) ----------------------------------------------------------------------------


def test_backup_into_a_target_with_a_planted_symlink(mariadb10, tmp_path: Path, outside: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    (target / "mysql").symlink_to(outside)  # every MariaDB backup has a mysql/ schema directory
    res = subprocess.run([*INNOSTREAM, "backup", *_cli_conn(mariadb10), "--target-dir", str(target)],
                         capture_output=True, text=True, env=_env(), timeout=300, check=False)
    assert res.returncode == 6, res.stderr[-2000:]
    lines = _error_lines(res.stderr)
    assert len(lines) == 1, res.stderr[-2000:]
    assert "symlink" in lines[0]
    assert "mysql" in lines[0]
    assert _nothing_in(outside) == []
    assert not (target / "xtrabackup_checkpoints").exists()
    _ddl_works(mariadb10)


# --- extract ------------------------------------------------------------------------------------------------------


def test_extract_into_a_target_with_a_planted_symlink(tmp_path: Path, outside: Path) -> None:
    blob = make_archive({"db1/sub/t.ibd": b"t" * 5000, "xtrabackup_checkpoints": b"backup_type = full-backuped\n"})
    target = tmp_path / "t"
    target.mkdir()
    (target / "db1").symlink_to(outside)
    res = run_cli(["extract", "--target-dir", str(target)], stdin=blob)
    assert res.returncode == 6, res.stderr[-2000:]
    assert b"symlink" in res.stderr
    assert _nothing_in(outside) == []
    assert not (target / "xtrabackup_checkpoints").exists()


# --- restore ------------------------------------------------------------------------------------------------------


def _prepared_backup(path: Path) -> Path:
    """What restore needs of a prepared backup: full-prepared checkpoints, the redo, data files."""
    path.mkdir()
    (path / "xtrabackup_checkpoints").write_bytes(build_checkpoints(Checkpoints("full-prepared", 0, 100, 200),
                                                                    "mariadb"))
    (path / "ib_logfile0").write_bytes(b"\0" * 12288)
    (path / "ibdata1").write_bytes(b"x" * 4096)
    (path / "db1").mkdir()
    (path / "db1" / "a.ibd").write_bytes(b"a" * 8192)
    (path / "db1" / "b.ibd").write_bytes(b"b" * 8192)
    return path


class _PlantSymlink(logging.Handler):
    """Another local user at work: when restore announces db1/a.ibd, ``datadir/db1`` becomes a symlink outside."""

    def __init__(self, datadir: Path, outside: Path) -> None:
        super().__init__(logging.DEBUG)
        self.datadir, self.outside, self.planted = datadir, outside, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.planted and record.getMessage().endswith("db1/a.ibd"):
            link = self.datadir / "db1"
            if link.is_dir():
                link.rmdir()  # the old restore made it just before
            link.symlink_to(self.outside)
            self.planted = True


@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_restore_into_a_datadir_where_a_symlink_appears(tmp_path: Path, outside: Path, move: bool) -> None:
    backup = _prepared_backup(tmp_path / "backup")
    datadir = tmp_path / "data"
    logger = logging.getLogger(LOGGER_NAME)
    plant = _PlantSymlink(datadir, outside)
    old_level = logger.level
    logger.addHandler(plant)
    logger.setLevel(logging.DEBUG)
    try:
        with pytest.raises(UnsafePath) as info:
            restore_backup(RestoreConfig(backup, datadir, move=move))
    finally:
        logger.removeHandler(plant)
        logger.setLevel(old_level)
    assert plant.planted
    assert info.value.exit_code == 6
    assert _nothing_in(outside) == []
    assert (backup / "db1" / "a.ibd").read_bytes() == b"a" * 8192  # a refused move leaves the backup whole


def test_restore_cli_refuses_a_datadir_holding_a_symlink(tmp_path: Path, outside: Path) -> None:
    backup = _prepared_backup(tmp_path / "backup")
    datadir = tmp_path / "data"
    datadir.mkdir()
    (datadir / "db1").symlink_to(outside)
    res = run_cli(["restore", "--target-dir", str(backup), "--datadir", str(datadir)])
    assert res.returncode == 6, res.stderr[-2000:]
    assert _nothing_in(outside) == []
    assert (datadir / "db1").is_symlink()
