"""FIL/FSP parsing and page validation against real pages from real servers (fixtures/pages/, pages.json).

The expected values come from the servers (information_schema, @@innodb_page_size), not from our own parser.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest
from construct import Container
from innostream.formats.buf0checksum import (
    BE32,
    buf_calc_page_crc32,
    buf_calc_page_crc32_legacy_big_endian,
    buf_calc_page_new_checksum,
    buf_calc_page_old_checksum,
    checksum_algorithm,
    page_is_corrupted,
    page_zip_calc_checksum,
    stamp_page,
    validate_pages,
)
from innostream.formats.errors import BadMagic, Truncated, UnsupportedVersion
from innostream.formats.fil0fil import (
    FIL_HEADER,
    FIL_HEADER_FAST,
    FIL_PAGE_INDEX,
    FIL_PAGE_TYPE_FSP_HDR,
    FIL_TRAILER,
    page_type_name,
    parse_fil_header,
    parse_fil_trailer,
)
from innostream.formats.fsp0fsp import (
    CRYPT_MAGIC,
    FSP_HEADER,
    FSP_HEADER_FAST,
    FSP_HEADER_OFFSET,
    XDES_ARR_OFFSET,
    SpaceInfo,
    encryption_info_offset,
    guess_flavor,
    page_size_from_flags,
    parse_fsp_header,
    space_info,
    zip_size_from_flags,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "pages"
MANIFEST = json.loads((FIXTURES / "pages.json").read_text())
NAMES = sorted(MANIFEST)
MARIADB_MEMORY_ONLY_FLAGS = 0x1F << 27  # fil0fil.h: FSP_FLAGS_MEM_* bits never on disk


def flavor_of(entry: dict) -> str:
    return "mysql" if entry["kind"].startswith("mysql") else "mariadb"


def load(name: str) -> tuple[dict, bytes, bytes]:
    """(manifest entry, page 0, the B-tree page) of a sample."""
    entry = MANIFEST[name]
    data = gzip.decompress((FIXTURES / entry["file"]).read_bytes())
    ps = entry["physical_page_size"]
    assert len(data) == 2 * ps
    return entry, data[:ps], data[ps:]


@pytest.fixture(params=NAMES)
def sample(request: pytest.FixtureRequest) -> tuple[dict, bytes, bytes]:
    return load(request.param)


def test_manifest_covers_the_required_formats() -> None:
    assert {"mariadb10-full_crc32-16k", "mariadb10-crc32-16k", "mysql9-crc32-16k", "mariadb10-full_crc32-4k",
            "mysql9-crc32-8k", "mariadb10-compressed-kbs8", "mysql9-compressed-kbs8",
            "mariadb10-full_crc32-page_compressed-16k", "mysql9-compressed-kbs8-8k", "mariadb10-compressed-kbs8-8k",
            "mariadb10-compressed-kbs4-4k"} <= set(NAMES)  # fmt: skip


# --- page 0 against what the server said ------------------------------------------------------------------------
def test_space_info_matches_server(sample: tuple[dict, bytes, bytes]) -> None:
    entry, page0, _ = sample
    info = space_info(page0, flavor_of(entry))
    assert info.space_id == entry["space_id"]
    assert info.flags == entry["is_flag"] & ~MARIADB_MEMORY_ONLY_FLAGS
    assert info.logical_page_size == entry["innodb_page_size"]
    assert info.physical_page_size == (entry["zip_page_size"] or entry["innodb_page_size"])
    assert info.physical_page_size == entry["physical_page_size"]
    # ROW_FORMAT=COMPRESSED as the server says, also when KEY_BLOCK_SIZE equals innodb_page_size (zip = logical)
    assert info.zip_size == entry["zip_page_size"]
    assert (info.zip_size != 0) is (entry["row_format"] == "Compressed")
    # full_crc32 is what a MariaDB server with the default algorithm writes, except for ROW_FORMAT=COMPRESSED.
    expect_fcrc32 = entry["innodb_checksum_algorithm"] == "full_crc32" and not entry["zip_page_size"]
    assert info.full_crc32 is expect_fcrc32
    assert info.page_compressed is ("PAGE_COMPRESSED=1" in entry["ddl"])
    assert info.encrypted is ("ENCRYPTED=YES" in entry["ddl"])
    assert info.size_in_pages > max(entry["pages"])


def test_page_size_from_flags_matches_server(sample: tuple[dict, bytes, bytes]) -> None:
    entry, _, _ = sample
    flags = entry["is_flag"] & ~MARIADB_MEMORY_ONLY_FLAGS
    logical, physical = page_size_from_flags(flags, flavor_of(entry))
    assert logical == entry["innodb_page_size"]
    assert physical == entry["physical_page_size"]


def test_guess_flavor_never_wrong(sample: tuple[dict, bytes, bytes]) -> None:
    entry, page0, _ = sample
    assert guess_flavor(page0) in (None, flavor_of(entry))
    if flavor_of(entry) == "mysql":
        assert guess_flavor(page0) == "mysql"  # every MySQL 8+ .ibd has the SDI flag
    if "full_crc32" in entry["file"]:
        assert guess_flavor(page0) == "mariadb"


def test_page_types(sample: tuple[dict, bytes, bytes]) -> None:
    entry, page0, page = sample
    assert parse_fil_header(page0).page_type == FIL_PAGE_TYPE_FSP_HDR == entry["page_types"][0]
    assert parse_fil_header(page).page_type == entry["page_types"][1]
    assert parse_fil_header(page).page_no == entry["pages"][1]
    # full_crc32 page_compressed and encrypted pages transform everything from FIL_PAGE_FILE_FLUSH_LSN on.
    transformed = ("mariadb10-full_crc32-page_compressed", "mariadb10-encrypted-full_crc32")
    assert parse_fil_header(page).space_id == entry["space_id"] or entry["file"].startswith(transformed)


def test_page_type_names_differ_by_family() -> None:
    assert page_type_name(18, "mysql") == "SDI_BLOB"
    assert page_type_name(18, "mariadb") == "INSTANT"
    assert page_type_name(FIL_PAGE_INDEX, "mysql") == page_type_name(FIL_PAGE_INDEX, "mariadb") == "INDEX"
    assert page_type_name(0x8021, "mariadb", full_crc32=True) == "PAGE_COMPRESSED"
    assert page_type_name(12345, "mysql") == "TYPE_12345"


# --- construct spec vs fast path ------------------------------------------------------------------------------------
def test_fil_header_construct_and_fast_path_agree(sample: tuple[dict, bytes, bytes]) -> None:
    _, page0, page = sample
    for p in (page0, page):
        spec = FIL_HEADER.parse(p[: FIL_HEADER.sizeof()])
        fast = parse_fil_header(p)
        assert {k: v for k, v in spec.items() if not k.startswith("_")} == fast._asdict()
        assert FIL_HEADER.build(spec) == p[:38]
        assert FIL_HEADER_FAST.pack(*fast) == p[:38]
        assert tuple(FIL_TRAILER.parse(p[-8:]).values())[-2:] == parse_fil_trailer(p)


def test_fsp_header_construct_and_fast_path_agree(sample: tuple[dict, bytes, bytes]) -> None:
    _, page0, _ = sample
    spec = parse_fsp_header(page0)
    fast = FSP_HEADER_FAST.unpack_from(page0, FSP_HEADER_OFFSET)
    assert (spec["space_id"], spec["not_used"], spec["size"], spec["free_limit"], spec["flags"],
            spec["frag_n_used"]) == fast  # fmt: skip
    assert FSP_HEADER.build(Container(spec)) == page0[FSP_HEADER_OFFSET:XDES_ARR_OFFSET]


# --- the real pages are valid, with the algorithm the server was told to use -------------------------------------
EXPECTED_ALGO = {"full_crc32": "full_crc32", "crc32": "crc32", "innodb": "innodb", "none": "none"}


def test_real_pages_are_valid(sample: tuple[dict, bytes, bytes]) -> None:
    entry, page0, page = sample
    info = space_info(page0, flavor_of(entry))
    assert page_is_corrupted(page0, info, 0) is None
    assert page_is_corrupted(page, info, entry["pages"][1]) is None
    assert page_is_corrupted(page, info) is None
    assert validate_pages(page0, info, 0) == []
    assert validate_pages(memoryview(page), info, entry["pages"][1]) == []


def test_checksum_algorithm_is_the_servers(sample: tuple[dict, bytes, bytes]) -> None:
    entry, page0, page = sample
    info = space_info(page0, flavor_of(entry))
    algo = entry["innodb_checksum_algorithm"]
    expected = "crc32" if algo == "full_crc32" and info.zip_size else EXPECTED_ALGO[algo]
    assert checksum_algorithm(page0, info) == expected
    t = parse_fil_header(page).page_type
    if info.encrypted and not info.full_crc32:
        assert checksum_algorithm(page, info) == "encrypted"  # key version at 26, crc32 of the ciphertext at 30
    elif t == 14:
        assert checksum_algorithm(page, info) == "transparent_compression"
    elif t == 34354:
        assert checksum_algorithm(page, info) == "page_compressed"
    else:
        assert checksum_algorithm(page, info) == expected


def test_stored_checksums_recomputed() -> None:
    """Known answers from the servers: the stored fields equal our computation of each algorithm."""
    _, _p0, page = load("mysql9-crc32-16k")
    assert BE32.unpack_from(page, 0)[0] == buf_calc_page_crc32(page) == BE32.unpack_from(page, len(page) - 8)[0]
    _, _, page = load("mysql9-innodb-16k")
    assert BE32.unpack_from(page, 0)[0] == buf_calc_page_new_checksum(page)
    assert BE32.unpack_from(page, len(page) - 8)[0] == buf_calc_page_old_checksum(page)
    _, _, page = load("mysql9-innodb-compressed-kbs8")
    assert BE32.unpack_from(page, 0)[0] == page_zip_calc_checksum(page, "innodb")
    _, _, page = load("mariadb10-compressed-kbs8")
    assert BE32.unpack_from(page, 0)[0] == page_zip_calc_checksum(page, "crc32")
    _, _, page = load("mariadb10-full_crc32-16k")
    import crc32c

    assert BE32.unpack_from(page, len(page) - 4)[0] == crc32c.crc32c(page[:-4])


def test_mariadb_page_compressed_full_crc32_size() -> None:
    _, p0, page = load("mariadb10-full_crc32-page_compressed-16k")
    t = struct.unpack_from(">H", page, 24)[0]
    assert t & 0x8000
    size = (t & 0x7FFF) << 8
    import crc32c

    assert BE32.unpack_from(page, size - 4)[0] == crc32c.crc32c(page[: size - 4])
    info = space_info(p0, "mariadb")
    assert info.compression_algo == 1  # zlib


def test_mysql_transparent_compression_restores_the_checksummed_page() -> None:
    _, _p0, page = load("mysql9-zlib-transparent-16k")
    assert struct.unpack_from(">H", page, 24)[0] == 14
    comp_size = struct.unpack_from(">H", page, 32)[0]
    restored = page[:24] + page[28:30] + bytes(12) + zlib.decompress(page[38 : 38 + comp_size])
    restored = restored[:34] + page[34:38] + restored[38:]
    restored += bytes(len(page) - len(restored))
    assert BE32.unpack_from(restored, 0)[0] == buf_calc_page_crc32(restored)


# --- corrupted variants built from the real samples ----------------------------------------------------------------
def _flip(page: bytes, offset: int) -> bytes:
    b = bytearray(page)
    b[offset] ^= 0x5A
    return bytes(b)


def _body_offset(entry: dict, page: bytes) -> int:
    """An offset inside what the checksum covers for this page's format."""
    t = struct.unpack_from(">H", page, 24)[0]
    if t & 0x8000 and "full_crc32" in entry["file"]:
        return ((t & 0x7FFF) << 8) // 2
    if t == 14:
        return 38 + struct.unpack_from(">H", page, 32)[0] // 2
    return len(page) // 2


