"""Progress of a backup on stderr: a live line on a terminal, nothing extra (just the log lines) otherwise.

stdout carries the stream, so everything here goes to stderr. The live line shows bytes and files copied, rate,
ETA and how far the redo copy lags behind the server's LSN; log records clear it first so lines do not mix.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from innostream.log import log


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _ClearLine(logging.Filter):
    """Erase the live line before a log record is printed; the next tick redraws it."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear()
        return True


class Progress:
    """Counters updated by the copier threads, rendered by the main thread.

    Args:
        total_bytes: expected bytes (file sizes at enumeration; files may grow while copied).
        total_files: files to copy.
        live: draw the live line (default: when stderr is a terminal and logging is not quiet).
    """

    def __init__(self, total_bytes: int, total_files: int, *, live: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.bytes = 0
        self.files = 0
        self.redo_lsn = 0
        self.server_lsn = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._drawn = False
        if live is None:
            live = self.stream.isatty() and log.isEnabledFor(logging.INFO)
        self.live = live
        self._filter = _ClearLine(self)
        if self.live:
            for handler in log.handlers:
                handler.addFilter(self._filter)

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes

    def file_done(self) -> None:
        with self._lock:
            self.files += 1

    def add_total(self, nbytes: int, nfiles: int) -> None:
        """More work found later (the non-InnoDB files copied at the end)."""
        with self._lock:
            self.total_bytes += nbytes
            self.total_files += nfiles

    def set_redo(self, copied_lsn: int, server_lsn: int) -> None:
        self.redo_lsn, self.server_lsn = copied_lsn, server_lsn

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.bytes / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The status text: ``1.2 GiB/4.0 GiB 30% 12/80 files 95.1 MiB/s ETA 0:31 redo lag 1.1 MiB``."""
        total = max(self.total_bytes, self.bytes)
        pct = 100 * self.bytes / total if total else 100.0
        rate = self.rate
        eta = human_seconds((total - self.bytes) / rate) if rate > 0 else "?"
        text = (f"{human_bytes(self.bytes)}/{human_bytes(total)} {pct:3.0f}% "
                f"{self.files}/{self.total_files} files {human_bytes(rate)}/s ETA {eta}")
        if self.server_lsn and self.redo_lsn:
            text += f" redo lag {human_bytes(max(0, self.server_lsn - self.redo_lsn))}"
        return text

    def render(self) -> None:
        """Redraw the live line (main thread, a few times a second)."""
        if not self.live:
            return
        self.stream.write("\r" + self.line() + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def close(self) -> None:
        """Erase the live line and detach from logging."""
        self.clear()
        for handler in log.handlers:
            handler.removeFilter(self._filter)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return (f"Copied {self.files} files, {human_bytes(self.bytes)} in {elapsed:.1f} s "
                f"({human_bytes(self.rate)}/s)")
