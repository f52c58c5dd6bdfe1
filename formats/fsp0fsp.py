"""Page 0 of a tablespace: the FSP header and FSP_SPACE_FLAGS, which say how to read every other page.

Upstream: ``storage/innobase/include/fsp0fsp.h`` and ``fsp0types.h`` (MySQL 8.0.30+/9.x, MariaDB 10.8+/11.x),
``page0size.h`` (MySQL ``page_size_t``), MariaDB ``fil0fil.h`` (``fil_space_t::is_valid_flags``, ``logical_size``,
``zip_size``, ``full_crc32``) and ``fil0crypt.cc`` (``CRYPT_MAGIC`` on page 0), MySQL ``os0enc.h`` (key magic).

The two families encode the flags differently: MySQL keeps one layout; MariaDB has the MySQL-5.6-compatible
layout (plus bit 16 = page_compressed) and, since 10.5, the ``full_crc32`` layout marked by bit 4.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

from construct import Int16ub, Int32ub, Int64ub, Struct
from innostream.formats.errors import BadMagic, Truncated, UnsupportedVersion
from innostream.formats.fil0fil import BE32, FIL_PAGE_DATA, FIL_PAGE_OFFSET, FIL_PAGE_SPACE_ID

FLAVORS = ("mysql", "mariadb")

# --- FSP header (fsp0fsp.h), relative to FSP_HEADER_OFFSET -----------------------------------------------------------
FSP_HEADER_OFFSET = FIL_PAGE_DATA  # 38
FSP_SPACE_ID = 0
FSP_NOT_USED = 4
FSP_SIZE = 8
FSP_FREE_LIMIT = 12
FSP_SPACE_FLAGS = 16
FSP_FRAG_N_USED = 20
FSP_FREE = 24
FLST_BASE_NODE_SIZE = 16  # length(4) + first fil_addr(6) + last fil_addr(6)

FLST_BASE_NODE = Struct(
    "length" / Int32ub,
    "first_page" / Int32ub,
    "first_boffset" / Int16ub,
    "last_page" / Int32ub,
    "last_boffset" / Int16ub,
)
assert FLST_BASE_NODE.sizeof() == FLST_BASE_NODE_SIZE

#: The readable spec of the 112-byte FSP header at FSP_HEADER_OFFSET of page 0.
FSP_HEADER = Struct(
    "space_id" / Int32ub,  # FSP_SPACE_ID
    "not_used" / Int32ub,  # FSP_NOT_USED
    "size" / Int32ub,  # FSP_SIZE: pages in the tablespace
    "free_limit" / Int32ub,  # FSP_FREE_LIMIT
    "flags" / Int32ub,  # FSP_SPACE_FLAGS
    "frag_n_used" / Int32ub,  # FSP_FRAG_N_USED
    "free" / FLST_BASE_NODE,  # FSP_FREE
    "free_frag" / FLST_BASE_NODE,  # FSP_FREE_FRAG
    "full_frag" / FLST_BASE_NODE,  # FSP_FULL_FRAG
    "seg_id" / Int64ub,  # FSP_SEG_ID
    "seg_inodes_full" / FLST_BASE_NODE,  # FSP_SEG_INODES_FULL
    "seg_inodes_free" / FLST_BASE_NODE,  # FSP_SEG_INODES_FREE
)
FSP_HEADER_SIZE = FSP_HEADER.sizeof()
assert FSP_HEADER_SIZE == 112
#: Fast path over the first six words of FSP_HEADER (space_id, not_used, size, free_limit, flags, frag_n_used).
FSP_HEADER_FAST = struct.Struct(">IIIIII")
assert FSP_HEADER_FAST.size == FSP_FREE
XDES_ARR_OFFSET = FSP_HEADER_OFFSET + FSP_HEADER_SIZE  # 150: the extent descriptors follow the header
assert XDES_ARR_OFFSET == 150
FSP_FLAGS_ABS = FSP_HEADER_OFFSET + FSP_SPACE_FLAGS  # 54
XDES_BITMAP = 24  # XDES_ID(8) + XDES_FLST_NODE(12) + XDES_STATE(4)
XDES_BITS_PER_PAGE = 2

# --- MySQL FSP_SPACE_FLAGS (fsp0types.h) ------------------------------------------------------------------------------
FSP_FLAGS_POS_POST_ANTELOPE = 0
FSP_FLAGS_POS_ZIP_SSIZE = 1
FSP_FLAGS_POS_ATOMIC_BLOBS = 5
FSP_FLAGS_POS_PAGE_SSIZE = 6
FSP_FLAGS_POS_DATA_DIR = 10
FSP_FLAGS_POS_SHARED = 11
FSP_FLAGS_POS_TEMPORARY = 12
FSP_FLAGS_POS_ENCRYPTION = 13
FSP_FLAGS_POS_SDI = 14
FSP_FLAGS_POS_UNUSED = 15
FSP_FLAGS_MASK_POST_ANTELOPE = 1 << FSP_FLAGS_POS_POST_ANTELOPE
FSP_FLAGS_MASK_ZIP_SSIZE = 0xF << FSP_FLAGS_POS_ZIP_SSIZE  # 0x1E
FSP_FLAGS_MASK_ATOMIC_BLOBS = 1 << FSP_FLAGS_POS_ATOMIC_BLOBS
FSP_FLAGS_MASK_PAGE_SSIZE = 0xF << FSP_FLAGS_POS_PAGE_SSIZE  # 0x3C0
FSP_FLAGS_MASK_DATA_DIR = 1 << FSP_FLAGS_POS_DATA_DIR
FSP_FLAGS_MASK_SHARED = 1 << FSP_FLAGS_POS_SHARED
FSP_FLAGS_MASK_TEMPORARY = 1 << FSP_FLAGS_POS_TEMPORARY
FSP_FLAGS_MASK_ENCRYPTION = 1 << FSP_FLAGS_POS_ENCRYPTION  # 0x2000
FSP_FLAGS_MASK_SDI = 1 << FSP_FLAGS_POS_SDI  # 0x4000

# --- MariaDB FSP_SPACE_FLAGS (fsp0types.h) ----------------------------------------------------------------------------
FSP_FLAGS_POS_RESERVED = 10  # bits 10..15: only bit 10 (5.6 DATA_DIR) may be set
FSP_FLAGS_MASK_RESERVED = 0x3F << FSP_FLAGS_POS_RESERVED
FSP_FLAGS_POS_PAGE_COMPRESSION = 16
FSP_FLAGS_MASK_PAGE_COMPRESSION = 1 << FSP_FLAGS_POS_PAGE_COMPRESSION
FSP_FLAGS_MASK = (1 << 17) - 1  # bits 0..16 may be on disk in the non-full_crc32 layout
FSP_FLAGS_FCRC32_POS_PAGE_SSIZE = 0
FSP_FLAGS_FCRC32_MASK_PAGE_SSIZE = 0xF
FSP_FLAGS_FCRC32_POS_MARKER = 4
FSP_FLAGS_FCRC32_MASK_MARKER = 1 << FSP_FLAGS_FCRC32_POS_MARKER  # 0x10
FSP_FLAGS_FCRC32_POS_COMPRESSED_ALGO = 5
FSP_FLAGS_FCRC32_MASK_COMPRESSED_ALGO = 0x7 << FSP_FLAGS_FCRC32_POS_COMPRESSED_ALGO
PAGE_ALGORITHM_LAST = 6  # PAGE_SNAPPY_ALGORITHM (fsp0pagecompress.h)
PAGE_COMPRESSION_ALGORITHMS = {0: "none", 1: "zlib", 2: "lz4", 3: "lzo", 4: "lzma", 5: "bzip2", 6: "snappy"}

UNIV_ZIP_SIZE_MIN = 1024
UNIV_PAGE_SSIZE_ORIG = 5  # 16K, what ssize 0 means in the legacy layouts
PAGE_ZIP_SSIZE_MAX = 5  # 16K: ROW_FORMAT=COMPRESSED pages are at most 16K

# --- Encryption marks on page 0 --------------------------------------------------------------------------------------
CRYPT_MAGIC = b"s\x0e\x0cREt"  # MariaDB fil0crypt.cc, after the XDES array of page 0
MYSQL_KEY_MAGICS = (b"lCA", b"lCB", b"lCC")  # MySQL os0enc.h Encryption::KEY_MAGIC_V1..V3


@dataclass(frozen=True)
class SpaceInfo:
    """What page 0 says about a tablespace: everything needed to cut the file into pages and validate them."""

    space_id: int
    flags: int
    flavor: str  # "mysql" | "mariadb"
    logical_page_size: int
    physical_page_size: int  # the ROW_FORMAT=COMPRESSED size (<= logical) when zip_size, else logical
    full_crc32: bool
    page_compressed: bool
    encrypted: bool  # best effort: MySQL flag bit 13, MariaDB crypt data on page 0 (type != 0)
    size_in_pages: int = 0  # FSP_SIZE (of the first file, for the system tablespace)
    free_limit: int = 0  # FSP_FREE_LIMIT
    compression_algo: int = 0  # MariaDB page_compressed algorithm (PAGE_*_ALGORITHM), 0 if none/unknown

    @property
    def zip_size(self) -> int:
        """The ROW_FORMAT=COMPRESSED page size, or 0 (MariaDB ``zip_size()``, MySQL ``page_size_t::is_compressed``).

        Decided by ZIP_SSIZE in the flags, as the servers do, not by physical < logical: KEY_BLOCK_SIZE equal to
        innodb_page_size (16 on 16K, 8 on 8K, 4 on 4K) still makes page0zip pages, only as large as the logical
        ones. A SpaceInfo built without real flags (flags 0) falls back to physical < logical.
        """
        return zip_size_from_flags(self.flags, self.flavor) or (
            self.physical_page_size if self.physical_page_size != self.logical_page_size else 0
        )

    @property
    def extent_size(self) -> int:
        """Pages per extent (FSP_EXTENT_SIZE): 1 MiB worth of pages below 16K, else 64."""
        return extent_size(self.logical_page_size)


def extent_size(logical_page_size: int) -> int:
    """FSP_EXTENT_SIZE for a logical page size (fsp0types.h)."""
    return (1 << 20) // logical_page_size if logical_page_size < 16384 else 64


def xdes_size(logical_page_size: int) -> int:
    """XDES_SIZE: bytes of one extent descriptor (24 + 2 bits per page of the extent)."""
    return XDES_BITMAP + (extent_size(logical_page_size) * XDES_BITS_PER_PAGE + 7) // 8


def _mysql_flags_valid(flags: int) -> bool:
    """``fsp_flags_is_valid()`` (MySQL fsp0fsp.cc), plus ZIP_SSIZE <= PAGE_SSIZE (a physical page larger than the
    logical one cannot exist, and our page arithmetic relies on it)."""
    if flags == 0:
        return True
    post_antelope = bool(flags & FSP_FLAGS_MASK_POST_ANTELOPE)
    atomic_blobs = bool(flags & FSP_FLAGS_MASK_ATOMIC_BLOBS)
    zip_ssize = (flags & FSP_FLAGS_MASK_ZIP_SSIZE) >> FSP_FLAGS_POS_ZIP_SSIZE
    page_ssize = (flags & FSP_FLAGS_MASK_PAGE_SSIZE) >> FSP_FLAGS_POS_PAGE_SSIZE
    shared, temp = flags & FSP_FLAGS_MASK_SHARED, flags & FSP_FLAGS_MASK_TEMPORARY
    if post_antelope != atomic_blobs or flags >> FSP_FLAGS_POS_UNUSED or zip_ssize > PAGE_ZIP_SSIZE_MAX:
        return False
    if page_ssize and not 3 <= page_ssize <= 7:
        return False
    if flags & FSP_FLAGS_MASK_DATA_DIR and (shared or temp):
        return False
    if flags & FSP_FLAGS_MASK_ENCRYPTION and temp:
        return False
    # SHARED and TEMPORARY together are valid: MySQL's session temporary tablespaces (#innodb_temp/temp_N.ibt)
    # carry flags 0x1800.
    return zip_ssize <= (page_ssize or UNIV_PAGE_SSIZE_ORIG)


def _mariadb_flags_valid(flags: int) -> bool:
    """``fil_space_t::is_valid_flags()`` (MariaDB fil0fil.h) without the 10.1 compatibility branch."""
    if flags & FSP_FLAGS_FCRC32_MASK_MARKER:
        ssize = flags & FSP_FLAGS_FCRC32_MASK_PAGE_SSIZE
        return 3 <= ssize <= 7 and (flags >> FSP_FLAGS_FCRC32_POS_COMPRESSED_ALGO) <= PAGE_ALGORITHM_LAST
    if flags == 0:
        return True
    if flags & ~FSP_FLAGS_MASK:
        return False
    if flags & (FSP_FLAGS_MASK_POST_ANTELOPE | FSP_FLAGS_MASK_ATOMIC_BLOBS) == FSP_FLAGS_MASK_ATOMIC_BLOBS:
        return False
    if ((flags & FSP_FLAGS_MASK_RESERVED) >> FSP_FLAGS_POS_RESERVED) & ~1:
        return False
    ssize = (flags & FSP_FLAGS_MASK_PAGE_SSIZE) >> FSP_FLAGS_POS_PAGE_SSIZE
    if ssize in (1, 2, 5) or ssize & 8:  # 16K must be written as 0, not 5
        return False
    zssize = (flags & FSP_FLAGS_MASK_ZIP_SSIZE) >> FSP_FLAGS_POS_ZIP_SSIZE
    if zssize:
        if zssize > (ssize or UNIV_PAGE_SSIZE_ORIG):
            return False
        if ~flags & (FSP_FLAGS_MASK_POST_ANTELOPE | FSP_FLAGS_MASK_ATOMIC_BLOBS):
            return False
    return True


def flags_valid(flags: int, flavor: str) -> bool:
    """Whether ``flags`` is a FSP_SPACE_FLAGS value this server family would open."""
    if flavor == "mysql":
        return _mysql_flags_valid(flags)
    if flavor == "mariadb":
        return _mariadb_flags_valid(flags)
    raise UnsupportedVersion(f"unknown server flavor {flavor!r}", hint="use mysql or mariadb")


def is_full_crc32(flags: int, flavor: str) -> bool:
    """MariaDB ``fil_space_t::full_crc32()``: the marker bit 4 (never set in a valid MySQL file)."""
    return flavor == "mariadb" and bool(flags & FSP_FLAGS_FCRC32_MASK_MARKER)


def page_size_from_flags(flags: int, flavor: str) -> tuple[int, int]:
    """Return (logical, physical) page size in bytes; raises UnsupportedVersion for flags the server would reject."""
    if not flags_valid(flags, flavor):
        raise UnsupportedVersion(
            f"invalid {flavor} FSP_SPACE_FLAGS {flags:#x}", hint="the file may be from the other server family"
        )
    if is_full_crc32(flags, flavor):
        logical = (UNIV_ZIP_SIZE_MIN >> 1) << (flags & FSP_FLAGS_FCRC32_MASK_PAGE_SSIZE)
        return logical, logical  # full_crc32 never has ROW_FORMAT=COMPRESSED
    ssize = (flags & FSP_FLAGS_MASK_PAGE_SSIZE) >> FSP_FLAGS_POS_PAGE_SSIZE
    logical = (UNIV_ZIP_SIZE_MIN >> 1) << (ssize or UNIV_PAGE_SSIZE_ORIG)
    return logical, zip_size_from_flags(flags, flavor) or logical


def zip_size_from_flags(flags: int, flavor: str) -> int:
    """The ROW_FORMAT=COMPRESSED page size that FSP_FLAGS_ZIP_SSIZE gives, or 0 when the space is not compressed.

    Any nonzero ZIP_SSIZE means page0zip format, even when it equals the logical page size. full_crc32 flags
    (MariaDB) have no ZIP_SSIZE: bits 1..3 belong to the page size there.
    """
    if is_full_crc32(flags, flavor):
        return 0
    zssize = (flags & FSP_FLAGS_MASK_ZIP_SSIZE) >> FSP_FLAGS_POS_ZIP_SSIZE
    return (UNIV_ZIP_SIZE_MIN >> 1) << zssize if zssize else 0


def guess_flavor(page0: bytes | memoryview) -> str | None:
    """Best-effort server family of a tablespace from its flags alone; None when both would accept them.

    MySQL-only bits (11..14: SHARED, TEMPORARY, ENCRYPTION, SDI; every MySQL 8 .ibd has SDI) say MySQL; the full_crc32
    marker or the page_compressed bit 16 say MariaDB. Plain legacy flags (e.g. 0 or 0x21) fit both.
    """
    if len(page0) < FSP_FLAGS_ABS + 4:
        return None
    flags = BE32.unpack_from(page0, FSP_FLAGS_ABS)[0]
    my_ok, maria_ok = _mysql_flags_valid(flags), _mariadb_flags_valid(flags)
    if my_ok and not maria_ok:
        return "mysql"
    if maria_ok and not my_ok:
        return "mariadb"
    return None


def encryption_info_offset(logical_page_size: int, physical_page_size: int, flavor: str) -> int:
    """Where page 0 keeps the encryption info: right after the XDES array.

    MySQL: ``XDES_ARR_OFFSET + XDES_SIZE * xdes_arr_size`` (fsp_header_get_encryption_offset, fsp0fsp.cc).
    MariaDB adds FSP_HEADER_OFFSET once more (fil_space_read_crypt_data, fil0crypt.cc), so its magic sits 38 bytes
    further on.
    """
    offset = XDES_ARR_OFFSET + xdes_size(logical_page_size) * physical_page_size // extent_size(logical_page_size)
    return offset + FSP_HEADER_OFFSET if flavor == "mariadb" else offset


def _mariadb_crypt_type(page0: bytes | memoryview, logical: int, physical: int) -> int | None:
    """The CRYPT_SCHEME of MariaDB's crypt data on page 0, or None when page 0 carries none."""
    off = encryption_info_offset(logical, physical, "mariadb")
    if len(page0) < off + len(CRYPT_MAGIC) + 1 or bytes(page0[off : off + len(CRYPT_MAGIC)]) != CRYPT_MAGIC:
        return None
    return page0[off + len(CRYPT_MAGIC)]


