"""Native kernels of the batched forward (`csrc/rwkv7_seq.c`) and the measured choice of each
against its PyTorch form.

`wkv` runs the WKV recurrence token by token per (row, head); `low_rank` adds a population's
rank-r perturbation terms in one pass. Both read float32 CPU tensors in place. Whether they
run, and on how many threads, is measured per CPU and shape through paths.py (`choose`), with
the PyTorch form always a candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from . import native, paths
from .native import choose, threads_of

__all__ = ["choose", "low_rank", "memo_choose", "threads_of", "usable", "wkv"]


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels can take these tensors: float32 on the CPU, library built."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) \
        and native.load() is not None


def memo_choose(kind: str, sizes: Mapping[str, object],
                forms: Callable[[], tuple[Callable[[], object], Callable[[int], object]]]
                ) -> str:
    """`choose` for a forward kernel, remembered in this process by its sizes and PyTorch's
    thread count: a hot path asks once per call, and `forms` builds the measured tensors."""
    memo = paths.default_chooser().memo
    key = (kind, *sizes.values(), torch.get_num_threads())
    if key not in memo:
        memo[key] = choose(kind, sizes, *forms())
    return memo[key]


def _ptr(t: torch.Tensor) -> int:
    if not t.is_contiguous():
        raise ValueError("native kernels need contiguous tensors")
    return t.data_ptr()


def wkv(S: torch.Tensor, r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor,
        v: torch.Tensor, kk: torch.Tensor, a_lr: torch.Tensor, out: torch.Tensor, H: int, N: int,
        threads: int) -> torch.Tensor:
    """y (..., T, H*N) of S' = S diag(e^logw) + (S (-kk)) (kk a_lr)^T + v k^T, y = S' r.

    Inputs (..., T, H*N); S (..., H, N, N) with as many rows; the last state is written to
    `out` (which may be S).
    """
    T, C = r.shape[-2], r.shape[-1]
    rows = r.numel() // (T * C)
    if S.numel() != rows * H * N * N or out.numel() != S.numel() or C != H * N:
        raise ValueError(f"WKV shapes disagree: S {tuple(S.shape)}, r {tuple(r.shape)}")
    w = torch.exp(logw)  # vectorised here; one scalar expf per element cost the C loop more
    ins = [t.contiguous() for t in (r, w, k, v, kk, a_lr, S)]
    y = torch.empty_like(ins[0])
    rc = native.load().rwkv7_wkv(rows, T, H, N, *(_ptr(t) for t in ins), _ptr(out), _ptr(y),
                                 threads)
    if rc != 0:
        raise MemoryError("native WKV could not allocate its scratch buffers")
    return y


def low_rank(y: torch.Tensor, x: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
             sigma: float, threads: int) -> torch.Tensor:
    """y += s sigma (x left_p^T) right_p per pair p, in place; returns y.

    x (pairs, rows, in) and y (pairs, rows, out): each pair's rows are its + member's then its
    - member's. left (pairs, rank, in), right (pairs, rank, out).
    """
    pairs, rows, n_in = x.shape
    rank, n_out = left.shape[1], right.shape[2]
    if y.shape != (pairs, rows, n_out) or left.shape != (pairs, rank, n_in) \
            or right.shape != (pairs, rank, n_out) or rows % 2:
        raise ValueError(f"low-rank shapes disagree: x {tuple(x.shape)}, y {tuple(y.shape)}, "
                         f"left {tuple(left.shape)}, right {tuple(right.shape)}")
    x, left, right = x.contiguous(), left.contiguous(), right.contiguous()
    native.load().rwkv7_low_rank(pairs, rows, n_in, n_out, rank, _ptr(x), _ptr(left),
                                 _ptr(right), _ptr(y), sigma, threads)
    return y
