"""MySQL redo log files: 8.0.30+ ``#innodb_redo/#ib_redoN`` (and the pre-8.0.30 ``ib_logfileN`` header, read only).

Upstream: ``storage/innobase/include/log0constants.h`` (offsets, sizes), ``include/log0types.h`` (``Log_format``,
``Log_file::offset``), ``log/log0files_io.cc`` (``log_file_header_serialize``, ``log_checkpoint_header_serialize``,
``log_block_*``), ``log/log0files_dict.cc`` (``log_file_compute_end_lsn``), ``log/log0recv.cc``
(``recv_find_max_checkpoint``, ``recv_scan_log_recs``); PXB ``redo_log.cc`` for the live copier's rules.

Every file starts with 2048 bytes of header (file header, checkpoint 1, encryption, checkpoint 2, one 512-byte
block each) followed by 512-byte log blocks. Consecutive files continue the LSN sequence (no wrap): a file holds
LSNs [start_lsn, start_lsn + size - 2048). Verified against files written by MySQL 9.7.4 (fixtures/redo/).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import crc32c as _crc32c
from construct import Bytes, Int16ub, Int32ub, Int64ub, Struct
from innostream.formats.errors import BadMagic, ChecksumMismatch, Corrupt, Truncated, UnsupportedVersion

# --- log0constants.h ---------------------------------------------------------------------------------------------
OS_FILE_LOG_BLOCK_SIZE = 512
LOG_FILE_HDR_SIZE = 4 * OS_FILE_LOG_BLOCK_SIZE  # 2048
LOG_HEADER_FORMAT = 0
LOG_HEADER_LOG_UUID = 4  # 8.0.30+; LOG_HEADER_PAD1 (zero) before
LOG_HEADER_START_LSN = 8
LOG_HEADER_CREATOR = 16
LOG_HEADER_CREATOR_END = 48
LOG_HEADER_FLAGS = 48  # 8.0.30+
LOG_CHECKPOINT_1 = OS_FILE_LOG_BLOCK_SIZE  # 512
LOG_ENCRYPTION = 2 * OS_FILE_LOG_BLOCK_SIZE  # 1024
LOG_CHECKPOINT_2 = 3 * OS_FILE_LOG_BLOCK_SIZE  # 1536
LOG_CHECKPOINT_LSN = 8  # within a checkpoint block
LOG_BLOCK_HDR_NO = 0
LOG_BLOCK_HDR_DATA_LEN = 4
LOG_BLOCK_FIRST_REC_GROUP = 6
LOG_BLOCK_EPOCH_NO = 8  # 8.0.30+; LOG_BLOCK_CHECKPOINT_NO in older formats
LOG_BLOCK_HDR_SIZE = 12
LOG_BLOCK_TRL_SIZE = 4
LOG_BLOCK_CHECKSUM = OS_FILE_LOG_BLOCK_SIZE - LOG_BLOCK_TRL_SIZE  # 508
LOG_BLOCK_DATA_SIZE = OS_FILE_LOG_BLOCK_SIZE - LOG_BLOCK_HDR_SIZE - LOG_BLOCK_TRL_SIZE  # 496
LOG_BLOCK_FLUSH_BIT_MASK = 0x80000000
LOG_BLOCK_MAX_NO = 0x40000000
LOG_BLOCK_ENCRYPT_BIT_MASK = 0x8000
LOG_NO_CHECKSUM_MAGIC = 0xDEADBEEF  # written when innodb_log_checksums=OFF
LOG_START_LSN = 16 * OS_FILE_LOG_BLOCK_SIZE  # 8192
LOG_DIRECTORY_NAME = "#innodb_redo"
LOG_FILE_BASE_NAME = "#ib_redo"
LOG_FILE_UNUSED_SUFFIX = "_tmp"
LOG_HEADER_CREATOR_PXB = "xtrabkup "  # PXB's marker for an unprepared xtrabackup_logfile


class LogFormat(IntEnum):
    """``Log_format`` (log0types.h)."""

    LEGACY = 0
    VERSION_5_7_9 = 1
    VERSION_8_0_1 = 2
    VERSION_8_0_3 = 3
    VERSION_8_0_19 = 4
    VERSION_8_0_28 = 5
    VERSION_8_0_30 = 6


class LogHeaderFlags(IntFlag):
    """``LOG_HEADER_FLAG_*``: bit numbers are 1-based upstream (mask = 1 << (n - 1))."""

    NO_LOGGING = 0x1
    CRASH_UNSAFE = 0x2
    NOT_INITIALIZED = 0x4
    FILE_FULL = 0x8


# --- construct specs ---------------------------------------------------------------------------------------------
LOG_FILE_HEADER = Struct(
    "format" / Int32ub,
    "log_uuid" / Int32ub,  # LOG_HEADER_PAD1 (zero) before 8.0.30
    "start_lsn" / Int64ub,
    "creator" / Bytes(LOG_HEADER_CREATOR_END - LOG_HEADER_CREATOR),
    "flags" / Int32ub,  # zero before 8.0.30
    "unused" / Bytes(LOG_BLOCK_CHECKSUM - LOG_HEADER_FLAGS - 4),
    "checksum" / Int32ub,
)
assert LOG_FILE_HEADER.sizeof() == OS_FILE_LOG_BLOCK_SIZE

CHECKPOINT_BLOCK = Struct(
    "checkpoint_no" / Int64ub,  # zero since 8.0.30 (LOG_CHECKPOINT_NO is gone)
    "checkpoint_lsn" / Int64ub,
    "checkpoint_offset" / Int64ub,  # pre-8.0.30 only
    "log_buf_size" / Int64ub,  # pre-8.0.30 only
    "unused" / Bytes(LOG_BLOCK_CHECKSUM - 32),
    "checksum" / Int32ub,
)
assert CHECKPOINT_BLOCK.sizeof() == OS_FILE_LOG_BLOCK_SIZE

LOG_BLOCK_HEADER = Struct(
    "hdr_no" / Int32ub,
    "data_len" / Int16ub,
    "first_rec_group" / Int16ub,
    "epoch_no" / Int32ub,
)
assert LOG_BLOCK_HEADER.sizeof() == LOG_BLOCK_HDR_SIZE
LOG_BLOCK = Struct(
    "header" / LOG_BLOCK_HEADER,
    "data" / Bytes(LOG_BLOCK_DATA_SIZE),
    "checksum" / Int32ub,
)
assert LOG_BLOCK.sizeof() == OS_FILE_LOG_BLOCK_SIZE

# Fast paths for the per-block loop (tests prove they agree with the Structs).
_BLOCK_HDR_FAST = struct.Struct(">IHHI")
_HEADER_FAST = struct.Struct(">IIQ32sI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
assert _BLOCK_HDR_FAST.size == LOG_BLOCK_HDR_SIZE


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C (``log_block_calc_checksum_crc32``)."""
    return _crc32c.crc32c(data, value=value)


