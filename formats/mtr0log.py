"""MariaDB 10.8+ redo log: the ``ib_logfile0`` header, checkpoint blocks and the mini-transaction stream.

Upstream: ``storage/innobase/include/log0log.h`` (``log_t::FORMAT_10_8``, ``START_OFFSET``, ``CHECKPOINT_1/2``),
``log/log0log.cc`` (``log_t::header_write``), ``buf/buf0flu.cc`` (``log_t::write_checkpoint``),
``log/log0recv.cc`` (``recv_sys_t::find_checkpoint``, ``log_parse_start``), ``include/mtr0types.h`` (record types),
``include/mtr0log.h`` (``mlog_decode_varint``), ``mtr/mtr0mtr.cc`` (``mtr_t::finish_writer``).

The log is one file: a 12288-byte prefix (header block at 0, checkpoints at 0x1000 and 0x2000) and then a circular
byte stream of mini-transactions (no block headers). Every mtr ends with a terminator byte equal to the "sequence
bit" of its LSN (flips on each lap of the circular buffer) followed by CRC-32C of the record bytes, which is how a
reader finds the end of the log and rejects data from the previous lap. Verified against real files written by
MariaDB 10.11.19 (fixtures/redo/).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import crc32c as _crc32c
from construct import Bytes, Const, Int32ub, Int64ub, Struct
from innostream.formats.errors import BadMagic, ChecksumMismatch, Corrupt, Truncated, UnsupportedVersion

# --- log0log.h ---------------------------------------------------------------------------------------------------
FORMAT_10_8 = 0x50687973  # "Phys"
FORMAT_ENC_10_8 = FORMAT_10_8 | 1 << 31  # innodb_encrypt_log=ON
FORMAT_10_5 = 0x50485953  # "PHYS", 10.5..10.7: a different (block based) format, not supported
LOG_HEADER_FORMAT = 0
LOG_HEADER_START_LSN = 8
LOG_HEADER_CREATOR = 16
LOG_HEADER_CREATOR_END = 48
LOG_HEADER_CRYPT = 0x30  # log_crypt_write_header() output when the log is encrypted
LOG_HEADER_CHECKSUM = 0x1FC  # CRC-32C of bytes [0, 0x1FC)
LOG_HEADER_BLOCK_SIZE = 512  # the checksummed part; the server writes 4096 bytes, the rest zero
CHECKPOINT_1 = 0x1000
CHECKPOINT_2 = 0x2000
START_OFFSET = 0x3000  # 12288: file offset of first_lsn
FIRST_LSN = START_OFFSET  # smallest possible LSN (log_t::FIRST_LSN)
CHECKPOINT_BLOCK_SIZE = 64  # checkpoint_lsn, end_lsn, 44 zero bytes, CRC-32C
SIZE_OF_FILE_CHECKPOINT = 16  # the canonical FILE_CHECKPOINT mtr: FA 00 00 <lsn:8> <seq> <crc:4>
MTR_SIZE_MAX = 1 << 20  # recv_sys_t::MTR_SIZE_MAX: a longer mtr is corrupt
BACKUP_CREATOR_PREFIX = "Backup "  # mariabackup's creator; makes the server treat the log as restored

# --- mtr0types.h: record type (bits 6..4 of the first byte) ------------------------------------------------------


class MrecType(IntEnum):
    """``mrec_type_t``: page-level record types."""

    FREE_PAGE = 0x00
    INIT_PAGE = 0x10
    EXTENDED = 0x20
    WRITE = 0x30
    MEMSET = 0x40
    MEMMOVE = 0x50
    RESERVED = 0x60
    OPTION = 0x70


class MfileType(IntEnum):
    """``mfile_type_t``: file-level records, first byte & 0xF0 with bit 7 set (no preceding page record)."""

    FILE_CREATE = 0x80
    FILE_DELETE = 0x90
    FILE_RENAME = 0xA0
    FILE_MODIFY = 0xB0
    FILE_CHECKPOINT = 0xF0


# --- construct specs -----------------------------------------------------------------------------------------------
LOG_FILE_HEADER = Struct(
    "format" / Int32ub,
    "reserved" / Int32ub,  # must be 0
    "first_lsn" / Int64ub,
    "creator" / Bytes(LOG_HEADER_CREATOR_END - LOG_HEADER_CREATOR),
    "crypt" / Bytes(LOG_HEADER_CHECKSUM - LOG_HEADER_CRYPT),
    "checksum" / Int32ub,
)
assert LOG_FILE_HEADER.sizeof() == LOG_HEADER_BLOCK_SIZE

CHECKPOINT_BLOCK = Struct(
    "checkpoint_lsn" / Int64ub,
    "end_lsn" / Int64ub,  # start of the mtr with FILE_MODIFY records + FILE_CHECKPOINT (real files)
    "reserved" / Bytes(44),  # must be zero
    "checksum" / Int32ub,
)
assert CHECKPOINT_BLOCK.sizeof() == CHECKPOINT_BLOCK_SIZE

FILE_CHECKPOINT_MTR = Struct(
    "type" / Const(b"\xfa"),  # FILE_CHECKPOINT | 10 bytes follow
    "space_id" / Const(b"\x00"),
    "page_no" / Const(b"\x00"),
    "lsn" / Int64ub,
    "sequence_bit" / Bytes(1),
    "checksum" / Int32ub,  # CRC-32C of the first 11 bytes
)
assert FILE_CHECKPOINT_MTR.sizeof() == SIZE_OF_FILE_CHECKPOINT

# Fast paths (the construct Structs above are the spec; tests prove both agree).
_HEADER_FAST = struct.Struct(">IIQ32s")
_CHECKPOINT_FAST = struct.Struct(">QQ44sI")
_U32 = struct.Struct(">I")
_ZERO44 = bytes(44)


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C as InnoDB's ``my_crc32c`` computes it."""
    return _crc32c.crc32c(data, value=value)


