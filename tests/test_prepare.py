"""prepare/restore pieces that need no server: the MySQL redo file rewrite, sparse copy, metadata checks."""

from __future__ import annotations

import struct
from pathlib import Path

import crc32c
import pytest
from innostream.errors import PrepareError, TargetError
from innostream.families import family
from innostream.formats.errors import Corrupt, Truncated, UnsupportedVersion
from innostream.formats.xtrabackup_logfile import LOG_HEADER_FLAG_FILE_FULL, REDO_MIN_SIZE, build_mysql_prepare_redo
from innostream.formats.xtrabackup_meta import Checkpoints, build_checkpoints
from innostream.recovery.backupdir import read_backup_dir
from innostream.recovery.prepare import PrepareConfig, apply_ddl_side_files, local_data_file_path, prepare_backup
from innostream.recovery.restore import RestoreConfig, copy_sparse, restore_backup


def _crc(block: bytes | bytearray) -> int:
    return crc32c.crc32c(bytes(block[:508]))


def make_mysql_logfile(checkpoint: int, n_blocks: int, *, last_len: int = 200, file_start: int = 8192,
                       flags: int = LOG_HEADER_FLAG_FILE_FULL, epoch_jump_at: int | None = None) -> bytes:
    """An xtrabackup_logfile as PXB writes it: the server file's header (start_lsn still the server file's),
    checkpoint blocks, then n_blocks valid 512-byte blocks from align_down(checkpoint, 512)."""
    hdr = bytearray(2048)
    struct.pack_into(">IIQ", hdr, 0, 6, 0x12345678, file_start)
    hdr[16:16 + 12] = b"xtrabkup 123"
    struct.pack_into(">I", hdr, 48, flags)
    struct.pack_into(">I", hdr, 508, _crc(hdr[0:512]))
    for off in (512, 1536):
        struct.pack_into(">Q", hdr, off + 8, checkpoint)
        struct.pack_into(">I", hdr, off + 508, _crc(hdr[off:off + 512]))
    out = bytearray(hdr)
    lsn = checkpoint - checkpoint % 512
    for i in range(n_blocks):
        blk = bytearray(512)
        data_len = 512 if i < n_blocks - 1 else last_len
        epoch = 1 + (lsn // 512) // 0x40000000 + (5 if epoch_jump_at is not None and i >= epoch_jump_at else 0)
        struct.pack_into(">IHHI", blk, 0, 1 + (lsn // 512) % 0x40000000, data_len, 12 if i == 0 else 0, epoch)
        blk[12:data_len] = bytes([(i * 7 + 3) % 256]) * (data_len - 12)
        struct.pack_into(">I", blk, 508, _crc(blk))
        out += blk
        lsn += 512
    return bytes(out)


def test_mysql_redo_rewrite() -> None:
    cp = 22032704
    raw = make_mysql_logfile(cp, 10)
    plan = build_mysql_prepare_redo(raw, creator="MySQL 9.7.4")
    start = cp - cp % 512
    assert (plan.checkpoint_lsn, plan.start_lsn) == (cp, start)
    assert plan.end_lsn == start + 9 * 512 + 200
    assert plan.data[2048:] == raw[2048:]
    hdr = plan.data[:2048]
    assert struct.unpack_from(">Q", hdr, 8)[0] == start
    assert hdr[16:28] == b"MySQL 9.7.4\0"
    assert struct.unpack_from(">I", hdr, 48)[0] & LOG_HEADER_FLAG_FILE_FULL == 0
    for off in (0, 512, 1536):
        assert struct.unpack_from(">I", hdr, off + 508)[0] == _crc(hdr[off:off + 512])
    for off in (512, 1536):
        assert struct.unpack_from(">Q", hdr, off + 8)[0] == cp
    assert plan.file_size >= REDO_MIN_SIZE
    assert plan.file_size % (64 * 1024) == 0


def test_mysql_redo_rewrite_stops_at_bad_block() -> None:
    cp = 1 << 20
    raw = bytearray(make_mysql_logfile(cp, 10))
    raw[2048 + 5 * 512 + 100] ^= 0xFF  # checksum of block 5 now wrong
    plan = build_mysql_prepare_redo(bytes(raw))
    assert plan.end_lsn == cp + 5 * 512
    assert len(plan.data) == 2048 + 5 * 512
    jump = build_mysql_prepare_redo(make_mysql_logfile(cp, 10, epoch_jump_at=3))
    assert jump.end_lsn == cp + 3 * 512


def test_mysql_redo_rewrite_later_checkpoint_in_header() -> None:
    """A server-file header naming a checkpoint made during the copy: recovery starts at the first mtr of the
    first copied block instead (never later than the real start checkpoint)."""
    cp = 5 << 20
    raw = bytearray(make_mysql_logfile(cp, 10))
    later = cp + 4 * 512 + 40
    for off in (512, 1536):
        struct.pack_into(">Q", raw, off + 8, later)
        struct.pack_into(">I", raw, off + 508, _crc(raw[off:off + 512]))
    plan = build_mysql_prepare_redo(bytes(raw))
    assert plan.checkpoint_lsn == cp + 12  # first_rec_group of block 0
    assert struct.unpack_from(">Q", plan.data, 512 + 8)[0] == cp + 12


def test_mysql_redo_rewrite_errors() -> None:
    good = make_mysql_logfile(1 << 20, 3)
    with pytest.raises(Truncated):
        build_mysql_prepare_redo(good[:1000])
    with pytest.raises(UnsupportedVersion):
        build_mysql_prepare_redo(struct.pack(">I", 5) + good[4:])
    bad_cp = bytearray(good)
    bad_cp[512 + 20] ^= 1
    bad_cp[1536 + 20] ^= 1
    with pytest.raises(Corrupt, match="checkpoint"):
        build_mysql_prepare_redo(bytes(bad_cp))
    with pytest.raises(Corrupt, match="no log block"):
        build_mysql_prepare_redo(good[:2048])
    # A checkpoint beyond the copied data: the redo copy does not reach it.
    with pytest.raises(Corrupt, match="no valid block"):
        build_mysql_prepare_redo(make_mysql_logfile((1 << 20) + 400, 1, last_len=100))


# --- backup directory checks -------------------------------------------------------------------------------------


def _fake_backup(path: Path, backup_type: str, flavor: str = "mariadb") -> Path:
    path.mkdir()
    (path / "xtrabackup_checkpoints").write_bytes(build_checkpoints(Checkpoints(backup_type, 0, 100, 200), flavor))
    (path / ("ib_logfile0" if flavor == "mariadb" else "xtrabackup_logfile")).write_bytes(b"\0" * 12288)
    (path / "ibdata1").write_bytes(b"x" * 4096)
    return path


def test_read_backup_dir_refusals(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="does not exist"):
        read_backup_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="no xtrabackup_checkpoints"):
        read_backup_dir(tmp_path / "empty")
    half = tmp_path / "half"
    half.mkdir()
    (half / "xtrabackup_checkpoints").write_bytes(b"backup_type = full-backuped\nfrom_lsn = 0\n")
    with pytest.raises(PrepareError, match="to_lsn"):
        read_backup_dir(half)
    noredo = tmp_path / "noredo"
    noredo.mkdir()
    (noredo / "xtrabackup_checkpoints").write_bytes(b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 5\n"
                                                    b"last_lsn = 9\n")
    with pytest.raises(PrepareError, match="no redo log copy"):
        read_backup_dir(noredo)


def test_prepare_idempotent_and_incremental_refused(tmp_path: Path) -> None:
    done = _fake_backup(tmp_path / "done", "full-prepared")
    result = prepare_backup(PrepareConfig(done))
    assert result.already_prepared
    inc = _fake_backup(tmp_path / "inc", "incremental")
    with pytest.raises(PrepareError, match="incremental"):
        prepare_backup(PrepareConfig(inc))
    mysql_applied = _fake_backup(tmp_path / "la", "log-applied", "mysql")
    with pytest.raises(PrepareError, match="log-applied"):
        prepare_backup(PrepareConfig(mysql_applied))


def test_ddl_side_files(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "a.ibd").write_bytes(b"old")
    (db / "a.new").write_bytes(b"new")
    (db / "a.ibd.delta").write_bytes(b"d")
    (db / "b.ibd").write_bytes(b"b")
    (db / "b.del").write_bytes(b"")
    assert apply_ddl_side_files(tmp_path) == 2
    assert sorted(p.name for p in db.iterdir()) == ["a.ibd"]
    assert (db / "a.ibd").read_bytes() == b"new"
    (db / "c.ren").write_text("db/d.ibd")
    with pytest.raises(PrepareError, match=r"\.ren"):
        apply_ddl_side_files(tmp_path)


# --- restore -------------------------------------------------------------------------------------------------------


def test_copy_sparse_keeps_holes(tmp_path: Path) -> None:
    src = tmp_path / "sparse.ibd"
    with open(src, "wb") as fh:
        fh.write(b"A" * 16384)
        fh.seek(64 * 1024 * 1024)
        fh.write(b"B" * 16384)
    copied = copy_sparse(src, tmp_path / "copy.ibd")
    dst = tmp_path / "copy.ibd"
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_size == src.stat().st_size
    # Only the two data extents were copied and allocated, not 64 MiB of zeros.
    assert copied < 4 * 1024 * 1024
    assert dst.stat().st_blocks * 512 < 4 * 1024 * 1024
    with pytest.raises(TargetError, match="exists"):
        copy_sparse(src, dst)


def test_restore_refusals(tmp_path: Path) -> None:
    raw = _fake_backup(tmp_path / "raw", "full-backuped")
    with pytest.raises(PrepareError, match="not 'full-prepared'"):
        restore_backup(RestoreConfig(raw, tmp_path / "d1"))
    done = _fake_backup(tmp_path / "done", "full-prepared")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "ibdata1").write_bytes(b"precious")
    with pytest.raises(TargetError, match="not empty"):
        restore_backup(RestoreConfig(done, busy))
    assert (busy / "ibdata1").read_bytes() == b"precious"
    with pytest.raises(TargetError, match="inside the backup"):
        restore_backup(RestoreConfig(done, done / "data"))
    assert not (done / "data").exists()


def test_restore_copies_data_not_metadata(tmp_path: Path) -> None:
    done = _fake_backup(tmp_path / "done", "full-prepared")
    (done / "xtrabackup_info").write_text("uuid = x\n")
    (done / "backup-my.cnf").write_text("[mysqld]\n")
    (done / "db").mkdir()
    (done / "db" / "t.ibd").write_bytes(b"t" * 8192)
    (done / "emptydb").mkdir()
    result = restore_backup(RestoreConfig(done, tmp_path / "data"))
    got = sorted(str(p.relative_to(tmp_path / "data")) for p in (tmp_path / "data").rglob("*"))
    assert got == ["db", "db/t.ibd", "emptydb", "ib_logfile0", "ibdata1"]
    assert result.files == 3
    moved = tmp_path / "moved"
    restore_backup(RestoreConfig(done, moved, move=True))
    assert (moved / "db" / "t.ibd").read_bytes() == b"t" * 8192
    assert not (done / "db" / "t.ibd").exists()
    assert not done.exists()  # --move consumes the backup: metadata files and emptied directories too


def test_recovered_lsn_from_real_logs() -> None:
    # Lines as MySQL 9.7.4 and MariaDB 10.11.19 wrote them during a prepare of a 40 MB redo copy.
    mysql = [
        "2026-11-24T09:21:05.1Z 0 [Note] [MY-013086] [InnoDB] Starting to parse redo log at lsn = 228362321, "
        "whereas checkpoint_lsn = 228362745 and start_lsn = 228362240",
        "2026-11-24T09:21:05.2Z 0 [Note] [MY-012550] [InnoDB] Doing recovery: scanned up to log sequence number "
        "233605120",
        "2026-11-24T09:21:06.2Z 0 [Note] [MY-012550] [InnoDB] Doing recovery: scanned up to log sequence number "
        "269704368",
        "2026-11-24T09:21:07.2Z 0 [Note] [MY-012976] [InnoDB] 9.7.4 started; log sequence number 269717123",
    ]
    assert family("mysql").recovered_lsn(mysql) == 269704368
    mariadb = [
        "2026-11-24  9:20:13 0 [Note] InnoDB: Starting crash recovery from checkpoint LSN=214610737",
        "2026-11-24  9:20:13 0 [Note] InnoDB: End of log at LSN=256806304",
        "2026-11-24  9:20:13 0 [Note] InnoDB: log sequence number 256806304; transaction id 20825",
    ]
    assert family("mariadb").recovered_lsn(mariadb) == 256806304
    assert family("mariadb").recovered_lsn(mariadb[2:]) == 256806304
    assert family("mysql").recovered_lsn(mysql[3:]) is None


def test_local_data_file_path() -> None:
    assert local_data_file_path("ibdata1:12M:autoextend") == "ibdata1:12M:autoextend"
    assert local_data_file_path("/data/ibdata1:12M;/d2/ibdata2:100M:autoextend:max:1G") == (
        "ibdata1:12M;ibdata2:100M:autoextend:max:1G")


def test_mysql_redo_rewrite_real_sample() -> None:
    """The redo helper's real MySQL 9.7.4 sample (fixtures/redo) made into an xtrabackup_logfile the way a backup
    copies it; the prepared file ends where the server said its log ended and is a valid redo file for the
    parser of formats/log0files_io (header CRC, both checkpoints, checkpoint inside the file)."""
    import gzip
    import json

    from innostream.formats import log0files_io as lf

    base = Path(__file__).resolve().parents[1] / "fixtures" / "redo"
    meta = json.loads((base / "mysql-9.7-redo.json").read_text())
    raw = gzip.decompress((base / "mysql-9.7-redo.bin.gz").read_bytes())
    header, segment = raw[:2048], raw[2048:]
    status = meta["server_status"]
    cp = status["Innodb_redo_log_checkpoint_lsn"]
    skip = lf.align_down(cp) - meta["segment_lsn"]
    logfile = header + segment[skip:]
    plan = build_mysql_prepare_redo(logfile, creator="MySQL 9.7.4")
    assert plan.checkpoint_lsn == cp
    assert plan.end_lsn == status["Innodb_redo_log_current_lsn"]
    hdr = lf.parse_file_header(plan.data[:512])  # checksum verified
    assert (hdr.start_lsn, hdr.creator) == (lf.align_down(cp), "MySQL 9.7.4")
    assert hdr.log_uuid == status["Innodb_redo_log_uuid"]
    assert not hdr.flags & LOG_HEADER_FLAG_FILE_FULL
    assert [c.lsn for c in lf.checkpoints(plan.data[:2048]) if c] == [cp, cp]
    found = lf.find_checkpoint(plan.data[:2048], plan.file_size)
    assert found is not None
    assert found.lsn == cp