def _need(buf: bytes | bytearray | memoryview, size: int, what: str, offset: int = 0) -> None:
    if len(buf) < size:
        raise Truncated(f"{what} needs {size} bytes, got {len(buf)}", offset=offset)


def block_checksum_ok(block: bytes | bytearray | memoryview) -> bool:
    """Whether a 512-byte header/checkpoint/data block carries a valid CRC-32C (or the no-checksum magic)."""
    stored: int = _U32.unpack_from(block, LOG_BLOCK_CHECKSUM)[0]
    return stored == _crc32c.crc32c(block[:LOG_BLOCK_CHECKSUM]) or stored == LOG_NO_CHECKSUM_MAGIC


def _with_checksum(block: bytes | bytearray) -> bytes:
    body = bytes(block[:LOG_BLOCK_CHECKSUM])
    return body + _U32.pack(crc32c(body))


# --- file header -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileHeader:
    """A parsed redo file header block."""

    format: int
    log_uuid: int
    start_lsn: int
    creator: str
    flags: int

    @property
    def is_8_0_30(self) -> bool:
        """8.0.30+ layout (``#innodb_redo``), else the old ``ib_logfileN`` group."""
        return self.format >= LogFormat.VERSION_8_0_30


def parse_file_header(block: bytes | bytearray | memoryview, *, verify_checksum: bool = True) -> FileHeader:
    """Parse the first 512 bytes of a redo file (any format 1..6).

    ``verify_checksum=False`` reads an unprepared ``xtrabackup_logfile``, whose creator PXB overwrites after
    computing the checksum.

    Raises:
        Truncated, BadMagic, UnsupportedVersion, ChecksumMismatch.
    """
    _need(block, OS_FILE_LOG_BLOCK_SIZE, "redo file header")
    fmt, uuid, start_lsn, creator, flags = _HEADER_FAST.unpack_from(block, 0)
    if fmt == 0 or fmt > 0xFF:
        raise BadMagic(f"not a MySQL redo log file (format {fmt:#x})", offset=0)
    if fmt > LogFormat.VERSION_8_0_30:
        raise UnsupportedVersion(f"redo log format {fmt} is newer than 8.0.30 (6)", offset=0)
    if verify_checksum and not block_checksum_ok(block):
        raise ChecksumMismatch("redo file header checksum mismatch", offset=LOG_BLOCK_CHECKSUM)
    name = bytes(creator).split(b"\0", 1)[0].decode("latin-1")
    if fmt < LogFormat.VERSION_8_0_30:
        uuid, flags = 0, 0
    return FileHeader(fmt, uuid, start_lsn, name, flags)