def space_info(page0: bytes | memoryview, flavor: str) -> SpaceInfo:
    """Build SpaceInfo from page 0 (at least the first 150 bytes; the whole page to detect MariaDB encryption).

    Raises:
        Truncated: fewer bytes than the FSP header needs.
        BadMagic: this is not page 0 of a tablespace (FIL_PAGE_OFFSET != 0 or the two space ids differ).
        UnsupportedVersion: flags this server family would not open.
    """
    if flavor not in FLAVORS:
        raise UnsupportedVersion(f"unknown server flavor {flavor!r}", hint="use mysql or mariadb")
    if len(page0) < XDES_ARR_OFFSET:
        raise Truncated(f"page 0 too short for the FSP header ({len(page0)} < {XDES_ARR_OFFSET} bytes)", page=0)
    hdr = FSP_HEADER_FAST.unpack_from(page0, FSP_HEADER_OFFSET)
    space_id, size, free_limit, flags = hdr[0], hdr[2], hdr[3], hdr[4]
    page_no = BE32.unpack_from(page0, FIL_PAGE_OFFSET)[0]
    fil_space_id = BE32.unpack_from(page0, FIL_PAGE_SPACE_ID)[0]
    if page_no != 0 or fil_space_id != space_id:
        raise BadMagic(
            f"not page 0 of a tablespace (page number {page_no}, space id {fil_space_id} in FIL header, "
            f"{space_id} in FSP header)",
            page=0,
        )
    logical, physical = page_size_from_flags(flags, flavor)
    full_crc32 = is_full_crc32(flags, flavor)
    algo = 0
    if flavor == "mysql":
        page_compressed = False  # MySQL transparent compression is per page (FIL_PAGE_COMPRESSED), not in flags
        encrypted = bool(flags & FSP_FLAGS_MASK_ENCRYPTION)
    else:
        if full_crc32:
            algo = (flags & FSP_FLAGS_FCRC32_MASK_COMPRESSED_ALGO) >> FSP_FLAGS_FCRC32_POS_COMPRESSED_ALGO
            page_compressed = algo != 0
        else:
            page_compressed = bool(flags & FSP_FLAGS_MASK_PAGE_COMPRESSION)
        crypt_type = _mariadb_crypt_type(page0, logical, physical)
        encrypted = bool(crypt_type)
    return SpaceInfo(
        space_id=space_id,
        flags=flags,
        flavor=flavor,
        logical_page_size=logical,
        physical_page_size=physical,
        full_crc32=full_crc32,
        page_compressed=page_compressed,
        encrypted=encrypted,
        size_in_pages=size,
        free_limit=free_limit,
        compression_algo=algo,
    )


