"""formats.log0files_io against a real MySQL 9.7 redo sample (fixtures/redo/), and corrupted variants of it."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from innostream.formats import log0files_io as my
from innostream.formats.errors import BadMagic, ChecksumMismatch, Truncated, UnsupportedVersion
from innostream.redo_inspect import inspect_redo

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures" / "redo"
BS = my.OS_FILE_LOG_BLOCK_SIZE


@pytest.fixture(scope="module")
def sample() -> tuple[bytearray, dict]:
    """The ``#ib_redoN`` file image (bytes outside the kept ranges zero) and the JSON of what the server said."""
    meta = json.loads((FIXTURES / "mysql-9.7-redo.json").read_text())
    blob = gzip.decompress((FIXTURES / "mysql-9.7-redo.bin.gz").read_bytes())
    image = bytearray(meta["file_size"])
    image[: meta["prefix_size"]] = blob[: meta["prefix_size"]]
    off = meta["segment_offset"]
    image[off : off + meta["segment_size"]] = blob[meta["prefix_size"] :]
    return image, meta


def scan(image: bytes | bytearray, lsn: int, start_lsn: int) -> tuple[int, my.BlockStatus | None, int]:
    """Scan blocks from block-aligned ``lsn``; return (end lsn, status that stopped it, full blocks seen)."""
    full = 0
    off = my.lsn_to_offset(start_lsn, lsn)
    while off < len(image):
        status, data_len = my.check_block(image, lsn, off)
        if status is not my.BlockStatus.VALID:
            return lsn, status, full
        if data_len < BS:
            return lsn + data_len, None, full
        full += 1
        lsn += BS
        off += BS
    return lsn, None, full


def test_header_matches_server(sample) -> None:
    image, meta = sample
    status = meta["server_status"]
    hdr = my.parse_file_header(image[:BS])
    assert hdr.format == my.LogFormat.VERSION_8_0_30
    assert hdr.is_8_0_30
    assert hdr.creator == "MySQL " + meta["server_version"].split("-")[0]
    assert hdr.log_uuid == status["Innodb_redo_log_uuid"]
    assert hdr.start_lsn % BS == 0
    assert hdr.start_lsn >= my.LOG_START_LSN
    assert meta["file"].startswith(my.LOG_FILE_BASE_NAME)
    assert my.file_end_lsn(hdr.start_lsn, len(image)) - hdr.start_lsn == len(image) - my.LOG_FILE_HDR_SIZE


def test_checkpoint_matches_server(sample) -> None:
    image, meta = sample
    status = meta["server_status"]
    cp = my.find_checkpoint(image[: my.LOG_FILE_HDR_SIZE], len(image))
    assert cp is not None
    assert cp.lsn == status["Innodb_redo_log_checkpoint_lsn"] == status["last_checkpoint_at"]
    # a checkpoint outside the file's LSN range is not taken from this file
    assert my.find_checkpoint(image[: my.LOG_FILE_HDR_SIZE], my.LOG_FILE_HDR_SIZE + cp.lsn % 4096) is None


def test_scan_from_checkpoint_ends_at_the_servers_lsn(sample) -> None:
    image, meta = sample
    status = meta["server_status"]
    hdr = my.parse_file_header(image[:BS])
    for start in (my.align_down(status["Innodb_redo_log_checkpoint_lsn"]), meta["segment_lsn"]):
        end, stop, full = scan(image, start, hdr.start_lsn)
        assert stop is None  # ended in a partial block
        assert end == status["Innodb_redo_log_current_lsn"] == status["Innodb_redo_log_flushed_to_disk_lsn"]
        assert full >= 1


def test_block_spec_agrees_with_fast_path_and_builder(sample) -> None:
    image, meta = sample
    lsn = meta["segment_lsn"]
    off = meta["segment_offset"]
    n = 0
    while True:
        block = bytes(image[off : off + BS])
        status, data_len = my.check_block(block, lsn)
        if status is not my.BlockStatus.VALID:
            break
        spec = my.LOG_BLOCK.parse(block)
        fast = my.parse_block_header(block)
        assert (spec.header.hdr_no & 0x7FFFFFFF, spec.header.data_len, spec.header.first_rec_group) == (
            fast.hdr_no,
            fast.data_len,
            fast.first_rec_group,
        )
        assert spec.header.epoch_no == fast.epoch_no == my.block_epoch_no(lsn)
        assert fast.hdr_no == my.block_hdr_no(lsn)
        assert my.block_claimed_lsn(spec.header.hdr_no, spec.header.epoch_no) == lsn
        assert my.LOG_BLOCK.build(spec) == block
        payload = block[my.LOG_BLOCK_HDR_SIZE : my.LOG_BLOCK_HDR_SIZE + data_len - my.LOG_BLOCK_HDR_SIZE]
        if data_len == BS:
            payload = block[my.LOG_BLOCK_HDR_SIZE : BS - my.LOG_BLOCK_TRL_SIZE]
            assert my.build_log_block(lsn, payload, fast.first_rec_group) == block
        n += 1
        if data_len < BS:
            break
        lsn += BS
        off += BS
    assert n >= 3