def test_flipped_byte_is_reported(sample: tuple[dict, bytes, bytes]) -> None:
    entry, page0, page = sample
    info = space_info(page0, flavor_of(entry))
    no = entry["pages"][1]
    bad = _flip(page, _body_offset(entry, page))
    reason = page_is_corrupted(bad, info, no)
    if entry["innodb_checksum_algorithm"] == "none":
        assert reason is None  # "none" means none: the server accepts the page, so must we
        return
    assert reason is not None
    assert "checksum mismatch" in reason or "decompress" in reason or "LSN in header" in reason
    assert validate_pages(bad, info, no) == [(no, reason)]
    # page 0 too
    reason0 = page_is_corrupted(_flip(page0, 200), info, 0)
    assert reason0 is not None
    assert "checksum mismatch" in reason0


def test_torn_page_is_reported(sample: tuple[dict, bytes, bytes]) -> None:
    """Header LSN != trailer LSN (a torn write), with a checksum that is otherwise right."""
    entry, page0, _ = sample
    info = space_info(page0, flavor_of(entry))
    ps = len(page0)
    if info.zip_size:  # no LSN copy in the trailer: those bytes are page data under the checksum
        reason = page_is_corrupted(_flip(page0, ps - 1), info, 0)
        assert reason is not None
        assert "checksum mismatch" in reason
        return
    torn = bytearray(page0)
    if info.full_crc32:
        torn[ps - 8 : ps - 4] = (BE32.unpack_from(torn, ps - 8)[0] ^ 1).to_bytes(4, "big")
        BE32.pack_into(torn, ps - 4, __import__("crc32c").crc32c(bytes(torn[: ps - 4])))
    else:
        torn[ps - 4 :] = (BE32.unpack_from(torn, ps - 4)[0] ^ 1).to_bytes(4, "big")
    reason = page_is_corrupted(torn, info, 0)
    assert reason is not None
    assert reason.startswith("LSN in header and trailer differ")
    assert validate_pages(bytes(torn), info, 0) == [(0, reason)]


