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


LEVELS = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
needs_cc = pytest.mark.skipif(CC is None or platform.machine() not in ("x86_64", "AMD64"),
                              reason="needs a C compiler for x86-64")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """One compiler process per level, all started at once (each builds the sources alone, so
    the cores share them): level -> (process, its stderr file)."""
    out = tmp_path_factory.mktemp("builds")
    flags = [f for f in native.CFLAGS if not f.startswith("-march")]
    started = {}
    for level in LEVELS:
        with (out / f"{level}.err").open("w") as err:
            started[level] = (subprocess.Popen(
                [CC, *flags, f"-march={level}", "-fopenmp", "-o", str(out / f"{level}.so"),
                 *(str(native.CSRC / f) for f in native.SOURCES), "-lm"],
                stdout=subprocess.DEVNULL, stderr=err), out / f"{level}.err")
    yield started
    for proc, _ in started.values():
        proc.kill()
        proc.wait()


@needs_cc
@pytest.mark.parametrize("level", LEVELS)
def test_the_native_sources_compile_at_every_x86_level(level, builds):
    proc, err = builds[level]
    assert proc.wait(timeout=300) == 0, err.read_text()[-2000:]
