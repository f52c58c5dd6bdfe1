"""Random access to an indexed innostream archive in a file or an object (docs/FORMAT.md §10).

A :class:`RangeSource` reads byte ranges (``os.pread`` of a file here, ranged GETs of an object in
:mod:`innostream.storage.s3`); :class:`PrefetchStream` turns a list of ranges into one sequential input, fetching
windows of it several at a time with bounded memory; :func:`open_indexed` reads the stream header, the end locator,
the index and the trailer (one read of the archive's tail when they fit in it) and verifies them;
:class:`MemberFrames` yields the frames of the chosen members, in stream order, to the ordinary
:class:`~innostream.archive.reader.ArchiveReader`, which checks each member exactly as in one pass over a pipe.
"""

from __future__ import annotations

import io
import os
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from innostream.archive.codec import Codec, ZstdCodec
from innostream.archive.crypt import key_required, open_codec
from innostream.archive.frames import Frame, FrameReader
from innostream.archive.types import FileResult
from innostream.formats import archive as fa
from innostream.formats import archive_index as fi
from innostream.formats.archive_crypt import AuthenticationFailed
from innostream.formats.errors import Corrupt, FormatError, Truncated

#: the first read of an archive's end: the locator, and the index and trailer of most backups (a few thousand
#: members) with it
TAIL_READ = 256 << 10
#: the first read of an archive's start: the stream header with its metadata (at most 64 KiB + 32)
HEAD_READ = 64 << 10
WINDOW = 8 << 20  # one ranged read of a long range
INFLIGHT = 4
#: runs of the chosen members closer than this are fetched as one range (the frames between are read and skipped)
MERGE_GAP = 256 << 10


class RangeSource(Protocol):
    """Byte ranges of one archive (a file or an object); ``read`` returns exactly ``length`` bytes or raises.
    Implementations count what they fetched (``bytes_read``, ``requests``) and are safe to call from threads."""

    name: str
    size: int
    bytes_read: int
    requests: int

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class LocalFileSource:
    """A local archive file read with ``os.pread``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        self._fd = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self._fd).st_size
        self.bytes_read = self.requests = 0
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        parts, got = [], 0
        while got < length:
            data = os.pread(self._fd, length - got, offset + got)
            if not data:
                raise Truncated(f"archive ends at byte {offset + got}, inside a range the index names", offset=offset)
            parts.append(data)
            got += len(data)
        with self._lock:
            self.bytes_read += got
            self.requests += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PrefetchStream(io.RawIOBase):
    """The bytes of ``ranges`` of ``src`` one after the other, as a sequential binary input.

    Windows of at most ``window`` bytes are fetched by ``inflight`` threads ahead of the reader, from its first read
    on: memory is bounded by ``(inflight + 1) × window``.
    """

    def __init__(self, src: RangeSource, ranges: Iterable[tuple[int, int]], *, window: int = WINDOW,
                 inflight: int = INFLIGHT) -> None:
        super().__init__()
        self._src = src
        self._windows = iter([(off + i, min(window, length - i)) for off, length in ranges
                              for i in range(0, length, window)])
        self._pool = ThreadPoolExecutor(max_workers=max(1, inflight), thread_name_prefix="isr")
        self._ahead: deque[Future[bytes]] = deque()
        self._inflight = max(1, inflight)
        self._buf = memoryview(b"")
        self._started = False  # nothing is fetched before the first read (an input opened and never read)

    def _fill(self) -> None:
        while len(self._ahead) < self._inflight:
            nxt = next(self._windows, None)
            if nxt is None:
                return
            self._ahead.append(self._pool.submit(self._src.read, *nxt))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._started:
            self._started = True
            self._fill()
        if not self._buf:
            if not self._ahead:
                return 0
            self._buf = memoryview(self._ahead.popleft().result())
            self._fill()
        n = min(len(view), len(self._buf))
        view[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (fewer only at the end): what the frame reader asks for is a header or a payload."""
        if n < 0:
            return b"".join(iter(lambda: self.read(WINDOW), b""))
        if len(self._buf) >= n:
            out = bytes(self._buf[:n])
            self._buf = self._buf[n:]
            return out
        buf = bytearray(n)
        got = 0
        while got < n:
            k = self.readinto(memoryview(buf)[got:])
            if not k:
                break
            got += k
        return bytes(buf[:got]) if got < n else bytes(buf)

    def close(self) -> None:
        if not self.closed:
            for fut in self._ahead:
                fut.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._ahead.clear()
            self._buf = memoryview(b"")
        super().close()