def test_zeroed_checksum_is_reported(sample: tuple[dict, bytes, bytes]) -> None:
    entry, page0, page = sample
    info = space_info(page0, flavor_of(entry))
    ps = len(page)
    for p, no in ((page0, 0), (page, entry["pages"][1])):
        z = bytearray(p)
        if info.full_crc32:
            t = struct.unpack_from(">H", p, 24)[0]
            size = (t & 0x7FFF) << 8 if t & 0x8000 else ps
            z[size - 4 : size] = bytes(4)
        elif info.encrypted and no:
            z[30:34] = bytes(4)  # the post-encryption checksum; bytes 0..3 are the plaintext's, unverifiable
        else:
            z[0:4] = bytes(4)
        if struct.unpack_from(">H", p, 24)[0] in (34354, 14):
            continue  # no checksum of their own on disk (34354) / checked after decompression (14)
        reason = page_is_corrupted(bytes(z), info, no)
        assert reason is not None, no
        assert "mismatch" in reason, (no, reason)


def test_wrong_page_number_is_reported(sample: tuple[dict, bytes, bytes]) -> None:
    entry, page0, page = sample
    info = space_info(page0, flavor_of(entry))
    no = entry["pages"][1]
    # Read at the wrong place: the page says `no`, the file position says no + 1.
    assert page_is_corrupted(page, info, no + 1) == f"page number {no} in page {no + 1}"
    assert validate_pages(page, info, no + 1) == [(no + 1, f"page number {no} in page {no + 1}")]
    # A page whose number field was rewritten (and its checksum recomputed): only the number is wrong.
    if not info.full_crc32 and not info.zip_size and parse_fil_header(page0).page_type == 8:
        moved = bytearray(page0)
        BE32.pack_into(moved, 4, 7)
        stamp_page(moved, info, entry["innodb_checksum_algorithm"].replace("full_crc32", "crc32"))
        assert page_is_corrupted(bytes(moved), info) is None
        assert page_is_corrupted(bytes(moved), info, 9) == "page number 7 in page 9"


