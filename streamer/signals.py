"""SIGTERM handled like Ctrl-C, so ``kill`` gets the same cleanup (locks released, server stopped, partial output
discarded) as an interactive interrupt. The one place that installs a SIGTERM handler."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType


@contextlib.contextmanager
def sigterm_raises(error: Callable[[], BaseException] = KeyboardInterrupt) -> Iterator[None]:
    """Inside the block SIGTERM raises ``error()`` in the main thread; the previous handler comes back after.

    Only the main thread can install handlers: elsewhere the block runs with the signal left as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise error()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