def build_file_header(
    start_lsn: int, creator: str, log_uuid: int, flags: int = 0, fmt: int = LogFormat.VERSION_8_0_30
) -> bytes:
    """Build an 8.0.30+ file header block with its CRC-32C (``log_file_header_serialize``)."""
    raw = creator.encode("latin-1")
    if len(raw) > 31:
        raise ValueError(f"creator {creator!r} longer than 31 bytes")
    body = LOG_FILE_HEADER.build(
        {
            "format": fmt,
            "log_uuid": log_uuid,
            "start_lsn": start_lsn,
            "creator": raw.ljust(32, b"\0"),
            "flags": flags,
            "unused": bytes(LOG_BLOCK_CHECKSUM - LOG_HEADER_FLAGS - 4),
            "checksum": 0,
        }
    )
    return _with_checksum(body)


# --- checkpoints ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """A valid checkpoint block."""

    lsn: int
    slot: int  # 1 (offset 512) or 2 (offset 1536)
    checkpoint_no: int = 0  # pre-8.0.30 only
    offset: int = 0  # pre-8.0.30 only


def parse_checkpoint(block: bytes | bytearray | memoryview, slot: int = 1) -> Checkpoint:
    """Parse a checkpoint block.

    Raises:
        Truncated, ChecksumMismatch, Corrupt (checkpoint_lsn 0: never written) — recovery skips such a block.
    """
    off = LOG_CHECKPOINT_1 if slot == 1 else LOG_CHECKPOINT_2
    _need(block, OS_FILE_LOG_BLOCK_SIZE, "checkpoint block", off)
    if not block_checksum_ok(block):
        raise ChecksumMismatch(f"checkpoint {slot} checksum mismatch", offset=off + LOG_BLOCK_CHECKSUM)
    no, lsn, cp_offset = struct.unpack_from(">QQQ", block, 0)
    if lsn == 0:
        raise Corrupt(f"checkpoint {slot} is empty", offset=off)
    return Checkpoint(lsn, slot, no, cp_offset)


def checkpoints(header: bytes | bytearray | memoryview) -> list[Checkpoint | None]:
    """Both checkpoint slots of a 2048-byte file header; ``None`` for an invalid or unused slot."""
    _need(header, LOG_FILE_HDR_SIZE, "redo file header")
    out: list[Checkpoint | None] = []
    for slot, off in ((1, LOG_CHECKPOINT_1), (2, LOG_CHECKPOINT_2)):
        try:
            out.append(parse_checkpoint(header[off : off + OS_FILE_LOG_BLOCK_SIZE], slot))
        except (ChecksumMismatch, Corrupt):
            out.append(None)
    return out


def find_checkpoint(header: bytes | bytearray | memoryview, file_size: int | None = None) -> Checkpoint | None:
    """The checkpoint recovery would take from this file (``recv_find_max_checkpoint``), or ``None``.

    8.0.30+: the larger LSN of the valid slots, and only if the file contains it (``file_size`` given).
    Pre-8.0.30: the slot with the larger checkpoint_no.
    """
    hdr = parse_file_header(header)
    valid = [c for c in checkpoints(header) if c is not None]
    if not valid:
        return None
    if not hdr.is_8_0_30:
        return max(valid, key=lambda c: c.checkpoint_no)
    best = max(valid, key=lambda c: c.lsn)
    if file_size is not None and not file_contains(hdr.start_lsn, file_size, best.lsn):
        return None
    return best


def build_checkpoint_block(lsn: int) -> bytes:
    """An 8.0.30+ checkpoint block (``log_checkpoint_header_serialize``)."""
    block = bytearray(OS_FILE_LOG_BLOCK_SIZE)
    block[LOG_CHECKPOINT_LSN : LOG_CHECKPOINT_LSN + 8] = _U64.pack(lsn)
    return _with_checksum(block)


