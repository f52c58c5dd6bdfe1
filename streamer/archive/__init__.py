"""Writer and reader of the innostream archive (docs/FORMAT.md).

The writer is fed by several copier threads at once; it cuts data into 1 MiB chunks, drops all-zero 4 KiB blocks,
compresses chunks in a small thread pool (python-zstandard releases the GIL) and writes the frames in sequence order
from one output thread. A bounded queue of in-flight frames gives back-pressure by blocking the copiers.

The reader parses frames from a pipe in one pass, verifies every checksum, the sequence and the file state machine,
decompresses and hands data to a sink in parallel, and hashes each file (xxh3-128) in order on the consumer side.
Small DATA frames of one file (the pieces between holes) travel to the pool in batches of about 1 MiB of data, so
per-frame thread hand-offs do not dominate. Memory is bounded by the frame caps times the batches in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import xxhash
import zstandard
from innostream.errors import Interrupted, TargetError, UnsafePath
from innostream.formats import archive as fa
from innostream.formats.errors import (
    BadMagic,
    ChecksumMismatch,
    Corrupt,
    InnostreamError,
    Truncated,
    UnsupportedVersion,
)
from innostream.sink import NullSink, Sink

ZERO_BLOCK = bytes(fa.HOLE_UNIT)
ZERO_CHUNK = bytes(fa.CHUNK_SIZE)
MAX_OPEN_FILES = 1024  # a reader refuses more files begun and not ended (each holds a descriptor when extracting)
SMALL_WRITE = 256 << 10  # writes below this are gathered into chunk-sized frames
# The reader hands consecutive DATA frames of one file to its pool in batches of this many stored+raw bytes (an
# uncompressed 1 MiB frame goes alone) or frames: hole-split pieces are often a few KiB each, and one thread hand-off
# per piece costs more than writing it.
BATCH_BYTES = 2 * fa.CHUNK_SIZE
BATCH_FRAMES = 256


def read_exact(stream: BinaryIO, n: int, *, offset: int, what: str) -> bytes:
    """Read exactly ``n`` bytes from a pipe or file; the only loop over short reads.

    A buffered pipe returns all ``n`` bytes in one call (one copy, kernel to the result). Only a short read (a raw
    stream, the end of a detection prefix) takes the slow path: the rest is read into one preallocated buffer with
    ``readinto`` where the stream has it, rather than gathered in pieces and concatenated.

    Raises:
        Truncated: the input ended first (``offset`` = where the structure started, ``what`` names it).
    """
    data = stream.read(n)
    if data is None:
        data = b""
    got = len(data)
    if got == n:
        return data
    buf = bytearray(n)
    buf[:got] = data
    view = memoryview(buf)
    readinto = getattr(stream, "readinto", None)
    while got < n:
        if readinto is not None:
            try:
                k = readinto(view[got:]) or 0
            except NotImplementedError:  # io.RawIOBase subclasses that implement only read()
                readinto = None
                continue
        else:
            more = stream.read(n - got) or b""
            k = len(more)
            view[got : got + k] = more
        if not k:
            raise Truncated(f"archive ends inside {what} ({got} of {n} bytes)", offset=offset)
        got += k
    view.release()
    return bytes(buf)


def hash_zeros(hasher: Any, count: int) -> None:
    """Feed ``count`` zero bytes (a hole) to a hash."""
    while count > 0:
        step = min(count, fa.CHUNK_SIZE)
        hasher.update(ZERO_CHUNK[:step] if step < fa.CHUNK_SIZE else ZERO_CHUNK)
        count -= step


def nonzero_extents(data: bytes, offset: int) -> Iterator[tuple[int, int]]:
    """Yield (start, end) positions in ``data`` whose bytes must be stored.

    ``data`` holds file bytes starting at absolute ``offset``; extents never cross a multiple of CHUNK_SIZE, and
    HOLE_UNIT-aligned blocks that are all zero are left out. ``startswith`` at an offset is a memcmp without the
    copy a slice would make (2.5x faster than comparing slices; a memoryview compares item by item, slower still).
    """
    n = len(data)
    pos = 0
    unit = fa.HOLE_UNIT
    zero_at = data.startswith
    while pos < n:
        chunk_end = min(n, pos + fa.CHUNK_SIZE - (offset + pos) % fa.CHUNK_SIZE)
        start = -1
        p = pos
        while p < chunk_end:
            q = min(chunk_end, p + unit - (offset + p) % unit)
            if zero_at(ZERO_BLOCK if q - p == unit else ZERO_BLOCK[: q - p], p):
                if start >= 0:
                    yield start, p
                    start = -1
            elif start < 0:
                start = p
            p = q
        if start >= 0:
            yield start, chunk_end
        pos = chunk_end


_tls = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cctx = getattr(_tls, "cctx", None)
    if cctx is None or _tls.level != level:
        cctx = _tls.cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        _tls.level = level
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = _tls.dctx = zstandard.ZstdDecompressor()
    return dctx


def _done(value: Any) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


@dataclass
class _WFile:
    name: str
    pos: int = 0
    frames: int = 0
    ended: bool = False
    digest: Any = field(default_factory=fa.file_hasher)
    buf: bytearray = field(default_factory=bytearray)  # small contiguous writes gathered up to a chunk boundary
    buf_off: int = 0


class ArchiveWriter:
    """Write an innostream archive to ``out`` (a pipe or file), one pass, thread-safe.

    ``write`` may be called from several threads (one thread per file at a time); offsets within a file strictly
    increase, gaps are holes. All-zero 4 KiB blocks are skipped by the writer itself. In-flight memory is bounded by
    ``max_inflight`` chunks of at most 1 MiB; callers block when it is full.
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        level: int = 1,
        threads: int = 2,
        meta: dict | None = None,
        compress: bool = True,
        max_inflight: int | None = None,
    ) -> None:
        self._out = out
        self._level = level
        self._compress = compress
        self._lock = threading.Lock()
        self._files: dict[int, _WFile] = {}
        self._names: set[str] = set()
        self._seq = 0
        self._error: BaseException | None = None
        self._closed = False
        self._digest = xxhash.xxh3_128()
        self.frames = 0
        self.raw_bytes = 0
        self.stored_bytes = 0
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="isz")
        self._queue: queue.Queue[Future | None] = queue.Queue(maxsize=max_inflight or 2 * max(1, threads) + 2)
        header = fa.build_stream_header(meta, fa.FEATURE_ZSTD if compress else 0)
        self._digest.update(header)
        self._out.write(header)
        self._drainer = threading.Thread(target=self._drain, name="isw-out", daemon=True)
        self._drainer.start()

    # -- output thread -----------------------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            fut = self._queue.get()
            if fut is None:
                return
            if self._error is not None:
                continue  # keep consuming so that producers never block forever
            try:
                header, payload = fut.result()
                self._digest.update(header)
                self._out.write(header)
                if payload:
                    self._out.write(payload)
                self.frames += 1
                self.stored_bytes += len(payload)
                if self._queue.empty():  # idle: let a live reader (ssh) see what we have
                    self._out.flush()
            except BaseException as exc:
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, BrokenPipeError):
                raise Interrupted("output pipe closed by the reader; the stream is incomplete") from err
            if isinstance(err, InnostreamError):
                raise err
            if isinstance(err, OSError):
                raise TargetError(f"cannot write the archive: {err.strerror or err}") from err
            raise err
        if self._closed:
            raise TargetError("archive writer is closed")

    def _submit(self, make: Callable[[int], Future], raw_len: int = 0) -> None:
        """Assign the next sequence number and queue the frame; blocks while too many are in flight."""
        with self._lock:
            self._check()
            fut = make(self._seq)
            self._seq += 1
            self.raw_bytes += raw_len
            self._queue.put(fut)

    def _build_data(self, seq: int, file_id: int, offset: int, raw: bytes | memoryview) -> tuple[bytes, bytes]:
        payload: bytes | memoryview = raw
        flags = 0
        if self._compress:
            comp = _compressor(self._level).compress(raw)
            if len(comp) < len(raw):
                payload, flags = comp, fa.FLAG_ZSTD
        payload = bytes(payload)
        return fa.build_frame_header(fa.FRAME_DATA, flags, file_id, seq, offset, len(raw), payload), payload

    # -- public interface --------------------------------------------------------------------------------------
    def begin_file(self, name: str, *, mode: int = 0o640) -> int:
        """Start a file (relative POSIX path); return its id for ``write``/``end_file``."""
        why = fa.check_name(name)
        if why:
            raise ValueError(f"unsafe archive member name {name!r}: {why}")
        payload = fa.build_file_begin(name, mode & 0o7777)
        with self._lock:
            self._check()
            if name in self._names:
                raise ValueError(f"file {name!r} is already in the archive")
            self._names.add(name)
            file_id = len(self._files) + 1
            self._files[file_id] = _WFile(name)
            seq = self._seq
            self._seq += 1
            header = fa.build_frame_header(fa.FRAME_FILE_BEGIN, 0, file_id, seq, 0, len(payload), payload)
            self._queue.put(_done((header, payload)))
        return file_id

    def _file(self, file_id: int) -> _WFile:
        f = self._files.get(file_id)
        if f is None or f.ended:
            raise ValueError(f"file id {file_id} is not open")
        return f

    def write(self, file_id: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` at ``offset`` of an open file (copied if mutable); blocks when the queue is full.

        Small writes (the redo copier's blocks) are gathered per file until a chunk boundary, so frames stay large.
        """
        self._check()
        f = self._file(file_id)
        if offset < f.pos:
            raise ValueError(f"write at {offset} before the end of the previous write ({f.pos}) in {f.name}")
        if offset + len(data) > fa.MAX_FILE_SIZE:
            raise ValueError(f"{f.name} would exceed {fa.MAX_FILE_SIZE} bytes")
        if offset > f.pos:
            hash_zeros(f.digest, offset - f.pos)
            self._flush(file_id, f)
        f.digest.update(data)
        end = offset + len(data)
        if f.buf or len(data) < SMALL_WRITE:
            if not f.buf:
                f.buf_off = offset
            f.buf += data
            boundary = end - end % fa.CHUNK_SIZE
            if boundary > f.buf_off:  # emit everything up to the last chunk boundary reached
                cut = boundary - f.buf_off
                head = bytes(f.buf[:cut])
                del f.buf[:cut]
                self._emit(file_id, f, f.buf_off, head)
                f.buf_off = boundary
        else:
            self._emit(file_id, f, offset, data if isinstance(data, bytes) else bytes(data))
        f.pos = end

    def _flush(self, file_id: int, f: _WFile) -> None:
        if f.buf:
            data = bytes(f.buf)
            f.buf.clear()
            self._emit(file_id, f, f.buf_off, data)

    def _emit(self, file_id: int, f: _WFile, offset: int, data: bytes) -> None:
        """Queue the non-zero extents of ``data`` as DATA frames."""
        mv = memoryview(data)
        for a, b in nonzero_extents(data, offset):
            f.frames += 1
            piece = mv[a:b]
            pos = offset + a
            self._submit(
                lambda seq, piece=piece, pos=pos: self._pool.submit(self._build_data, seq, file_id, pos, piece), b - a
            )

    def end_file(self, file_id: int, size: int) -> None:
        """Finish a file of ``size`` bytes (trailing bytes past the last write are zeros)."""
        f = self._file(file_id)
        if size < f.pos:
            raise ValueError(f"size {size} of {f.name} is below the end of its data ({f.pos})")
        self._flush(file_id, f)
        hash_zeros(f.digest, size - f.pos)
        f.pos = size
        f.ended = True
        payload = fa.build_file_end(size, f.frames, f.digest.digest())
        self._submit(
            lambda seq: _done(
                (fa.build_frame_header(fa.FRAME_FILE_END, 0, file_id, seq, 0, len(payload), payload), payload)
            )
        )

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        """Add a small whole file (metadata files)."""
        file_id = self.begin_file(name, mode=mode)
        if data:
            self.write(file_id, 0, data)
        self.end_file(file_id, len(data))

    def close(self, trailer: dict | None = None) -> None:
        """Flush every frame and write the trailer (file list plus ``trailer``, e.g. the LSN range)."""
        with self._lock:
            self._check()
            open_files = [f.name for f in self._files.values() if not f.ended]
            if open_files:
                raise ValueError(f"files not ended: {', '.join(open_files[:5])}")
            self._closed = True
            self._queue.put(None)
        self._drainer.join()
        self._pool.shutdown(wait=True)
        self._closed = False
        self._check()
        self._closed = True
        info = dict(trailer or {})
        info["files"] = [[f.name, f.pos, f.digest.hexdigest()] for f in self._files.values()]
        raw = fa.build_trailer(self.frames, len(self._files), self.raw_bytes, self.stored_bytes, self._digest.digest(),
                               info)
        payload, flags = raw, 0
        if self._compress and len(raw) > 4096:
            comp = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)
            if len(comp) < len(raw):
                payload, flags = comp, fa.FLAG_ZSTD
        if len(raw) > fa.MAX_TRAILER_LEN or len(payload) > fa.MAX_TRAILER_LEN:
            raise ValueError("trailer too large")
        header = fa.build_frame_header(fa.FRAME_TRAILER, flags, 0, self._seq, 0, len(raw), payload)
        try:
            self._out.write(header)
            self._out.write(payload)
            self._out.flush()
        except BrokenPipeError as exc:
            raise Interrupted("output pipe closed by the reader; the stream is incomplete") from exc
        self.frames += 1

    def abort(self) -> None:
        """Stop: drop queued frames, never write a trailer. Safe to call more than once."""
        if self._error is None:
            self._error = Interrupted("archive writer aborted")
        # The drainer now discards frames, so a producer blocked in queue.put (holding the lock) gets room soon;
        # under the lock no producer is between its error check and pool.submit.
        with self._lock:
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._drainer.is_alive():
            try:  # the drainer discards frames once an error is set, so there is room soon
                self._queue.put(None, timeout=30)
            except queue.Full:
                pass
            self._drainer.join(timeout=30)


# ==================================================================================================================
# Reader
# ==================================================================================================================


@dataclass
class Frame:
    """One verified frame: header checks, payload checksum and sequence already passed."""

    header: fa.FrameHeader
    payload: bytes  # stored bytes (compressed if FLAG_ZSTD)
    pos: int  # archive offset of the frame header

    @property
    def type(self) -> int:
        return self.header.type


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
    if h.stored_len > fa.frame_cap(h.type) or h.raw_len > fa.frame_cap(h.type):
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
    if not h.flags & fa.FLAG_ZSTD and h.stored_len != h.raw_len:
        return f"stored_len {h.stored_len} != raw_len {h.raw_len} on an uncompressed frame"
    return "field not identified (offset, lengths or payload checksum)"


class FrameReader:
    """Parse frames from a binary stream in one pass, verifying checksums, caps and the sequence."""

    def __init__(self, inp: BinaryIO, *, header_prefix: bytes = b"") -> None:
        self._inp = inp
        fixed = header_prefix + read_exact(inp, fa.STREAM_HEADER_SIZE - len(header_prefix), offset=0,
                                           what="the stream header")
        _, _, _, meta_len, _ = fa.parse_stream_header_fixed(fixed)
        blob = read_exact(inp, meta_len, offset=fa.STREAM_HEADER_SIZE, what="the stream metadata")
        self.header = fa.parse_stream_header(fixed, blob)
        self.meta = self.header.meta
        self.pos = self.header.size
        self.digest = xxhash.xxh3_128()
        self.digest.update(fixed + blob)
        self.seq = 0
        self.stored_bytes = 0
        self.last_header: bytes | None = None
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
        where = {"offset": pos, "frame": self.seq}
        if h.magic != fa.FRAME_MAGIC:
            raise BadMagic(f"frame magic {h.magic!r}, expected {fa.FRAME_MAGIC!r}", **where)
        if not fa.header_checksum_ok(first, h):
            if first == self.last_header:
                raise Corrupt(f"frame {h.seq} duplicated", **where)
            why = _field_diagnosis(h, self.seq, self.next_file_id, self.open_ids)
            raise ChecksumMismatch(f"frame header checksum mismatch: {why}", **where)
        if h.seq != self.seq:
            if h.seq == self.seq - 1 and first == self.last_header:
                raise Corrupt(f"frame {h.seq} duplicated", **where)
            if h.seq > self.seq:
                raise Corrupt(f"frame {self.seq} missing (next frame is {h.seq}): frames dropped or reordered", **where)
            raise Corrupt(f"frame {h.seq} out of order (expected {self.seq}): frames duplicated or reordered", **where)
        if h.flags & ~fa.KNOWN_FLAGS or h.reserved1 or h.reserved2:
            raise Corrupt(f"frame flags {h.flags:#x} or reserved fields not understood", **where)
        known = h.type in fa.FRAME_NAMES
        if not known and not h.type & fa.FRAME_OPTIONAL_BIT:
            raise UnsupportedVersion(f"frame type {h.type:#x} is unknown and not optional", **where)
        cap = fa.frame_cap(h.type)
        if h.stored_len > cap or h.raw_len > cap:
            raise Corrupt(f"frame length {max(h.stored_len, h.raw_len)} exceeds the cap {cap}", **where)
        if not h.flags & fa.FLAG_ZSTD and h.stored_len != h.raw_len:
            raise Corrupt(f"uncompressed frame with stored_len {h.stored_len} != raw_len {h.raw_len}", **where)
        if h.flags & fa.FLAG_ZSTD and not self.header.required_features & fa.FEATURE_ZSTD:
            raise Corrupt("compressed frame in a stream that did not declare zstd", **where)
        payload = read_exact(self._inp, h.stored_len, offset=pos + fa.FRAME_HEADER_SIZE,
                             what=f"the payload of frame {self.seq}")
        if fa.xxh3(payload) != h.payload_xxh3:
            raise ChecksumMismatch(f"payload checksum mismatch in frame {self.seq}", **where)
        self.pos = pos + fa.FRAME_HEADER_SIZE + h.stored_len
        self.seq += 1
        self.last_header = first
        if h.type != fa.FRAME_TRAILER:
            self.digest.update(first)
            self.stored_bytes += h.stored_len
        return Frame(h, payload, pos)

    def expect_eof(self) -> None:
        """After the trailer: the input must end."""
        extra = self._inp.read(1)
        if extra:
            raise Corrupt("data after the trailer", offset=self.pos)


def decompress(frame: Frame) -> bytes:
    """The raw bytes of a frame, decompressing a zstd payload only after its declared size matched."""
    h = frame.header
    if not h.flags & fa.FLAG_ZSTD:
        return frame.payload
    where = {"offset": frame.pos, "frame": h.seq}
    try:
        size = zstandard.frame_content_size(frame.payload)
    except zstandard.ZstdError as exc:
        raise Corrupt(f"bad zstd frame: {exc}", **where) from None
    if size != h.raw_len:
        raise Corrupt(f"zstd frame declares {size} bytes, the header {h.raw_len}", **where)
    try:
        raw = _decompressor().decompress(frame.payload, max_output_size=h.raw_len)
    except zstandard.ZstdError as exc:
        raise Corrupt(f"zstd frame does not decompress: {exc}", **where) from None
    if len(raw) != h.raw_len:
        raise Corrupt(f"zstd frame gave {len(raw)} bytes, expected {h.raw_len}", **where)
    return raw


@dataclass
class FileResult:
    """What the archive said about one file, after verification."""

    name: str
    mode: int
    size: int = -1
    data_frames: int = 0
    stored_bytes: int = 0
    digest: str = ""  # xxh3_128 of the whole file, hex


@dataclass
class ArchiveSummary:
    """Result of reading a whole archive."""

    format: str
    meta: dict[str, Any]
    files: list[FileResult]
    trailer: dict[str, Any]
    frames: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    archive_bytes: int = 0
    skipped_frames: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class _RFile:
    result: FileResult
    handle: Any
    file_id: int
    end: int = 0  # end of the last DATA frame (frames are checked in stream order)
    hashed: int = 0  # bytes hashed so far
    digest: Any = field(default_factory=fa.file_hasher)
    observer: Any = None  # optional ordered consumer of (offset, raw) for page validation


ObserverFactory = Callable[[str, dict[str, Any]], Any]


class _InOrder:
    """Runs callbacks on finished futures in submission order, in a thread of its own.

    The per-file digest, page validation and closing of files must see a file's frames in order; doing that here
    keeps the reading thread (pipe, checksums, dispatch) and the decompress/write pool busy at the same time. The
    queue is bounded (back-pressure); an error is re-raised in the reader by ``check``/``finish``.
    """

    def __init__(self, limit: int) -> None:
        self._queue: queue.Queue[tuple[Future, Callable[[Any], None]] | None] = queue.Queue(maxsize=limit)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="isx-order", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, then = item
            if self._error is not None:
                fut.cancel()  # failing: skip the rest, keep draining so the reader never blocks
                continue
            try:
                then(fut.result())
            except BaseException as exc:
                self._error = exc

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, fut: Future, then: Callable[[Any], None]) -> None:
        self.check()
        self._queue.put((fut, then))

    def finish(self) -> None:
        """Wait until every callback ran; raise the first error."""
        self._queue.put(None)
        self._thread.join()
        self.check()

    def stop(self, exc: BaseException) -> None:
        """Abandon the rest after an error in the reader."""
        if self._error is None:
            self._error = exc
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def read_archive(
    inp: BinaryIO,
    sink: Sink,
    *,
    parallel: int = 2,
    header_prefix: bytes = b"",
    verify_data: bool = True,
    observer_factory: ObserverFactory | None = None,
    on_file_done: Callable[[FileResult], None] | None = None,
) -> ArchiveSummary:
    """Read a whole archive into ``sink``, verifying everything; raise on the first problem.

    With ``verify_data=False`` (``list``) payloads are checksummed but not decompressed nor hashed per file.
    ``observer_factory(name, meta)`` may return an object with ``feed(offset, raw)`` and ``finish(size)`` that sees a
    file's bytes in order (page validation).
    """
    reader = FrameReader(inp, header_prefix=header_prefix)
    files: dict[int, _RFile] = {}
    names: set[str] = set()
    results: list[FileResult] = []
    summary = ArchiveSummary("innostream", reader.meta, results, {})
    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="isx") if verify_data else None
    order = _InOrder(2 * max(1, parallel) + 2)

    def data_job(frames: list[Frame], rf: _RFile) -> list[bytes]:
        """Decompress and write a batch of one file's frames (a pool thread; the GIL is free during both)."""
        raws = []
        for frame in frames:
            raw = decompress(frame)
            sink.write(rf.handle, frame.header.offset, raw)
            raws.append(raw)
        return raws

    def hash_in_order(rf: _RFile, frames: list[Frame]) -> Callable[[list[bytes]], None]:
        """The in-order side of a batch: the file digest (no copy: the bytes the pool wrote), page validation."""
        def then(raws: list[bytes]) -> None:
            digest, observer = rf.digest, rf.observer
            for frame, raw in zip(frames, raws, strict=True):
                offset = frame.header.offset
                if offset > rf.hashed:
                    hash_zeros(digest, offset - rf.hashed)
                digest.update(raw)
                rf.hashed = offset + len(raw)
                if observer is not None:
                    observer.feed(offset, raw)

        return then

    batch: list[Frame] = []  # consecutive DATA frames of one file, not yet handed to the pool
    batch_rf: _RFile | None = None
    batch_bytes = 0

    def flush_batch() -> None:
        nonlocal batch, batch_rf, batch_bytes
        if batch and pool is not None and batch_rf is not None:
            order.put(pool.submit(data_job, batch, batch_rf), hash_in_order(batch_rf, batch))
        batch, batch_rf, batch_bytes = [], None, 0

    def end_in_order(rf: _RFile, frame: Frame, size: int, nframes: int, digest: bytes) -> Callable[[Any], None]:
        def then(_: Any) -> None:
            where = {"file": rf.result.name, "offset": frame.pos, "frame": frame.header.seq}
            if nframes != rf.result.data_frames:
                raise Corrupt(f"FILE_END counts {nframes} data frames, the archive had {rf.result.data_frames}",
                              **where)
            if verify_data:
                hash_zeros(rf.digest, size - rf.hashed)
                if rf.digest.digest() != digest:
                    raise ChecksumMismatch("file digest (xxh3_128) mismatch", **where)
                if rf.observer is not None:
                    rf.observer.finish(size)
            rf.result.size = size
            rf.result.digest = digest.hex()
            sink.end_file(rf.handle, size)
            if on_file_done is not None:
                on_file_done(rf.result)

        return then

    try:
        for frame in reader:
            h = frame.header
            where = {"offset": frame.pos, "frame": h.seq}
            if batch and (h.type != fa.FRAME_DATA or h.file_id != batch[0].header.file_id):
                flush_batch()
            if h.type == fa.FRAME_FILE_BEGIN:
                if h.file_id != reader.next_file_id or h.offset:
                    raise Corrupt(f"FILE_BEGIN with file_id {h.file_id}, expected {reader.next_file_id}", **where)
                name, mode = fa.parse_file_begin(frame.payload)
                why = fa.check_name(name)
                if why:
                    raise UnsafePath(f"refusing archive member {name!r}: {why}", **where)
                if name in names:
                    raise Corrupt("duplicate file in the archive", file=name, **where)
                if len(reader.open_ids) >= MAX_OPEN_FILES:
                    raise Corrupt(f"more than {MAX_OPEN_FILES} files open at once", file=name, **where)
                names.add(name)
                reader.next_file_id += 1
                reader.open_ids.add(h.file_id)
                result = FileResult(name, mode)
                results.append(result)
                rf = _RFile(result, sink.begin_file(name, mode=mode), h.file_id)
                if observer_factory is not None and verify_data:
                    rf.observer = observer_factory(name, reader.meta)
                files[h.file_id] = rf
            elif h.type == fa.FRAME_DATA:
                rf = files.get(h.file_id)  # type: ignore[assignment]
                if rf is None or h.file_id not in reader.open_ids:
                    raise Corrupt(f"DATA for file_id {h.file_id}, which is not open", **where)
                if h.raw_len == 0:
                    raise Corrupt("empty DATA frame", file=rf.result.name, **where)
                if h.offset < rf.end:
                    raise Corrupt(f"DATA at {h.offset} overlaps the previous frame (ends at {rf.end})",
                                  file=rf.result.name, **where)
                if h.offset + h.raw_len > fa.MAX_FILE_SIZE:
                    raise Corrupt(f"DATA ends beyond the file size cap {fa.MAX_FILE_SIZE}", file=rf.result.name,
                                  **where)
                rf.end = h.offset + h.raw_len
                rf.result.data_frames += 1
                rf.result.stored_bytes += h.stored_len
                summary.raw_bytes += h.raw_len
                if pool is not None:
                    batch.append(frame)
                    batch_rf = rf
                    batch_bytes += h.stored_len + h.raw_len
                    if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_FRAMES:
                        flush_batch()
            elif h.type == fa.FRAME_FILE_END:
                rf = files.get(h.file_id)  # type: ignore[assignment]
                if rf is None or h.file_id not in reader.open_ids:
                    raise Corrupt(f"FILE_END for file_id {h.file_id}, which is not open", **where)
                size, nframes, digest = fa.parse_file_end(frame.payload)
                if size < rf.end:
                    raise Corrupt(f"file size {size} is below the end of its data ({rf.end})", file=rf.result.name,
                                  **where)
                reader.open_ids.discard(h.file_id)
                order.put(_done(None), end_in_order(rf, frame, size, nframes, digest))
            elif h.type == fa.FRAME_TRAILER:
                order.finish()
                _check_trailer(reader, frame, summary, results, verify_data)
                reader.expect_eof()
                summary.archive_bytes = reader.pos
                summary.frames = reader.seq
                summary.stored_bytes = reader.stored_bytes
                sink.close()
                return summary
            else:
                summary.skipped_frames += 1
                summary.warnings.append(f"skipped optional frame type {h.type:#x} at offset {frame.pos}")
            order.check()
        raise AssertionError("unreachable")  # FrameReader raises Truncated at EOF
    except BaseException as exc:
        order.stop(exc)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        sink.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _check_trailer(
    reader: FrameReader, frame: Frame, summary: ArchiveSummary, results: list[FileResult], verify_data: bool
) -> None:
    h = frame.header
    where = {"offset": frame.pos, "frame": h.seq}
    if h.file_id or h.offset:
        raise Corrupt("TRAILER with a file_id or offset", **where)
    if reader.open_ids:
        names = [r.name for r in results if r.size < 0]
        raise Corrupt(f"{len(names)} file(s) without FILE_END before the trailer: {', '.join(names[:5])}", **where)
    raw = decompress(frame)
    frames, nfiles, raw_bytes, stored_bytes, digest, info = fa.parse_trailer(raw)
    if frames != h.seq:
        raise Corrupt(f"trailer counts {frames} frames, the archive had {h.seq}", **where)
    if nfiles != len(results):
        raise Corrupt(f"trailer counts {nfiles} files, the archive had {len(results)}", **where)
    if raw_bytes != summary.raw_bytes:
        raise Corrupt(f"trailer counts {raw_bytes} data bytes, the archive had {summary.raw_bytes}", **where)
    if stored_bytes != reader.stored_bytes:
        raise Corrupt(f"trailer counts {stored_bytes} stored bytes, the archive had {reader.stored_bytes}", **where)
    if digest != reader.digest.digest():
        raise ChecksumMismatch("stream digest mismatch in the trailer", **where)
    listed = info.get("files")
    if not isinstance(listed, list) or len(listed) != len(results):
        raise Corrupt("trailer file list does not match the archive", **where)
    for entry, r in zip(listed, results, strict=True):
        if not isinstance(entry, list) or len(entry) < 3 or entry[0] != r.name or entry[1] != r.size or (
            entry[2] != r.digest
        ):
            raise Corrupt("trailer file list does not match the archive", file=r.name, **where)
    summary.trailer = info


__all__ = [
    "ArchiveSummary",
    "ArchiveWriter",
    "FileResult",
    "Frame",
    "FrameReader",
    "NullSink",
    "read_archive",
    "read_exact",
]