@dataclass
class IndexedArchive:
    """The verified ends of an indexed archive: header, index, trailer."""

    head: bytes  # the stream header with its metadata area
    header: fa.StreamHeader
    meta: dict[str, Any]
    members: list[fi.Member]
    trailer: dict[str, Any]
    locator: fi.Locator
    codec: Codec


def read_head(src: RangeSource) -> bytes | None:
    """The stream header and its metadata, or None if ``src`` is not an innostream archive."""
    head = src.read(0, min(src.size, HEAD_READ))
    if len(head) < fa.STREAM_HEADER_SIZE or not head.startswith(fa.STREAM_MAGIC):
        return None
    _, _, _, meta_len, _ = fa.parse_stream_header_fixed(head[: fa.STREAM_HEADER_SIZE])
    size = fa.STREAM_HEADER_SIZE + meta_len
    if size > len(head):
        if size > src.size:
            raise Truncated("archive ends inside the stream metadata", offset=src.size)
        head += src.read(len(head), size - len(head))
    return head[:size]


def read_ends(src: RangeSource, head: bytes) -> tuple[FrameReader, Frame, Frame] | None:
    """The INDEX and TRAILER frames of an indexed archive, checked (headers, payload checksums, sequence, the end
    locator); None for an archive without an index."""
    frames = FrameReader(io.BytesIO(head))
    if not frames.indexed:
        return None
    start = len(head)
    n = min(src.size - start, TAIL_READ)
    if n < fi.END_LOCATOR_SIZE:
        raise Truncated("archive ends before its end locator", offset=src.size)
    tail = src.read(src.size - n, n)
    loc = fi.parse_locator(tail[-fi.END_LOCATOR_SIZE:], src.size)
    if loc.index_offset < start:
        raise Corrupt(f"end locator places the index at {loc.index_offset}, inside the stream header",
                      offset=src.size - fi.END_LOCATOR_SIZE)
    need = src.size - loc.index_offset
    tail = tail[n - need:] if need <= n else src.read(loc.index_offset, need)
    first = fa.unpack_frame_header(tail[: fa.FRAME_HEADER_SIZE])
    frames.reposition(io.BytesIO(tail), loc.index_offset, first.seq)
    index = next(frames)
    if index.header.type != fa.FRAME_INDEX:
        raise Corrupt("the end locator does not point at the INDEX frame", where=index.where)
    trailer = next(frames)
    if trailer.header.type != fa.FRAME_TRAILER:
        raise Corrupt("the INDEX frame is not followed by the trailer", where=trailer.where)
    frames.expect_eof()
    return frames, index, trailer


