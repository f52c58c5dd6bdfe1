"""One pass over the frames of an innostream archive: header checksums, caps and the sequence, nothing about files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import xxhash
from innostream.archive.index import FrameMap
from innostream.archive.types import FileResult, read_exact
from innostream.formats import archive as fa
from innostream.formats import archive_crypt as fc
from innostream.formats import archive_index as fi
from innostream.formats.errors import (
    BadMagic,
    ChecksumMismatch,
    Corrupt,
    Truncated,
    UnsupportedVersion,
    Where,
)


@dataclass
class Frame:
    """One verified frame: header checks, payload checksum and sequence already passed."""

    header: fa.FrameHeader
    payload: bytes  # stored bytes (compressed if FLAG_ZSTD)
    pos: int  # archive offset of the frame header

    @property
    def type(self) -> int:
        return self.header.type

    @property
    def where(self) -> Where:
        """The frame's place, for errors about it."""
        return Where(offset=self.pos, frame=self.header.seq)


def _field_diagnosis(h: fa.FrameHeader, expected_seq: int, next_file_id: int, open_ids: set[int]) -> str:
    """Name the header field that looks wrong after a header checksum mismatch (best effort)."""
    known_types = set(fa.FRAME_NAMES)
    if h.type not in known_types and not h.type & fa.FRAME_OPTIONAL_BIT:
        return f"type {h.type:#x} is unknown"
    if h.flags & ~fa.KNOWN_FLAGS:
        return f"flags {h.flags:#x} has unknown bits"
    if h.reserved1 or h.reserved2:
        return "a reserved field is not zero"
    if h.seq != expected_seq:
        return f"seq is {h.seq}, expected {expected_seq}"
    if h.stored_len > fa.stored_cap(h.type, h.flags) or h.raw_len > fa.frame_cap(h.type):
        return f"stored_len {h.stored_len} / raw_len {h.raw_len} over the cap"
    if h.type == fa.FRAME_FILE_BEGIN and h.file_id != next_file_id:
        return f"file_id {h.file_id}, expected {next_file_id}"
    if h.type in (fa.FRAME_DATA, fa.FRAME_FILE_END) and h.file_id not in open_ids:
        return f"file_id {h.file_id} is not an open file"
    if h.type == fa.FRAME_TRAILER and h.file_id:
        return f"file_id {h.file_id} on the trailer"
    if h.type != fa.FRAME_DATA and h.offset:
        return f"offset {h.offset} on a {fa.FRAME_NAMES.get(h.type, 'optional')} frame"
    if h.offset > fa.MAX_FILE_SIZE:
        return f"offset {h.offset} over the cap"
    if not h.flags & fa.FLAG_ZSTD and h.stored_len != h.raw_len + _tag(h.flags):
        return f"stored_len {h.stored_len} != raw_len {h.raw_len} on an uncompressed frame"
    return "field not identified (offset, lengths or payload checksum)"


def _tag(flags: int) -> int:
    """Bytes an encrypted payload carries beyond its plaintext (the GCM tag)."""
    return fc.TAG_SIZE if flags & fa.FLAG_AEAD else 0


