"""Page checksums and the "would the server accept this page?" decision, for every page the backup copies.

Upstream: ``storage/innobase/buf/buf0checksum.cc`` (MySQL ``BlockReporter::is_corrupted``, ``verify_zip_checksum``,
``calc_zip_checksum``; MariaDB ``buf_calc_page_*``), MariaDB ``buf/buf0buf.cc`` (``buf_page_is_corrupted``,
``buf_page_full_crc32_size``), ``page/page0zip.cc`` (``page_zip_calc_checksum``, ``page_zip_verify_checksum``),
``fil/fil0crypt.cc`` (``fil_space_verify_crypt_checksum``), ``ut/ut0crc32.cc`` (the legacy big-endian CRC),
``ut0rnd.ic`` (``ut_fold_ulint_pair``, ``ut_fold_binary``), MariaDB ``extra/mariabackup/fil_cur.cc``
(``page_is_corrupted``: page-number check, doublewrite skip) and MySQL ``os/os0file.cc`` (transparent compression).

The decision follows the servers' *default, non-strict* settings: a page passes if any algorithm the server still
reads (crc32, the legacy big-endian crc32 in MySQL, innodb, none) matches. The ROW_FORMAT=COMPRESSED checksum is
folded in here (page0zip) because it is three CRC calls.

``validate_pages`` is the backup's hot path: CRC-32C through the C ``crc32c`` package over memoryviews, fields
through precompiled ``struct`` readers, and the slow, explanatory ``page_is_corrupted`` only for pages that fail.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from array import array
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Any

from crc32c import crc32c
from innostream.formats.errors import Truncated
from innostream.formats.fil0fil import (
    BE16,
    BE32,
    BE64,
    BUF_NO_CHECKSUM_MAGIC,
    FIL_PAGE_ARCH_LOG_NO_OR_SPACE_ID,
    FIL_PAGE_COMP_ALGO,
    FIL_PAGE_COMPRESS_FCRC32_MARKER,
    FIL_PAGE_COMPRESSED,
    FIL_PAGE_COMPRESSED_AND_ENCRYPTED,
    FIL_PAGE_DATA,
    FIL_PAGE_ENCRYPTED,
    FIL_PAGE_ENCRYPTED_RTREE,
    FIL_PAGE_END_LSN_OLD_CHKSUM,
    FIL_PAGE_FCRC32_CHECKSUM,
    FIL_PAGE_FCRC32_END_LSN,
    FIL_PAGE_FILE_FLUSH_LSN,
    FIL_PAGE_LSN,
    FIL_PAGE_OFFSET,
    FIL_PAGE_PAGE_COMPRESSED,
    FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED,
    FIL_PAGE_TYPE,
)
from innostream.formats.fsp0fsp import FSP_FLAGS_FCRC32_MASK_MARKER, SpaceInfo, page_ssize, zip_space_info

__all__ = [
    "ZERO_PAGE",
    "buf_calc_page_crc32",
    "buf_calc_page_crc32_legacy_big_endian",
    "buf_calc_page_full_crc32",
    "buf_calc_page_new_checksum",
    "buf_calc_page_old_checksum",
    "buf_page_full_crc32_size",
    "checksum_algorithm",
    "page_is_corrupted",
    "page_zip_calc_checksum",
    "stamp_page",
    "validate_pages",
    "validate_pages_any_format",
]

UT_HASH_RANDOM_MASK = 1463735687  # ut0rnd.h
UT_HASH_RANDOM_MASK2 = 1653893711
_M32 = 0xFFFFFFFF

#: Zeros for the all-zero page rule, one page of the largest size.
ZERO_PAGE = bytes(65536)


@lru_cache(maxsize=16)
def _zeros(n: int) -> bytes:
    return ZERO_PAGE[:n]


def _is_zero(mv: memoryview) -> bool:
    """All bytes zero? (``bytes == bytes`` is a memcmp; ``memoryview == bytes`` compares item by item, 40x slower.)"""
    return mv.tobytes() == _zeros(len(mv))

#: MySQL transparent page compression (FIL_PAGE_COMPRESSED): header fields at offset 26 (os0file.h Compression).
FIL_PAGE_VERSION = 26
FIL_PAGE_ALGORITHM_V1 = 27
FIL_PAGE_ORIGINAL_TYPE_V1 = 28
FIL_PAGE_ORIGINAL_SIZE_V1 = 30
FIL_PAGE_COMPRESS_SIZE_V1 = 32
COMPRESSION_ZLIB = 1  # Compression::ZLIB
COMPRESSION_LZ4 = 2  # Compression::LZ4

#: MariaDB non-full_crc32 encrypted pages: key version at 26, post-encryption checksum at 30 (fil0crypt.cc).
FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION = 26
FIL_PAGE_CRYPT_CHECKSUM = FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION + 4

_MYSQL_ENCRYPTED_TYPES = frozenset({FIL_PAGE_ENCRYPTED, FIL_PAGE_COMPRESSED_AND_ENCRYPTED, FIL_PAGE_ENCRYPTED_RTREE})


# --- Checksum algorithms -------------------------------------------------------------------------------------------
def buf_calc_page_crc32(page: bytes | bytearray | memoryview) -> int:
    """The crc32 algorithm: CRC-32C of [4, 26) XOR CRC-32C of [38, size-8) — two CRCs, not one combined."""
    mv = memoryview(page)
    return crc32c(mv[FIL_PAGE_OFFSET:FIL_PAGE_FILE_FLUSH_LSN]) ^ crc32c(
        mv[FIL_PAGE_DATA : len(mv) - FIL_PAGE_END_LSN_OLD_CHKSUM]
    )


def _crc32c_legacy_big_endian(page: memoryview, start: int, end: int) -> int:
    """``ut_crc32_legacy_big_endian`` over page[start:end]: each 8-byte word aligned to the page start is reversed.

    The server fed aligned 64-bit words byte-swapped (a big-endian-CPU bug kept for compatibility), single bytes
    before the first aligned word and after the last one.
    """
    head_end = min(end, (start + 7) & ~7)
    words_end = head_end + (end - head_end) // 8 * 8
    words = array("Q", page[head_end:words_end].tobytes())
    words.byteswap()
    crc = crc32c(page[start:head_end])
    crc = crc32c(words.tobytes(), crc)
    return crc32c(page[words_end:end], crc)


def buf_calc_page_crc32_legacy_big_endian(page: bytes | bytearray | memoryview) -> int:
    """The legacy big-endian crc32 (MySQL 5.6 on big-endian CPUs); MySQL still accepts it on read."""
    mv = memoryview(page)
    return _crc32c_legacy_big_endian(mv, FIL_PAGE_OFFSET, FIL_PAGE_FILE_FLUSH_LSN) ^ _crc32c_legacy_big_endian(
        mv, FIL_PAGE_DATA, len(mv) - FIL_PAGE_END_LSN_OLD_CHKSUM
    )


def _ut_fold_binary(data: bytes) -> int:
    """``ut_fold_binary`` modulo 2**32 (only +, ^ and << occur, so the low 32 bits do not depend on the rest)."""
    fold = 0
    for b in data:
        fold = (((((fold ^ b ^ UT_HASH_RANDOM_MASK2) << 8) + fold) ^ UT_HASH_RANDOM_MASK) + b) & _M32
    return fold


def buf_calc_page_new_checksum(page: bytes | bytearray | memoryview) -> int:
    """The innodb algorithm's header checksum (offset 0): fold of [4, 26) plus fold of [38, size-8)."""
    mv = memoryview(page)
    return (
        _ut_fold_binary(mv[FIL_PAGE_OFFSET:FIL_PAGE_FILE_FLUSH_LSN].tobytes())
        + _ut_fold_binary(mv[FIL_PAGE_DATA : len(mv) - FIL_PAGE_END_LSN_OLD_CHKSUM].tobytes())
    ) & _M32


