"""xbstream interop: a writer that ``mbstream -x`` / ``xbstream -x`` extract, and a one-pass reader of both dialects.

The writer emits only ``P`` and ``E`` chunks with flags 0 (the subset both C readers accept), at most 10 MiB of payload
each; holes are written as zeros because Percona has no seek chunk. The reader checks every CRC, keeps per-file offsets
(out-of-order chunks are errors, as in mbstream), caps every length, streams payloads in bounded pieces and, unlike
mbstream, reports a file without its ``E`` chunk as an error.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from innostream.archive.output import StreamOutput
from innostream.archive.types import (
    MAX_OPEN_FILES,
    ArchiveSummary,
    FileResult,
    Observer,
    ObserverFactory,
    SizeLimits,
    read_exact,
    shown,
)
from innostream.errors import Interrupted, TargetError, UnsafePath
from innostream.flavor import Flavor
from innostream.formats import xbstream as fx
from innostream.formats.archive import check_name
from innostream.formats.errors import (
    BadMagic,
    ChecksumMismatch,
    Corrupt,
    InnostreamError,
    Truncated,
    UnsupportedVersion,
)
from innostream.sink import Sink

#: largest payload we accept in one chunk; real writers use 10 MiB (or one larger ds_write). Payloads are read in
#: READ_PIECE pieces, so this caps the work a hostile length can cause, not memory.
MAX_CHUNK_PAYLOAD = 1 << 32
READ_PIECE = 4 << 20
ZEROS = bytes(1 << 20)

DIALECTS = ("auto", "mariadb", "percona")  # user-facing choices of --xbstream-dialect
#: the server family a dialect implies (Percona XtraBackup backs up MySQL)
DIALECT_FLAVOR = {"mariadb": Flavor.MARIADB, "percona": Flavor.MYSQL}


class XbstreamWriter:
    """Write an xbstream (``P``/``E`` chunks) to ``out``; same interface as :class:`innostream.archive.ArchiveWriter`.

    Thread-safe: each chunk (header + payload) is written under one lock, so files interleave at chunk granularity.
    ``level``/``threads``/``compress`` are accepted for interface compatibility and ignored (xbstream payloads are
    raw; compress the whole stream with ``zstd`` if wanted).
    """

    def __init__(
        self,
        out: BinaryIO | StreamOutput,
        *,
        level: int = 1,
        threads: int = 2,
        meta: dict[str, Any] | None = None,
        compress: bool = True,
        chunk_size: int = fx.XB_STREAM_MIN_CHUNK_SIZE,
    ) -> None:
        self._out = StreamOutput.wrap(out)  # every byte written or an error (short writes, EINTR, EAGAIN)
        self._lock = threading.Lock()
        self._chunk = chunk_size
        self._files: dict[int, list[Any]] = {}  # id -> [path bytes, pos, ended]
        self._names: set[str] = set()
        self._error: BaseException | None = None
        self._closed = False
        self.meta = meta or {}

    def _emit(self, *parts: bytes | memoryview) -> None:
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise TargetError("xbstream writer is closed")
            try:
                self._out.write(*parts)
            except BrokenPipeError as exc:
                self._error = Interrupted("output pipe closed by the reader; the stream is incomplete")
                raise self._error from exc
            except OSError as exc:
                self._error = TargetError(f"cannot write the stream: {exc.strerror or exc}")
                raise self._error from exc

    def begin_file(self, name: str, *, mode: int = 0o640) -> int:
        """Start a file; returns its id."""
        why = check_name(name)
        path = name.encode()
        if why or len(path) >= fx.FN_REFLEN:
            raise ValueError(f"unsafe or too long xbstream member name {name!r}: {why or 'too long'}")
        with self._lock:
            if name in self._names:
                raise ValueError(f"file {name!r} is already in the stream")
            self._names.add(name)
            file_id = len(self._files) + 1
            self._files[file_id] = [path, 0, False]
        return file_id

    def _state(self, file_id: int) -> list[Any]:
        st = self._files.get(file_id)
        if st is None or st[2]:
            raise ValueError(f"file id {file_id} is not open")
        return st

    def _zeros(self, st: list[Any], upto: int) -> None:
        while st[1] < upto:
            n = min(upto - st[1], len(ZEROS), self._chunk)
            piece = memoryview(ZEROS)[:n]
            self._emit(fx.build_payload_header(st[0], st[1], piece), piece)
            st[1] += n

    def write(self, file_id: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; a gap since the previous write is written as zeros."""
        st = self._state(file_id)
        if offset < st[1]:
            raise ValueError(f"write at {offset} before the end of the previous write ({st[1]})")
        self._zeros(st, offset)
        mv = memoryview(data).cast("B")
        for a in range(0, len(mv), self._chunk):
            piece = mv[a : a + self._chunk]
            self._emit(fx.build_payload_header(st[0], st[1], piece), piece)
            st[1] += len(piece)

    def end_file(self, file_id: int, size: int) -> None:
        """Pad to ``size`` with zeros and write the ``E`` chunk."""
        st = self._state(file_id)
        if size < st[1]:
            raise ValueError(f"size {size} is below the end of the data ({st[1]})")
        self._zeros(st, size)
        st[2] = True
        self._emit(fx.build_eof_chunk(st[0]))

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o640) -> None:
        """Add a small whole file."""
        file_id = self.begin_file(name, mode=mode)
        self.write(file_id, 0, data)
        self.end_file(file_id, len(data))

    def close(self, trailer: dict[str, Any] | None = None) -> None:
        """Flush. xbstream has no trailer: ``trailer`` is ignored (the metadata files carry the LSNs)."""
        open_files = [st[0].decode() for st in self._files.values() if not st[2]]
        if open_files:
            raise ValueError(f"files not ended: {', '.join(open_files[:5])}")
        with self._lock:
            if self._error is not None:
                raise self._error
            try:
                self._out.flush()
            except BrokenPipeError as exc:
                raise Interrupted("output pipe closed by the reader; the stream is incomplete") from exc
            except OSError as exc:
                raise TargetError(f"cannot write the stream: {exc.strerror or exc}") from exc
            self._closed = True

    def abort(self) -> None:
        """Stop writing; nothing more goes out."""
        with self._lock:
            self._closed = True
            if self._error is None:
                self._error = Interrupted("xbstream writer aborted")