def test_all_zero_page_rules() -> None:
    for name in ("mariadb10-full_crc32-16k", "mariadb10-crc32-16k", "mysql9-crc32-16k", "mysql9-compressed-kbs8"):
        entry, page0, _ = load(name)
        info = space_info(page0, flavor_of(entry))
        ps = info.physical_page_size
        assert page_is_corrupted(bytes(ps), info, 5) is None
        assert validate_pages(bytes(ps * 3), info, 4) == []
        one = bytearray(ps)
        one[1000] = 1
        assert page_is_corrupted(bytes(one), info, 5) is not None
        flush = bytearray(ps)
        flush[26:34] = b"\x01" * 8  # FIL_PAGE_FILE_FLUSH_LSN: ignored by the legacy rule only
        expected_ok = not info.full_crc32 and not info.zip_size
        assert (page_is_corrupted(bytes(flush), info) is None) is expected_ok, name
        # ... but mariabackup's page-number check wants the whole page zero when the number is wrong.
        assert page_is_corrupted(bytes(flush), info, 5) == "page number 0 in page 5"


def test_doublewrite_area_of_system_tablespace_is_not_checked() -> None:
    _entry, page0, page = load("mariadb10-crc32-16k")
    info = space_info(page0, "mariadb")
    from dataclasses import replace

    system = replace(info, space_id=0)
    junk = _flip(page, 5000)
    assert page_is_corrupted(junk, system, 64) is None  # pages 64..191 at 16K: the doublewrite buffer
    assert page_is_corrupted(junk, system, 192) is not None
    assert page_is_corrupted(page, system, 500) is None  # no page-number check in the system tablespace


