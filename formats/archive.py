"""The innostream archive: stream header, frame header and the fixed payloads of its frames.

Our own format (no upstream source); the byte tables are in ``docs/FORMAT.md``. Every structure is a construct
``Struct`` (the readable spec) plus a ``struct.Struct`` fast path used per frame; ``tests/archive`` proves they agree.
Pure functions over bytes: no I/O here.
"""

from __future__ import annotations

import json
import stat
import struct
from typing import Any, NamedTuple

import xxhash
from construct import Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct
from innostream.formats import archive_crypt as fc
from innostream.formats.errors import BadMagic, ChecksumMismatch, Corrupt, Truncated, UnsupportedVersion

STREAM_MAGIC = b"INNOSTRM"
FRAME_MAGIC = b"ISFR"
FORMAT_VERSION = 1

FEATURE_ZSTD = 0x1  # required feature: frames may carry zstd payloads
FEATURE_AEAD = fc.FEATURE_AEAD  # required feature: payloads and metadata are encrypted (docs/FORMAT.md §9)
#: required feature: an INDEX frame precedes the trailer and an end locator follows it (docs/FORMAT.md §10); required,
#: not optional, because a reader that does not know it would refuse the 32 bytes after the trailer
FEATURE_INDEX = 0x4
KNOWN_REQUIRED_FEATURES = FEATURE_ZSTD | FEATURE_AEAD | FEATURE_INDEX

FLAG_ZSTD = 0x1
FLAG_AEAD = fc.FLAG_AEAD  # the payload is AES-256-GCM ciphertext + 16-byte tag
KNOWN_FLAGS = FLAG_ZSTD | FLAG_AEAD

FRAME_FILE_BEGIN = 0x01
FRAME_DATA = 0x02
FRAME_FILE_END = 0x03
FRAME_TRAILER = 0x04
FRAME_INDEX = 0x05  # the member index (formats/archive_index.py), right before the trailer
FRAME_OPTIONAL_BIT = 0x80  # types with this bit may be skipped by readers that do not know them
FRAME_NAMES = {FRAME_FILE_BEGIN: "FILE_BEGIN", FRAME_DATA: "DATA", FRAME_FILE_END: "FILE_END", FRAME_TRAILER: "TRAILER",
               FRAME_INDEX: "INDEX"}

# Caps, checked on a verified header before anything is allocated (docs/FORMAT.md §2).
CHUNK_SIZE = 1 << 20  # writers cut DATA at multiples of this absolute offset
HOLE_UNIT = 4096  # aligned all-zero blocks of this size are not stored
MAX_DATA_LEN = 16 << 20
MAX_NAME_LEN = 4096
#: path components a member name may have (a backup has 2 or 3; a hostile name of thousands would create as many
#: directories)
MAX_NAME_DEPTH = 255
MAX_META_LEN = 1 << 16
MAX_TRAILER_LEN = 64 << 20
MAX_FILE_SIZE = 1 << 48

STREAM_HEADER = Struct(
    "magic" / Const(STREAM_MAGIC),
    "format_version" / Int16ul,
    "header_size" / Int16ul,
    "required_features" / Int32ul,
    "optional_features" / Int32ul,
    "meta_len" / Int32ul,
    "header_xxh3" / Int64ul,
)
STREAM_HEADER_SIZE = STREAM_HEADER.sizeof()
assert STREAM_HEADER_SIZE == 32
_STREAM_HEADER = struct.Struct("<8sHHIIIQ")
assert _STREAM_HEADER.size == STREAM_HEADER_SIZE