def buf_calc_page_old_checksum(page: bytes | bytearray | memoryview) -> int:
    """The innodb algorithm's trailer checksum: fold of [0, 26), which includes the stored new checksum."""
    return _ut_fold_binary(bytes(memoryview(page)[:FIL_PAGE_FILE_FLUSH_LSN]))


def buf_page_full_crc32_size(page: bytes | bytearray | memoryview, logical_page_size: int) -> tuple[int, bool, bool]:
    """``buf_page_full_crc32_size``: (checked size, page_compressed, corrupted) of a MariaDB full_crc32 page.

    A page_compressed page stores ``0x8000 | (size >> 8)`` in FIL_PAGE_TYPE; its CRC ends the compressed data.
    """
    t = BE16.unpack_from(page, FIL_PAGE_TYPE)[0]
    if not t & FIL_PAGE_COMPRESS_FCRC32_MARKER:
        return logical_page_size, False, False
    size = (t & ~FIL_PAGE_COMPRESS_FCRC32_MARKER) << 8
    if size < logical_page_size:
        return size, True, False
    return logical_page_size, False, True


def buf_calc_page_full_crc32(page: bytes | bytearray | memoryview, size: int | None = None) -> int:
    """MariaDB full_crc32: CRC-32C of [0, size-4), stored big-endian at size-4."""
    mv = memoryview(page)
    end = len(mv) if size is None else size
    return crc32c(mv[: end - FIL_PAGE_FCRC32_CHECKSUM])