def open_indexed(src: RangeSource, *, key: bytes | None = None) -> IndexedArchive | None:
    """Read and verify the header, end locator, index and trailer of the archive in ``src``: three reads (start,
    end, and the index when it is larger than the end read). None if it is not an indexed innostream archive (an
    xbstream, an archive written before the index): read it from front to back instead.

    Raises:
        FormatError: a damaged locator, index or trailer, or ones that disagree (exit 3); KeyRequired, WrongKey.
    """
    head = read_head(src)
    if head is None:
        return None
    ends = read_ends(src, head)
    if ends is None:
        return None
    frames, index, trailer = ends
    codec: Codec = ZstdCodec()
    meta = frames.meta
    if frames.encrypted:
        if key is None:
            raise key_required(frames.header)
        codec, meta = open_codec(frames.header, frames.fixed, codec, key)
    elif key is not None:
        raise AuthenticationFailed("the archive is not encrypted, but a key was given: refusing contents that are "
                                   "not authenticated", offset=0,
                                   hint="without the key option it is read as a plain archive")
    nframes, nfiles, _, _, _, info = fa.parse_trailer(codec.decode(trailer))
    members = fi.parse_index(codec.decode(index))
    if nframes != trailer.header.seq or nfiles != len(members):
        raise Corrupt(f"the trailer counts {nframes} frames and {nfiles} files, the index and the trailer's place "
                      f"{trailer.header.seq} and {len(members)}", where=trailer.where)
    listed = info.get("files")
    if not isinstance(listed, list) or len(listed) != len(members):
        raise Corrupt("the trailer's file list does not match the index", where=trailer.where)
    for entry, m in zip(listed, members, strict=True):
        if not isinstance(entry, list) or entry[:3] != [m.name, m.size, m.digest.hex()]:
            raise Corrupt("the trailer's file list does not match the index", where=index.where, file=m.name)
        if any(r.offset < len(head) or r.end > index.pos for r in m.runs) or not m.runs:
            raise Corrupt("an index run lies outside the archive's frames", where=index.where, file=m.name)
    return IndexedArchive(head, frames.header, meta, members, info, loc_of(frames), codec)


def loc_of(frames: FrameReader) -> fi.Locator:
    assert frames.locator is not None  # expect_eof of an indexed archive set it
    return frames.locator


@dataclass(frozen=True)
class _Interval:
    offset: int
    end: int
    first_seq: int


def intervals(members: Iterable[fi.Member], gap: int = MERGE_GAP) -> list[_Interval]:
    """The ranges to fetch for ``members``: their runs in archive order, joined where they overlap or are closer
    than ``gap`` (each range starts at a frame whose seq the index gives)."""
    out: list[_Interval] = []
    for run in sorted((r for m in members for r in m.runs), key=lambda r: r.offset):
        if out and run.offset <= out[-1].end + gap:
            last = out[-1]
            out[-1] = _Interval(last.offset, max(last.end, run.end), last.first_seq)
        else:
            out.append(_Interval(run.offset, run.end, run.first_seq))
    return out


class MemberFrames(FrameReader):
    """The frames of ``chosen`` members of an indexed archive, in stream order, each checked as in one pass (header
    and payload checksums, caps, the sequence within each fetched range); the frames of other members that lie in
    between are checked and skipped. :meth:`finish_members` then holds what was read against the index."""

    def __init__(self, src: RangeSource, archive: IndexedArchive, chosen: list[fi.Member], *,
                 window: int = WINDOW, inflight: int = INFLIGHT) -> None:
        self._ranges = deque(intervals(chosen))
        ranges = [(0, len(archive.head))] + [(iv.offset, iv.end - iv.offset) for iv in self._ranges]
        self._stream = PrefetchStream(src, ranges, window=window, inflight=inflight)
        super().__init__(self._stream)  # type: ignore[arg-type]
        self.frame_map = None
        self._archive = archive
        self._chosen = {m.file_id: m for m in chosen}
        self._seen: Counter[int] = Counter()
        self._current: _Interval | None = None

    def __next__(self) -> Frame:
        while True:
            cur = self._current
            fresh = cur is None or self.pos >= cur.end
            if fresh:
                if cur is not None and self.pos != cur.end:
                    raise Corrupt(f"a frame crosses the end of an index run at {cur.end}: the index is damaged",
                                  offset=cur.end)
                if not self._ranges:
                    raise StopIteration
                cur = self._current = self._ranges.popleft()
                self.reposition(self._stream, cur.offset, cur.first_seq)  # type: ignore[arg-type]
            try:
                frame = super().__next__()
            except FormatError as exc:
                if not fresh:
                    raise
                raise Corrupt(f"the index places frame {self.seq} at offset {self.pos}, where it is not: the index "
                              f"or the archive is damaged ({exc.message})", offset=self.pos) from None
            assert cur is not None
            h = frame.header
            if self.pos > cur.end or h.type in (fa.FRAME_INDEX, fa.FRAME_TRAILER):
                raise Corrupt("an index run reaches past a member's frames: the index is damaged", where=frame.where)
            if h.file_id not in self._chosen or h.type not in (fa.FRAME_FILE_BEGIN, fa.FRAME_DATA, fa.FRAME_FILE_END):
                continue  # another member's frame between the chosen ones: checked above, not used
            self._seen[h.file_id] += 1
            if h.type == fa.FRAME_FILE_BEGIN:
                self.next_file_id = h.file_id
            return frame

    def __iter__(self) -> Iterator[Frame]:
        return self

    def finish_members(self, results: list[FileResult]) -> dict[str, Any]:
        """Every chosen member was read whole (as many frames as the index says, FILE_END last) and is the member the
        verified index and trailer list (name, size, digest); return the trailer's JSON."""
        self._stream.close()
        chosen = sorted(self._chosen.values(), key=lambda m: m.file_id)
        if self.open_ids or len(results) != len(chosen):
            raise Corrupt(f"{len(chosen)} members chosen, {len(results)} read whole", offset=self.pos)
        for m, r in zip(chosen, results, strict=True):
            if self._seen[m.file_id] != m.frames:
                raise Corrupt(f"the index places {m.frames} frames of the member, {self._seen[m.file_id]} were "
                              "found", file=m.name)
            if (m.name, m.size, m.digest.hex()) != (r.name, r.size, r.digest):
                raise Corrupt("the member read is not the one the index lists", file=r.name)
        return self._archive.trailer

    def close(self) -> None:
        self._stream.close()