def rewrite_header_for_copy(
    header: bytes | bytearray | memoryview, checkpoint_lsn: int, creator: str | None = None
) -> bytes:
    """The 2048-byte header of a redo copy (``xtrabackup_logfile``) from the server file's header.

    Both checkpoints are set to ``checkpoint_lsn`` (PXB ``update_log_temp_checkpoint``), START_LSN to
    ``align_down(checkpoint_lsn, 512)`` (the LSN of the copy's first block, what PXB's prepare writes) and,
    if given, the creator replaced; unlike PXB every checksum is recomputed, so the copy is a valid redo file.
    Format, uuid, flags and the encryption block are kept.
    """
    _need(header, LOG_FILE_HDR_SIZE, "redo file header")
    buf = bytearray(header[:LOG_FILE_HDR_SIZE])
    buf[LOG_HEADER_START_LSN : LOG_HEADER_START_LSN + 8] = _U64.pack(align_down(checkpoint_lsn))
    if creator is not None:
        raw = creator.encode("latin-1")[:31]
        buf[LOG_HEADER_CREATOR:LOG_HEADER_CREATOR_END] = raw.ljust(32, b"\0")
    buf[0:OS_FILE_LOG_BLOCK_SIZE] = _with_checksum(buf[0:OS_FILE_LOG_BLOCK_SIZE])
    for off in (LOG_CHECKPOINT_1, LOG_CHECKPOINT_2):
        buf[off : off + OS_FILE_LOG_BLOCK_SIZE] = build_checkpoint_block(checkpoint_lsn)
    return bytes(buf)


# --- LSN arithmetic --------------------------------------------------------------------------------------------------
def align_down(lsn: int, size: int = OS_FILE_LOG_BLOCK_SIZE) -> int:
    """``ut_uint64_align_down``."""
    return lsn - lsn % size


def file_end_lsn(start_lsn: int, file_size: int) -> int:
    """``log_file_compute_end_lsn``: first LSN after the file."""
    return start_lsn + file_size - LOG_FILE_HDR_SIZE


def file_contains(start_lsn: int, file_size: int, lsn: int) -> bool:
    """``Log_file::contains``."""
    return start_lsn <= lsn < file_end_lsn(start_lsn, file_size)


def lsn_to_offset(start_lsn: int, lsn: int) -> int:
    """``Log_file::offset``: byte offset of ``lsn`` in the file starting at ``start_lsn``."""
    return LOG_FILE_HDR_SIZE + lsn - start_lsn


