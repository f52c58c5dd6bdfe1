"""The seekable index of an innostream archive: the INDEX frame's payload and the end locator (docs/FORMAT.md §10).

An archive with ``FEATURE_INDEX`` ends ``… INDEX-frame TRAILER-frame end-locator``. The fixed-size locator lets a
reader of a file or an object find the index and the trailer with one read of the archive's last bytes; the index
says, for every member, where its frames are (runs of consecutive frames), so ``extract --include`` reads only
those. Pure functions over bytes: construct ``Struct`` specs with ``struct.Struct`` fast paths, sizes asserted.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import xxhash
from construct import Bytes, Const, Int16ul, Int32ul, Int64ul, Struct
from innostream.formats.errors import ChecksumMismatch, Corrupt

LOCATOR_MAGIC = b"INNOSEND"

#: the last 32 bytes of an indexed archive
END_LOCATOR = Struct(
    "magic" / Const(LOCATOR_MAGIC),
    "index_offset" / Int64ul,  # archive offset of the INDEX frame header
    "index_size" / Int32ul,  # the INDEX frame, header and payload
    "trailer_size" / Int32ul,  # the TRAILER frame, header and payload
    "locator_xxh3" / Int64ul,  # xxh3_64 of bytes 0..23
)
END_LOCATOR_SIZE = END_LOCATOR.sizeof()
assert END_LOCATOR_SIZE == 32
_END_LOCATOR = struct.Struct("<8sQIIQ")
assert _END_LOCATOR.size == END_LOCATOR_SIZE

INDEX_HEADER = Struct("members" / Int32ul, "reserved" / Int32ul, "runs" / Int64ul)
INDEX_HEADER_SIZE = INDEX_HEADER.sizeof()
assert INDEX_HEADER_SIZE == 16
_INDEX_HEADER = struct.Struct("<IIQ")
assert _INDEX_HEADER.size == INDEX_HEADER_SIZE

#: one member: fixed part, then ``name_len`` bytes of UTF-8 name, then ``runs`` × RUN
MEMBER = Struct(
    "file_id" / Int32ul,
    "mode" / Int32ul,
    "size" / Int64ul,
    "runs" / Int32ul,
    "name_len" / Int16ul,
    "reserved" / Int16ul,
    "xxh3_128" / Bytes(16),
)
MEMBER_SIZE = MEMBER.sizeof()
assert MEMBER_SIZE == 40
_MEMBER = struct.Struct("<IIQIHH16s")
assert _MEMBER.size == MEMBER_SIZE

#: frames ``first_seq``… of the archive at ``offset``, ``length`` bytes, ``frames`` of which are the member's (the
#: others, frames of other members the writer interleaved, are read and skipped)
RUN = Struct("offset" / Int64ul, "length" / Int64ul, "first_seq" / Int64ul, "frames" / Int32ul,
             "reserved" / Int32ul)
RUN_SIZE = RUN.sizeof()
assert RUN_SIZE == 32
_RUN = struct.Struct("<QQQII")
assert _RUN.size == RUN_SIZE


@dataclass(frozen=True)
class Run:
    """Consecutive frames holding some of one member's frames."""

    offset: int
    length: int
    first_seq: int
    frames: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class Member:
    """One member as the index describes it."""

    file_id: int
    name: str
    mode: int
    size: int
    digest: bytes  # xxh3_128, canonical bytes
    runs: list[Run] = field(default_factory=list)

    @property
    def frames(self) -> int:
        """FILE_BEGIN, the DATA frames and FILE_END."""
        return sum(r.frames for r in self.runs)


@dataclass(frozen=True)
class Locator:
    index_offset: int
    index_size: int
    trailer_size: int

    @property
    def trailer_offset(self) -> int:
        return self.index_offset + self.index_size

    @property
    def archive_size(self) -> int:
        return self.trailer_offset + self.trailer_size + END_LOCATOR_SIZE


def build_locator(index_offset: int, index_size: int, trailer_size: int) -> bytes:
    head = _END_LOCATOR.pack(LOCATOR_MAGIC, index_offset, index_size, trailer_size, 0)[:24]
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))


