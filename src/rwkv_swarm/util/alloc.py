"""glibc malloc settings for a process that receives large messages.

glibc serves an allocation above its mmap threshold (128 KiB at start) with a fresh mapping,
and raises that threshold, process-wide, to the size of each mapped block freed; it also hands
memory at the top of a heap back to the system above a trim threshold that it moves along.
A node's receive buffers (ZeroMQ allocates one per message, on its I/O thread) are exactly such
blocks, so whether a 4 MiB state lands in reused heap memory or in fresh pages that fault in
one by one depended on what sizes the process had freed before. Measured on the transport
benchmark (two nodes in one process, 4 MiB plain TCP, after a minute of 16 KiB and 256 KiB
traffic): ours/raw 0.74 with glibc's moving thresholds, 0.89-1.04 with either fixed; CURVE's
4 MiB round trip 13.6 ms against 8.2 ms. Fixing them keeps every message below MMAP_THRESHOLD
in reused heap memory and lets a heap keep up to TRIM_THRESHOLD free at its top.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit (half its 64 MiB heaps)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
# a user's own choice, through glibc's environment variables, is left as it is
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def tune_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds, once per process; whether they are ours.

    False (and nothing changed) where the C library is not glibc, or the user set them.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if platform.libc_ver()[0] != "glibc" or any(k in os.environ for k in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
