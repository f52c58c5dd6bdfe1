"""The one way an archive stream leaves the process: every byte written, or an error.

Python's buffered ``sys.stdout.buffer`` loses bytes when a blocking write to a pipe is cut short by a stop and
continue (Ctrl-Z then ``fg``, SIGSTOP/SIGCONT, a frozen container): measured, a 351 MB stream arrived 83 MB short and
the backup still said "completed OK!". :class:`StreamOutput` writes to the file descriptor itself with the one
write-all loop (:func:`innostream.fileio.write_all`): a short write continues where it stopped, EINTR is retried
(PEP 475), and EAGAIN (a pipe another program such as ssh set O_NONBLOCK on; the flag is shared by every process
holding the pipe) waits with ``poll`` until the pipe is writable. Both writers (:class:`innostream.archive.
ArchiveWriter`, :class:`innostream.archive.xbstream.XbstreamWriter`) wrap their output in it, so every output path
(a pipe, a regular file, any file object) is covered.
"""

from __future__ import annotations

import io
import time
from typing import Any, BinaryIO

from innostream.fileio import write_all as write_all_fd


class StreamOutput:
    """Write-all wrapper over a binary output (a pipe, a file, or a file object without a descriptor).

    ``write(*parts)`` returns only once every byte of every part is written; ``flush()`` is a no-op for a
    descriptor (nothing is buffered here; :func:`innostream.fileio.fsync_output` syncs a regular file at the end).
    OSError (EPIPE as BrokenPipeError, ENOSPC, EIO) propagates to the writer, which turns it into its error.
    """

    def __init__(self, out: BinaryIO | StreamOutput) -> None:
        self.inner: Any = out.inner if isinstance(out, StreamOutput) else out
        self.fd = -1
        self.bytes_written = 0
        try:
            fd = self.inner.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
            fd = -1
        if fd >= 0:
            flush = getattr(self.inner, "flush", None)
            if flush is not None:  # anything already buffered in the file object goes first, in order
                flush()
            self.fd = fd

    @classmethod
    def wrap(cls, out: BinaryIO | StreamOutput) -> StreamOutput:
        return out if isinstance(out, StreamOutput) else cls(out)

    def write(self, *parts: bytes | bytearray | memoryview) -> int:
        """Write every part in order, completely; return the byte count."""
        total = 0
        for part in parts:
            if not len(part):
                continue
            if self.fd >= 0:
                total += write_all_fd(self.fd, part)
            else:
                view = memoryview(part).cast("B")
                self._write_object(view)
                total += len(view)
        self.bytes_written += total
        return total

    def _write_object(self, view: memoryview) -> None:
        """A file object without a descriptor (tests, object storage): loop over its write's count."""
        raw = isinstance(self.inner, io.RawIOBase)
        while view:
            n = self.inner.write(view)
            if n is None:
                if not raw:  # a writer that returns nothing took everything
                    return
                time.sleep(0.01)  # a non-blocking raw object with no room: wait a little
                continue
            view = view[n:]

    def flush(self) -> None:
        if self.fd < 0:
            flush = getattr(self.inner, "flush", None)
            if flush is not None:
                flush()