def test_partial_buffers_raise_truncated() -> None:
    _entry, page0, _ = load("mysql9-crc32-16k")
    info = space_info(page0, "mysql")
    with pytest.raises(Truncated):
        validate_pages(page0 + b"\0" * 100, info, 0)
    with pytest.raises(Truncated):
        page_is_corrupted(page0[:-1], info, 0)
    with pytest.raises(Truncated):
        space_info(page0[:100], "mysql")


def test_not_page_zero_raises_bad_magic() -> None:
    _, _, page = load("mysql9-crc32-16k")
    with pytest.raises(BadMagic):
        space_info(page, "mysql")


@pytest.mark.parametrize(
    ("flags", "flavor", "sizes"),
    [
        (0x15, "mariadb", (16384, 16384)),
        (0x13, "mariadb", (4096, 4096)),
        (0x17, "mariadb", (65536, 65536)),
        (0x29, "mariadb", (16384, 8192)),
        (0x21, "mariadb", (16384, 16384)),
        (0x10021, "mariadb", (16384, 16384)),
        (0x0, "mariadb", (16384, 16384)),
        (0x4021, "mysql", (16384, 16384)),
        (0x4121, "mysql", (8192, 8192)),
        (0x4029, "mysql", (16384, 8192)),
        (0x40E1, "mysql", (4096, 4096)),
        (0x4000 | (7 << 6) | 0x21, "mysql", (65536, 65536)),
        (0x1800, "mysql", (16384, 16384)),  # session temporary tablespace (real: #innodb_temp/temp_N.ibt)
    ],
)
def test_page_size_from_flags(flags: int, flavor: str, sizes: tuple[int, int]) -> None:
    assert page_size_from_flags(flags, flavor) == sizes


@pytest.mark.parametrize(
    ("flags", "flavor", "zip_size"),
    [
        (0x4129, "mysql", 8192),  # real: innodb_page_size=8k, KEY_BLOCK_SIZE=8 (zip = logical)
        (0x129, "mariadb", 8192),  # real: the same on MariaDB 10.11
        (0xE7, "mariadb", 4096),  # real: innodb_page_size=4k, KEY_BLOCK_SIZE=4
        (0x402B, "mysql", 16384),  # 16K pages, KEY_BLOCK_SIZE=16
        (0x2B, "mariadb", 16384),
        (0x4029, "mysql", 8192),  # 16K pages, KEY_BLOCK_SIZE=8
        (0x4121, "mysql", 0),  # plain 8K
        (0x15, "mariadb", 0),  # full_crc32: bits 1..3 are the page size, not ZIP_SSIZE
        (0x13, "mariadb", 0),
    ],
)
def test_zip_size_from_flags_not_from_sizes(flags: int, flavor: str, zip_size: int) -> None:
    """A nonzero ZIP_SSIZE means page0zip pages even when they are as large as the logical page (the 8K bug)."""
    assert zip_size_from_flags(flags, flavor) == zip_size
    logical, physical = page_size_from_flags(flags, flavor)
    assert physical == (zip_size or logical)
    info = SpaceInfo(space_id=5, flags=flags, flavor=flavor, logical_page_size=logical, physical_page_size=physical,
                     full_crc32=flavor == "mariadb" and bool(flags & 0x10), page_compressed=False, encrypted=False)
    assert info.zip_size == zip_size


@pytest.mark.parametrize("name", ["mysql9-compressed-kbs8-8k", "mariadb10-compressed-kbs8-8k",
                                  "mariadb10-compressed-kbs4-4k"])  # fmt: skip
