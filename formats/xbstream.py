"""xbstream chunks, as written by ``xtrabackup --stream=xbstream`` and ``mariadb-backup --stream=xbstream``.

Upstream: percona-xtrabackup ``storage/innobase/xtrabackup/src/xbstream.h`` (``XB_STREAM_CHUNK_MAGIC``,
``CHUNK_HEADER_CONSTANT_LEN``), ``xbstream_write.cc`` / ``xbstream_read.cc``; MariaDB ``extra/mariabackup/xbstream.h``
and ``xbstream_write.cc`` (SEEK/RENAME/REMOVE chunks, ``XB_STREAM_FLAG_REWRITE``). Byte table and local tests in
/work/shared/reference/peers.md §1. All integers little-endian; payload checksum is the zlib CRC-32.

A stream is a bare concatenation of chunks: no header, no trailer. Chunk type ``'S'`` means *sparse* (Percona) or
*seek* (MariaDB); the dialect decides.
"""

from __future__ import annotations

import struct
import zlib

from construct import Bytes, Const, Int8ul, Int32ul, Int64ul, Struct

XB_STREAM_CHUNK_MAGIC = b"XBSTCK01"
XB_STREAM_FLAG_IGNORABLE = 0x01
XB_STREAM_FLAG_REWRITE = 0x02  # MariaDB: truncate an existing file first

XB_CHUNK_TYPE_PAYLOAD = ord("P")
XB_CHUNK_TYPE_EOF = ord("E")
XB_CHUNK_TYPE_SPARSE = ord("S")  # Percona 8.0+
XB_CHUNK_TYPE_SEEK = ord("S")  # MariaDB: same letter, different layout
XB_CHUNK_TYPE_RENAME = ord("R")  # MariaDB
XB_CHUNK_TYPE_REMOVE = ord("D")  # MariaDB

FN_REFLEN = 512  # readers reject path_len >= FN_REFLEN
XB_STREAM_MIN_CHUNK_SIZE = 10 << 20  # writers emit data chunks of this size

CHUNK_PREFIX = Struct(
    "magic" / Const(XB_STREAM_CHUNK_MAGIC),
    "flags" / Int8ul,
    "type" / Int8ul,
    "path_len" / Int32ul,
)
CHUNK_HEADER_CONSTANT_LEN = CHUNK_PREFIX.sizeof()
assert CHUNK_HEADER_CONSTANT_LEN == 14
_CHUNK_PREFIX = struct.Struct("<8sBBI")
assert _CHUNK_PREFIX.size == CHUNK_HEADER_CONSTANT_LEN

PAYLOAD_TAIL = Struct("payload_len" / Int64ul, "payload_offset" / Int64ul, "checksum" / Int32ul)
PAYLOAD_TAIL_LEN = PAYLOAD_TAIL.sizeof()
assert PAYLOAD_TAIL_LEN == 20
_PAYLOAD_TAIL = struct.Struct("<QQI")

SPARSE_TAIL = Struct("sparse_map_len" / Int32ul, "payload_len" / Int64ul, "payload_offset" / Int64ul,
                     "checksum" / Int32ul)
SPARSE_TAIL_LEN = SPARSE_TAIL.sizeof()
assert SPARSE_TAIL_LEN == 24
_SPARSE_TAIL = struct.Struct("<IQQI")
SPARSE_ENTRY = Struct("skip" / Int32ul, "len" / Int32ul)
SPARSE_ENTRY_LEN = SPARSE_ENTRY.sizeof()
assert SPARSE_ENTRY_LEN == 8

SEEK_TAIL = Struct("offset" / Int64ul)
SEEK_TAIL_LEN = SEEK_TAIL.sizeof()
assert SEEK_TAIL_LEN == 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

RENAME_TAIL = Struct("new_len" / Int32ul)  # followed by new_len bytes of the new path

EXAMPLE_P_CHUNK = Struct("prefix" / CHUNK_PREFIX, "path" / Bytes(2), "tail" / PAYLOAD_TAIL, "payload" / Bytes(3))


def unpack_prefix(buf: bytes) -> tuple[bytes, int, int, int]:
    """(magic, flags, type, path_len) from the 14 constant header bytes."""
    return _CHUNK_PREFIX.unpack(buf)


def unpack_payload_tail(buf: bytes) -> tuple[int, int, int]:
    """(payload_len, payload_offset, checksum) of a ``P`` chunk."""
    return _PAYLOAD_TAIL.unpack(buf)


def unpack_sparse_tail(buf: bytes) -> tuple[int, int, int, int]:
    """(sparse_map_len, payload_len, payload_offset, checksum) of a Percona ``S`` chunk."""
    return _SPARSE_TAIL.unpack(buf)


def unpack_u64(buf: bytes) -> int:
    """A little-endian u64 (MariaDB seek offset)."""
    value: int = _U64.unpack(buf)[0]
    return value


def unpack_u32(buf: bytes) -> int:
    """A little-endian u32 (MariaDB rename length)."""
    value: int = _U32.unpack(buf)[0]
    return value


def build_payload_header(path: bytes, offset: int, payload: bytes | memoryview, crc: int | None = None) -> bytes:
    """Header of a ``P`` chunk (the payload follows it)."""
    if crc is None:
        crc = zlib.crc32(payload)
    return (
        _CHUNK_PREFIX.pack(XB_STREAM_CHUNK_MAGIC, 0, XB_CHUNK_TYPE_PAYLOAD, len(path))
        + path
        + _PAYLOAD_TAIL.pack(len(payload), offset, crc)
    )


def build_eof_chunk(path: bytes) -> bytes:
    """An ``E`` chunk: the end of one file."""
    return _CHUNK_PREFIX.pack(XB_STREAM_CHUNK_MAGIC, 0, XB_CHUNK_TYPE_EOF, len(path)) + path