# --- ROW_FORMAT=COMPRESSED (page0zip.cc) ---------------------------------------------------------------------------
def page_zip_calc_checksum(page: bytes | bytearray | memoryview, algorithm: str = "crc32") -> int:
    """Checksum of a ROW_FORMAT=COMPRESSED page over [4, 16) + [24, 26) + [34, size): the LSN, flush LSN and the
    field itself are left out. ``algorithm``: crc32 (XOR of three CRCs), innodb (chained adler32 from 0),
    crc32_be (legacy big-endian crc32, MySQL only)."""
    mv = memoryview(page)
    ranges = ((FIL_PAGE_OFFSET, FIL_PAGE_LSN), (FIL_PAGE_TYPE, FIL_PAGE_TYPE + 2),
              (FIL_PAGE_ARCH_LOG_NO_OR_SPACE_ID, len(mv)))  # fmt: skip
    if algorithm == "crc32":
        return crc32c(mv[ranges[0][0] : ranges[0][1]]) ^ crc32c(mv[ranges[1][0] : ranges[1][1]]) ^ crc32c(
            mv[ranges[2][0] :]
        )
    if algorithm == "innodb":
        adler = 0
        for a, b in ranges:
            adler = zlib.adler32(mv[a:b], adler)
        return adler & _M32
    if algorithm == "crc32_be":
        crc = 0
        for a, b in ranges:
            crc ^= _crc32c_legacy_big_endian(mv, a, b)
        return crc
    raise ValueError(f"unknown zip checksum algorithm {algorithm!r}")


def _zip_is_corrupted(page: memoryview, flavor: str) -> str | None:
    """``page_zip_verify_checksum`` / ``BlockReporter::verify_zip_checksum`` in their non-strict defaults."""
    stored = BE32.unpack_from(page, 0)[0]
    if stored == 0 and BE64.unpack_from(page, FIL_PAGE_LSN)[0] == 0:
        if _is_zero(page):
            return None
        return "compressed page with zero checksum and LSN is not all zero"
    calc = page_zip_calc_checksum(page, "crc32")
    if stored in (calc, BUF_NO_CHECKSUM_MAGIC) or stored == page_zip_calc_checksum(page, "innodb"):
        return None
    if flavor == "mysql" and stored == page_zip_calc_checksum(page, "crc32_be"):
        return None
    return f"compressed page checksum mismatch (stored {stored:#010x}, crc32 {calc:#010x})"


# --- Per-family decisions -----------------------------------------------------------------------------------------
def _lsn_mismatch(page: memoryview, trailer_off: int) -> str | None:
    head = BE32.unpack_from(page, FIL_PAGE_LSN + 4)[0]
    tail = BE32.unpack_from(page, trailer_off)[0]
    if head != tail:
        return f"LSN in header and trailer differ (header low word {head:#010x}, trailer {tail:#010x})"
    return None


def _zero_except_flush_lsn(page: memoryview) -> bool:
    """The all-zero rule of non-full_crc32 pages: bytes 26..33 (FIL_PAGE_FILE_FLUSH_LSN) are ignored."""
    return _is_zero(page[:FIL_PAGE_FILE_FLUSH_LSN]) and _is_zero(page[FIL_PAGE_ARCH_LOG_NO_OR_SPACE_ID:])


def _fcrc32_is_corrupted(page: memoryview, info: SpaceInfo) -> str | None:
    """MariaDB ``buf_page_is_corrupted`` for full_crc32 tablespaces."""
    ps = info.logical_page_size
    size, compressed, corrupted = buf_page_full_crc32_size(page, ps)
    if corrupted:
        t = BE16.unpack_from(page, FIL_PAGE_TYPE)[0]
        return f"page_compressed size {(t & 0x7FFF) << 8} in FIL_PAGE_TYPE {t:#06x} is not below the page size"
    stored = BE32.unpack_from(page, size - FIL_PAGE_FCRC32_CHECKSUM)[0]
    if stored == 0 and size == ps and _is_zero(page):
        return None
    calc = crc32c(page[: size - FIL_PAGE_FCRC32_CHECKSUM])
    if stored != calc:
        return f"full_crc32 checksum mismatch (stored {stored:#010x}, computed {calc:#010x})"
    if not compressed and BE32.unpack_from(page, 0)[0] == 0:  # key version 0: not encrypted
        return _lsn_mismatch(page, size - FIL_PAGE_FCRC32_END_LSN)
    return None