def block_hdr_no(block_lsn: int) -> int:
    """``log_block_convert_lsn_to_hdr_no``."""
    return 1 + (block_lsn // OS_FILE_LOG_BLOCK_SIZE) % LOG_BLOCK_MAX_NO


def block_epoch_no(block_lsn: int) -> int:
    """``log_block_convert_lsn_to_epoch_no``."""
    return 1 + (block_lsn // OS_FILE_LOG_BLOCK_SIZE) // LOG_BLOCK_MAX_NO


def block_claimed_lsn(hdr_no: int, epoch_no: int) -> int:
    """The block-start LSN a block's (hdr_no, epoch_no) pair stands for: the inverse of the two above."""
    return ((epoch_no - 1) * LOG_BLOCK_MAX_NO + ((hdr_no & ~LOG_BLOCK_FLUSH_BIT_MASK) - 1)) * OS_FILE_LOG_BLOCK_SIZE


def sn_to_lsn(sn: int) -> int:
    """``log_translate_sn_to_lsn``: data bytes -> LSN counting block headers and trailers."""
    return sn // LOG_BLOCK_DATA_SIZE * OS_FILE_LOG_BLOCK_SIZE + sn % LOG_BLOCK_DATA_SIZE + LOG_BLOCK_HDR_SIZE


def lsn_to_sn(lsn: int) -> int:
    """``log_translate_lsn_to_sn``."""
    in_block = max(lsn % OS_FILE_LOG_BLOCK_SIZE - LOG_BLOCK_HDR_SIZE, 0)
    return lsn // OS_FILE_LOG_BLOCK_SIZE * LOG_BLOCK_DATA_SIZE + in_block


# --- data blocks: the hot path ---------------------------------------------------------------------------------------
class BlockStatus(IntEnum):
    """Verdict of :func:`check_block` for a block read where ``expected_lsn`` should be."""

    VALID = 0  # good checksum and numbering
    OLD = 1  # good checksum, numbered before expected: stale data, end of log (not yet written)
    AHEAD = 2  # good checksum, numbered after expected: the log was overwritten (recycled) before we read it
    BAD_CHECKSUM = 3  # torn / not yet fully written / garbage: end of log for now, retry later
    EMPTY = 5  # all zero: never written


@dataclass(frozen=True)
class BlockHeader:
    """The 12-byte header of a data block, flush bit masked off."""

    hdr_no: int
    data_len: int
    first_rec_group: int
    epoch_no: int
    encrypted: bool


def parse_block_header(block: bytes | bytearray | memoryview, offset: int = 0) -> BlockHeader:
    """Decode the header of the block at ``block[offset:]`` (no validation)."""
    hdr_no, data_len, frg, epoch = _BLOCK_HDR_FAST.unpack_from(block, offset)
    return BlockHeader(
        hdr_no & ~LOG_BLOCK_FLUSH_BIT_MASK,
        data_len & ~LOG_BLOCK_ENCRYPT_BIT_MASK,
        frg,
        epoch,
        bool(data_len & LOG_BLOCK_ENCRYPT_BIT_MASK),
    )


_ZERO_BLOCK = bytes(OS_FILE_LOG_BLOCK_SIZE)


def check_block(block: bytes | bytearray | memoryview, expected_lsn: int, offset: int = 0) -> tuple[BlockStatus, int]:
    """Validate the block at ``block[offset:offset+512]`` read at the place of LSN ``expected_lsn``.

    Returns ``(status, data_len)``. The rules are recovery's (``log_block_is_valid``) plus PXB's live-copy
    distinction between stale (OLD) and overwritten (AHEAD) blocks: a block whose checksum is good but whose
    number is past the expected one can only exist if the server recycled the space.
    """
    end = offset + OS_FILE_LOG_BLOCK_SIZE
    if len(block) < end:
        raise Truncated(f"log block needs 512 bytes, got {len(block) - offset}", offset=offset, lsn=expected_lsn)
    stored = _U32.unpack_from(block, offset + LOG_BLOCK_CHECKSUM)[0]
    hdr_no, data_len, _frg, epoch = _BLOCK_HDR_FAST.unpack_from(block, offset)
    if stored != LOG_NO_CHECKSUM_MAGIC and stored != _crc32c.crc32c(block[offset : end - LOG_BLOCK_TRL_SIZE]):
        if stored == 0 and hdr_no == 0 and block[offset:end] == _ZERO_BLOCK:
            return BlockStatus.EMPTY, 0
        return BlockStatus.BAD_CHECKSUM, 0
    claimed = block_claimed_lsn(hdr_no, epoch)
    if claimed < expected_lsn:
        return BlockStatus.OLD, 0
    if claimed > expected_lsn:
        return BlockStatus.AHEAD, 0
    data_len &= ~LOG_BLOCK_ENCRYPT_BIT_MASK
    if data_len < LOG_BLOCK_HDR_SIZE or data_len > OS_FILE_LOG_BLOCK_SIZE:
        return BlockStatus.BAD_CHECKSUM, 0  # cannot be right even though the CRC matched
    return BlockStatus.VALID, data_len


def block_is_valid(block: bytes | bytearray | memoryview, expected_lsn: int) -> bool:
    """Whether the 512-byte ``block`` is the valid block for ``expected_lsn`` (block aligned)."""
    return check_block(block, expected_lsn)[0] is BlockStatus.VALID


def build_log_block(block_lsn: int, data: bytes, first_rec_group: int = 0, data_len: int | None = None) -> bytes:
    """Build a data block for ``block_lsn`` holding ``data`` (<= 496 bytes), with header and CRC-32C."""
    if len(data) > LOG_BLOCK_DATA_SIZE:
        raise ValueError("log block data longer than 496 bytes")
    dl = LOG_BLOCK_HDR_SIZE + len(data) if data_len is None else data_len
    if dl == LOG_BLOCK_HDR_SIZE + LOG_BLOCK_DATA_SIZE:
        dl = OS_FILE_LOG_BLOCK_SIZE  # a full block says 512, trailer included
    head = _BLOCK_HDR_FAST.pack(block_hdr_no(block_lsn), dl, first_rec_group, block_epoch_no(block_lsn))
    return _with_checksum(head + data.ljust(LOG_BLOCK_DATA_SIZE, b"\0") + b"\0\0\0\0")


def scanned_lsn_after(block_lsn: int, data_len: int) -> int:
    """The LSN up to which a valid block carries data (``block_lsn + data_len``)."""
    return block_lsn + data_len