@dataclass(frozen=True)
class TailInfo:
    """What the end of an indexed archive says without its start: the trailer's JSON (``None`` when encrypted) and
    the counts."""

    trailer: dict[str, Any] | None
    files: int
    frames: int


def read_tail(tail: bytes, size: int) -> TailInfo | None:
    """The trailer of an archive of ``size`` bytes from its last ``len(tail)`` bytes (``list s3://bucket/prefix/``:
    one ranged GET per object): None when the archive has no end locator (written without the index, an xbstream,
    a cut or damaged object) or when the trailer does not fit in ``tail``. The trailer frame's checksums are
    verified; an encrypted trailer stays sealed (``trailer`` None)."""
    if len(tail) < fi.END_LOCATOR_SIZE or not tail.endswith(fi.LOCATOR_MAGIC, len(tail) - fi.END_LOCATOR_SIZE,
                                                           len(tail) - fi.END_LOCATOR_SIZE + 8):
        return None
    loc = fi.parse_locator(tail[-fi.END_LOCATOR_SIZE:], size)
    start = len(tail) - fi.END_LOCATOR_SIZE - loc.trailer_size
    if start < 0 or loc.trailer_size < fa.FRAME_HEADER_SIZE:
        return None
    raw = tail[start : start + fa.FRAME_HEADER_SIZE]
    h = fa.unpack_frame_header(raw)
    payload = tail[start + fa.FRAME_HEADER_SIZE : len(tail) - fi.END_LOCATOR_SIZE]
    if (h.magic != fa.FRAME_MAGIC or not fa.header_checksum_ok(raw, h) or h.type != fa.FRAME_TRAILER
            or h.stored_len != len(payload) or h.stored_len > fa.stored_cap(h.type, h.flags)):
        raise Corrupt("the end locator does not point at a valid trailer frame", offset=loc.trailer_offset)
    if fa.xxh3(payload) != h.payload_xxh3:
        raise Corrupt("trailer payload checksum mismatch", offset=loc.trailer_offset)
    if h.flags & fa.FLAG_AEAD:
        return TailInfo(None, -1, h.seq + 1)
    frame = Frame(h, payload, loc.trailer_offset)
    nframes, nfiles, _, _, _, info = fa.parse_trailer(ZstdCodec().decode(frame))
    return TailInfo(info, nfiles, nframes + 1)
