"""glibc allocator settings: what tune_allocator changes, checked in fresh processes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# how many blocks glibc serves by mmap before and after one 16 MiB malloc (mallinfo2: glibc 2.33)
PROBE = """
import ctypes, sys
from rwkv_swarm.util.alloc import tune_allocator
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
tuned = tune_allocator() if sys.argv[1] == "tune" else None
before = libc.mallinfo2().hblks
block = libc.malloc(16 * 2**20)
print(tuned, libc.mallinfo2().hblks - before, tune_allocator() if tuned else "")
"""


def probe(mode: str, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_a_16_mib_block_is_mapped_by_default_and_comes_from_the_heap_once_tuned() -> None:
    assert probe("plain") == ["None", "1"]  # glibc's 128 KiB threshold: a fresh mapping
    assert probe("tune") == ["True", "0", "True"]  # below the fixed 32 MiB: heap memory


def test_a_users_own_malloc_settings_are_left_alone() -> None:
    assert probe("tune", MALLOC_TRIM_THRESHOLD_="1000000") == ["False", "1"]
