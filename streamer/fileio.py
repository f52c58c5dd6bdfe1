"""Bytes onto descriptors, completely and durably: the one write-all loop and the sync helpers every writer uses.

``os.write``/``os.pwrite`` may write less than asked (a signal, a pipe with little room, a disk filling up): every
caller that wants all of its bytes written goes through :func:`write_all` / :func:`pwrite_all`, never a bare call.
EINTR is retried by Python itself (PEP 475); a descriptor in non-blocking mode (a pipe shared with ssh) is waited on
until writable. Errors stay :class:`OSError`: the caller knows which file it was and turns them into its own error.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from typing import Any

#: Files and directories innostream creates get the server's modes (mysqld: files 0640, directories 0750).
FILE_MODE = 0o640
DIR_MODE = 0o750


def file_mode(mode: int) -> int:
    """The mode a data file is created with: what was asked, but never executable or readable by others (a
    MariaDB source file is 0660, MySQL's 0640); 0640 when nothing usable was asked."""
    return (mode & 0o660) or FILE_MODE


def _wait_writable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll()


def write_all(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write every byte of ``data`` to ``fd`` at its current position, looping on short writes; returns the count.

    Raises:
        OSError: the write failed (ENOSPC, EIO, EPIPE...); some bytes may have been written.
    """
    view = memoryview(data).cast("B")
    total = len(view)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            _wait_writable(fd)
            continue
        if n <= 0:  # never for a regular file or a pipe; do not spin if a device says so
            raise OSError(0, "write returned 0")
        view = view[n:]
    return total


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """Write every byte of ``data`` at ``offset``, looping on short writes; returns the count.

    Raises:
        OSError: the write failed; ``exc.filename`` is unset, the offset reached is in ``exc.args`` no more than
        in any other OSError: callers that report offsets track them themselves.
    """
    view = memoryview(data).cast("B")
    total = len(view)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(0, f"pwrite returned 0 at offset {offset}")
        view = view[n:]
        offset += n
    return total


def fsync_output(out: Any) -> bool:
    """Flush the binary file object ``out`` and fsync its descriptor if it is a regular file (``backup --stream >
    FILE``); pipes and terminals have nothing to sync. Returns whether it synced.

    Raises:
        OSError: the flush or the fsync failed (a full disk shows up here at the latest).
    """
    out.flush()
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # BytesIO and friends: nothing on disk
        return False
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return False
    os.fsync(fd)
    return True


def data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` of the file's data, skipping holes (``SEEK_DATA``/``SEEK_HOLE``); the whole file if the file
    system cannot tell. Restore copies these, ``verify`` of a backup directory reads them."""
    regions = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            regions.append((start, min(end, size)))
            pos = end
    except OSError:
        return [(0, size)] if size else []
    return regions