FRAME_HEADER = Struct(
    "magic" / Const(FRAME_MAGIC),
    "type" / Int8ul,
    "flags" / Int8ul,
    "reserved1" / Int16ul,
    "file_id" / Int32ul,
    "stored_len" / Int32ul,
    "raw_len" / Int32ul,
    "reserved2" / Int32ul,
    "seq" / Int64ul,
    "offset" / Int64ul,
    "payload_xxh3" / Int64ul,
    "header_xxh3" / Int64ul,
)
FRAME_HEADER_SIZE = FRAME_HEADER.sizeof()
assert FRAME_HEADER_SIZE == 56
_FRAME_HEADER = struct.Struct("<4sBBHIIIIQQQQ")
assert _FRAME_HEADER.size == FRAME_HEADER_SIZE
_FRAME_HEADER_NOSUM = struct.Struct("<4sBBHIIIIQQQ")
HEADER_XXH3_OFFSET = _FRAME_HEADER_NOSUM.size  # 48: the header checksum covers bytes 0..47

FILE_BEGIN = Struct("mode" / Int32ul, "name_len" / Int16ul)  # followed by name_len bytes of UTF-8 name
FILE_BEGIN_FIXED = FILE_BEGIN.sizeof()
assert FILE_BEGIN_FIXED == 6
_FILE_BEGIN = struct.Struct("<IH")
MAX_FILE_BEGIN_LEN = FILE_BEGIN_FIXED + MAX_NAME_LEN

# The per-file digest guards against accidental corruption and writer bugs, not against an attacker: the stream is
# not authenticated (anyone able to alter it could recompute an unkeyed hash), so XXH3-128 does the job of SHA-256
# at a small fraction of its cost (docs/FORMAT.md §3).
FILE_DIGEST_SIZE = 16  # xxh3_128, canonical (big-endian) bytes as ``xxh3_128().digest()`` gives them
FILE_END = Struct(
    "size" / Int64ul, "data_frames" / Int32ul, "reserved" / Int32ul, "xxh3_128" / Bytes(FILE_DIGEST_SIZE)
)
FILE_END_SIZE = FILE_END.sizeof()
assert FILE_END_SIZE == 32
_FILE_END = struct.Struct(f"<QII{FILE_DIGEST_SIZE}s")
assert _FILE_END.size == FILE_END_SIZE

TRAILER = Struct(
    "frames" / Int64ul,
    "files" / Int64ul,
    "raw_bytes" / Int64ul,
    "stored_bytes" / Int64ul,
    "stream_digest" / Bytes(16),
)  # followed by UTF-8 JSON
TRAILER_FIXED = TRAILER.sizeof()
assert TRAILER_FIXED == 48
_TRAILER = struct.Struct("<QQQQ16s")

#: top-level names of the xtrabackup/mariadb-backup metadata files: extraction writes these last (the commit point)
METADATA_FILES = frozenset(
    {
        "xtrabackup_checkpoints",
        "xtrabackup_info",
        "backup-my.cnf",
        "xtrabackup_binlog_info",
        "xtrabackup_slave_info",
        "xtrabackup_galera_info",
        "xtrabackup_tablespaces",
        "mariadb_backup_checkpoints",
        "mariadb_backup_info",
        "mariadb_backup_binlog_info",
        "mariadb_backup_slave_info",
        "mariadb_backup_galera_info",
        "innostream_info",
    }
)


class FrameHeader(NamedTuple):
    """A parsed frame header (fields as in ``FRAME_HEADER``)."""

    magic: bytes
    type: int
    flags: int
    reserved1: int
    file_id: int
    stored_len: int
    raw_len: int
    reserved2: int
    seq: int
    offset: int
    payload_xxh3: int
    header_xxh3: int


class StreamHeader(NamedTuple):
    """The parsed stream header."""

    format_version: int
    required_features: int
    optional_features: int
    meta: dict[str, Any]
    size: int  # bytes including the metadata
    crypt: bytes = b""  # an encrypted stream's whole metadata area (params, key slots, sealed JSON); meta is {}


def xxh3(data: bytes | memoryview) -> int:
    """The 64-bit XXH3 (seed 0) used for every checksum of the format."""
    return xxhash.xxh3_64_intdigest(data)