# --- header ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogHeader:
    """The parsed header block of ``ib_logfile0``."""

    format: int
    first_lsn: int
    creator: str
    encrypted: bool


def _need(buf: bytes | bytearray | memoryview, size: int, what: str, offset: int = 0) -> None:
    if len(buf) < size:
        raise Truncated(f"{what} needs {size} bytes, got {len(buf)}", offset=offset)


def parse_file_header(buf: bytes | bytearray | memoryview) -> LogHeader:
    """Parse and validate the 512-byte header block (``recv_sys_t::find_checkpoint``, first part).

    Raises:
        Truncated, BadMagic, UnsupportedVersion (10.5-10.7 "PHYS" or older), ChecksumMismatch, Corrupt.
    """
    _need(buf, LOG_HEADER_BLOCK_SIZE, "ib_logfile0 header")
    fmt, reserved, first_lsn, creator = _HEADER_FAST.unpack_from(buf, 0)
    if fmt == FORMAT_10_5 or fmt in (1, 103, 104):
        raise UnsupportedVersion(
            f"redo log format {fmt:#x} is from MariaDB before 10.8", offset=0, hint="only MariaDB 10.8+ is supported"
        )
    if fmt not in (FORMAT_10_8, FORMAT_ENC_10_8):
        raise BadMagic(f"not a MariaDB 10.8+ redo log (format word {fmt:#010x})", offset=0)
    stored = _U32.unpack_from(buf, LOG_HEADER_CHECKSUM)[0]
    computed = crc32c(bytes(buf[:LOG_HEADER_CHECKSUM]))
    if stored != computed:
        raise ChecksumMismatch(
            f"ib_logfile0 header checksum {stored:#010x} != computed {computed:#010x}", offset=LOG_HEADER_CHECKSUM
        )
    if reserved != 0:
        raise Corrupt("invalid ib_logfile0 header block: bytes 4..7 must be zero", offset=4)
    if first_lsn < FIRST_LSN:
        raise Corrupt(f"first_lsn {first_lsn} < {FIRST_LSN}", offset=LOG_HEADER_START_LSN, lsn=first_lsn)
    encrypted = fmt == FORMAT_ENC_10_8 or _U32.unpack_from(buf, LOG_HEADER_CRYPT)[0] != 0
    return LogHeader(fmt, first_lsn, bytes(creator).split(b"\0", 1)[0].decode("latin-1"), encrypted)