def test_zip_page_as_large_as_logical_page(name: str) -> None:
    """The reported failure: page 0 of a KEY_BLOCK_SIZE = innodb_page_size table was checked as an uncompressed
    page ("LSN in header and trailer differ": a zip page has no LSN copy in its trailer). It is a valid zip page."""
    entry, page0, page = load(name)
    info = space_info(page0, flavor_of(entry))
    assert info.logical_page_size == info.physical_page_size == info.zip_size == entry["innodb_page_size"]
    assert BE32.unpack_from(page0, 0)[0] == page_zip_calc_checksum(page0, "crc32")
    assert BE32.unpack_from(page0, len(page0) - 4)[0] != BE32.unpack_from(page0, 20)[0]  # no LSN copy
    assert page_is_corrupted(page0, info, 0) is None
    assert validate_pages(page0 + page, info, 0) == [(1, f"page number {entry['pages'][1]} in page 1")]
    assert validate_pages(page, info, entry["pages"][1]) == []
    assert checksum_algorithm(page, info) == "crc32"
    bad = _flip(page, len(page) - 1)  # the last byte is zip data under the checksum, not an LSN copy
    assert "compressed page checksum mismatch" in (page_is_corrupted(bad, info, entry["pages"][1]) or "")


@pytest.mark.parametrize(
    ("flags", "flavor"),
    [
        (0x4021, "mariadb"),  # MySQL SDI bit: MariaDB calls it reserved
        (0x2021, "mariadb"),  # MySQL encryption bit
        (5 << 6 | 0x21, "mariadb"),  # ssize 5 must be written as 0 in the legacy layout
        (0x10, "mariadb"),  # full_crc32 with page ssize 0
        (0x15 | (7 << 5), "mariadb"),  # compression algorithm 7 does not exist
        (0x15, "mysql"),  # ZIP_SSIZE 10
        (1 << 15, "mysql"),  # unused bits
        (0x20, "mysql"),  # ATOMIC_BLOBS without POST_ANTELOPE
        (0x1, "mysql"),  # POST_ANTELOPE without ATOMIC_BLOBS
        (0x2000 | 0x1000, "mysql"),  # encrypted temporary
        (0x400 | 0x800 | 0x21, "mysql"),  # DATA DIRECTORY on a general tablespace
    ],
)
def test_invalid_flags_rejected(flags: int, flavor: str) -> None:
    with pytest.raises(UnsupportedVersion):
        page_size_from_flags(flags, flavor)


def test_real_encrypted_pages() -> None:
    """MariaDB crypt data sits at FSP_HEADER_OFFSET + XDES_ARR_OFFSET + XDES array (10428 at 16K) in real files."""
    for name in ("mariadb10-encrypted-full_crc32-16k", "mariadb10-encrypted-crc32-16k"):
        entry, page0, page = load(name)
        assert page0.find(CRYPT_MAGIC) == encryption_info_offset(16384, 16384, "mariadb") == 10428
        info = space_info(page0, "mariadb")
        assert info.encrypted
        key_version = BE32.unpack_from(page, 0 if info.full_crc32 else 26)[0]
        assert key_version == 1
        assert page_is_corrupted(page, info, entry["pages"][1]) is None
        reason = page_is_corrupted(_flip(page, 9000), info, entry["pages"][1])
        assert reason is not None
        assert ("encrypted page checksum mismatch" if not info.full_crc32 else "full_crc32 checksum") in reason


def test_encryption_marks() -> None:
    _, page0, _ = load("mysql9-crc32-16k")
    enc = bytearray(page0)
    BE32.pack_into(enc, 54, BE32.unpack_from(enc, 54)[0] | 0x2000)
    assert space_info(bytes(enc), "mysql").encrypted is True
    _, page0, _ = load("mariadb10-crc32-16k")
    off = encryption_info_offset(16384, 16384, "mariadb")
    assert off == FSP_HEADER_OFFSET + XDES_ARR_OFFSET + 40 * 16384 // 64
    enc = bytearray(page0)
    enc[off : off + 7] = CRYPT_MAGIC + b"\x01"
    assert space_info(bytes(enc), "mariadb").encrypted is True
    enc[off + 6] = 0  # crypt data present, but CRYPT_SCHEME_UNENCRYPTED
    assert space_info(bytes(enc), "mariadb").encrypted is False


