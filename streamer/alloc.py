"""glibc malloc settings for a program that hands MiB-sized buffers from thread to thread.

Extract decodes each 1 MiB frame into a fresh buffer in a pool thread and frees it in the in-order thread after
hashing; backup does the mirror image. With glibc's default dynamic thresholds (trim at twice the largest mmapped
chunk freed so far, about 2 MiB here) every pool thread's arena hands its top back to the kernel with
``madvise(MADV_DONTNEED)`` every few frames, and the next frame faults the same pages back in, zeroed: on the 2 GiB
benchmark extract that was 90k to 240k minor faults and 0.4-0.9 s of system time (docs/BENCHMARKS.md), and how
often it happens depends on the heap layout (an encrypted extract, with one more buffer per thread, trimmed four
times as often). Fixed thresholds keep freed memory in the arena up to :data:`TRIM_THRESHOLD`; the arenas keep no
more than the pipeline had in use at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: allocations up to this size come from the arenas (glibc's cap is 32 MiB on 64-bit), not from mmap/munmap
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory at the top of an arena kept before it is given back to the kernel
TRIM_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # malloc.h
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Set fixed mmap and trim thresholds if the C library is glibc; returns whether both were set. Process-wide:
    called once by the command line, never by library code."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl has mallopt but ignores these
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