def build_file_header(first_lsn: int, creator: str, fmt: int = FORMAT_10_8) -> bytes:
    """Build a 512-byte header block with a correct checksum (``log_t::header_write``)."""
    raw = creator.encode("latin-1")
    if len(raw) > LOG_HEADER_CREATOR_END - LOG_HEADER_CREATOR - 1:
        raise ValueError(f"creator {creator!r} longer than 31 bytes")
    body = LOG_FILE_HEADER.build(
        {
            "format": fmt,
            "reserved": 0,
            "first_lsn": first_lsn,
            "creator": raw.ljust(32, b"\0"),
            "crypt": bytes(LOG_HEADER_CHECKSUM - LOG_HEADER_CRYPT),
            "checksum": 0,
        }
    )
    return body[:LOG_HEADER_CHECKSUM] + _U32.pack(crc32c(body[:LOG_HEADER_CHECKSUM]))


# --- checkpoints -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """One valid checkpoint: recovery starts at ``checkpoint_lsn``; the mtr at ``end_lsn`` ends in FILE_CHECKPOINT."""

    checkpoint_lsn: int
    end_lsn: int
    slot: int  # 1 (file offset 0x1000) or 2 (0x2000)


def parse_checkpoint(block: bytes | bytearray | memoryview, first_lsn: int, slot: int = 1) -> Checkpoint:
    """Parse one checkpoint block with the validity rules of ``recv_sys_t::find_checkpoint``.

    Raises:
        Truncated, ChecksumMismatch, Corrupt: the block is not a valid checkpoint (recovery ignores it).
    """
    offset = CHECKPOINT_1 if slot == 1 else CHECKPOINT_2
    _need(block, CHECKPOINT_BLOCK_SIZE, "checkpoint block", offset)
    cp_lsn, end_lsn, reserved, stored = _CHECKPOINT_FAST.unpack_from(block, 0)
    computed = crc32c(bytes(block[:60]))
    if stored != computed:
        raise ChecksumMismatch(f"checkpoint {slot} checksum {stored:#010x} != {computed:#010x}", offset=offset)
    if reserved != _ZERO44:
        raise Corrupt(f"checkpoint {slot}: reserved bytes not zero", offset=offset + 16)
    if cp_lsn < first_lsn or end_lsn < cp_lsn:
        raise Corrupt(
            f"checkpoint {slot}: checkpoint_lsn {cp_lsn}, end_lsn {end_lsn}, first_lsn {first_lsn}",
            offset=offset,
            lsn=cp_lsn,
        )
    return Checkpoint(cp_lsn, end_lsn, slot)


def checkpoints(prefix: bytes | bytearray | memoryview, first_lsn: int) -> list[Checkpoint | None]:
    """Both checkpoint slots of the 12288-byte file prefix; ``None`` for an invalid slot."""
    _need(prefix, CHECKPOINT_2 + CHECKPOINT_BLOCK_SIZE, "ib_logfile0 checkpoints")
    out: list[Checkpoint | None] = []
    for slot, off in ((1, CHECKPOINT_1), (2, CHECKPOINT_2)):
        try:
            out.append(parse_checkpoint(prefix[off : off + CHECKPOINT_BLOCK_SIZE], first_lsn, slot))
        except (ChecksumMismatch, Corrupt):
            out.append(None)
    return out


def find_checkpoint(prefix: bytes | bytearray | memoryview) -> tuple[LogHeader, Checkpoint]:
    """Header plus the latest valid checkpoint, as recovery picks it (the larger ``checkpoint_lsn`` wins).

    Raises:
        FormatError subclasses; Corrupt if neither checkpoint block is valid.
    """
    header = parse_file_header(prefix)
    valid = [c for c in checkpoints(prefix, header.first_lsn) if c is not None]
    if not valid:
        raise Corrupt("no valid checkpoint in ib_logfile0", offset=CHECKPOINT_1)
    return header, max(valid, key=lambda c: c.checkpoint_lsn)


