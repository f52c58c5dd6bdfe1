"""The innostream archive reader: frames to files in a sink, everything verified (docs/FORMAT.md).

It parses frames from a pipe in one pass (:class:`FrameReader`), checks the file state machine, decodes (the codec)
and hands data to a sink in parallel, and hashes each file (xxh3-128) in order on the consumer side. Small DATA
frames of one file (the pieces between holes) travel to the pool in batches of about 1 MiB of data, so per-frame
thread hand-offs do not dominate. Memory is bounded by the frame caps times the batches in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO

from innostream.archive.codec import Codec, ZstdCodec
from innostream.archive.crypt import key_required, open_codec
from innostream.archive.frames import Frame, FrameReader
from innostream.archive.index import check_index
from innostream.archive.types import (
    MAX_OPEN_FILES,
    ArchiveSummary,
    FileResult,
    Observer,
    ObserverFactory,
    SizeLimits,
    completed,
    hash_zeros,
    shown,
)
from innostream.errors import UnsafePath
from innostream.formats import archive as fa
from innostream.formats.archive_crypt import AuthenticationFailed
from innostream.formats.archive_index import parse_index
from innostream.formats.errors import ChecksumMismatch, Corrupt
from innostream.sink import Sink

# The reader hands consecutive DATA frames of one file to its pool in batches of this many stored+raw bytes (an
# uncompressed 1 MiB frame goes alone) or frames: hole-split pieces are often a few KiB each, and one thread hand-off
# per piece costs more than writing it.
BATCH_BYTES = 2 * fa.CHUNK_SIZE
BATCH_FRAMES = 256


@dataclass
class _RFile:
    result: FileResult
    handle: Any
    file_id: int
    end: int = 0  # end of the last DATA frame (frames are checked in stream order)
    hashed: int = 0  # bytes hashed so far
    digest: Any = field(default_factory=fa.file_hasher)
    observer: Observer | None = None  # optional ordered consumer of (offset, raw) for page validation


class _InOrder:
    """Runs callbacks on finished futures in submission order, in a thread of its own.

    The per-file digest, page validation and closing of files must see a file's frames in order; doing that here
    keeps the reading thread (pipe, checksums, dispatch) and the decompress/write pool busy at the same time. The
    queue is bounded (back-pressure); an error is re-raised in the reader by ``check``/``finish``.
    """

    def __init__(self, limit: int) -> None:
        self._queue: queue.Queue[tuple[Future[Any], Callable[[Any], None]] | None] = queue.Queue(maxsize=limit)
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

    def put(self, fut: Future[Any], then: Callable[[Any], None]) -> None:
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


class ArchiveReader:
    """Reads one archive into ``sink``, verifying everything; :meth:`read` once, it raises on the first problem.

    Three threads of work: this one reads and checks frames and dispatches them, one per frame type; a pool decodes
    and writes batches of DATA frames; an in-order thread hashes each file, feeds its observer and ends it. With
    ``verify_data=False`` (``list``) payloads are checksummed but not decoded nor hashed per file.
    ``observer_factory(name, meta)`` may return an :class:`Observer` that sees a file's bytes in order.
    """

    def __init__(
        self,
        inp: BinaryIO,
        sink: Sink | Callable[[], Sink],
        *,
        parallel: int = 2,
        header_prefix: bytes = b"",
        verify_data: bool = True,
        observer_factory: ObserverFactory | None = None,
        on_file_done: Callable[[FileResult], None] | None = None,
        codec: Codec | None = None,
        limits: SizeLimits | None = None,
        key: bytes | None = None,
        require_key: bool = True,
        frames: FrameReader | None = None,
    ) -> None:
        # ``frames``: a reader of some members only (archive/seekable.py), instead of one pass over ``inp``
        self._frames = frames if frames is not None else FrameReader(inp, header_prefix=header_prefix)
        self._limits = limits or SizeLimits()
        self._codec: Codec = codec or ZstdCodec()
        #: an encrypted archive read without its key (verify): structure only, nothing decoded
        self.sealed = False
        self._open_encryption(key, require_key)
        # a factory is called only now: a wrong or missing key leaves no target directory behind
        self._sink: Sink = sink() if callable(sink) else sink
        if self.sealed:
            verify_data = False
            observer_factory = None
        self._verify = verify_data
        self._observer_factory = observer_factory if verify_data else None
        self._on_file_done = on_file_done
        self._files: dict[int, _RFile] = {}
        self._names: set[str] = set()
        self.summary = ArchiveSummary("innostream", self._frames.meta, [], {})
        if self._frames.encrypted:
            self.summary.authenticated = not self.sealed
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="isx") if verify_data else None
        self._order = _InOrder(2 * max(1, parallel) + 2)
        self._batch: list[Frame] = []  # consecutive DATA frames of one file, not yet handed to the pool
        self._batch_file: _RFile | None = None
        self._batch_bytes = 0

    def _open_encryption(self, key: bytes | None, require_key: bool) -> None:
        """An encrypted archive: unwrap its data key with ``key`` and decrypt the metadata. A key for an unencrypted
        archive is refused: whoever can write the archive could otherwise swap in unauthenticated contents."""
        frames = self._frames
        if not frames.encrypted:
            if key is not None:
                raise AuthenticationFailed("the archive is not encrypted, but a key was given: refusing contents that "
                                           "are not authenticated", offset=0,
                                           hint="without the key option it is read as a plain archive")
            return
        if key is None:
            if require_key:
                raise key_required(frames.header)
            self.sealed = True
            return
        self._codec, frames.meta = open_codec(frames.header, frames.fixed, self._codec, key)

    def read(self) -> ArchiveSummary:
        """Read up to the trailer and the end of the input; close the sink, or abort it on any error."""
        handlers: dict[int, Callable[[Frame], None]] = {
            fa.FRAME_FILE_BEGIN: self._file_begin,
            fa.FRAME_DATA: self._data,
            fa.FRAME_FILE_END: self._file_end,
            fa.FRAME_INDEX: self._index,
        }
        try:
            for frame in self._frames:
                h = frame.header
                if self._batch and (h.type != fa.FRAME_DATA or h.file_id != self._batch[0].header.file_id):
                    self._flush_batch()
                if h.type == fa.FRAME_TRAILER:
                    self._trailer(frame)
                    return self.summary
                handlers.get(h.type, self._optional)(frame)
                self._order.check()
            # a pipe's FrameReader raises Truncated at EOF; a reader of chosen members ends after their frames
            self._end_of_members()
            return self.summary
        except BaseException as exc:
            self._order.stop(exc)
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            self._sink.abort()
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    # -- one method per frame type (the reading thread) --------------------------------------------------------
    def _file_begin(self, frame: Frame) -> None:
        h, frames = frame.header, self._frames
        if h.file_id != frames.next_file_id or h.offset:
            raise Corrupt(f"FILE_BEGIN with file_id {h.file_id}, expected {frames.next_file_id}", where=frame.where)
        if self.sealed:
            name, mode = f"encrypted-member-{h.file_id}", 0o640
        else:
            name, mode = fa.parse_file_begin(self._codec.decode(frame))
        why = fa.check_name(name)
        if why:
            raise UnsafePath(f"refusing archive member {shown(name)}: {why}", where=frame.where)
        if name in self._names:
            raise Corrupt("duplicate file in the archive", where=frame.where, file=name)
        if len(frames.open_ids) >= MAX_OPEN_FILES:
            raise Corrupt(f"more than {MAX_OPEN_FILES} files open at once", where=frame.where, file=name)
        self._names.add(name)
        frames.next_file_id += 1
        frames.open_ids.add(h.file_id)
        result = FileResult(name, mode)
        self.summary.files.append(result)
        rf = _RFile(result, self._sink.begin_file(name, mode=mode), h.file_id)
        if self._observer_factory is not None:
            rf.observer = self._observer_factory(name, frames.meta)
        self._files[h.file_id] = rf

    def _data(self, frame: Frame) -> None:
        h = frame.header
        rf = self._files.get(h.file_id)
        if rf is None or h.file_id not in self._frames.open_ids:
            raise Corrupt(f"DATA for file_id {h.file_id}, which is not open", where=frame.where)
        if h.raw_len == 0:
            raise Corrupt("empty DATA frame", where=frame.where, file=rf.result.name)
        if h.offset < rf.end:
            raise Corrupt(f"DATA at {h.offset} overlaps the previous frame (ends at {rf.end})", where=frame.where,
                          file=rf.result.name)
        if h.offset + h.raw_len > fa.MAX_FILE_SIZE:
            raise Corrupt(f"DATA ends beyond the file size cap {fa.MAX_FILE_SIZE}", where=frame.where,
                          file=rf.result.name)
        self._limits.extent(rf.result.name, h.offset + h.raw_len, where=frame.where)
        self._limits.carry(rf.result.name, h.raw_len, h.offset - rf.end, where=frame.where)
        rf.end = h.offset + h.raw_len
        rf.result.data_frames += 1
        rf.result.stored_bytes += h.stored_len
        self.summary.raw_bytes += h.raw_len
        if self._pool is not None:
            self._batch.append(frame)
            self._batch_file = rf
            self._batch_bytes += h.stored_len + h.raw_len
            if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_FRAMES:
                self._flush_batch()

    def _file_end(self, frame: Frame) -> None:
        h = frame.header
        rf = self._files.get(h.file_id)
        if rf is None or h.file_id not in self._frames.open_ids:
            raise Corrupt(f"FILE_END for file_id {h.file_id}, which is not open", where=frame.where)
        if self.sealed:  # the size and digest are sealed: only the structure is checked
            self._frames.open_ids.discard(h.file_id)
            rf.result.size = rf.end
            return
        size, nframes, digest = fa.parse_file_end(self._codec.decode(frame))
        if size < rf.end:
            raise Corrupt(f"file size {size} is below the end of its data ({rf.end})", where=frame.where,
                          file=rf.result.name)
        # before anything hashes the trailing hole or the sink sets the size
        self._limits.extent(rf.result.name, size, where=frame.where)
        self._limits.carry(rf.result.name, 0, size - rf.end, where=frame.where)
        self._frames.open_ids.discard(h.file_id)
        self._order.put(completed(None), partial(self._end_in_order, rf, frame, size, nframes, digest))

    def _trailer(self, frame: Frame) -> None:
        self._order.finish()
        if self.sealed:
            if frame.header.file_id or frame.header.offset or self._frames.open_ids:
                raise Corrupt("TRAILER with a file_id or offset, or files without FILE_END", where=frame.where)
            self.summary.warnings.append("the archive is encrypted and no key was given: its structure was checked, "
                                         "its contents were not authenticated")
        else:
            self._check_trailer(frame)
            self._check_index()
        frames, summary = self._frames, self.summary
        frames.expect_eof()
        summary.archive_bytes = frames.pos
        summary.frames = frames.seq
        summary.stored_bytes = frames.stored_bytes
        self._sink.close()

    def _index(self, frame: Frame) -> None:
        """The INDEX frame (docs/FORMAT.md §10) is checked against the stream once every file ended (the trailer)."""

    def _check_index(self) -> None:
        index = self._frames.index_frame
        if index is None or self.sealed or self._frames.frame_map is None:
            return
        check_index(parse_index(self._codec.decode(index)), self.summary.files, self._frames.frame_map, index.pos,
                    index.where)

    def _end_of_members(self) -> None:
        """The chosen members were all read (a reader that seeks): the frames reader checks them against its
        verified index and trailer."""
        self._flush_batch()
        self._order.finish()
        self.summary.trailer = self._frames.finish_members(self.summary.files)
        self._sink.close()

    def _optional(self, frame: Frame) -> None:
        if self._frames.encrypted and not self.sealed:
            self._codec.decode(frame)  # skipped, but authenticated like every frame of an encrypted archive
        self.summary.skipped_frames += 1
        self.summary.warnings.append(f"skipped optional frame type {frame.header.type:#x} at offset {frame.pos}")

    # -- DATA batches: the pool, then the in-order thread ------------------------------------------------------
    def _flush_batch(self) -> None:
        batch, rf = self._batch, self._batch_file
        if batch and self._pool is not None and rf is not None:
            self._order.put(self._pool.submit(self._write_batch, batch, rf), partial(self._hash_batch, rf, batch))
        self._batch, self._batch_file, self._batch_bytes = [], None, 0

    def _write_batch(self, frames: list[Frame], rf: _RFile) -> list[bytes]:
        """Decode and write a batch of one file's frames (a pool thread; the GIL is free during both)."""
        decode, write, handle = self._codec.decode, self._sink.write, rf.handle
        raws = []
        for frame in frames:
            raw = decode(frame)
            write(handle, frame.header.offset, raw)
            raws.append(raw)
        return raws

    def _hash_batch(self, rf: _RFile, frames: list[Frame], raws: list[bytes]) -> None:
        """The in-order side of a batch: the file digest (no copy: the bytes the pool wrote), page validation."""
        digest, observer = rf.digest, rf.observer
        for frame, raw in zip(frames, raws, strict=True):
            offset = frame.header.offset
            if offset > rf.hashed:
                hash_zeros(digest, offset - rf.hashed)
            digest.update(raw)
            rf.hashed = offset + len(raw)
            if observer is not None:
                observer.feed(offset, raw)

    def _end_in_order(self, rf: _RFile, frame: Frame, size: int, nframes: int, digest: bytes, _: Any) -> None:
        """FILE_END once the file's last batch was hashed: counts, digest, observer, then the sink ends the file."""
        if nframes != rf.result.data_frames:
            raise Corrupt(f"FILE_END counts {nframes} data frames, the archive had {rf.result.data_frames}",
                          where=frame.where, file=rf.result.name)
        if self._verify:
            hash_zeros(rf.digest, size - rf.hashed)
            if rf.digest.digest() != digest:
                raise ChecksumMismatch("file digest (xxh3_128) mismatch", where=frame.where, file=rf.result.name)
            if rf.observer is not None:
                rf.observer.finish(size)
        rf.result.size = size
        rf.result.digest = digest.hex()
        self._sink.end_file(rf.handle, size)
        if self._on_file_done is not None:
            self._on_file_done(rf.result)

    def _check_trailer(self, frame: Frame) -> None:
        """The trailer against what was read: counts, stream digest, the file list with sizes and digests."""
        h, frames, summary = frame.header, self._frames, self.summary
        results = summary.files
        if h.file_id or h.offset:
            raise Corrupt("TRAILER with a file_id or offset", where=frame.where)
        if frames.open_ids:
            names = [r.name for r in results if r.size < 0]
            raise Corrupt(f"{len(names)} file(s) without FILE_END before the trailer: {', '.join(names[:5])}",
                          where=frame.where)
        raw = self._codec.decode(frame)
        nframes, nfiles, raw_bytes, stored_bytes, digest, info = fa.parse_trailer(raw)
        if nframes != h.seq:
            raise Corrupt(f"trailer counts {nframes} frames, the archive had {h.seq}", where=frame.where)
        if nfiles != len(results):
            raise Corrupt(f"trailer counts {nfiles} files, the archive had {len(results)}", where=frame.where)
        if raw_bytes != summary.raw_bytes:
            raise Corrupt(f"trailer counts {raw_bytes} data bytes, the archive had {summary.raw_bytes}",
                          where=frame.where)
        if stored_bytes != frames.stored_bytes:
            raise Corrupt(f"trailer counts {stored_bytes} stored bytes, the archive had {frames.stored_bytes}",
                          where=frame.where)
        if digest != frames.digest.digest():
            raise ChecksumMismatch("stream digest mismatch in the trailer", where=frame.where)
        listed = info.get("files")
        if not isinstance(listed, list) or len(listed) != len(results):
            raise Corrupt("trailer file list does not match the archive", where=frame.where)
        for entry, r in zip(listed, results, strict=True):
            if not isinstance(entry, list) or len(entry) < 3 or entry[0] != r.name or entry[1] != r.size or (
                entry[2] != r.digest
            ):
                raise Corrupt("trailer file list does not match the archive", where=frame.where, file=r.name)
        summary.trailer = info


