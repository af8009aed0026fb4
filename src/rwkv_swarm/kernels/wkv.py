"""The RWKV-7 WKV recurrence: one-token step and a chunked sequence form with equal results.

Per head the state S (N_value x N_key, BlinkDL layout) evolves as a generalized delta rule

    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,      y_t = S_t r_t

with a = -kk (removal key) and b = kk * a_lr. Inside a chunk of c tokens, with the cumulative
log-decay G_i = sum_{j<=i} log w_j and u_i = S_{i-1} a_i, the chunk is three small matmuls and a
unit-lower-triangular solve (see docs/kernels.md):

    U   = (I - M_ab)^-1 ((a_i e^{G_{i-1}}) S_0^T + M_ak V)
    Y   = (r_i e^{G_i}) S_0^T + M_rk V + M_rb U
    S_c = S_0 diag(e^{G_c}) + V^T (K e^{G_c - G_j}) + U^T (B e^{G_c - G_j})

    M_xy[i, j] = sum_d x_{i,d} y_{j,d} e^{G'_{i,d} - G_{j,d}}   (masked to j <= i, or j < i)

Memory is O(T * N + c^2) per head, never O(T^2). Decay is bounded below by e^{-0.6065} per token,
so over a chunk of 16 the factored exponentials stay within e^{+-9.7}: safe in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import native_ops
from .config import DECAY_SCALE, ROW_BLOCK

CHUNK = 16  # tokens per chunk: bounds e^{+-G} to e^{+-9.7} (decay >= e^{-0.6065} per token)


def wkv_step(
    S: torch.Tensor,
    r: torch.Tensor,
    logw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token. S: (B, H, N, N) float32; r, logw, k, v, a, b: (B, H, N). Returns (y, S').

    S' is written into `out` when given (it may be S itself).
    """
    w = torch.exp(logw)
    # S' = S diag(w) + (S a) b^T + v k^T
    sa = torch.matmul(S, a.unsqueeze(-1))  # (B, H, N, 1), read before S may be overwritten
    S = torch.mul(S, w.unsqueeze(-2), out=out)
    S.addcmul_(sa, b.unsqueeze(-2)).addcmul_(v.unsqueeze(-1), k.unsqueeze(-2))
    y = torch.matmul(S, r.unsqueeze(-1)).squeeze(-1)  # (B, H, N)
    return y, S