def build_checkpoint(checkpoint_lsn: int, end_lsn: int) -> bytes:
    """Build a 64-byte checkpoint block with its CRC-32C (``log_t::write_checkpoint``)."""
    body = _CHECKPOINT_FAST.pack(checkpoint_lsn, end_lsn, _ZERO44, 0)[:60]
    return body + _U32.pack(crc32c(body))


def build_file_checkpoint_mtr(lsn: int, sequence_bit: int = 1) -> bytes:
    """The 16-byte FILE_CHECKPOINT mini-transaction that recovery looks for at ``end_lsn``."""
    head = b"\xfa\x00\x00" + lsn.to_bytes(8, "big")
    return head + bytes((sequence_bit,)) + _U32.pack(crc32c(head))


def build_log_prefix(first_lsn: int, creator: str, checkpoint_lsn: int, end_lsn: int) -> bytes:
    """The 12288 bytes before the mtr stream: header, CHECKPOINT_1 set, CHECKPOINT_2 left invalid (zero).

    This is what mariabackup's ``log_hdr_init()`` writes at the start of its ``ib_logfile0`` copy.
    """
    buf = bytearray(START_OFFSET)
    buf[0:LOG_HEADER_BLOCK_SIZE] = build_file_header(first_lsn, creator)
    buf[CHECKPOINT_1 : CHECKPOINT_1 + CHECKPOINT_BLOCK_SIZE] = build_checkpoint(checkpoint_lsn, end_lsn)
    return bytes(buf)


# --- circular addressing (log_t::calc_lsn_offset, get_sequence_bit) ------------------------------------------------
def capacity(file_size: int) -> int:
    """Bytes of the circular mtr area."""
    return file_size - START_OFFSET


def lsn_to_offset(lsn: int, first_lsn: int, file_size: int) -> int:
    """File offset of ``lsn``: the area after START_OFFSET is circular."""
    return START_OFFSET + (lsn - first_lsn) % (file_size - START_OFFSET)