def file_hasher() -> Any:
    """A new whole-file digest (XXH3-128, seed 0): ``update(bytes)``, ``digest()`` (16 bytes), ``hexdigest()``."""
    return xxhash.xxh3_128()


def file_digest(data: bytes | memoryview) -> bytes:
    """The whole-file digest of ``data`` in one call (what FILE_END and the trailer file list carry)."""
    return xxhash.xxh3_128_digest(data)


def build_stream_header(meta: dict[str, Any] | None, required_features: int = FEATURE_ZSTD) -> bytes:
    """Serialise the stream header with its JSON metadata."""
    blob = json.dumps(meta or {}, sort_keys=True, separators=(",", ":")).encode()
    if len(blob) > MAX_META_LEN:
        raise ValueError(f"stream metadata is {len(blob)} bytes, over {MAX_META_LEN}")
    fixed = _STREAM_HEADER.pack(STREAM_MAGIC, FORMAT_VERSION, STREAM_HEADER_SIZE, required_features, 0, len(blob), 0)
    digest = xxhash.xxh3_64_intdigest(fixed[:24] + blob)
    return fixed[:24] + struct.pack("<Q", digest) + blob


def parse_stream_header_fixed(buf: bytes) -> tuple[int, int, int, int, int]:
    """Check the fixed 32 bytes; return (version, required, optional, meta_len, header_xxh3).

    Raises:
        BadMagic, UnsupportedVersion, Corrupt: for a wrong magic, a newer version or unknown required feature, a
            metadata length over its cap.
    """
    if len(buf) != STREAM_HEADER_SIZE:
        raise Truncated("archive ends inside the stream header", offset=len(buf))
    magic, version, header_size, required, optional, meta_len, digest = _STREAM_HEADER.unpack(buf)
    if magic != STREAM_MAGIC:
        raise BadMagic(f"not an innostream archive (magic {magic!r})", offset=0)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(f"archive format version {version}, this innostream reads {FORMAT_VERSION}", offset=8)
    if header_size != STREAM_HEADER_SIZE:
        raise Corrupt(f"stream header size {header_size}, expected {STREAM_HEADER_SIZE}", offset=10)
    if required & ~KNOWN_REQUIRED_FEATURES:
        unknown = required & ~KNOWN_REQUIRED_FEATURES
        raise UnsupportedVersion(f"archive requires unknown features {unknown:#x}", offset=12)
    if meta_len > MAX_META_LEN:
        raise Corrupt(f"stream metadata length {meta_len} exceeds the cap {MAX_META_LEN}", offset=20)
    return version, required, optional, meta_len, digest


def build_encrypted_stream_header(meta: dict[str, Any] | None, required_features: int, data_key: bytes,
                                  archive_id: bytes, slot_list: list[bytes]) -> bytes:
    """Serialise the stream header of an encrypted archive: crypt params, key slots, the metadata sealed."""
    blob = json.dumps(meta or {}, sort_keys=True, separators=(",", ":")).encode()
    if len(blob) > MAX_META_LEN - fc.CRYPT_HEADER_SIZE - fc.TAG_SIZE:
        raise ValueError(f"stream metadata is {len(blob)} bytes, too large")
    if len(slot_list) != fc.KEY_SLOTS or any(len(s) != fc.KEY_SLOT_SIZE for s in slot_list):
        raise ValueError("two key slots of 88 bytes expected")
    required = required_features | FEATURE_AEAD
    meta_len = fc.CRYPT_HEADER_SIZE + len(blob) + fc.TAG_SIZE
    fixed24 = _STREAM_HEADER.pack(STREAM_MAGIC, FORMAT_VERSION, STREAM_HEADER_SIZE, required, 0, meta_len, 0)[:24]
    params = fc.build_params(archive_id)
    area = params + b"".join(slot_list) + fc.seal_meta(data_key, fixed24, params, blob)
    digest = xxhash.xxh3_64_intdigest(fixed24 + fc.without_slots(area))
    return fixed24 + struct.pack("<Q", digest) + area


