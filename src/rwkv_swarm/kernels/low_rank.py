"""The low-rank terms of a population's matrices, s sigma (x left) right^T per antithetic pair,
in PyTorch's two forms, and the measured choice between them and the native kernel."""

from __future__ import annotations

import torch

from . import native_ops, paths
from .config import ROW_BLOCK

SMALL_RANK = 4  # up to this rank, low-rank terms run as rank-1 elementwise passes


def low_rank_torch(out: torch.Tensor, rows: torch.Tensor, left: torch.Tensor,
                   right: torch.Tensor, sign: torch.Tensor, form: str | None = None) -> None:
    """out (P/2, 2M, n) += s sigma (rows left) right^T in place, per pair; rows (P/2, 2M, m),
    left (P/2, m, r), right (P/2, n, r), sign (1, 2, 1, 1) = [sigma, -sigma].

    `form` "bmm": two batched GEMMs; "rank1": per rank, a multiply-sum and an addcmul. By
    default rank1 up to SMALL_RANK: MKL's batched GEMM with an inner size of 1 was 5-8x
    slower on these shapes (docs/benchmarks.md); CUDA devices measure it (cuda_low_rank_form).
    """
    P2, r = left.shape[0], left.shape[-1]
    if (form or ("bmm" if r > SMALL_RANK else "rank1")) == "bmm":
        xr = torch.bmm(rows, left)  # (P/2, 2M, r)
        xr = (xr.view(P2, 2, -1, r) * sign).view(P2, -1, r)
        out.baddbmm_(xr, right.transpose(1, 2))
        return
    for i in range(r):
        xr = (rows * left[:, None, :, i]).sum(-1)  # (P/2, 2M)
        xr = (xr.view(P2, 2, -1) * sign[..., 0]).view(P2, -1, 1)
        out.addcmul_(xr, right[:, None, :, i])


def cuda_low_rank_form(shape: torch.Size, n_out: int, rank: int, device: torch.device) -> str:
    """"rank1" or "bmm" for the low-rank terms of rows of `shape` (P/2, 2M, n_in) on a CUDA
    device: measured once per device and shape, every call waiting for the device."""
    P2, rows, n_in = shape
    chooser = paths.default_chooser()
    key = ("low_rank_cuda", P2, rows, n_in, n_out, rank, str(device))
    if key not in chooser.memo:
        x = torch.randn(P2, rows, n_in, device=device)
        y = torch.zeros(P2, rows, n_out, device=device)
        left = torch.randn(P2, n_in, rank, device=device)
        right = torch.randn(P2, n_out, rank, device=device)
        sign = torch.tensor([0.1, -0.1], device=device).view(1, 2, 1, 1)
        cands = {form: lambda form=form: (low_rank_torch(y, x, left, right, sign, form),
                                          torch.cuda.synchronize(device))
                 for form in ("rank1", "bmm")}
        sizes = {"pairs": P2, "rows": rows, "in": n_in, "out": n_out, "rank": rank,
                 "device": torch.cuda.get_device_name(device)}
        chooser.memo[key] = chooser.choose("low_rank_cuda", sizes, cands)
    return chooser.memo[key]


def low_rank_path(n_in: int, n_out: int, rank: int, rows: int) -> str:
    """"torch" or "native:<threads>" for the low-rank terms of an (n_out x n_in) target with
    `rows` activation rows per pair; measured once per CPU on a ROW_BLOCK-row block."""
    rows = 1 << (rows - 1).bit_length()
    return native_ops.memo_choose("low_rank",
                                  {"in": n_in, "out": n_out, "rank": rank, "rows": rows},
                                  lambda: _low_rank_forms(n_in, n_out, rank, rows))


def _low_rank_forms(n_in: int, n_out: int, rank: int, rows: int):
    """The PyTorch and native forms on a synthetic block of ROW_BLOCK rows."""
    g = torch.Generator().manual_seed(0)
    pairs = max(1, ROW_BLOCK // rows)
    x, y = torch.randn(pairs, rows, n_in, generator=g), torch.zeros(pairs, rows, n_out)
    left, right = torch.randn(pairs, n_in, rank), torch.randn(pairs, n_out, rank)
    lt, rt = left.transpose(1, 2).contiguous(), right.transpose(1, 2).contiguous()
    sign = torch.tensor([0.1, -0.1]).view(1, 2, 1, 1)
    return (lambda: low_rank_torch(y, x, left, right, sign),
            lambda n: native_ops.low_rank(y, x, lt, rt, 0.1, n))
