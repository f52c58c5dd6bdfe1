"""``--throttle``: a bound on the data copy's read rate, so a backup leaves the server's disks to the server.

One token bucket shared by every copy thread; the redo copy never goes through it (throttling the log copier
would let the server overwrite redo not yet copied). A read is taken first and paid for after, so a short burst
of one chunk may pass the rate; over any second or more the average stays at or under it.
"""

from __future__ import annotations

import threading
import time

from innostream.errors import Interrupted

#: longest single sleep, so a cancelled backup stops promptly even at a very low rate
_SLICE = 0.2


class Throttle:
    """Limit reads to ``rate`` bytes per second across all threads."""

    def __init__(self, rate: float, cancel: threading.Event | None = None) -> None:
        if rate <= 0:
            raise ValueError("throttle rate must be positive")
        self.rate = float(rate)
        self.cancel = cancel
        self._lock = threading.Lock()
        self._next = time.monotonic()  # when the bucket is empty again
        self.slept = 0.0  # seconds spent waiting, for the progress line and the summary

    def take(self, n: int) -> None:
        """Account for ``n`` bytes just read; sleep until the average rate is back under the limit."""
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + n / self.rate
            wait = self._next - now - 1.0  # one second of burst is allowed
            if wait > 0:
                self.slept += wait
        while wait > 0:
            if self.cancel is not None and self.cancel.is_set():
                raise Interrupted("copy cancelled")
            step = min(wait, _SLICE)
            time.sleep(step)
            wait -= step
