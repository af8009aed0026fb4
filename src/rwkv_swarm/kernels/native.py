"""The native library (`csrc/`): the step, here, and the forward kernels (native_ops.py).

Built on first use with the system C compiler into a per-user cache keyed by the sources, the
flags and the CPU, so a cache shared between machines never runs code built for another CPU.
Without a compiler, or with RWKV_SWARM_NATIVE=0, `load()` returns None and PyTorch runs.

Whether a step runs natively, and on how many threads, is measured per CPU, model and batch
size (`step_path`, through paths.py): PyTorch is always a candidate, so the choice is never
slower than the path it replaces, as far as the measurement can tell.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from . import paths
from .state import RWKV7State

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
# one library; the headers are part of its key
SOURCES = ("rwkv7_step.c", "rwkv7_seq.c", "rwkv7_rows.c", "rwkv7_cartpole.c")
CFLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-std=gnu11"]
# OpenMP teams on PyTorch's own libgomp (csrc/team.h); without it, one thread per call
OPENMP = (["-fopenmp"], ["-fopenmp-simd"])
MAX_BATCH = 64  # rows: the step kernel reads each weight row once per row group up to here
MAX_THREADS = 16  # team sizes tried: 1, 2, 4, ... up to the usable CPUs and this
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


def build() -> Path:
    """Compile the kernel if needed; return the shared library's path. Raises on failure."""
    src = b"".join(f.read_bytes() for f in sorted(CSRC.glob("*.[ch]")))
    key = hashlib.sha256(src + " ".join(CFLAGS).encode() + paths.cpu_identity().encode())
    target = paths.cache_root() / "native" / key.hexdigest()[:16] / "rwkv7.so"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # build, then rename atomically
        out = Path(tmp) / "rwkv7.so"
        for i, extra in enumerate(OPENMP):
            try:
                subprocess.run([cc, *CFLAGS, *extra, "-o", str(out),
                                *(str(CSRC / f) for f in SOURCES), "-lm"],
                               check=True, capture_output=True, timeout=120)
                break
            except subprocess.CalledProcessError:
                if i == len(OPENMP) - 1:
                    raise
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
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    signatures = {"rwkv7_step": [i32, ptr, ptr, ptr] + [ptr] * 8 + [i32],
                  "rwkv7_wkv": [i32] * 4 + [ptr] * 9 + [i32],
                  "rwkv7_low_rank": [i32] * 5 + [ptr] * 4 + [ctypes.c_float, i32],
                  "rwkv7_rows": [i32] + [ptr] * 6 + [ctypes.c_float] + [ptr] * 8 + [i32],
                  "rwkv7_cartpole_run": [ptr, i32, i32] + [ptr] * 5 + [ctypes.c_float]}
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, argtypes
    _lib = lib
    return _lib


class NativeStep:
    """Runs `model`'s step through the C kernel, reading its parameters in place."""

    def __init__(self, model: torch.nn.Module):
        if load() is None:
            raise RuntimeError("the native RWKV-7 kernel is not available (see the log)")
        self.model = model
        self._params = list(model.parameters())
        self._ptrs_key: list[int] | None = None
        self._n_out = model.head.weight.shape[0]

    @staticmethod
    def available(model: torch.nn.Module) -> bool:
        """Whether the kernel can run this model: built, and fp32 parameters on the CPU."""
        p = model.head.weight
        return p.device.type == "cpu" and p.dtype == torch.float32 and load() is not None

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

    def __call__(self, h: torch.Tensor, state: RWKV7State, threads: int = 1
                 ) -> tuple[torch.Tensor, RWKV7State]:
        """h: (B, C) embedded input before ln0 (fp32). Returns (outputs (B, n_out), state)."""
        self._pointers()
        B = h.shape[0]
        h = h.contiguous()
        ins = [t.contiguous() for t in state.tensors()]
        new = RWKV7State(*(torch.empty_like(t) for t in ins))
        out = torch.empty(B, self._n_out)
        rc = _lib.rwkv7_step(B, self._dims, self._layer, self._glob, h.data_ptr(),
                             *(t.data_ptr() for t in ins), *(t.data_ptr() for t in new.tensors()),
                             out.data_ptr(), threads)
        if rc != 0:
            raise MemoryError("native RWKV-7 step could not allocate its scratch buffers")
        return out, new


def thread_counts() -> list[int]:
    """Team sizes worth measuring: powers of two up to the usable CPUs, PyTorch's thread count
    (a process told to use one thread, as a swarm worker may be, gets one) and MAX_THREADS."""
    top = min(paths.usable_cpus(), torch.get_num_threads(), MAX_THREADS)
    return [n for n in (1, 2, 4, 8, 16) if n <= top]


def choose(kind: str, sizes: Mapping[str, object], torch_form: Callable[[], object],
           native_form: Callable[[int], object]) -> str:
    """"torch" or "native:<threads>" for this kind of kernel at these sizes (measured once)."""
    cands: dict[str, Callable[[], object]] = {"torch": torch_form}
    for n in thread_counts():
        cands[f"native:{n}"] = lambda n=n: native_form(n)
    sizes = {**sizes, "torch_threads": torch.get_num_threads()}
    return paths.default_chooser().choose(kind, sizes, cands)


def threads_of(path: str) -> int:
    """The team size of a "native:<threads>" path; 0 for "torch"."""
    return int(path.partition(":")[2] or 0)


def step_path(model: torch.nn.Module, batch: int) -> str:
    """"torch", "native:<threads>" (the step kernel) or "rows:<threads>" (the row kernel,
    native_rows.py) for a CPU step of `batch` rows of `model`.

    Measured once per CPU, model shape and batch bucket (the next power of two, which is what
    runs in the measurement) and cached on disk; the step kernel is a candidate up to
    MAX_BATCH rows, the row kernel at any batch.
    """
    bucket = 1 << (batch - 1).bit_length()
    if not NativeStep.available(model):
        return "torch"
    cfg = model.config
    x = (torch.zeros(bucket, dtype=torch.long) if cfg.token_mode
         else torch.zeros(bucket, cfg.input_dim))
    state = model.zero_state(bucket)  # each candidate steps a zero state of the bucket's size
    cands: dict[str, Callable[[], object]] = {"torch": lambda: model.step_torch(x, state)}
    for n in thread_counts():
        if bucket <= MAX_BATCH:
            cands[f"native:{n}"] = lambda n=n: model.step_native(x, state, n)
    for n in thread_counts():
        cands[f"rows:{n}"] = lambda n=n: model.step_rows_native(x, state, n)
    sizes = {**cfg.to_dict(), "batch": bucket, "torch_threads": torch.get_num_threads(),
             "kernels": "step,rows"}  # a choice made before the row kernel is measured again
    choice = paths.default_chooser().choose("step", sizes, cands)
    if not choice.startswith("rows"):
        model._rows = None  # the row kernel's packed weights (a copy) only where it runs
    return choice


def embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The step's input before ln0: token embedding or the encoder (B, C)."""
    if model.config.token_mode:
        return F.embedding(x, model.emb.weight)
    return F.linear(x, model.encoder.weight, model.encoder.bias)