def parse_locator(buf: bytes, archive_size: int) -> Locator:
    """Check the last 32 bytes of an archive of ``archive_size`` bytes.

    Raises:
        Corrupt, ChecksumMismatch: not a locator, a damaged one, or one that does not add up to the archive's size.
    """
    where = archive_size - END_LOCATOR_SIZE
    if len(buf) != END_LOCATOR_SIZE:
        raise Corrupt(f"end locator of {len(buf)} bytes, expected {END_LOCATOR_SIZE}", offset=max(where, 0))
    magic, index_offset, index_size, trailer_size, digest = _END_LOCATOR.unpack(buf)
    if magic != LOCATOR_MAGIC:
        raise Corrupt(f"end locator magic {magic!r}, expected {LOCATOR_MAGIC!r}: the archive is cut or damaged",
                      offset=where)
    if xxhash.xxh3_64_intdigest(buf[:24]) != digest:
        raise ChecksumMismatch("end locator checksum mismatch", offset=where)
    loc = Locator(index_offset, index_size, trailer_size)
    if loc.archive_size != archive_size:
        raise Corrupt(f"end locator places the index at {index_offset} ({index_size} bytes) and the trailer after it "
                      f"({trailer_size} bytes), which does not end the {archive_size}-byte archive", offset=where)
    return loc


def build_index(members: list[Member]) -> bytes:
    """The raw INDEX payload (members in ``file_id`` order)."""
    parts = [_INDEX_HEADER.pack(len(members), 0, sum(len(m.runs) for m in members))]
    for m in members:
        raw = m.name.encode()
        parts.append(_MEMBER.pack(m.file_id, m.mode, m.size, len(m.runs), len(raw), 0, m.digest))
        parts.append(raw)
        parts.extend(_RUN.pack(r.offset, r.length, r.first_seq, r.frames, 0) for r in m.runs)
    return b"".join(parts)


def index_size(members: int, runs: int, name_bytes: int) -> int:
    """Bytes of the raw INDEX payload for these counts."""
    return INDEX_HEADER_SIZE + members * MEMBER_SIZE + name_bytes + runs * RUN_SIZE


def parse_index(payload: bytes) -> list[Member]:
    """Decode a raw INDEX payload; every count and length is checked against the payload before it is used.

    Raises:
        Corrupt: a payload that does not parse exactly (lengths, reserved fields, file ids, runs out of order).
    """
    return list(_iter_index(payload))


def _iter_index(payload: bytes) -> Iterator[Member]:
    if len(payload) < INDEX_HEADER_SIZE:
        raise Corrupt(f"INDEX payload of {len(payload)} bytes")
    members, reserved, runs = _INDEX_HEADER.unpack_from(payload)
    if reserved or index_size(members, runs, 0) > len(payload):
        raise Corrupt(f"INDEX declares {members} members and {runs} runs in {len(payload)} bytes")
    pos, seen_runs = INDEX_HEADER_SIZE, 0
    for i in range(members):
        if pos + MEMBER_SIZE > len(payload):
            raise Corrupt(f"INDEX ends inside member {i + 1}")
        file_id, mode, size, nruns, name_len, reserved, digest = _MEMBER.unpack_from(payload, pos)
        pos += MEMBER_SIZE
        if file_id != i + 1 or reserved or not name_len or pos + name_len + nruns * RUN_SIZE > len(payload):
            raise Corrupt(f"INDEX member {i + 1} does not parse (file_id {file_id}, {nruns} runs)")
        try:
            name = payload[pos : pos + name_len].decode()
        except UnicodeDecodeError:
            raise Corrupt(f"INDEX member {i + 1} name is not UTF-8") from None
        pos += name_len
        member = Member(file_id, name, mode, size, digest)
        last_end = 0
        for _ in range(nruns):
            offset, length, first_seq, frames, reserved = _RUN.unpack_from(payload, pos)
            pos += RUN_SIZE
            if reserved or not length or not frames or offset < last_end:
                raise Corrupt(f"INDEX run of member {i + 1} does not parse or is out of order", file=name)
            last_end = offset + length
            member.runs.append(Run(offset, length, first_seq, frames))
        seen_runs += nruns
        yield member
    if pos != len(payload) or seen_runs != runs:
        raise Corrupt(f"INDEX holds {len(payload) - pos} bytes after its members, or its run count is wrong")
