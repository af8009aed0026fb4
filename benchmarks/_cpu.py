"""The CPU a benchmark ran on: model name, usable CPUs and the SIMD flags that matter.

Figures from different CPUs are not comparable (a fast path tuned on one can lose on another),
so every benchmark prints this line and carries `cpu()` in its JSON last line.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

SIMD_FLAGS = {  # /proc/cpuinfo flags that tell each family apart
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16"),
    "AMX": ("amx_tile", "amx_bf16", "amx_int8", "amx_fp16"),
}


def cpu() -> dict:
    """{"model", "cpus" (usable by this process), "simd": {family: [flags present]}}."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not flags:
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux: the model from platform, no flags
        pass
    simd = {name: [f for f in names if f in flags] for name, names in SIMD_FLAGS.items()}
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return {"model": model, "cpus": cpus, "simd": simd}


def cpu_line(info: dict | None = None) -> str:
    """One printable line: 'cpu: MODEL, N CPUs; AVX2: avx2; AVX-512: ...; AMX: no'."""
    info = info or cpu()
    return (f"cpu: {info['model']}, {info['cpus']} CPUs; "
            + "; ".join(f"{k}: {' '.join(v) or 'no'}" for k, v in info["simd"].items()))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (from /proc; 10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
