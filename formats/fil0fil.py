"""FIL page header and trailer: the 38 bytes in front of and the 8 bytes behind every InnoDB page.

Upstream: ``storage/innobase/include/fil0types.h`` and ``fil0fil.h`` (MySQL 8.0.30+/9.x) and
``storage/innobase/include/fil0fil.h`` (MariaDB 10.8+/11.x). Both servers share the layout; what differs is the
meaning of some page types (18 is an SDI BLOB in MySQL, an instant-ALTER root in MariaDB) and, in MariaDB's
full_crc32 format, the use of the first and last four bytes (key version and CRC-32C instead of checksum/LSN copy).

All integers are big-endian (``mach_read_from_N``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from construct import Int16ub, Int32ub, Int64ub, Struct
from innostream.formats.errors import Truncated

# --- FIL header offsets (fil0types.h / fil0fil.h) -------------------------------------------------------------------
FIL_PAGE_SPACE_OR_CHKSUM = 0  # checksum; MariaDB full_crc32: FIL_PAGE_FCRC32_KEY_VERSION
FIL_PAGE_FCRC32_KEY_VERSION = 0
FIL_PAGE_OFFSET = 4  # page number
FIL_PAGE_PREV = 8
FIL_PAGE_NEXT = 12
FIL_PAGE_LSN = 16
FIL_PAGE_TYPE = 24
FIL_PAGE_FILE_FLUSH_LSN = 26  # MariaDB: FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION
FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION = 26
FIL_PAGE_COMP_ALGO = 26  # MariaDB page_compressed (non-full_crc32)
FIL_PAGE_ARCH_LOG_NO_OR_SPACE_ID = 34
FIL_PAGE_SPACE_ID = 34
FIL_PAGE_DATA = 38

# --- FIL trailer (offsets from the end of the page) ----------------------------------------------------------------
FIL_PAGE_END_LSN_OLD_CHKSUM = 8  # old checksum (4) + low 32 bits of FIL_PAGE_LSN (4)
FIL_PAGE_DATA_END = 8
FIL_PAGE_FCRC32_END_LSN = 8  # full_crc32: low 32 bits of the LSN ...
FIL_PAGE_FCRC32_CHECKSUM = 4  # ... then CRC-32C of everything before it

FIL_NULL = 0xFFFFFFFF  # "no page" in prev/next
BUF_NO_CHECKSUM_MAGIC = 0xDEADBEEF  # innodb_checksum_algorithm=none (buf0checksum.h)

# --- Page types (FIL_PAGE_TYPE) ---------------------------------------------------------------------------------------
FIL_PAGE_TYPE_ALLOCATED = 0
FIL_PAGE_TYPE_UNUSED = 1  # MySQL only
FIL_PAGE_UNDO_LOG = 2
FIL_PAGE_INODE = 3
FIL_PAGE_IBUF_FREE_LIST = 4
FIL_PAGE_IBUF_BITMAP = 5
FIL_PAGE_TYPE_SYS = 6
FIL_PAGE_TYPE_TRX_SYS = 7
FIL_PAGE_TYPE_FSP_HDR = 8
FIL_PAGE_TYPE_XDES = 9
FIL_PAGE_TYPE_BLOB = 10
FIL_PAGE_TYPE_ZBLOB = 11
FIL_PAGE_TYPE_ZBLOB2 = 12
FIL_PAGE_TYPE_UNKNOWN = 13
FIL_PAGE_COMPRESSED = 14  # MySQL transparent page compression
FIL_PAGE_ENCRYPTED = 15  # MySQL TDE
FIL_PAGE_COMPRESSED_AND_ENCRYPTED = 16
FIL_PAGE_ENCRYPTED_RTREE = 17
FIL_PAGE_SDI_BLOB = 18  # MySQL
FIL_PAGE_TYPE_INSTANT = 18  # MariaDB: same number, different meaning
FIL_PAGE_SDI_ZBLOB = 19
FIL_PAGE_TYPE_LEGACY_DBLWR = 20
FIL_PAGE_TYPE_RSEG_ARRAY = 21
FIL_PAGE_TYPE_LOB_INDEX = 22
FIL_PAGE_TYPE_LOB_DATA = 23
FIL_PAGE_TYPE_LOB_FIRST = 24
FIL_PAGE_TYPE_ZLOB_FIRST = 25
FIL_PAGE_TYPE_ZLOB_DATA = 26
FIL_PAGE_TYPE_ZLOB_INDEX = 27
FIL_PAGE_TYPE_ZLOB_FRAG = 28
FIL_PAGE_TYPE_ZLOB_FRAG_ENTRY = 29
FIL_PAGE_SDI = 17853
FIL_PAGE_RTREE = 17854
FIL_PAGE_INDEX = 17855
FIL_PAGE_PAGE_COMPRESSED = 34354  # MariaDB, non-full_crc32 page_compressed
FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED = 37401  # MariaDB
FIL_PAGE_COMPRESS_FCRC32_MARKER = 0x8000  # MariaDB full_crc32: type = marker | (compressed size >> 8)

_COMMON_TYPES = {
    FIL_PAGE_TYPE_ALLOCATED: "ALLOCATED",
    FIL_PAGE_UNDO_LOG: "UNDO_LOG",
    FIL_PAGE_INODE: "INODE",
    FIL_PAGE_IBUF_FREE_LIST: "IBUF_FREE_LIST",
    FIL_PAGE_IBUF_BITMAP: "IBUF_BITMAP",
    FIL_PAGE_TYPE_SYS: "SYS",
    FIL_PAGE_TYPE_TRX_SYS: "TRX_SYS",
    FIL_PAGE_TYPE_FSP_HDR: "FSP_HDR",
    FIL_PAGE_TYPE_XDES: "XDES",
    FIL_PAGE_TYPE_BLOB: "BLOB",
    FIL_PAGE_TYPE_ZBLOB: "ZBLOB",
    FIL_PAGE_TYPE_ZBLOB2: "ZBLOB2",
    FIL_PAGE_TYPE_UNKNOWN: "UNKNOWN",
    FIL_PAGE_RTREE: "RTREE",
    FIL_PAGE_INDEX: "INDEX",
}

#: Page type names per server family; the two disagree above 13 (fil0fil.h of each server).
PAGE_TYPE_NAMES: dict[str, dict[int, str]] = {
    "mysql": {
        **_COMMON_TYPES,
        FIL_PAGE_TYPE_UNUSED: "UNUSED",
        FIL_PAGE_COMPRESSED: "COMPRESSED",
        FIL_PAGE_ENCRYPTED: "ENCRYPTED",
        FIL_PAGE_COMPRESSED_AND_ENCRYPTED: "COMPRESSED_AND_ENCRYPTED",
        FIL_PAGE_ENCRYPTED_RTREE: "ENCRYPTED_RTREE",
        FIL_PAGE_SDI_BLOB: "SDI_BLOB",
        FIL_PAGE_SDI_ZBLOB: "SDI_ZBLOB",
        FIL_PAGE_TYPE_LEGACY_DBLWR: "LEGACY_DBLWR",
        FIL_PAGE_TYPE_RSEG_ARRAY: "RSEG_ARRAY",
        FIL_PAGE_TYPE_LOB_INDEX: "LOB_INDEX",
        FIL_PAGE_TYPE_LOB_DATA: "LOB_DATA",
        FIL_PAGE_TYPE_LOB_FIRST: "LOB_FIRST",
        FIL_PAGE_TYPE_ZLOB_FIRST: "ZLOB_FIRST",
        FIL_PAGE_TYPE_ZLOB_DATA: "ZLOB_DATA",
        FIL_PAGE_TYPE_ZLOB_INDEX: "ZLOB_INDEX",
        FIL_PAGE_TYPE_ZLOB_FRAG: "ZLOB_FRAG",
        FIL_PAGE_TYPE_ZLOB_FRAG_ENTRY: "ZLOB_FRAG_ENTRY",
        FIL_PAGE_SDI: "SDI",
    },
    "mariadb": {
        **_COMMON_TYPES,
        FIL_PAGE_TYPE_INSTANT: "INSTANT",
        FIL_PAGE_PAGE_COMPRESSED: "PAGE_COMPRESSED",
        FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED: "PAGE_COMPRESSED_ENCRYPTED",
    },
}


def page_type_name(page_type: int, flavor: str, full_crc32: bool = False) -> str:
    """Name a FIL_PAGE_TYPE value as the given server family means it (unknown values keep their number)."""
    if full_crc32 and page_type & FIL_PAGE_COMPRESS_FCRC32_MARKER:
        return "PAGE_COMPRESSED"
    return PAGE_TYPE_NAMES.get(flavor, _COMMON_TYPES).get(page_type, f"TYPE_{page_type}")


# --- Structures ----------------------------------------------------------------------------------------------------
#: The readable spec of the 38-byte header.
FIL_HEADER = Struct(
    "space_or_chksum" / Int32ub,  # FIL_PAGE_SPACE_OR_CHKSUM
    "page_no" / Int32ub,  # FIL_PAGE_OFFSET
    "prev" / Int32ub,  # FIL_PAGE_PREV
    "next" / Int32ub,  # FIL_PAGE_NEXT
    "lsn" / Int64ub,  # FIL_PAGE_LSN
    "page_type" / Int16ub,  # FIL_PAGE_TYPE
    "flush_lsn" / Int64ub,  # FIL_PAGE_FILE_FLUSH_LSN(_OR_KEY_VERSION)
    "space_id" / Int32ub,  # FIL_PAGE_SPACE_ID
)
FIL_HEADER_SIZE = FIL_HEADER.sizeof()
assert FIL_HEADER_SIZE == FIL_PAGE_DATA

#: The 8-byte trailer of an uncompressed page: (old checksum | full_crc32 LSN low), (LSN low | full_crc32 CRC).
FIL_TRAILER = Struct(
    "field1" / Int32ub,
    "field2" / Int32ub,
)
FIL_TRAILER_SIZE = FIL_TRAILER.sizeof()
assert FIL_TRAILER_SIZE == FIL_PAGE_DATA_END

#: The hot path: the same header as one precompiled ``struct`` (field order as in FIL_HEADER).
FIL_HEADER_FAST = struct.Struct(">IIIIQHQI")
assert FIL_HEADER_FAST.size == FIL_HEADER_SIZE
FIL_TRAILER_FAST = struct.Struct(">II")
assert FIL_TRAILER_FAST.size == FIL_TRAILER_SIZE

# Field-wide fast readers, used by the validator on every page.
BE32 = struct.Struct(">I")
BE16 = struct.Struct(">H")
BE64 = struct.Struct(">Q")

#: Every valid (physical) page size: 1K..16K for ROW_FORMAT=COMPRESSED, 4K..64K logical (fsp0types.h).
PAGE_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
#: UNIV_PAGE_SIZE_MAX: page 0 of any tablespace fits in this many bytes, whatever its page size.
UNIV_PAGE_SIZE_MAX = PAGE_SIZES[-1]


class FilHeader(NamedTuple):
    """A parsed FIL header (fast path result; same fields as ``FIL_HEADER``)."""

    space_or_chksum: int
    page_no: int
    prev: int
    next: int
    lsn: int
    page_type: int
    flush_lsn: int
    space_id: int


def parse_fil_header(page: bytes | memoryview) -> FilHeader:
    """Parse the first 38 bytes of a page with the fast path; raises Truncated if the buffer is shorter."""
    if len(page) < FIL_HEADER_SIZE:
        raise Truncated(f"page shorter than the FIL header ({len(page)} < {FIL_HEADER_SIZE} bytes)")
    return FilHeader._make(FIL_HEADER_FAST.unpack_from(page, 0))


def parse_fil_trailer(page: bytes | memoryview) -> tuple[int, int]:
    """Return the two 32-bit trailer words of a page of ``len(page)`` bytes."""
    if len(page) < FIL_HEADER_SIZE + FIL_TRAILER_SIZE:
        raise Truncated(f"page too short for header and trailer ({len(page)} bytes)")
    return FIL_TRAILER_FAST.unpack_from(page, len(page) - FIL_TRAILER_SIZE)