def wkv_loop(
    S: torch.Tensor,
    r: torch.Tensor,
    logw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token reference. S: (B, H, N, N); inputs (B, H, T, N). Returns (Y, S')."""
    ys = []
    for t in range(r.shape[2]):
        y, S = wkv_step(S, r[:, :, t], logw[:, :, t], k[:, :, t], v[:, :, t], a[:, :, t],
                        b[:, :, t])
        ys.append(y)
    return torch.stack(ys, dim=2), S


_MASKS: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _masks(c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the 2c x 2c pair matrix, identity c x c): r-rows see j <= i, a-rows j < i."""
    key = (c, str(device))
    if key not in _MASKS:
        incl = torch.ones(c, c, dtype=torch.bool, device=device).tril()
        mask = torch.cat([torch.cat([incl, incl], 1), torch.cat([incl.tril(-1)] * 2, 1)], 0)
        _MASKS[key] = (~mask, torch.eye(c, device=device))
    return _MASKS[key]


def _chunk(
    S: torch.Tensor,
    r: torch.Tensor,
    logw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk. S: (BH, N_value, N_key) float32; inputs (BH, c, N). Returns (Y, S').

    S' is written into `out` when given (it may be S itself).
    """
    BH, c, N = r.shape
    G = torch.cumsum(logw, dim=1)  # (BH, c, N) inclusive cumulative log-decay
    eG = torch.exp(G)
    ineG = torch.exp(G.neg_())
    q = r.new_empty(BH, 2 * c, N)  # decayed r-rows and a-rows
    torch.mul(r, eG, out=q[:, :c])
    torch.mul(a, eG, out=q[:, c:]).div_(torch.exp(logw))  # a_i e^{G_{i-1}}
    kb = r.new_empty(BH, 2 * c, N)  # k-cols and b-cols, scaled by e^{-G_j}
    torch.mul(k, ineG, out=kb[:, :c])
    torch.mul(b, ineG, out=kb[:, c:])
    not_seen, eye = _masks(c, r.device)
    M = torch.bmm(q, kb.transpose(1, 2)).masked_fill_(not_seen, 0.0)  # [[rk, rb], [ak, ab]]
    qS = torch.bmm(q, S.transpose(1, 2))  # (BH, 2c, N_value): decayed r, a against S_0
    vu = r.new_empty(BH, 2 * c, N)
    vu[:, :c] = v
    # (I - M_ab) U = (a e^{G_{i-1}}) S0^T + M_ak V
    vu[:, c:] = torch.linalg.solve_triangular(eye - M[:, c:, c:],
                                              torch.baddbmm(qS[:, c:], M[:, c:, :c], v),
                                              upper=False, unitriangular=True)
    # Y = (r e^{G_i}) S0^T + M_rk V + M_rb U
    Y = torch.baddbmm(qS[:, :c], M[:, :c], vu)
    # S_c = S_0 diag(e^{G_c}) + V^T (K e^{G_c - G_j}) + U^T (B e^{G_c - G_j})
    eGc = eG[:, -1:, :]
    S = torch.baddbmm(S * eGc, vu.transpose(1, 2), kb.mul_(eGc), out=out)
    return Y, S


def wkv_chunked(
    S: torch.Tensor,
    r: torch.Tensor,
    logw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    chunk: int = CHUNK,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole sequence, chunk by chunk. S: (B, H, N, N); inputs (B, H, T, N). Returns (Y, S').

    The final state is written into `out` (B, H, N, N) when given (it may be S itself).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    B, H, T, N = r.shape
    S = S.reshape(B * H, N, N)
    dest = None if out is None else out.view(B * H, N, N)
    r, logw, k, v, a, b = (t.reshape(B * H, T, N) for t in (r, logw, k, v, a, b))
    Y = r.new_empty(B * H, T, N)
    for t0 in range(0, T, chunk):
        sl = slice(t0, min(t0 + chunk, T))
        last = t0 + chunk >= T
        Y[:, sl], S = _chunk(S, r[:, sl], logw[:, sl], k[:, sl], v[:, sl], a[:, sl], b[:, sl],
                             out=dest if last else None)
    return Y.view(B, H, T, N), S.view(B, H, N, N)


def wkv_heads(S: torch.Tensor, r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor, kk: torch.Tensor, a_lr: torch.Tensor, H: int, N: int,
              out: torch.Tensor, native: bool = False) -> torch.Tensor:
    """The recurrence on (..., T, C) projections with a = -kk, b = kk a_lr; returns y (..., T, C).

    S (..., H, N, N); the last state is written into `out`. With `native`, float32 CPU tensors
    run `native_ops.wkv` where it was measured faster than the PyTorch form (`wkv_path`).
    """
    if native and native_ops.usable(S, r, logw, k, v, kk, a_lr, out):
        path = wkv_path(H, N, r.shape[-2])
        if path != "torch":
            return native_ops.wkv(S, r, logw, k, v, kk, a_lr, out, H, N,
                                  native_ops.threads_of(path))
    return wkv_torch(S, r, logw, k, v, -kk, kk * a_lr, H, N, out)


def wkv_torch(S, r, logw, k, v, a, b, H: int, N: int, out: torch.Tensor) -> torch.Tensor:
    """The PyTorch form: reshape (..., T, C) inputs to heads, run the step or the chunked
    recurrence into `out`, reshape y back."""
    lead, T = r.shape[:-2], r.shape[-2]
    batch = math.prod(lead)

    def heads(t: torch.Tensor) -> torch.Tensor:  # (..., T, C) -> (B, H, T, N)
        return t.float().reshape(batch, T, H, N).transpose(1, 2)

    S, out = S.reshape(batch, H, N, N), out.view(batch, H, N, N)
    if T == 1:
        y, _ = wkv_step(S, *(heads(t)[:, :, 0] for t in (r, logw, k, v, a, b)), out=out)
        y = y.unsqueeze(2)
    else:
        y, _ = wkv_chunked(S, *(heads(t) for t in (r, logw, k, v, a, b)), chunk=CHUNK, out=out)
    return y.transpose(1, 2).reshape(*lead, T, H * N)


def wkv_path(H: int, N: int, T: int) -> str:
    """"torch" or "native:<threads>" for the recurrence of H heads of N over T tokens.

    Measured once per CPU on a CPU forward block (`_wkv_forms`) at T = 1 (steps) or T = CHUNK
    (sequences), and cached (paths.py).
    """
    tokens = 1 if T == 1 else CHUNK
    return native_ops.memo_choose("wkv", {"H": H, "N": N, "tokens": tokens},
                                  lambda: _wkv_forms(H, N, tokens))


def _wkv_forms(H: int, N: int, T: int):
    """The PyTorch and native forms on a synthetic block of ROW_BLOCK // T rows, or fewer where
    their states would pass 16 MB (2048 rows of C=768 states are 400 MB)."""
    g = torch.Generator().manual_seed(0)
    rows, C = max(1, min(ROW_BLOCK // T, (4 << 20) // (H * N * N))), H * N

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    r, k, v = rnd(rows, T, C), rnd(rows, T, C), rnd(rows, T, C)
    logw = -DECAY_SCALE * torch.sigmoid(rnd(rows, T, C))
    kk = F.normalize(rnd(rows, T, H, N), dim=-1).view(rows, T, C)
    a_lr = torch.sigmoid(rnd(rows, T, C))
    S, out = rnd(rows, H, N, N) * 0.1, torch.empty(rows, H, N, N)
    return (lambda: wkv_torch(S, r, logw, k, v, -kk, kk * a_lr, H, N, out),
            lambda n: native_ops.wkv(S, r, logw, k, v, kk, a_lr, out, H, N, n))
