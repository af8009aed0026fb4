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

import torch

CHUNK = 16  # tokens per chunk: bounds e^{+-G} to e^{+-9.7} (decay >= e^{-0.6065} per token)


def wkv_step(
    S: torch.Tensor,
    r: torch.Tensor,
    logw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token. S: (B, H, N, N) float32; r, logw, k, v, a, b: (B, H, N). Returns (y, S')."""
    w = torch.exp(logw)
    # S' = S diag(w) + (S a) b^T + v k^T
    sa = torch.matmul(S, a.unsqueeze(-1))  # (B, H, N, 1)
    S = S * w.unsqueeze(-2) + sa * b.unsqueeze(-2) + v.unsqueeze(-1) * k.unsqueeze(-2)
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


def _chunk(
    S: torch.Tensor,
    r: torch.Tensor,
    logw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk. S: (BH, N_value, N_key) float32; inputs (BH, c, N). Returns (Y, S')."""
    c = r.shape[1]
    G = torch.cumsum(logw, dim=1)  # (BH, c, N) inclusive cumulative log-decay
    eG = torch.exp(G)
    ineG = torch.exp(-G)
    q = torch.cat([r * eG, a * torch.exp(G - logw)], dim=1)  # (BH, 2c, N): r-rows, a-rows
    tail = eG[:, -1:, :] * ineG  # (BH, c, N) = e^{G_c - G_j}
    kb = torch.cat([k, b], dim=1)  # (BH, 2c, N)
    M = torch.bmm(q, (kb * torch.cat([ineG, ineG], dim=1)).transpose(1, 2))  # [[rk,rb],[ak,ab]]
    incl = torch.ones(c, c, dtype=torch.bool, device=r.device).tril()
    mask = torch.cat([torch.cat([incl, incl], 1), torch.cat([incl.tril(-1)] * 2, 1)], 0)
    M = M.masked_fill(~mask, 0.0)  # r-rows see j <= i, a-rows see j < i
    qS = torch.bmm(q, S.transpose(1, 2))  # (BH, 2c, N_value): decayed r, a against S_0
    # (I - M_ab) U = (a e^{G_{i-1}}) S0^T + M_ak V
    eye = torch.eye(c, dtype=r.dtype, device=r.device)
    U = torch.linalg.solve_triangular(eye - M[:, c:, c:], torch.baddbmm(qS[:, c:], M[:, c:, :c], v),
                                      upper=False, unitriangular=True)
    vu = torch.cat([v, U], dim=1)  # (BH, 2c, N_value)
    # Y = (r e^{G_i}) S0^T + M_rk V + M_rb U
    Y = torch.baddbmm(qS[:, :c], M[:, :c], vu)
    # S_c = S_0 diag(e^{G_c}) + V^T (K e^{G_c - G_j}) + U^T (B e^{G_c - G_j})
    S = torch.baddbmm(S * eG[:, -1:, :], vu.transpose(1, 2), kb * torch.cat([tail, tail], dim=1))
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole sequence, chunk by chunk. S: (B, H, N, N); inputs (B, H, T, N). Returns (Y, S')."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    B, H, T, N = r.shape
    S = S.reshape(B * H, N, N)
    r, logw, k, v, a, b = (t.reshape(B * H, T, N) for t in (r, logw, k, v, a, b))
    ys = []
    for t0 in range(0, T, chunk):
        sl = slice(t0, min(t0 + chunk, T))
        y, S = _chunk(S, r[:, sl], logw[:, sl], k[:, sl], v[:, sl], a[:, sl], b[:, sl])
        ys.append(y)
    return torch.cat(ys, dim=1).view(B, H, T, N), S.view(B, H, N, N)