def read_archive(
    inp: BinaryIO,
    sink: Sink | Callable[[], Sink],
    *,
    parallel: int = 2,
    header_prefix: bytes = b"",
    verify_data: bool = True,
    observer_factory: ObserverFactory | None = None,
    on_file_done: Callable[[FileResult], None] | None = None,
    codec: Codec | None = None,
    limits: SizeLimits | None = None,
    key: bytes | None = None,
    require_key: bool = True,
) -> ArchiveSummary:
    """Read a whole archive into ``sink``, verifying everything; raise on the first problem (:class:`ArchiveReader`).

    ``limits`` bounds declared sizes and holes (``--max-size``; default :data:`DEFAULT_MAX_SIZE`).
    ``key``: the user key of an encrypted archive (32 bytes); without it an encrypted archive is refused
    (:class:`KeyRequired`) unless not ``require_key`` (verify: structure only, a warning in the summary).

    With ``verify_data=False`` (``list``) payloads are checksummed but not decompressed nor hashed per file.
    ``observer_factory(name, meta)`` may return an object with ``feed(offset, raw)`` and ``finish(size)`` that sees a
    file's bytes in order (page validation).
    """
    return ArchiveReader(inp, sink, parallel=parallel, header_prefix=header_prefix, verify_data=verify_data,
                         observer_factory=observer_factory, on_file_done=on_file_done, codec=codec,
                         limits=limits, key=key, require_key=require_key).read()