def _reference_be_crc(page: bytes) -> int:
    """The legacy big-endian CRC spelled out: reverse every page-aligned 8-byte group, then the crc32 algorithm."""
    import crc32c

    def region(a: int, b: int) -> bytes:
        out = bytearray()
        i = a
        while i < b:
            g = (i // 8 + 1) * 8
            if i % 8 == 0 and i + 8 <= b:
                out += page[i : i + 8][::-1]
                i += 8
            else:
                out += page[i : min(g, b)]
                i = min(g, b)
        return bytes(out)

    return crc32c.crc32c(region(4, 26)) ^ crc32c.crc32c(region(38, len(page) - 8))


def test_legacy_big_endian_crc32() -> None:
    _, p0, page = load("mysql9-crc32-16k")
    assert buf_calc_page_crc32_legacy_big_endian(page) == _reference_be_crc(page)
    assert buf_calc_page_crc32_legacy_big_endian(page) != buf_calc_page_crc32(page)
    info = space_info(p0, "mysql")
    be = bytearray(page)
    value = buf_calc_page_crc32_legacy_big_endian(page)
    BE32.pack_into(be, 0, value)
    BE32.pack_into(be, len(be) - 8, value)
    assert page_is_corrupted(bytes(be), info) is None  # MySQL still reads it
    minfo = space_info(load("mariadb10-crc32-16k")[1], "mariadb")
    assert page_is_corrupted(bytes(be), minfo) is not None  # MariaDB 10.6+ does not (INNODB_BUG_ENDIAN_CRC32 off)


def test_mariadb_legacy_page_compressed_checked_after_decompression() -> None:
    """FIL_PAGE_TYPE 34354: DEADBEEF in the checksum field, algorithm at 26, payload size at 38, and the zlib payload
    is the whole original page, checked like any other (as mariabackup does)."""
    entry, p0, page = load("mariadb10-crc32-page_compressed-16k")
    info = space_info(p0, "mariadb")
    no = entry["pages"][1]
    assert BE32.unpack_from(page, 0)[0] == 0xDEADBEEF
    assert struct.unpack_from(">Q", page, 26)[0] == 1  # zlib
    size = struct.unpack_from(">H", page, 38)[0]
    inner = zlib.decompress(page[40 : 40 + size])
    assert len(inner) == len(page)
    assert page_is_corrupted(inner, info, no) is None
    # Corrupt the original page, recompress it into a well-formed compressed page: reported after decompression.
    bad_inner = _flip(inner, 5000)
    payload = zlib.compress(bad_inner)
    rebuilt = page[:38] + struct.pack(">H", len(payload)) + payload
    rebuilt += bytes(len(page) - len(rebuilt))
    reason = page_is_corrupted(rebuilt, info, no)
    assert reason is not None
    assert reason.startswith("after decompression: checksum mismatch")
    # Garbage instead of zlib data.
    reason = page_is_corrupted(page[:40] + bytes(len(page) - 40), info, no)
    assert reason is not None
    assert "does not decompress" in reason


def test_decompression_is_bounded() -> None:
    """A payload that inflates far beyond a page is cut at page size + 1, not inflated in full."""
    entry, p0, page = load("mariadb10-crc32-page_compressed-16k")
    info = space_info(p0, "mariadb")
    bomb = zlib.compress(bytes(4 << 20), 9)  # 4 MiB of zeros in ~4 KB
    assert len(bomb) < len(page) - 40
    rebuilt = page[:38] + struct.pack(">H", len(bomb)) + bomb
    rebuilt += bytes(len(page) - len(rebuilt))
    assert page_is_corrupted(rebuilt, info, entry["pages"][1]) == (
        f"page_compressed page decompresses to {len(page) + 1} bytes, not {len(page)}"
    )
    _, m0, mpage = load("mysql9-zlib-transparent-16k")
    minfo = space_info(m0, "mysql")
    t = bytearray(mpage)
    t[38 : 38 + len(bomb)] = bomb
    struct.pack_into(">H", t, 32, len(bomb))
    reason = page_is_corrupted(bytes(t), minfo, 15)
    assert reason is not None
    assert "decompresses to" in reason