def parse_fsp_header(page0: bytes | memoryview) -> dict[str, Any]:
    """Parse the whole FSP header with the construct spec (for inspect; not on the hot path)."""
    if len(page0) < XDES_ARR_OFFSET:
        raise Truncated(f"page 0 too short for the FSP header ({len(page0)} bytes)", page=0)
    parsed = FSP_HEADER.parse(bytes(page0[FSP_HEADER_OFFSET:XDES_ARR_OFFSET]))
    return {k: v for k, v in parsed.items() if not k.startswith("_")}


def page_ssize(size: int) -> int:
    """The flags' shift for a page size: ``size == 512 << ssize`` (only exact for powers of two)."""
    return (size >> 9).bit_length() - 1


def unwritten_space_info(logical_page_size: int, flavor: str = "mariadb") -> SpaceInfo:
    """What to cut a tablespace into while its page 0 is still all zero (MariaDB writes it lazily): the server's
    page size, crc32/innodb flags. Only a first guess: ``validate_pages_any_format`` also accepts the other
    formats such a tablespace can turn out to have."""
    ssize = page_ssize(logical_page_size)
    if 512 << ssize != logical_page_size or not 4096 <= logical_page_size <= 65536:
        raise ValueError(f"innodb_page_size {logical_page_size} is not a power of two from 4K to 64K")
    flags = 0 if ssize == UNIV_PAGE_SSIZE_ORIG else ssize << FSP_FLAGS_POS_PAGE_SSIZE
    return SpaceInfo(space_id=0, flags=flags, flavor=flavor, logical_page_size=logical_page_size,
                     physical_page_size=logical_page_size, full_crc32=False, page_compressed=False, encrypted=False)


def zip_space_info(info: SpaceInfo, zip_size: int) -> SpaceInfo:
    """``info`` as a ROW_FORMAT=COMPRESSED tablespace of ``zip_size`` pages (post-Antelope, atomic blobs, the same
    logical page size): how a MariaDB tablespace whose page 0 is unwritten may turn out."""
    zssize = page_ssize(zip_size)
    if not UNIV_ZIP_SIZE_MIN <= zip_size <= min(info.logical_page_size, 16384) or 512 << zssize != zip_size:
        raise ValueError(f"no ROW_FORMAT=COMPRESSED page size {zip_size} with {info.logical_page_size}-byte pages")
    page_bits = info.flags & FSP_FLAGS_MASK_PAGE_SSIZE
    flags = FSP_FLAGS_MASK_POST_ANTELOPE | zssize << FSP_FLAGS_POS_ZIP_SSIZE | FSP_FLAGS_MASK_ATOMIC_BLOBS | page_bits
    return replace(info, flags=flags, physical_page_size=zip_size, full_crc32=False)