def _innodb_valid(page: memoryview, f1: int, f2: int) -> bool:
    """The innodb algorithm as MySQL checks it (``is_checksum_valid_innodb``)."""
    if f2 != BE32.unpack_from(page, FIL_PAGE_LSN)[0] and f2 != buf_calc_page_old_checksum(page):
        return False
    return f1 == 0 or f1 == buf_calc_page_new_checksum(page)


def _mariadb_crypt_is_corrupted(page: memoryview, info: SpaceInfo) -> str | None:
    """``fil_space_verify_crypt_checksum``: the checksum at 30 over the encrypted page (non-full_crc32)."""
    if BE16.unpack_from(page, FIL_PAGE_TYPE)[0] == FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED:
        return None  # no checksum before decompression
    stored = BE32.unpack_from(page, FIL_PAGE_CRYPT_CHECKSUM)[0]
    calc = page_zip_calc_checksum(page, "crc32") if info.zip_size else buf_calc_page_crc32(page)
    if stored in (calc, BUF_NO_CHECKSUM_MAGIC):
        return None
    legacy = page_zip_calc_checksum(page, "innodb") if info.zip_size else buf_calc_page_new_checksum(page)
    if stored != legacy:
        return f"encrypted page checksum mismatch (stored {stored:#010x}, computed {calc:#010x})"
    return None


#: MariaDB page_compressed (legacy flags): payload length (2 bytes) at FIL_PAGE_DATA, data after it
#: (fil0pagecompress.cc); the algorithm is the 8-byte FIL_PAGE_COMP_ALGO at 26.
FIL_PAGE_COMP_SIZE = FIL_PAGE_DATA
FIL_PAGE_COMP_METADATA_LEN = 2
_DECOMPRESSORS: dict[int, Callable[[], Any]] = {
    1: zlib.decompressobj,  # PAGE_ZLIB_ALGORITHM
    4: lzma.LZMADecompressor,  # PAGE_LZMA_ALGORITHM (xz container)
    5: bz2.BZ2Decompressor,  # PAGE_BZIP2_ALGORITHM
}  # lz4, lzo, snappy: no decompressor in the standard library; such pages are not checked (as before decompression)


