"""The native small-batch step (`csrc/rwkv7_step.c`): built on first use, loaded with ctypes.

Built with the system C compiler into a per-user cache keyed by the source, the flags and the
CPU, so a cache shared between machines never runs code built for another CPU. Without a
compiler, or with RWKV_SWARM_NATIVE=0, `load()` returns None and `RWKV7.step` uses PyTorch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .state import RWKV7State

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "rwkv7_step.c"
CFLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno",
          "-std=c99"]
MAX_BATCH = 64  # rows; and at most MAX_WORK rows x parameters: beyond, batched GEMMs win
MAX_WORK = 25_000_000  # measured crossover (docs/kernels.md): C=256 L=4 near 16 rows,
# C=128 L=2 near 64
ALWAYS_ROWS = 2  # whatever the size: the native step is 2x faster at 1-2 rows even for C=768 L=12
LAYER_PTRS = 33  # keep in the order of the enum in rwkv7_step.c
LAYER_NAMES = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.x_r", "att.x_w",
               "att.x_k", "att.x_v", "att.x_a", "att.x_g", "att.w0", "att.w1", "att.w2",
               "att.a0", "att.a1", "att.a2", "att.v0", "att.v1", "att.v2", "att.g1", "att.g2",
               "att.k_k", "att.k_a", "att.r_k", "att.receptance.weight", "att.key.weight",
               "att.value.weight", "att.output.weight", "att.ln_x.weight", "att.ln_x.bias",
               "ffn.x_k", "ffn.key.weight", "ffn.value.weight")
GLOBAL_NAMES = ("blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias",
                "head.weight")
assert len(LAYER_NAMES) == LAYER_PTRS

_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_key() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _cache_dir() -> Path:
    root = os.environ.get("RWKV_SWARM_CACHE") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    return (base if os.environ.get("RWKV_SWARM_CACHE") else base / "rwkv-swarm") / "native"


def build() -> Path:
    """Compile the kernel if needed; return the shared library's path. Raises on failure."""
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join(CFLAGS).encode() + _cpu_key().encode()).hexdigest()[:16]
    target = _cache_dir() / key / "rwkv7_step.so"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # build, then rename atomically
        out = Path(tmp) / "rwkv7_step.so"
        subprocess.run([cc, *CFLAGS, "-o", str(out), str(SOURCE), "-lm"], check=True,
                       capture_output=True, timeout=120)
        os.replace(out, target)
    return target


def load() -> ctypes.CDLL | None:
    """The loaded library, or None when disabled or unbuildable (logged once)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("RWKV_SWARM_NATIVE", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("native RWKV-7 step unavailable, using PyTorch: %s", exc)
        return None
    fn = lib.rwkv7_step
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p] \
        + [ctypes.c_void_p] * 8
    _lib = lib
    return _lib


class NativeStep:
    """Runs `model`'s step through the C kernel, reading its parameters in place."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._params = list(model.parameters())
        self._ptrs_key: list[int] | None = None
        self._n_out = model.head.weight.shape[0]

    @staticmethod
    def supports(model: torch.nn.Module, batch: int) -> bool:
        p = model.head.weight
        fits = batch <= ALWAYS_ROWS or batch * model.n_params <= MAX_WORK
        return batch <= MAX_BATCH and fits \
            and p.device.type == "cpu" and p.dtype == torch.float32 and load() is not None

    def _pointers(self) -> None:
        key = [p.data_ptr() for p in self._params]  # in-place updates keep pointers valid
        if key == self._ptrs_key:
            return
        params = dict(self.model.named_parameters())
        if not all(p.is_contiguous() for p in params.values()):
            raise ValueError("native step needs contiguous parameters")
        cfg = self.model.config
        ptrs = []
        for i in range(cfg.n_layer):
            for name in LAYER_NAMES:
                t = params.get(f"blocks.{i}.{name}")
                ptrs.append(t.data_ptr() if t is not None else 0)  # layer 0 has no v0/v1/v2
        self._layer = (ctypes.c_void_p * len(ptrs))(*ptrs)
        self._glob = (ctypes.c_void_p * len(GLOBAL_NAMES))(
            *(params[n].data_ptr() for n in GLOBAL_NAMES))
        d = cfg.lora_dims
        dims = [cfg.n_embd, cfg.n_head, cfg.head_size, cfg.n_layer, cfg.ffn_dim, d["w"], d["a"],
                d["v"], d["g"], self.model.head.weight.shape[0]]
        self._dims = (ctypes.c_int * len(dims))(*dims)
        self._ptrs_key = key

    def __call__(self, h: torch.Tensor, state: RWKV7State) -> tuple[torch.Tensor, RWKV7State]:
        """h: (B, C) embedded input before ln0 (fp32). Returns (outputs (B, n_out), state)."""
        self._pointers()
        B = h.shape[0]
        h = h.contiguous()
        ins = [t.contiguous() for t in state.tensors()]
        new = RWKV7State(*(torch.empty_like(t) for t in ins))
        out = torch.empty(B, self._n_out)
        rc = _lib.rwkv7_step(B, self._dims, self._layer, self._glob, h.data_ptr(),
                             *(t.data_ptr() for t in ins), *(t.data_ptr() for t in new.tensors()),
                             out.data_ptr())
        if rc != 0:
            raise MemoryError("native RWKV-7 step could not allocate its scratch buffers")
        return out, new
