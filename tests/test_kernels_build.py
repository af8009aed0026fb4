"""The native kernels compile for every x86 level, not only for the CPU at hand: a machine
without AVX-512 (or without AVX) builds the same sources with `-march=native`, and a header
that only compiled with AVX-512 left such machines on the slower PyTorch path."""

from __future__ import annotations

import platform
import shutil
import subprocess

import pytest

from rwkv_swarm.kernels import native

CC = shutil.which("cc") or shutil.which("gcc")


@pytest.mark.skipif(CC is None or platform.machine() not in ("x86_64", "AMD64"),
                    reason="needs a C compiler for x86-64")
@pytest.mark.parametrize("level", ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"])
def test_the_native_sources_compile_at_every_x86_level(level, tmp_path):
    flags = [f for f in native.CFLAGS if not f.startswith("-march")]
    done = subprocess.run([CC, *flags, f"-march={level}", "-fopenmp", "-o",
                           str(tmp_path / "k.so"), *(str(native.CSRC / f)
                                                     for f in native.SOURCES), "-lm"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