class FrameReader:
    """Parse frames from a binary stream in one pass, verifying checksums, caps and the sequence."""

    def __init__(self, inp: BinaryIO, *, header_prefix: bytes = b"") -> None:
        self._inp = inp
        fixed = header_prefix + read_exact(inp, fa.STREAM_HEADER_SIZE - len(header_prefix), offset=0,
                                           what="the stream header")
        _, _, _, meta_len, _ = fa.parse_stream_header_fixed(fixed)
        blob = read_exact(inp, meta_len, offset=fa.STREAM_HEADER_SIZE, what="the stream metadata")
        self.header = fa.parse_stream_header(fixed, blob)
        self.fixed = fixed
        self.meta = self.header.meta  # an encrypted stream's: set by whoever opens it with the key
        self.encrypted = bool(self.header.required_features & fa.FEATURE_AEAD)
        self.pos = self.header.size
        self.digest = xxhash.xxh3_128()
        self.digest.update(fa.digest_view(fixed + blob, self.header.required_features))
        self.seq = 0
        self.stored_bytes = 0
        self.last_header: bytes | None = None
        #: FEATURE_INDEX: the INDEX frame once read, and where every frame began (to check the index against)
        self.indexed = bool(self.header.required_features & fa.FEATURE_INDEX)
        self.index_frame: Frame | None = None
        self.frame_map: FrameMap | None = FrameMap() if self.indexed else None
        self.locator: fi.Locator | None = None
        # hints for naming a damaged field; maintained by the consumer
        self.next_file_id = 1
        self.open_ids: set[int] = set()

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        pos = self.pos
        first = self._inp.read(fa.FRAME_HEADER_SIZE)
        if not first:
            raise Truncated(f"archive ends after frame {self.seq - 1} without a trailer", offset=pos)
        if len(first) < fa.FRAME_HEADER_SIZE:
            first += read_exact(self._inp, fa.FRAME_HEADER_SIZE - len(first), offset=pos,
                                what=f"the header of frame {self.seq}")
        h = fa.unpack_frame_header(first)
        if h.magic != fa.FRAME_MAGIC:
            raise BadMagic(f"frame magic {h.magic!r}, expected {fa.FRAME_MAGIC!r}", where=self._at(pos))
        if not fa.header_checksum_ok(first, h):
            if first == self.last_header:
                raise Corrupt(f"frame {h.seq} duplicated", where=self._at(pos))
            why = _field_diagnosis(h, self.seq, self.next_file_id, self.open_ids)
            raise ChecksumMismatch(f"frame header checksum mismatch: {why}", where=self._at(pos))
        if h.seq != self.seq:
            if h.seq == self.seq - 1 and first == self.last_header:
                raise Corrupt(f"frame {h.seq} duplicated", where=self._at(pos))
            if h.seq > self.seq:
                raise Corrupt(f"frame {self.seq} missing (next frame is {h.seq}): frames dropped or reordered",
                              where=self._at(pos))
            raise Corrupt(f"frame {h.seq} out of order (expected {self.seq}): frames duplicated or reordered",
                          where=self._at(pos))
        if h.flags & ~fa.KNOWN_FLAGS or h.reserved1 or h.reserved2:
            raise Corrupt(f"frame flags {h.flags:#x} or reserved fields not understood", where=self._at(pos))
        known = h.type in fa.FRAME_NAMES
        if not known and not h.type & fa.FRAME_OPTIONAL_BIT:
            raise UnsupportedVersion(f"frame type {h.type:#x} is unknown and not optional", where=self._at(pos))
        cap = fa.frame_cap(h.type)
        if h.stored_len > fa.stored_cap(h.type, h.flags) or h.raw_len > cap:
            raise Corrupt(f"frame length {max(h.stored_len, h.raw_len)} exceeds the cap {cap}", where=self._at(pos))
        if bool(h.flags & fa.FLAG_AEAD) != self.encrypted:
            raise Corrupt("unencrypted frame in an encrypted archive" if self.encrypted else
                          "encrypted frame in an archive that did not declare encryption", where=self._at(pos))
        if not h.flags & fa.FLAG_ZSTD and h.stored_len != h.raw_len + _tag(h.flags):
            raise Corrupt(f"uncompressed frame with stored_len {h.stored_len} != raw_len {h.raw_len}",
                          where=self._at(pos))
        if h.flags & fa.FLAG_ZSTD and not self.header.required_features & fa.FEATURE_ZSTD:
            raise Corrupt("compressed frame in a stream that did not declare zstd", where=self._at(pos))
        payload = read_exact(self._inp, h.stored_len, offset=pos + fa.FRAME_HEADER_SIZE,
                             what=f"the payload of frame {self.seq}")
        if fa.xxh3(payload) != h.payload_xxh3:
            raise ChecksumMismatch(f"payload checksum mismatch in frame {self.seq}", where=self._at(pos))
        frame = Frame(h, payload, pos)
        self._place(frame)
        self.pos = pos + fa.FRAME_HEADER_SIZE + h.stored_len
        self.seq += 1
        self.last_header = first
        if h.type != fa.FRAME_TRAILER:
            self.digest.update(first)
            self.stored_bytes += h.stored_len
        return frame

    def _place(self, frame: Frame) -> None:
        """The index's place in the sequence: only with FEATURE_INDEX, once, right before the trailer."""
        h = frame.header
        if self.frame_map is not None:
            self.frame_map.add(frame.pos, h.file_id)
        if h.type == fa.FRAME_INDEX:
            if not self.indexed:
                raise Corrupt("INDEX frame in an archive that did not declare an index", where=frame.where)
            if self.index_frame is not None or h.file_id or h.offset:
                raise Corrupt("a second INDEX frame, or one with a file_id or offset", where=frame.where)
            self.index_frame = frame
        elif self.index_frame is not None and h.type != fa.FRAME_TRAILER:
            raise Corrupt("a frame after the INDEX frame: the index must be right before the trailer",
                          where=frame.where)
        elif h.type == fa.FRAME_TRAILER and self.indexed and self.index_frame is None:
            raise Corrupt("the archive declares an index but has no INDEX frame before its trailer", where=frame.where)

    def finish_members(self, results: list[FileResult]) -> dict[str, Any]:
        """The frames ran out before a trailer: only a reader of chosen members (archive/seekable.py) ends so."""
        raise Truncated(f"archive ends after frame {self.seq - 1} without a trailer", offset=self.pos)

    def reposition(self, inp: BinaryIO, pos: int, seq: int) -> None:
        """Continue at archive offset ``pos`` with frame ``seq``, reading from ``inp`` (a reader that seeks)."""
        self._inp, self.pos, self.seq, self.last_header = inp, pos, seq, None

    def _at(self, pos: int) -> Where:
        """The place of the frame being parsed (built only for an error)."""
        return Where(offset=pos, frame=self.seq)

    def expect_eof(self) -> None:
        """After the trailer: the end locator if the archive is indexed (it must point at the INDEX frame read),
        then the end of the input."""
        if self.indexed and self.index_frame is not None:
            buf = read_exact(self._inp, fi.END_LOCATOR_SIZE, offset=self.pos, what="the end locator")
            loc = fi.parse_locator(buf, self.pos + fi.END_LOCATOR_SIZE)
            index = self.index_frame
            if loc.index_offset != index.pos or loc.index_size != fa.FRAME_HEADER_SIZE + index.header.stored_len:
                raise Corrupt(f"the end locator places the index at {loc.index_offset}, it is at {index.pos}",
                              offset=self.pos)
            self.locator = loc
            self.pos += fi.END_LOCATOR_SIZE
        extra = self._inp.read(1)
        if extra:
            raise Corrupt("data after the trailer", offset=self.pos)