def test_header_and_checkpoint_builders_reproduce_the_server_bytes(sample) -> None:
    image, _meta = sample
    hdr = my.parse_file_header(image[:BS])
    assert my.build_file_header(hdr.start_lsn, hdr.creator, hdr.log_uuid, hdr.flags) == bytes(image[:BS])
    spec = my.LOG_FILE_HEADER.parse(bytes(image[:BS]))
    assert (spec.format, spec.log_uuid, spec.start_lsn, spec.flags) == (6, hdr.log_uuid, hdr.start_lsn, hdr.flags)
    assert my.LOG_FILE_HEADER.build(spec) == bytes(image[:BS])
    for c in my.checkpoints(image[: my.LOG_FILE_HDR_SIZE]):
        if c is None:
            continue
        off = my.LOG_CHECKPOINT_1 if c.slot == 1 else my.LOG_CHECKPOINT_2
        assert my.build_checkpoint_block(c.lsn) == bytes(image[off : off + BS])
        assert my.CHECKPOINT_BLOCK.parse(bytes(image[off : off + BS])).checkpoint_lsn == c.lsn


def test_copy_header_rewrite(sample) -> None:
    image, meta = sample
    cp = meta["server_status"]["Innodb_redo_log_checkpoint_lsn"]
    head = my.rewrite_header_for_copy(image[: my.LOG_FILE_HDR_SIZE], cp, "xtrabkup 2026-01-01 00:00:00")
    hdr = my.parse_file_header(head)
    assert hdr.creator.startswith(my.LOG_HEADER_CREATOR_PXB)
    assert hdr.start_lsn == my.align_down(cp)
    assert hdr.log_uuid == meta["server_status"]["Innodb_redo_log_uuid"]
    assert [c.lsn for c in my.checkpoints(head)] == [cp, cp]
    assert head[my.LOG_ENCRYPTION : my.LOG_ENCRYPTION + BS] == image[my.LOG_ENCRYPTION : my.LOG_ENCRYPTION + BS]


# --- corrupted variants ----------------------------------------------------------------------------------------------
def _first_full_block(image: bytearray, meta: dict) -> tuple[bytes, int]:
    lsn, off = meta["segment_lsn"], meta["segment_offset"]
    block = bytes(image[off : off + BS])
    assert my.check_block(block, lsn) == (my.BlockStatus.VALID, BS)
    return block, lsn


def _renumber(block: bytes, hdr_no: int, epoch: int) -> bytes:
    b = bytearray(block)
    struct.pack_into(">I", b, 0, hdr_no)
    struct.pack_into(">I", b, 8, epoch)
    struct.pack_into(">I", b, 508, my.crc32c(bytes(b[:508])))
    return bytes(b)


def test_flipped_byte_is_bad_checksum(sample) -> None:
    image, meta = sample
    block, lsn = _first_full_block(image, meta)
    for pos in (0, 5, 7, 100, 507, 509):
        bad = bytearray(block)
        bad[pos] ^= 0x20
        assert my.check_block(bytes(bad), lsn)[0] is my.BlockStatus.BAD_CHECKSUM, pos
        assert not my.block_is_valid(bytes(bad), lsn)
    assert my.block_is_valid(block, lsn)


def test_truncated_block_raises(sample) -> None:
    image, meta = sample
    block, lsn = _first_full_block(image, meta)
    with pytest.raises(Truncated) as info:
        my.check_block(block[:511], lsn)
    assert info.value.lsn == lsn


def test_wrong_numbering_is_old_or_ahead(sample) -> None:
    image, meta = sample
    block, lsn = _first_full_block(image, meta)
    no, epoch = my.block_hdr_no(lsn), my.block_epoch_no(lsn)
    assert my.check_block(_renumber(block, no - 1, epoch), lsn)[0] is my.BlockStatus.OLD
    assert my.check_block(_renumber(block, no + 1, epoch), lsn)[0] is my.BlockStatus.AHEAD
    assert my.check_block(_renumber(block, no, epoch + 1), lsn)[0] is my.BlockStatus.AHEAD
    assert my.check_block(_renumber(block, no, epoch - 1), lsn)[0] is my.BlockStatus.OLD
    # the flush bit is masked on read
    assert my.check_block(_renumber(block, no | my.LOG_BLOCK_FLUSH_BIT_MASK, epoch), lsn)[0] is my.BlockStatus.VALID
    assert my.check_block(bytes(BS), lsn)[0] is my.BlockStatus.EMPTY
    magic = bytearray(block)
    struct.pack_into(">I", magic, 508, my.LOG_NO_CHECKSUM_MAGIC)  # innodb_log_checksums=OFF
    assert my.check_block(bytes(magic), lsn)[0] is my.BlockStatus.VALID