def sequence_bit(lsn: int, first_lsn: int, file_size: int) -> int:
    """Terminator value expected at ``lsn``: 1 on the first lap, then flipping on every wrap."""
    return 0 if ((lsn - first_lsn) // (file_size - START_OFFSET)) & 1 else 1


# --- varints (mtr0log.h) ---------------------------------------------------------------------------------------------
MIN_2BYTE = 0x80
MIN_3BYTE = MIN_2BYTE + (1 << 14)
MIN_4BYTE = MIN_3BYTE + (1 << 21)
MIN_5BYTE = MIN_4BYTE + (1 << 28)
MLOG_DECODE_ERROR = -1


def varint_length(first: int) -> int:
    """``mlog_decode_varint_length``: 1 + the number of leading one bits of the first byte (max 5 meaningful)."""
    n = 1
    while first & 0x80 and n < 9:
        first = (first << 1) & 0xFF
        n += 1
    return n


def decode_varint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode an offset-biased varint at ``pos``; return ``(value, length)``.

    Raises:
        Truncated: the buffer ends inside the varint.
        Corrupt: not a valid encoding (first byte 0xF1..0xFF, or a 5-byte value above 32 bits).
    """
    if pos >= len(buf):
        raise Truncated("varint past end of buffer", offset=pos)
    b = buf[pos]
    if b < 0x80:
        return b, 1
    if b < 0xC0:
        if pos + 2 > len(buf):
            raise Truncated("varint past end of buffer", offset=pos)
        return MIN_2BYTE + ((b & 0x3F) << 8 | buf[pos + 1]), 2
    if b < 0xE0:
        if pos + 3 > len(buf):
            raise Truncated("varint past end of buffer", offset=pos)
        return MIN_3BYTE + ((b & 0x1F) << 16 | buf[pos + 1] << 8 | buf[pos + 2]), 3
    if b < 0xF0:
        if pos + 4 > len(buf):
            raise Truncated("varint past end of buffer", offset=pos)
        return MIN_4BYTE + ((b & 0x0F) << 24 | buf[pos + 1] << 16 | buf[pos + 2] << 8 | buf[pos + 3]), 4
    if b == 0xF0:
        if pos + 5 > len(buf):
            raise Truncated("varint past end of buffer", offset=pos)
        i = _U32.unpack_from(buf, pos + 1)[0]
        if i > 0xFFFFFFFF - MIN_5BYTE:
            raise Corrupt(f"5-byte varint {i:#x} out of range", offset=pos)
        return MIN_5BYTE + i, 5
    raise Corrupt(f"invalid varint first byte {b:#04x}", offset=pos)


def encode_varint(value: int) -> bytes:
    """``mlog_encode_varint``: the inverse of :func:`decode_varint`."""
    if value < 0 or value > 0xFFFFFFFF:
        raise ValueError(f"varint {value} out of range")
    if value < MIN_2BYTE:
        return bytes((value,))
    if value < MIN_3BYTE:
        v = value - MIN_2BYTE
        return bytes((0x80 | v >> 8, v & 0xFF))
    if value < MIN_4BYTE:
        v = value - MIN_3BYTE
        return bytes((0xC0 | v >> 16, v >> 8 & 0xFF, v & 0xFF))
    if value < MIN_5BYTE:
        v = value - MIN_4BYTE
        return bytes((0xE0 | v >> 24, v >> 16 & 0xFF, v >> 8 & 0xFF, v & 0xFF))
    return b"\xf0" + _U32.pack(value - MIN_5BYTE)


# --- mini-transaction framing: the hot path ------------------------------------------------------------------------
#: Results of :func:`find_terminator` / :func:`mtr_end` other than a position.
MTR_INCOMPLETE = -1  # the buffer ends before the mtr does: read more and retry
MTR_INVALID = -2  # end of log: first byte <= 1, wrong sequence bit, bad CRC, bad length


def find_terminator(buf: bytes | bytearray | memoryview, pos: int) -> int:
    """Walk the record lengths of the mtr starting at ``buf[pos]`` and return the position of its terminator byte.

    Only the lengths are walked (no record decoding), so this keeps up with a busy server. Returns
    :data:`MTR_INCOMPLETE` if the buffer ends first, :data:`MTR_INVALID` for an empty mtr, an over-long one or a
    length that ``log_parse_start`` rejects.
    """
    n = len(buf)
    p = pos
    limit = pos + MTR_SIZE_MAX
    while True:
        if p > limit:
            return MTR_INVALID
        if p >= n:
            return MTR_INCOMPLETE
        b = buf[p]
        if b <= 1:
            break
        rlen = b & 0x0F
        if rlen:
            p += 1 + rlen
            continue
        # n == 0: varint X follows; the record is 16 + X bytes in total (the varint counts in X + 15).
        if p + 1 >= n:
            return MTR_INCOMPLETE
        v = buf[p + 1]
        if v < 0x80:
            x = v
        elif v < 0xC0:
            if p + 2 >= n:
                return MTR_INCOMPLETE
            x = MIN_2BYTE + ((v & 0x3F) << 8 | buf[p + 2])
        elif v < 0xE0:
            if p + 3 >= n:
                return MTR_INCOMPLETE
            x = MIN_3BYTE + ((v & 0x1F) << 16 | buf[p + 2] << 8 | buf[p + 3])
        else:
            return MTR_INVALID  # lengths >= MIN_4BYTE are corrupt (log_parse_start)
        p += 16 + x
    if p == pos:
        return MTR_INVALID  # "we should never write an empty mini-transaction"
    return p


def check_tail(buf: bytes | bytearray | memoryview, pos: int, term: int, seq_bit: int) -> int:
    """Check the terminator and CRC of the mtr ``buf[pos:term]``; return its end, MTR_INCOMPLETE or MTR_INVALID."""
    if buf[term] != seq_bit:
        return MTR_INVALID
    if term + 5 > len(buf):
        return MTR_INCOMPLETE
    if _crc32c.crc32c(buf[pos:term]) != _U32.unpack_from(buf, term + 1)[0]:
        return MTR_INVALID
    return term + 5


def mtr_end(buf: bytes | bytearray | memoryview, pos: int, seq_bit: int) -> int:
    """Validate the mtr starting at ``buf[pos]`` as recovery does; return its end (after the CRC).

    ``seq_bit`` is the sequence bit expected at the terminator. Returns the end position, :data:`MTR_INCOMPLETE`
    or :data:`MTR_INVALID` (end of log: first byte <= 1, wrong sequence bit, bad CRC, bad length).
    """
    term = find_terminator(buf, pos)
    if term < 0:
        return term
    return check_tail(buf, pos, term, seq_bit)


@dataclass
class ScanResult:
    """Outcome of :func:`scan_mtrs` over a buffer that starts at an mtr boundary."""

    end: int  # buffer position after the last valid mtr
    terminators: list[int]  # buffer positions of each mtr's sequence byte
    status: int  # 0 = stopped exactly at the end of the buffer, else MTR_INCOMPLETE or MTR_INVALID


#: ``_SKIP[b]``: bytes taken by a record whose first byte is ``b`` when its length is in the low nibble (1 + n);
#: 0 where the scan must look closer: the terminator (``b <= 1``) or a varint length (``n == 0``).
_SKIP = [0, 0] + [1 + (b & 0x0F) if b & 0x0F else 0 for b in range(2, 256)]


def scan_mtrs(
    buf: bytes | bytearray | memoryview, lsn: int, first_lsn: int, file_size: int, pos: int = 0
) -> ScanResult:
    """Walk consecutive valid mtrs from ``buf[pos]`` (at LSN ``lsn``) in a circular log of ``file_size`` bytes.

    The expected sequence bit comes from each terminator's own LSN, so a buffer stitched across the wrap point
    validates correctly. Stops at the first mtr that is invalid (end of log) or incomplete.
    """
    # This is find_terminator + check_tail inlined and trimmed for the copier's catch-up at the start of a backup,
    # where it holds the GIL for tens of MiB: one table look-up per short record, the buffer end found by the
    # IndexError of the first read past it (not a bounds test per record), the sequence bit recomputed only when
    # an mtr ends in another lap, one C call (CRC-32C) per mtr. test_redo_mariadb proves it equals the reference.
    cap = file_size - START_OFFSET
    base = lsn - pos - first_lsn  # (LSN of buf[i]) - first_lsn == base + i
    lap = (base + pos) // cap
    lap_end = (lap + 1) * cap - base  # buffer position where the next lap starts
    seq = 0 if lap & 1 else 1
    terms: list[int] = []
    append = terms.append
    n = len(buf)
    crc = _crc32c.crc32c
    u32 = _U32.unpack_from
    skip = _SKIP
    p = pos
    try:
        while pos < n:
            p = pos
            while True:
                b = buf[p]
                s = skip[b]
                if s:
                    p += s
                    continue
                if b <= 1:
                    break
                # n == 0: varint X follows; the record is 16 + X bytes in total (the varint counts in X + 15).
                v = buf[p + 1]
                if v < 0x80:
                    p += 16 + v
                elif v < 0xC0:
                    p += 16 + MIN_2BYTE + ((v & 0x3F) << 8 | buf[p + 2])
                elif v < 0xE0:
                    p += 16 + MIN_3BYTE + ((v & 0x1F) << 16 | buf[p + 2] << 8 | buf[p + 3])
                else:
                    return ScanResult(pos, terms, MTR_INVALID)  # lengths >= MIN_4BYTE are corrupt
            if p >= lap_end:
                lap = (base + p) // cap
                lap_end = (lap + 1) * cap - base
                seq = 0 if lap & 1 else 1
            if b != seq or p == pos or p - pos > MTR_SIZE_MAX or p + 5 > n:
                if p + 5 > n and b == seq and pos < p <= pos + MTR_SIZE_MAX:
                    return ScanResult(pos, terms, MTR_INCOMPLETE)
                return ScanResult(pos, terms, MTR_INVALID)
            if crc(buf[pos:p]) != u32(buf, p + 1)[0]:
                return ScanResult(pos, terms, MTR_INVALID)
            append(p)
            pos = p + 5
    except IndexError:  # a record runs past the end of the buffer
        return ScanResult(pos, terms, MTR_INVALID if p - pos > MTR_SIZE_MAX else MTR_INCOMPLETE)
    return ScanResult(pos, terms, 0)


# --- record decoding (for inspection and DDL tracking; not on the copy path) ------------------------------------------
@dataclass(frozen=True)
class Record:
    """One log record of an mtr, decoded down to its page id or file operation."""

    type: int  # MrecType or MfileType value
    same_page: bool
    space_id: int | None
    page_no: int | None
    payload: bytes  # the bytes after the page id (e.g. file names, FILE_CHECKPOINT LSN)
    offset: int  # position of the record's first byte in the mtr
    end: int  # position after the record's last byte


def parse_records(mtr: bytes | bytearray | memoryview) -> list[Record]:
    """Decode the records of one mtr (from its first record up to, not including, the terminator).

    Raises:
        Truncated, Corrupt: the records do not follow the format.
    """
    out: list[Record] = []
    pos = 0
    n = len(mtr)
    got_page_op = False
    while pos < n and mtr[pos] > 1:
        b = mtr[pos]
        rlen = b & 0x0F
        p = pos + 1
        if not rlen:
            x, ll = decode_varint(mtr, p)
            if x >= MIN_4BYTE:
                raise Corrupt(f"record length {x} too large", offset=pos)
            rlen = x + 15 - ll
            p += ll
        end = p + rlen
        if end > n:
            raise Truncated(f"record of {end - pos} bytes past the end of the mtr", offset=pos)
        same_page = bool(b & 0x80) and got_page_op
        if same_page:
            out.append(Record(b & 0x70, True, None, None, bytes(mtr[p:end]), pos, end))
        else:
            space_id, ll = decode_varint(mtr, p)
            p += ll
            page_no, ll = decode_varint(mtr, p)
            p += ll
            if p > end:
                raise Corrupt("page id longer than the record", offset=pos)
            if b & 0x80:
                rtype = b & 0xF0
                if rtype not in MfileType._value2member_map_:
                    raise Corrupt(f"unknown file record type {rtype:#04x}", offset=pos)
                if page_no != 0:
                    raise Corrupt(f"file record with page_no {page_no}", offset=pos)
            else:
                rtype = b & 0x70
                got_page_op = True
            out.append(Record(rtype, False, space_id, page_no, bytes(mtr[p:end]), pos, end))
        pos = end
    return out


def file_checkpoint_lsn(record: Record) -> int | None:
    """The LSN a FILE_CHECKPOINT record names, or ``None`` for other records and padding (``F1 00`` ...)."""
    if record.type != MfileType.FILE_CHECKPOINT or len(record.payload) != 8:
        return None
    return int.from_bytes(record.payload, "big")


def describe_stop(buf: bytes | bytearray | memoryview, pos: int, seq_bit: int) -> str:
    """Say why the mtr at ``buf[pos]`` does not validate (for diagnostics; the scan only needs the verdict)."""
    if pos >= len(buf):
        return "end of data"
    if buf[pos] <= 1:
        return f"no mtr starts here (byte {buf[pos]:#04x})"
    term = find_terminator(buf, pos)
    if term == MTR_INCOMPLETE:
        return "mtr runs past the end of the data"
    if term == MTR_INVALID:
        return "invalid record length"
    if buf[term] != seq_bit:
        return f"sequence bit {buf[term]} != {seq_bit} (data of another lap)"
    if term + 5 > len(buf):
        return "mtr checksum past the end of the data"
    return "mtr checksum mismatch"