class _Input:
    """A pipe with a small push-back buffer (to tell MariaDB seek from Percona sparse) and a byte position."""

    def __init__(self, inp: BinaryIO, prefix: bytes = b"") -> None:
        self._inp = inp
        self._buf = prefix
        self.pos = 0

    def read(self, n: int) -> bytes:
        if self._buf:
            head, self._buf = self._buf[:n], self._buf[n:]
            if len(head) < n:
                more = self._inp.read(n - len(head)) or b""
                head += more
            self.pos += len(head)
            return head
        data = self._inp.read(n) or b""
        self.pos += len(data)
        return data

    def exact(self, n: int, what: str, at: int) -> bytes:
        return read_exact(self, n, offset=at, what=what)

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n:
            more = self._inp.read(n - len(self._buf))
            if not more:
                break
            self._buf += more
        return self._buf[:n]


@dataclass
class _XFile:
    result: FileResult
    handle: Any
    pos: int = 0  # where the next payload must start (mbstream's entry->offset)
    size: int = 0  # end of the data written so far: the size at end-of-file (a seek alone does not extend)
    observer: Observer | None = None


class XbstreamReader:
    """Reads one xbstream into ``sink`` chunk by chunk; :meth:`read` once, it raises on the first problem.

    One method per chunk kind. Files are keyed by their path as stored (bytes); a file is open from its first chunk
    to its ``E`` chunk, and a path may not come back after that unless renamed or removed first.
    """

    def __init__(
        self,
        inp: BinaryIO,
        sink: Sink,
        *,
        header_prefix: bytes = b"",
        dialect: str = "auto",
        on_file_done: Callable[[FileResult], None] | None = None,
        observer_factory: ObserverFactory | None = None,
        limits: SizeLimits | None = None,
    ) -> None:
        self._limits = limits or SizeLimits()
        if dialect not in DIALECTS:
            raise ValueError(f"dialect {dialect!r}")
        self._src = _Input(inp, header_prefix)
        self._sink = sink
        self._dialect = dialect
        self._on_file_done = on_file_done
        self._observer_factory = observer_factory
        self._files: dict[bytes, _XFile] = {}  # open files
        self._done: set[bytes] = set()  # ended files
        flavor = DIALECT_FLAVOR.get(dialect)
        self._meta: dict[str, Any] = {"dialect": dialect, **({"flavor": flavor} if flavor else {})}
        self.summary = ArchiveSummary("xbstream", self._meta, [], {})

    def read(self) -> ArchiveSummary:
        """Read to the end of the input; close the sink, or abort it on any error."""
        src, summary = self._src, self.summary
        try:
            while True:
                at = src.pos
                prefix = src.read(fx.CHUNK_HEADER_CONSTANT_LEN)
                if not prefix:
                    break
                if len(prefix) < fx.CHUNK_HEADER_CONSTANT_LEN:  # a short read from a pipe, or the end in a header
                    prefix += src.exact(fx.CHUNK_HEADER_CONSTANT_LEN - len(prefix), f"the chunk header at {at:#x}",
                                        at)
                magic, flags, ctype, path_len = fx.unpack_prefix(prefix)
                if magic != fx.XB_STREAM_CHUNK_MAGIC:
                    raise BadMagic(f"wrong chunk magic at offset {at:#x}", offset=at)
                if path_len == 0 or path_len >= fx.FN_REFLEN:
                    raise Corrupt(f"chunk path length {path_len} at {at:#x} (must be 1..{fx.FN_REFLEN - 1})",
                                  offset=at)
                path = src.exact(path_len, "the chunk path", at)
                summary.frames += 1
                if ctype == fx.XB_CHUNK_TYPE_EOF:
                    self._end_of_file(path, at)
                elif ctype == fx.XB_CHUNK_TYPE_PAYLOAD:
                    self._payload(path, at, flags, sparse=False)
                elif ctype == fx.XB_CHUNK_TYPE_SEEK and self._is_seek():
                    self._seek(path, at)
                elif ctype == fx.XB_CHUNK_TYPE_SPARSE:
                    self._payload(path, at, flags, sparse=True)
                elif ctype in (fx.XB_CHUNK_TYPE_RENAME, fx.XB_CHUNK_TYPE_REMOVE):
                    self._rename_or_remove(path, at, rename=ctype == fx.XB_CHUNK_TYPE_RENAME)
                else:
                    raise UnsupportedVersion(f"unknown chunk type {ctype:#x} at offset {at:#x}", offset=at)
            if self._files:
                names = [xf.result.name for xf in self._files.values()]
                raise Truncated(f"stream ended without the end-of-file chunk of {len(names)} file(s): "
                                f"{', '.join(names[:5])}", offset=src.pos)
            summary.archive_bytes = src.pos
            summary.stored_bytes = summary.raw_bytes
            self._sink.close()
            return summary
        except BaseException:
            self._sink.abort()
            raise

    def _is_seek(self) -> bool:
        """MariaDB's seek chunk and Percona's sparse chunk share a type letter: the dialect, or the bytes, decide."""
        if self._dialect == "mariadb":
            return True
        if self._dialect == "auto":
            after = self._src.peek(fx.SEEK_TAIL_LEN + 8)
            return len(after) == fx.SEEK_TAIL_LEN or after[fx.SEEK_TAIL_LEN :] == fx.XB_STREAM_CHUNK_MAGIC
        return False

    def _member_name(self, path: bytes, at: int) -> str:
        try:
            name = path.decode()
        except UnicodeDecodeError:
            raise Corrupt("file name is not UTF-8", offset=at) from None
        why = check_name(name)
        if why:
            raise UnsafePath(f"refusing archive member {shown(name)}: {why}", offset=at)
        return name

    def _open_file(self, path: bytes, at: int) -> _XFile:
        xf = self._files.get(path)
        if xf is not None:
            return xf
        name = self._member_name(path, at)
        if path in self._done:
            raise Corrupt("duplicate file in the stream (chunk after its end-of-file)", file=name, offset=at)
        if len(self._files) >= MAX_OPEN_FILES:
            raise Corrupt(f"more than {MAX_OPEN_FILES} files open at once", file=name, offset=at)
        result = FileResult(name, 0o640)
        self.summary.files.append(result)
        xf = self._files[path] = _XFile(result, self._sink.begin_file(name))
        if self._observer_factory is not None:
            xf.observer = self._observer_factory(name, self._meta)
        return xf

    def _end_of_file(self, path: bytes, at: int) -> None:
        xf = self._open_file(path, at)
        self._files.pop(path)
        self._done.add(path)
        xf.result.size = xf.size
        if xf.observer is not None:
            xf.observer.finish(xf.size)
        self._sink.end_file(xf.handle, xf.size)
        if self._on_file_done is not None:
            self._on_file_done(xf.result)

    def _payload(self, path: bytes, at: int, flags: int, *, sparse: bool) -> None:
        """A ``P`` chunk, or Percona's sparse ``S`` chunk (a map of (skip, length) runs over the payload)."""
        src = self._src
        xf = self._open_file(path, at)
        runs: list[tuple[int, int]] | None = None
        crc = 0
        if not sparse:
            length, offset, checksum = fx.unpack_payload_tail(src.exact(fx.PAYLOAD_TAIL_LEN, "a chunk header", at))
        else:
            map_len, length, offset, checksum = fx.unpack_sparse_tail(
                src.exact(fx.SPARSE_TAIL_LEN, "a chunk header", at))
            if map_len > fx.XB_STREAM_MIN_CHUNK_SIZE // 8 or length > 64 << 20:
                raise Corrupt(f"sparse chunk map of {map_len} entries / {length} bytes at {at:#x}",
                              file=xf.result.name, offset=at)
            raw_map = src.exact(map_len * fx.SPARSE_ENTRY_LEN, "a sparse map", at)
            crc = zlib.crc32(raw_map)
            runs = [(int.from_bytes(raw_map[i : i + 4], "little"), int.from_bytes(raw_map[i + 4 : i + 8], "little"))
                    for i in range(0, len(raw_map), 8)]
        if length > MAX_CHUNK_PAYLOAD:
            raise Corrupt(f"chunk payload length {length} exceeds the cap {MAX_CHUNK_PAYLOAD}",
                          file=xf.result.name, offset=at)
        if offset != xf.pos:
            raise Corrupt(f"out-of-order chunk: offset {offset:#x}, expected {xf.pos:#x}",
                          file=xf.result.name, offset=at)
        if flags & fx.XB_STREAM_FLAG_REWRITE:
            raise UnsupportedVersion("REWRITE chunks are not supported", file=xf.result.name, offset=at)
        # before a byte is written: a seek or sparse skips far beyond the data would make a huge sparse file
        end = offset + length + (sum(s for s, _ in runs) if runs else 0)
        self._limits.extent(xf.result.name, end, offset=at)
        self._limits.carry(xf.result.name, length, end - length - xf.size, offset=at)
        got = self._copy_payload(xf, length, offset, crc, at, runs)
        if got != checksum:
            raise ChecksumMismatch(f"invalid checksum at offset {at:#x}: expected {checksum:#010x}, read {got:#010x}",
                                   file=xf.result.name, offset=at)
        xf.pos = end
        xf.size = max(xf.size, xf.pos)
        xf.result.data_frames += 1
        xf.result.stored_bytes += length
        self.summary.raw_bytes += length

    def _copy_payload(self, xf: _XFile, length: int, offset: int, crc: int, at: int,
                      runs: list[tuple[int, int]] | None) -> int:
        """Stream ``length`` payload bytes to the file; return the CRC (``crc`` covers the sparse map already)."""
        src, write = self._src, self._sink.write
        if runs is None:
            pos = offset
            left = length
            while left:
                piece = src.exact(min(left, READ_PIECE), f"the payload of the chunk at {at:#x}", at)
                crc = zlib.crc32(piece, crc)
                write(xf.handle, pos, piece)
                if xf.observer is not None:
                    xf.observer.feed(pos, piece)
                pos += len(piece)
                left -= len(piece)
            return crc
        payload = src.exact(length, f"the payload of the chunk at {at:#x}", at)
        crc = zlib.crc32(payload, crc)
        pos, used = offset, 0
        for skip, n in runs:
            pos += skip
            if used + n > length:
                raise Corrupt("sparse map covers more than the payload", file=xf.result.name, offset=at)
            write(xf.handle, pos, payload[used : used + n])
            if xf.observer is not None:
                xf.observer.feed(pos, payload[used : used + n])
            pos += n
            used += n
        if used != length:
            raise Corrupt(f"sparse map covers {used} of {length} payload bytes", file=xf.result.name, offset=at)
        return crc

    def _seek(self, path: bytes, at: int) -> None:
        """MariaDB's seek chunk: the next payload of the file starts there (a hole in between)."""
        xf = self._open_file(path, at)
        xf.pos = fx.unpack_u64(self._src.exact(fx.SEEK_TAIL_LEN, "a seek chunk", at))

    def _rename_or_remove(self, path: bytes, at: int, *, rename: bool) -> None:
        """Apply a rename or remove chunk to an ended file (and to the sink, if it can)."""
        old_name = self._member_name(path, at)
        new_path = b""
        if rename:
            new_len = fx.unpack_u32(self._src.exact(4, "a rename chunk", at))
            if new_len == 0 or new_len >= fx.FN_REFLEN:
                raise Corrupt(f"rename target length {new_len} at {at:#x}", file=old_name, offset=at)
            new_path = self._src.exact(new_len, "a rename chunk", at)
        if path in self._files:
            raise Corrupt("rename and remove chunks cannot be applied to an open file (no end-of-file yet)",
                          file=old_name, offset=at)
        self._done.discard(path)
        results = self.summary.files
        if rename:
            new_name = self._member_name(new_path, at)
            sink_rename = getattr(self._sink, "rename", None)
            if sink_rename is not None:
                sink_rename(old_name, new_name)
            results[:] = [r for r in results if r.name != new_name]  # a replaced file is gone
            for r in results:
                if r.name == old_name:
                    r.name = new_name
            self._done.add(new_path)
        else:
            sink_remove = getattr(self._sink, "remove", None)
            if sink_remove is not None:
                sink_remove(old_name)
            results[:] = [r for r in results if r.name != old_name]


def read_xbstream(
    inp: BinaryIO,
    sink: Sink,
    *,
    header_prefix: bytes = b"",
    dialect: str = "auto",
    on_file_done: Callable[[FileResult], None] | None = None,
    observer_factory: ObserverFactory | None = None,
    limits: SizeLimits | None = None,
) -> ArchiveSummary:
    """Read an xbstream into ``sink`` chunk by chunk (:class:`XbstreamReader`); raise on the first problem.

    ``limits`` bounds member sizes and holes (``--max-size``), as for an innostream archive.

    ``observer_factory(name, meta)`` works as in :func:`innostream.archive.read_archive` (page validation); the meta
    has ``flavor`` only if the dialect implies it (``mariadb``/``percona``), as an xbstream does not say.

    Raises:
        BadMagic, ChecksumMismatch, Corrupt, Truncated, UnsupportedVersion, UnsafePath: named with the stream offset.
    """
    return XbstreamReader(inp, sink, header_prefix=header_prefix, dialect=dialect, on_file_done=on_file_done,
                          observer_factory=observer_factory, limits=limits).read()


__all__ = ["DIALECTS", "InnostreamError", "XbstreamReader", "XbstreamWriter", "read_xbstream"]