def digest_view(header: bytes, required_features: int) -> bytes:
    """The stream header bytes as the trailer's ``stream_digest`` covers them: the key slots of an encrypted
    stream count as zeros (``rekey`` rewrites them and nothing else)."""
    if not required_features & FEATURE_AEAD:
        return header
    return header[:STREAM_HEADER_SIZE] + fc.without_slots(header[STREAM_HEADER_SIZE:])


def parse_stream_header(fixed: bytes, blob: bytes) -> StreamHeader:
    """Verify the stream header checksum and decode the metadata (an encrypted stream's stays sealed in
    ``crypt``: :mod:`innostream.formats.archive_crypt`)."""
    version, required, optional, meta_len, digest = parse_stream_header_fixed(fixed)
    if len(blob) != meta_len:
        raise Truncated("archive ends inside the stream metadata", offset=STREAM_HEADER_SIZE + len(blob))
    if required & FEATURE_AEAD:
        if meta_len < fc.CRYPT_HEADER_SIZE + fc.TAG_SIZE:
            raise Corrupt(f"encrypted stream header of {meta_len} bytes", offset=20)
        if xxhash.xxh3_64_intdigest(fixed[:24] + fc.without_slots(blob)) != digest:
            raise ChecksumMismatch("stream header checksum mismatch", offset=0)
        fc.parse_params(blob)
        fc.slots(blob)  # their own checksums
        return StreamHeader(version, required, optional, {}, STREAM_HEADER_SIZE + meta_len, blob)
    if xxhash.xxh3_64_intdigest(fixed[:24] + blob) != digest:
        raise ChecksumMismatch("stream header checksum mismatch", offset=0)
    try:
        meta = json.loads(blob.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise Corrupt(f"stream metadata is not JSON: {exc}", offset=STREAM_HEADER_SIZE) from None
    if not isinstance(meta, dict):
        raise Corrupt("stream metadata is not a JSON object", offset=STREAM_HEADER_SIZE)
    return StreamHeader(version, required, optional, meta, STREAM_HEADER_SIZE + meta_len)


def build_frame_header(
    ftype: int, flags: int, file_id: int, seq: int, offset: int, raw_len: int, payload: bytes | memoryview
) -> bytes:
    """Serialise a frame header for ``payload`` (already compressed if ``flags & FLAG_ZSTD``)."""
    head = _FRAME_HEADER_NOSUM.pack(
        FRAME_MAGIC, ftype, flags, 0, file_id, len(payload), raw_len, 0, seq, offset, xxh3(payload)
    )
    return head + struct.pack("<Q", xxh3(head))


def unpack_frame_header(buf: bytes) -> FrameHeader:
    """Fast-path parse of 56 header bytes (no checks)."""
    return FrameHeader._make(_FRAME_HEADER.unpack(buf))


def header_checksum_ok(buf: bytes, header: FrameHeader) -> bool:
    """True if the header's own xxh3 matches bytes 0..47."""
    return xxh3(buf[:HEADER_XXH3_OFFSET]) == header.header_xxh3


def stored_cap(ftype: int, flags: int) -> int:
    """The largest ``stored_len`` a frame of this type may declare (an encrypted one carries a 16-byte tag more)."""
    return frame_cap(ftype) + (fc.TAG_SIZE if flags & FLAG_AEAD else 0)


def frame_cap(ftype: int) -> int:
    """The largest ``stored_len``/``raw_len`` a frame of this type may declare."""
    if ftype == FRAME_DATA:
        return MAX_DATA_LEN
    if ftype == FRAME_FILE_BEGIN:
        return MAX_FILE_BEGIN_LEN
    if ftype == FRAME_FILE_END:
        return FILE_END_SIZE
    return MAX_TRAILER_LEN


def check_name(name: str) -> str | None:
    """Return why ``name`` is not a safe relative POSIX path, or None if it is."""
    if not name:
        return "empty name"
    if "\0" in name:
        return "NUL in name"
    if name.startswith("/"):
        return "absolute path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "'..', '.' or empty path component"
    if len(parts) > MAX_NAME_DEPTH:
        return f"{len(parts)} path components (at most {MAX_NAME_DEPTH})"
    return None


def build_file_begin(name: str, mode: int) -> bytes:
    """Payload of FILE_BEGIN."""
    raw = name.encode()
    if not 1 <= len(raw) <= MAX_NAME_LEN:
        raise ValueError(f"file name of {len(raw)} bytes")
    return _FILE_BEGIN.pack(mode, len(raw)) + raw


def parse_file_begin(payload: bytes) -> tuple[str, int]:
    """Return (name, mode) from a FILE_BEGIN payload; refuse unsafe names and non-regular files."""
    if len(payload) < FILE_BEGIN_FIXED:
        raise Corrupt(f"FILE_BEGIN payload of {len(payload)} bytes")
    mode, name_len = _FILE_BEGIN.unpack_from(payload)
    if name_len != len(payload) - FILE_BEGIN_FIXED or not 1 <= name_len <= MAX_NAME_LEN:
        raise Corrupt(f"FILE_BEGIN name length {name_len} does not match its payload")
    try:
        name = payload[FILE_BEGIN_FIXED:].decode()
    except UnicodeDecodeError:
        raise Corrupt("file name is not UTF-8") from None
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        kind = "symlink" if stat.S_ISLNK(mode) else f"type {stat.S_IFMT(mode):#o}"
        raise Corrupt(f"archive member is a {kind}, only regular files are extracted", file=name)
    return name, stat.S_IMODE(mode)


def build_file_end(size: int, data_frames: int, digest: bytes) -> bytes:
    """Payload of FILE_END (``digest``: the file's 16-byte xxh3_128)."""
    if len(digest) != FILE_DIGEST_SIZE:
        raise ValueError(f"file digest of {len(digest)} bytes, expected {FILE_DIGEST_SIZE}")
    return _FILE_END.pack(size, data_frames, 0, digest)


def parse_file_end(payload: bytes) -> tuple[int, int, bytes]:
    """Return (size, data_frames, xxh3_128 digest) from a FILE_END payload."""
    if len(payload) != FILE_END_SIZE:
        raise Corrupt(f"FILE_END payload of {len(payload)} bytes, expected {FILE_END_SIZE}")
    size, frames, reserved, digest = _FILE_END.unpack(payload)
    if reserved:
        raise Corrupt("FILE_END reserved field is not zero")
    if size > MAX_FILE_SIZE:
        raise Corrupt(f"file size {size} exceeds the cap {MAX_FILE_SIZE}")
    return size, frames, digest


def build_trailer(
    frames: int, files: int, raw_bytes: int, stored_bytes: int, digest: bytes, info: dict[str, Any]
) -> bytes:
    """Raw (uncompressed) TRAILER payload."""
    blob = json.dumps(info, sort_keys=True, separators=(",", ":")).encode()
    return _TRAILER.pack(frames, files, raw_bytes, stored_bytes, digest) + blob


def parse_trailer(payload: bytes) -> tuple[int, int, int, int, bytes, dict[str, Any]]:
    """Return (frames, files, raw_bytes, stored_bytes, stream_digest, info) from a raw TRAILER payload."""
    if len(payload) < TRAILER_FIXED:
        raise Corrupt(f"TRAILER payload of {len(payload)} bytes")
    frames, files, raw_bytes, stored_bytes, digest = _TRAILER.unpack_from(payload)
    try:
        info = json.loads(payload[TRAILER_FIXED:].decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise Corrupt(f"trailer JSON does not parse: {exc}") from None
    if not isinstance(info, dict):
        raise Corrupt("trailer JSON is not an object")
    return frames, files, raw_bytes, stored_bytes, digest, info