def _inflate(make: Callable[[], Any], data: bytes, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes: a corrupt payload must not be able to blow up memory."""
    out: bytes = make().decompress(data, limit)
    return out


def _mariadb_decompress(page: memoryview) -> memoryview | str:
    """Undo MariaDB page compression (legacy flags, FIL_PAGE_TYPE 34354): the payload is the whole original page.

    Returns the original page, a reason string when it cannot be right, or "" when it cannot be checked here.
    """
    n = len(page)
    size = BE16.unpack_from(page, FIL_PAGE_COMP_SIZE)[0]
    header = FIL_PAGE_DATA + FIL_PAGE_COMP_METADATA_LEN
    if size == 0 or size > n - header:
        return f"page_compressed payload size {size} out of range"
    algo = BE64.unpack_from(page, FIL_PAGE_COMP_ALGO)[0]
    decompress = _DECOMPRESSORS.get(algo)
    if decompress is None:
        return ""
    try:
        data = _inflate(decompress, page[header : header + size].tobytes(), n + 1)
    except (zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        return f"page_compressed page does not decompress ({exc})"
    if len(data) != n:
        return f"page_compressed page decompresses to {len(data)} bytes, not {n}"
    return memoryview(data)


def _mariadb_legacy_is_corrupted(page: memoryview, info: SpaceInfo) -> str | None:
    """MariaDB ``buf_page_is_corrupted`` for non-full_crc32 tablespaces, innodb_checksum_algorithm not strict.

    page_compressed pages (34354) have no checksum of their own; like mariabackup we decompress them and check the
    original page. Compressed+encrypted ones (37401) would need the key, and are accepted as the server does.
    """
    t = BE16.unpack_from(page, FIL_PAGE_TYPE)[0]
    if t in (FIL_PAGE_PAGE_COMPRESSED, FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED) and info.page_compressed:
        if t == FIL_PAGE_PAGE_COMPRESSED:
            restored = _mariadb_decompress(page)
            if isinstance(restored, str):
                return restored or None
            if BE16.unpack_from(restored, FIL_PAGE_TYPE)[0] in (FIL_PAGE_PAGE_COMPRESSED,
                                                               FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED):  # fmt: skip
                return "page_compressed page decompresses to another compressed page"
            if reason := _mariadb_legacy_is_corrupted(restored, info):
                return f"after decompression: {reason}"
        return None
    n = len(page)
    if info.zip_size:
        return _zip_is_corrupted(page, "mariadb")
    if reason := _lsn_mismatch(page, n - 4):
        return reason
    f1 = BE32.unpack_from(page, 0)[0]
    f2 = BE32.unpack_from(page, n - FIL_PAGE_END_LSN_OLD_CHKSUM)[0]
    if f1 == 0 and f2 == 0 and _zero_except_flush_lsn(page):
        return None
    if f1 == BUF_NO_CHECKSUM_MAGIC and f2 == BUF_NO_CHECKSUM_MAGIC:
        return None
    crc = buf_calc_page_crc32(page)
    if f1 == crc and f2 == crc:
        return None
    if f2 != BE32.unpack_from(page, FIL_PAGE_LSN)[0] and f2 != BUF_NO_CHECKSUM_MAGIC:
        if f2 != buf_calc_page_old_checksum(page):
            return f"checksum mismatch (stored {f1:#010x}/{f2:#010x}, crc32 {crc:#010x}; innodb does not match)"
    if f1 not in (0, BUF_NO_CHECKSUM_MAGIC) and f1 != buf_calc_page_new_checksum(page):
        return f"checksum mismatch (stored {f1:#010x}/{f2:#010x}, crc32 {crc:#010x}; innodb does not match)"
    return None


def _mysql_decompress(page: memoryview) -> memoryview | str:
    """Undo MySQL transparent page compression (``Compression::deserialize``) so the page can be checked.

    Returns the restored page, or a reason string when it cannot be decompressed.
    """
    algo = page[FIL_PAGE_ALGORITHM_V1]
    orig_type = BE16.unpack_from(page, FIL_PAGE_ORIGINAL_TYPE_V1)[0]
    orig_size = BE16.unpack_from(page, FIL_PAGE_ORIGINAL_SIZE_V1)[0]
    comp_size = BE16.unpack_from(page, FIL_PAGE_COMPRESS_SIZE_V1)[0]
    n = len(page)
    if FIL_PAGE_DATA + comp_size > n or FIL_PAGE_DATA + orig_size > n:
        return f"compressed page sizes out of range (compressed {comp_size}, original {orig_size})"
    if algo != COMPRESSION_ZLIB:
        return ""  # lz4 (or unknown): no decompressor here; not verifiable, not reported
    try:
        data = _inflate(zlib.decompressobj, page[FIL_PAGE_DATA : FIL_PAGE_DATA + comp_size].tobytes(), n + 1)
    except zlib.error as exc:
        return f"transparently compressed page does not decompress ({exc})"
    if len(data) != orig_size:
        return f"transparently compressed page decompresses to {len(data)} bytes, header says {orig_size}"
    out = bytearray(n)
    out[:FIL_PAGE_DATA] = page[:FIL_PAGE_DATA]
    out[FIL_PAGE_TYPE : FIL_PAGE_TYPE + 2] = orig_type.to_bytes(2, "big")
    out[FIL_PAGE_FILE_FLUSH_LSN:FIL_PAGE_ARCH_LOG_NO_OR_SPACE_ID] = bytes(8)
    out[FIL_PAGE_DATA : FIL_PAGE_DATA + orig_size] = data
    return memoryview(out)


def _mysql_is_corrupted(page: memoryview, info: SpaceInfo) -> str | None:
    """MySQL ``BlockReporter::is_corrupted`` with innodb_checksum_algorithm=crc32 (the default, not strict)."""
    t = BE16.unpack_from(page, FIL_PAGE_TYPE)[0]
    if t in _MYSQL_ENCRYPTED_TYPES:
        return None  # TDE: the checksum is inside the encrypted body; cannot be checked without the keyring
    if t == FIL_PAGE_COMPRESSED:
        restored = _mysql_decompress(page)
        if isinstance(restored, str):
            return restored or None
        page = restored
    n = len(page)
    if info.zip_size:
        return _zip_is_corrupted(page, "mysql")
    if reason := _lsn_mismatch(page, n - 4):
        return reason
    f1 = BE32.unpack_from(page, 0)[0]
    f2 = BE32.unpack_from(page, n - FIL_PAGE_END_LSN_OLD_CHKSUM)[0]
    if f1 == 0 and f2 == 0 and BE64.unpack_from(page, FIL_PAGE_LSN)[0] == 0:
        if _zero_except_flush_lsn(page):
            return None
        return "checksum fields and LSN are zero but the page is not empty"
    crc = buf_calc_page_crc32(page)
    if f1 == f2 and f1 in (crc, BUF_NO_CHECKSUM_MAGIC):
        return None
    if _innodb_valid(page, f1, f2):
        return None
    if f1 == f2 == buf_calc_page_crc32_legacy_big_endian(page):
        return None
    return f"crc32 checksum mismatch (stored {f1:#010x}/{f2:#010x}, computed {crc:#010x}; innodb does not match)"


def _is_doublewrite(info: SpaceInfo, page_no: int) -> bool:
    """The legacy doublewrite area of the system tablespace (2 extents from FSP_EXTENT_SIZE); never validated."""
    ext = info.extent_size
    return info.space_id == 0 and ext <= page_no < 3 * ext


def page_is_corrupted(page: bytes | bytearray | memoryview, info: SpaceInfo, page_no: int | None = None) -> str | None:
    """None if the server (and its backup tool) would accept this physical page, else a short reason.

    ``page_no``, when given, enables what the backup tools add: the page-number check (not for the system
    tablespace, whose files share one numbering) and the doublewrite-area skip of ibdata1.

    Raises:
        Truncated: ``page`` is not exactly one physical page.
    """
    mv = memoryview(page).cast("B") if not isinstance(page, memoryview) or page.format != "B" else page
    ps = info.physical_page_size
    if len(mv) != ps:
        raise Truncated(f"page is {len(mv)} bytes, the tablespace has {ps}-byte pages", page=page_no)
    if page_no is not None:
        if _is_doublewrite(info, page_no):
            return None
        stored_no = BE32.unpack_from(mv, FIL_PAGE_OFFSET)[0]
        if stored_no != page_no and info.space_id != 0 and not _is_zero(mv):
            return f"page number {stored_no} in page {page_no}"
    if info.flavor == "mariadb":
        if info.full_crc32:
            return _fcrc32_is_corrupted(mv, info)
        if (
            info.encrypted
            and BE32.unpack_from(mv, FIL_PAGE_OFFSET)[0] != 0
            and BE32.unpack_from(mv, FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION)[0] != 0
        ):
            return _mariadb_crypt_is_corrupted(mv, info)
        return _mariadb_legacy_is_corrupted(mv, info)
    return _mysql_is_corrupted(mv, info)


def stamp_page(page: bytearray, info: SpaceInfo, algorithm: str | None = None) -> None:
    """Write the LSN copy and checksum into ``page`` in place, as the server does before writing it
    (``buf_flush_init_for_writing``). ``algorithm``: crc32 (default for legacy pages), innodb or none; full_crc32
    tablespaces always get full_crc32. Used to build test pages and to repair page-number edits."""
    ps = len(page)
    if len(page) != info.physical_page_size:
        raise Truncated(f"page is {ps} bytes, the tablespace has {info.physical_page_size}-byte pages")
    lsn_low = page[FIL_PAGE_LSN + 4 : FIL_PAGE_LSN + 8]
    if info.flavor == "mariadb" and info.full_crc32:
        size, _compressed, _bad = buf_page_full_crc32_size(page, info.logical_page_size)
        if size == ps:
            page[ps - FIL_PAGE_FCRC32_END_LSN : ps - FIL_PAGE_FCRC32_CHECKSUM] = lsn_low
        BE32.pack_into(page, size - FIL_PAGE_FCRC32_CHECKSUM, buf_calc_page_full_crc32(page, size))
        return
    algorithm = algorithm or "crc32"
    if info.zip_size:
        value = BUF_NO_CHECKSUM_MAGIC if algorithm == "none" else page_zip_calc_checksum(page, algorithm)
        BE32.pack_into(page, 0, value)
        return
    page[ps - 4 :] = lsn_low
    if algorithm == "crc32":
        crc = buf_calc_page_crc32(page)
        BE32.pack_into(page, 0, crc)
        BE32.pack_into(page, ps - FIL_PAGE_END_LSN_OLD_CHKSUM, crc)
    elif algorithm == "innodb":
        BE32.pack_into(page, 0, buf_calc_page_new_checksum(page))
        BE32.pack_into(page, ps - FIL_PAGE_END_LSN_OLD_CHKSUM, buf_calc_page_old_checksum(page))
    elif algorithm == "none":
        BE32.pack_into(page, 0, BUF_NO_CHECKSUM_MAGIC)
        BE32.pack_into(page, ps - FIL_PAGE_END_LSN_OLD_CHKSUM, BUF_NO_CHECKSUM_MAGIC)
    else:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def checksum_algorithm(page: bytes | bytearray | memoryview, info: SpaceInfo) -> str:
    """Name the algorithm a (valid) page was written with: full_crc32, crc32, crc32_be, innodb, none, zero, or
    page_compressed/encrypted/unknown. For inspect; not on the hot path."""
    mv = memoryview(page)
    ps = len(mv)
    t = BE16.unpack_from(mv, FIL_PAGE_TYPE)[0]
    if info.flavor == "mariadb" and info.full_crc32:
        if _is_zero(mv):
            return "zero"
        return "full_crc32"
    if info.flavor == "mysql" and t in _MYSQL_ENCRYPTED_TYPES:
        return "encrypted"
    if info.flavor == "mysql" and t == FIL_PAGE_COMPRESSED:
        return "transparent_compression"
    if info.flavor == "mariadb" and t in (FIL_PAGE_PAGE_COMPRESSED, FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED):
        return "page_compressed"
    if (
        info.flavor == "mariadb"
        and info.encrypted
        and BE32.unpack_from(mv, FIL_PAGE_OFFSET)[0] != 0
        and BE32.unpack_from(mv, FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION)[0] != 0
    ):
        return "encrypted"
    f1 = BE32.unpack_from(mv, 0)[0]
    if info.zip_size:
        if f1 == 0 and _is_zero(mv):
            return "zero"
        for algo in ("crc32", "innodb", "crc32_be"):
            if f1 == page_zip_calc_checksum(mv, algo):
                return algo
        return "none" if f1 == BUF_NO_CHECKSUM_MAGIC else "unknown"
    f2 = BE32.unpack_from(mv, ps - FIL_PAGE_END_LSN_OLD_CHKSUM)[0]
    if f1 == 0 and f2 == 0 and _zero_except_flush_lsn(mv):
        return "zero"
    if f1 == f2 == BUF_NO_CHECKSUM_MAGIC:
        return "none"
    if f1 == f2 == buf_calc_page_crc32(mv):
        return "crc32"
    if f1 == f2 == buf_calc_page_crc32_legacy_big_endian(mv):
        return "crc32_be"
    if _innodb_valid(mv, f1, f2):
        return "innodb"
    return "unknown"


# --- The hot path ---------------------------------------------------------------------------------------------------
def _fast_checker(info: SpaceInfo) -> Callable[[memoryview, int], bool] | None:
    """A cheap "surely fine" test for the common case of each format; pages it does not pass take the slow path."""
    ps = info.physical_page_size
    if info.flavor == "mariadb" and info.full_crc32:
        crc_off, end_lsn_off = ps - FIL_PAGE_FCRC32_CHECKSUM, ps - FIL_PAGE_FCRC32_END_LSN
        unpack = BE32.unpack_from
        marker = FIL_PAGE_COMPRESS_FCRC32_MARKER

        def fcrc32(mv: memoryview, off: int) -> bool:
            # Plain (not page_compressed, not encrypted) page: CRC over [0, ps-4) and LSN copy must agree.
            return (
                not BE16.unpack_from(mv, off + FIL_PAGE_TYPE)[0] & marker
                and unpack(mv, off)[0] == 0
                and unpack(mv, off + crc_off)[0] == crc32c(mv[off : off + crc_off])
                and unpack(mv, off + FIL_PAGE_LSN + 4)[0] == unpack(mv, off + end_lsn_off)[0]
            )

        return fcrc32
    if info.zip_size:
        unpack = BE32.unpack_from

        def zip_crc32(mv: memoryview, off: int) -> bool:
            # page_zip_calc_checksum crc32; a zero field takes the slow path (the all-zero rule decides there).
            f1: int = unpack(mv, off)[0]
            return f1 != 0 and f1 == (
                crc32c(mv[off + FIL_PAGE_OFFSET : off + FIL_PAGE_LSN])
                ^ crc32c(mv[off + FIL_PAGE_TYPE : off + FIL_PAGE_TYPE + 2])
                ^ crc32c(mv[off + FIL_PAGE_ARCH_LOG_NO_OR_SPACE_ID : off + ps])
            )

        return zip_crc32
    trailer = ps - FIL_PAGE_END_LSN_OLD_CHKSUM
    unpack = BE32.unpack_from
    data_end = ps - FIL_PAGE_END_LSN_OLD_CHKSUM

    def crc32(mv: memoryview, off: int) -> bool:
        f1: int = unpack(mv, off)[0]
        return (
            f1 == unpack(mv, off + trailer)[0]
            and unpack(mv, off + FIL_PAGE_LSN + 4)[0] == unpack(mv, off + trailer + 4)[0]
            and f1
            == crc32c(mv[off + FIL_PAGE_OFFSET : off + FIL_PAGE_FILE_FLUSH_LSN])
            ^ crc32c(mv[off + FIL_PAGE_DATA : off + data_end])
        )

    return crc32


def validate_pages(buf: bytes | bytearray | memoryview, info: SpaceInfo, first_page_no: int) -> list[tuple[int, str]]:
    """Check consecutive physical pages; return [(page_no, reason)] for those the server would reject.

    The backup's hot path: each page costs a couple of ``struct`` reads and one or two C CRC-32C calls unless it
    fails the quick test, in which case ``page_is_corrupted`` decides and explains.

    Raises:
        Truncated: ``buf`` is not a whole number of pages.
    """
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    ps = info.physical_page_size
    n, rest = divmod(len(mv), ps)
    if rest:
        raise Truncated(
            f"buffer of {len(mv)} bytes is not a whole number of {ps}-byte pages",
            page=first_page_no + n,
            offset=n * ps,
        )
    fast = _fast_checker(info)
    check_no = info.space_id != 0
    unpack = BE32.unpack_from
    bad: list[tuple[int, str]] = []
    for i in range(n):
        off = i * ps
        page_no = first_page_no + i
        if fast is not None and (not check_no or unpack(mv, off + FIL_PAGE_OFFSET)[0] == page_no) and fast(mv, off):
            continue
        reason = page_is_corrupted(mv[off : off + ps], info, page_no)
        if reason is not None:
            bad.append((page_no, reason))
    return bad


def validate_pages_any_format(buf: bytes | bytearray | memoryview, info: SpaceInfo,
                              first_page_no: int) -> list[tuple[int, str]]:
    """``validate_pages`` for a MariaDB tablespace whose page 0 is all zero, so its format is unknown.

    MariaDB writes page 0 of a new tablespace lazily (docs/PAGES.md), so its other pages can reach the file first;
    ``info`` is then only a guess (``fsp0fsp.unwritten_space_info``: the server's page size, crc32/innodb). The
    server writes such a page in full_crc32 (``innodb_checksum_algorithm`` full_crc32, the default since 10.5),
    crc32/innodb, or, for ROW_FORMAT=COMPRESSED, as compressed pages of 1K to 16K (never full_crc32): a page of
    ``info``'s size fails only if it is valid in none of them (each of its compressed pieces valid, for the last).
    """
    bad = validate_pages(buf, info, first_page_no)
    if not bad:
        return bad
    fcrc32 = replace(info, flags=FSP_FLAGS_FCRC32_MASK_MARKER | page_ssize(info.logical_page_size), full_crc32=True)
    mv = memoryview(buf).cast("B")
    ps = info.physical_page_size
    zips = [zip_space_info(info, z) for z in (1024, 2048, 4096, 8192, 16384) if z <= min(ps, 16384)]
    kept = []
    for page_no, reason in bad:
        off = (page_no - first_page_no) * ps
        page = mv[off : off + ps]
        if (again := page_is_corrupted(page, fcrc32, page_no)) is None:
            continue
        if any(not validate_pages(page, z, page_no * ps // z.physical_page_size) for z in zips):
            continue
        kept.append((page_no, f"page 0 is all zero, so the format is unknown; as a crc32/innodb page: {reason}; "
                              f"as a full_crc32 page: {again}; nor as compressed pages of 1K to "
                              f"{min(ps, 16384) >> 10}K"))
    return kept