def test_scan_stops_at_a_corrupted_block(sample) -> None:
    image, meta = sample
    hdr = my.parse_file_header(image[:BS])
    bad = bytearray(image)
    off = meta["segment_offset"] + 2 * BS
    bad[off + 200] ^= 1
    end, stop, full = scan(bad, meta["segment_lsn"], hdr.start_lsn)
    assert (end, stop, full) == (meta["segment_lsn"] + 2 * BS, my.BlockStatus.BAD_CHECKSUM, 2)


def test_checkpoint_and_header_rejections(sample) -> None:
    image, _meta = sample
    head = bytearray(image[: my.LOG_FILE_HDR_SIZE])
    cps = my.checkpoints(head)
    slot = next(c.slot for c in cps if c is not None)
    off = my.LOG_CHECKPOINT_1 if slot == 1 else my.LOG_CHECKPOINT_2
    head[off + 9] ^= 1
    assert my.checkpoints(head)[slot - 1] is None
    bad = bytearray(image[:BS])
    bad[20] ^= 1
    with pytest.raises(ChecksumMismatch):
        my.parse_file_header(bad)
    assert my.parse_file_header(bad, verify_checksum=False).creator != ""  # unprepared PXB copies
    newer = bytearray(image[:BS])
    newer[3] = 7
    with pytest.raises(UnsupportedVersion):
        my.parse_file_header(newer)
    with pytest.raises(BadMagic):
        my.parse_file_header(bytes(BS))
    with pytest.raises(BadMagic):
        my.parse_file_header(b"Phys" + bytes(508))
    with pytest.raises(Truncated):
        my.parse_file_header(image[:10])


def test_pre_8_0_30_header_is_read_without_uuid() -> None:
    block = bytearray(BS)
    struct.pack_into(">IIQ", block, 0, my.LogFormat.VERSION_8_0_28, 0, 8192)
    block[16:27] = b"MySQL 8.0.28"[:11]
    struct.pack_into(">I", block, 508, my.crc32c(bytes(block[:508])))
    hdr = my.parse_file_header(block)
    assert not hdr.is_8_0_30
    assert (hdr.start_lsn, hdr.log_uuid, hdr.flags) == (8192, 0, 0)
    cp1 = bytearray(BS)
    struct.pack_into(">QQQ", cp1, 0, 7, 9000, 2048 + 808)
    struct.pack_into(">I", cp1, 508, my.crc32c(bytes(cp1[:508])))
    cp2 = bytearray(BS)
    struct.pack_into(">QQQ", cp2, 0, 6, 9500, 2048 + 1308)
    struct.pack_into(">I", cp2, 508, my.crc32c(bytes(cp2[:508])))
    head = bytes(block) + bytes(cp1) + bytes(BS) + bytes(cp2)
    cp = my.find_checkpoint(head)
    assert (cp.slot, cp.checkpoint_no, cp.lsn) == (1, 7, 9000)  # the larger checkpoint_no wins, not the larger LSN


def test_inspect_server_file_and_dir(sample, tmp_path: Path) -> None:
    image, meta = sample
    redo = tmp_path / my.LOG_DIRECTORY_NAME
    redo.mkdir()
    (redo / meta["file"]).write_bytes(image)
    (redo / (meta["file"] + "9_tmp")).write_bytes(bytes(image[:BS]) + bytes(BS * 7))
    status = meta["server_status"]
    for target in (tmp_path, redo, redo / meta["file"]):
        info = inspect_redo(target)
        assert info["flavor"] == "mysql"
        assert info["checkpoint_lsn"] == status["Innodb_redo_log_checkpoint_lsn"]
        assert info["end_lsn"] == status["Innodb_redo_log_current_lsn"]
        assert info["invalid"] is None
        assert info["uuid"] == status["Innodb_redo_log_uuid"]


@given(st.integers(0, 1 << 50))
def test_sn_lsn_round_trip(sn: int) -> None:
    lsn = my.sn_to_lsn(sn)
    assert my.lsn_to_sn(lsn) == sn
    assert my.LOG_BLOCK_HDR_SIZE <= lsn % BS < BS - my.LOG_BLOCK_TRL_SIZE


@given(st.integers(0, 1 << 45))
def test_hdr_no_epoch_round_trip(block: int) -> None:
    lsn = block * BS
    assert my.block_claimed_lsn(my.block_hdr_no(lsn), my.block_epoch_no(lsn)) == lsn
