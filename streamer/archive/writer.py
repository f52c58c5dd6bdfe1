"""The innostream archive writer (docs/FORMAT.md).

It is fed by several copier threads at once; it cuts data into 1 MiB chunks, drops all-zero 4 KiB blocks, encodes
chunks (the codec: zstd by default) in a small thread pool and writes the frames in sequence order from one output
thread. A bounded queue of in-flight frames gives back-pressure by blocking the copiers.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO

import xxhash
from innostream.archive.codec import Codec, FrameContext, PlainCodec, ZstdCodec
from innostream.archive.index import IndexBuilder
from innostream.archive.output import StreamOutput
from innostream.archive.types import completed, hash_zeros
from innostream.errors import Interrupted, TargetError
from innostream.formats import archive as fa
from innostream.formats import archive_index as fi
from innostream.formats.errors import InnostreamError
from innostream.zeros import nonzero_extents

SMALL_WRITE = 256 << 10  # writes below this are gathered into chunk-sized frames


@dataclass
class _WFile:
    name: str
    mode: int = 0o640
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
    ``max_inflight`` chunks of at most 1 MiB; callers block when it is full. ``codec`` says how payloads are stored;
    without one, zstd at ``level``, or as they are if not ``compress`` (the backup's ``--compress`` options).
    ``index`` (the default) ends the archive with the member index and the end locator (docs/FORMAT.md §10), so a
    reader of a file or an object can fetch only the members it wants; without it the archive is as version 1
    readers before the index wrote it.
    """

    def __init__(
        self,
        out: BinaryIO | StreamOutput,
        *,
        level: int = 1,
        threads: int = 2,
        meta: dict[str, Any] | None = None,
        compress: bool = True,
        max_inflight: int | None = None,
        codec: Codec | None = None,
        index: bool = True,
    ) -> None:
        self._out = StreamOutput.wrap(out)  # every byte written or an error (short writes, EINTR, EAGAIN)
        self._codec: Codec = codec or (ZstdCodec(level) if compress else PlainCodec())
        if index:  # the header declares the index; a copy, so that the caller's codec is left as it was
            self._codec = copy.copy(self._codec)
            self._codec.features |= fa.FEATURE_INDEX
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
        self._queue: queue.Queue[Future[tuple[bytes, bytes]] | None] = queue.Queue(
            maxsize=max_inflight or 2 * max(1, threads) + 2)
        header = self._codec.stream_header(meta)
        self._digest.update(fa.digest_view(header, self._codec.features))
        self._index = IndexBuilder(len(header)) if index else None
        try:
            self._out.write(header)
        except OSError as exc:
            raise self._output_error(exc) from exc
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
                self._out.write(header, payload)
                if self._index is not None:
                    self._index.add(header, len(header) + len(payload))
                self.frames += 1
                self.stored_bytes += len(payload)
                if self._queue.empty():  # idle: let a live reader (ssh) see what we have
                    self._out.flush()
            except BaseException as exc:
                self._error = exc

    @staticmethod
    def _output_error(err: OSError) -> InnostreamError:
        """What a failed write of the stream means to the user (one line, the README's exit code)."""
        if isinstance(err, BrokenPipeError):
            return Interrupted("output pipe closed by the reader; the stream is incomplete")
        return TargetError(f"cannot write the archive: {err.strerror or err}")

    def _check(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, InnostreamError):
                raise err
            if isinstance(err, OSError):
                raise self._output_error(err) from err
            raise err
        if self._closed:
            raise TargetError("archive writer is closed")

    def _submit(self, make: Callable[[int], Future[tuple[bytes, bytes]]], raw_len: int = 0) -> None:
        """Assign the next sequence number and queue the frame; blocks while too many are in flight."""
        with self._lock:
            self._check()
            fut = make(self._seq)
            self._seq += 1
            self.raw_bytes += raw_len
            self._queue.put(fut)

    def _build_data(self, seq: int, file_id: int, offset: int, raw: memoryview) -> tuple[bytes, bytes]:
        """Encode one DATA frame (a pool thread): its header and stored payload."""
        payload, flags = self._codec.encode(raw, FrameContext(fa.FRAME_DATA, seq, file_id, offset))
        return fa.build_frame_header(fa.FRAME_DATA, flags, file_id, seq, offset, len(raw), payload), payload

    # -- public interface --------------------------------------------------------------------------------------
    def begin_file(self, name: str, *, mode: int = 0o640) -> int:
        """Start a file (relative POSIX path); return its id for ``write``/``end_file``."""
        why = fa.check_name(name)
        if why:
            raise ValueError(f"unsafe archive member name {name!r}: {why}")
        raw = fa.build_file_begin(name, mode & 0o7777)
        with self._lock:
            self._check()
            if name in self._names:
                raise ValueError(f"file {name!r} is already in the archive")
            self._names.add(name)
            file_id = len(self._files) + 1
            self._files[file_id] = _WFile(name, mode & 0o7777)
            seq = self._seq
            self._seq += 1
            payload, flags = self._codec.encode(raw, FrameContext(fa.FRAME_FILE_BEGIN, seq, file_id, 0))
            header = fa.build_frame_header(fa.FRAME_FILE_BEGIN, flags, file_id, seq, 0, len(raw), payload)
            self._queue.put(completed((header, payload)))
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
            self._submit(partial(self._encode_later, file_id, offset + a, mv[a:b]), b - a)

    def _encode_later(self, file_id: int, offset: int, raw: memoryview, seq: int) -> Future[tuple[bytes, bytes]]:
        return self._pool.submit(self._build_data, seq, file_id, offset, raw)

    def end_file(self, file_id: int, size: int) -> None:
        """Finish a file of ``size`` bytes (trailing bytes past the last write are zeros)."""
        f = self._file(file_id)
        if size < f.pos:
            raise ValueError(f"size {size} of {f.name} is below the end of its data ({f.pos})")
        self._flush(file_id, f)
        hash_zeros(f.digest, size - f.pos)
        f.pos = size
        f.ended = True
        raw = fa.build_file_end(size, f.frames, f.digest.digest())

        def frame(seq: int) -> Future[tuple[bytes, bytes]]:
            payload, flags = self._codec.encode(raw, FrameContext(fa.FRAME_FILE_END, seq, file_id, 0))
            return completed((fa.build_frame_header(fa.FRAME_FILE_END, flags, file_id, seq, 0, len(raw), payload),
                              payload))

        self._submit(frame)

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        """Add a small whole file (metadata files)."""
        file_id = self.begin_file(name, mode=mode)
        if data:
            self.write(file_id, 0, data)
        self.end_file(file_id, len(data))

    def close(self, trailer: dict[str, Any] | None = None) -> None:
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
        try:
            index_at = self._write_index()
        except OSError as exc:
            raise self._output_error(exc) from exc
        info = dict(trailer or {})
        info["files"] = [[f.name, f.pos, f.digest.hexdigest()] for f in self._files.values()]
        raw = fa.build_trailer(self.frames, len(self._files), self.raw_bytes, self.stored_bytes, self._digest.digest(),
                               info)
        payload, flags = self._codec.encode(raw, FrameContext(fa.FRAME_TRAILER, self._seq, 0, 0))
        if len(raw) > fa.MAX_TRAILER_LEN or len(payload) > fa.MAX_TRAILER_LEN:
            raise ValueError("trailer too large")
        header = fa.build_frame_header(fa.FRAME_TRAILER, flags, 0, self._seq, 0, len(raw), payload)
        try:
            self._out.write(header, payload)
            if self._index is not None:
                self._out.write(fi.build_locator(index_at, self._index.pos - index_at, len(header) + len(payload)))
            self._out.flush()
        except OSError as exc:
            raise self._output_error(exc) from exc
        self.frames += 1

    def _write_index(self) -> int:
        """The INDEX frame, right before the trailer (counted by it like any frame); return where it starts."""
        if self._index is None:
            return 0
        raw = self._index.build([(f.name, f.mode, f.pos, f.digest.digest()) for f in self._files.values()])
        payload, flags = self._codec.encode(raw, FrameContext(fa.FRAME_INDEX, self._seq, 0, 0))
        header = fa.build_frame_header(fa.FRAME_INDEX, flags, 0, self._seq, 0, len(raw), payload)
        at = self._index.pos
        self._out.write(header, payload)
        self._index.add(header, len(header) + len(payload))
        self._seq += 1
        self._digest.update(header)
        self.frames += 1
        self.stored_bytes += len(payload)
        return at

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
