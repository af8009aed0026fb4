"""Diagonal Kalman filter: d independent scalar filters in one vectorised torch call.

The equations are `filter.py`'s with every matrix diagonal, so each coordinate i runs
x_i = F_i x_i, P_i = F_i^2 P_i + Q_i, then y_i = z_i - H_i x_i, S_i = H_i^2 P_i + R_i, ...
Memory is O(d): a handful of (d,) vectors, never a (d, d) matrix; d = 10^6 is one call.
F, Q, H, R may each be a float (shared by all coordinates) or a (d,) vector.
Inputs may be numpy arrays or torch tensors; results are torch tensors of x's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

Coef = float | torch.Tensor
ArrayLike = torch.Tensor | np.ndarray

_FLOATS = (torch.float32, torch.float64)
_LOG_2PI = math.log(2.0 * math.pi)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of t is finite."""
    # a sum is NaN/inf if any entry is, and costs one reduction instead of a mask pass; only
    # when it is not finite (a bad entry, or an overflow of huge finite ones) look closer
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def as_state_vector(name: str, value: object) -> torch.Tensor:
    """`value` as a finite 1-D float32/float64 tensor (integers become float64)."""
    t = torch.as_tensor(value)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    elif t.dtype not in _FLOATS:
        raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be a vector (d,), got shape {tuple(t.shape)}")
    if not all_finite(t):
        raise ValueError(f"{name} has non-finite values")
    return t


def as_coef(name: str, value: object, like: torch.Tensor, *, nonneg: bool = False) -> Coef:
    """A float, or a finite (d,) tensor with `like`'s dtype, device and length."""
    if isinstance(value, (int, float)) or (hasattr(value, "ndim") and value.ndim == 0):
        v = float(value)  # type: ignore[arg-type]
        if not math.isfinite(v) or (nonneg and v < 0):
            raise ValueError(f"{name} must be finite{' and >= 0' if nonneg else ''}, got {v}")
        return v
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(f"{name} must be a float or have shape {tuple(like.shape)}, "
                         f"got {tuple(t.shape)}")
    if not all_finite(t):
        raise ValueError(f"{name} has non-finite values")
    if nonneg and bool((t < 0).any()):
        raise ValueError(f"{name} is not positive semi-definite (min {float(t.min()):.3g})")
    return t


def log_likelihood(y: torch.Tensor, S: torch.Tensor, nis: float) -> float:
    """sum_i log N(y_i; 0, S_i) = -(nis + sum_i log S_i + d log 2pi) / 2."""
    log_det = float(torch.log(S).sum(dtype=torch.float64))
    return -0.5 * (nis + log_det + y.shape[0] * _LOG_2PI)


@dataclass(frozen=True)
class DiagonalUpdate:
    """Posterior of a diagonal update. x, P, y, S, K are (d,); nis = sum_i y_i^2/S_i."""

    x: torch.Tensor
    P: torch.Tensor
    y: torch.Tensor
    S: torch.Tensor
    K: torch.Tensor
    nis: float

    @property
    def log_likelihood(self) -> float:
        """Log-likelihood of the measurement, summed over coordinates (computed on demand:
        it costs a pass of logarithms over d that the beliefs do not need)."""
        return log_likelihood(self.y, self.S, self.nis)


def diag_predict(
    x: ArrayLike, P: ArrayLike, F: Coef = 1.0, Q: Coef = 0.0, u: ArrayLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior (x_prior, P_prior), each (d,): x = Fx + u, P = F^2 P + Q."""
    x = as_state_vector("x", x)
    P = as_coef("P", P, x, nonneg=True)
    F = as_coef("F", F, x)
    Q = as_coef("Q", Q, x, nonneg=True)
    # x = Fx + Bu, with B = I
    x_prior = F * x
    if u is not None:
        x_prior = x_prior + as_coef("u", u, x)
    # P = FPF' + Q, elementwise
    P_prior = F * F * P + Q
    if not isinstance(P_prior, torch.Tensor):
        P_prior = torch.full_like(x, P_prior)
    return x_prior, P_prior


def diag_update(x: ArrayLike, P: ArrayLike, z: ArrayLike, R: Coef, H: Coef = 1.0) -> DiagonalUpdate:
    """Posterior after measuring z (d,) = Hx + v, v ~ N(0, R) independently per coordinate.

    Raises ValueError where S = H^2 P + R is not positive (both P and R zero there).
    """
    x = as_state_vector("x", x)
    P = torch.as_tensor(as_coef("P", P, x, nonneg=True), dtype=x.dtype,
                        device=x.device).expand_as(x)
    z = as_coef("z", z, x)
    R = as_coef("R", R, x, nonneg=True)
    H = as_coef("H", H, x)
    # y = z - Hx
    y = z - H * x
    # S = HPH' + R
    S = H * H * P + R
    bad = int((S <= 0).sum())
    if bad:
        raise ValueError(f"S = H^2 P + R is not positive for {bad} coordinates (P and R both 0)")
    # K = PH'S^-1
    K = P * H / S
    # x = x + Ky
    x_post = x + K * y
    # P = (I-KH)P(I-KH)' + KRK'
    one_kh = 1.0 - K * H
    P_post = one_kh * one_kh * P + K * K * R
    # nis = y'S^-1 y, a sum over coordinates
    nis = float((y * y / S).sum(dtype=torch.float64))
    return DiagonalUpdate(x_post, P_post, y, S, K, nis)


class DiagonalKalmanFilter:
    """d independent scalar Kalman filters with filterpy-style attributes.

    x, P (d,) tensors; F, Q, H, R floats or (d,) tensors. Defaults: x = 0, P = Q = R = 1,
    F = H = 1. After `update`: y, S, K (d,), nis and log_likelihood (sums over coordinates).
    """

    def __init__(self, dim_x: int, dtype: torch.dtype = torch.float64) -> None:
        if dim_x < 1:
            raise ValueError(f"dim_x must be 1 or greater, got {dim_x}")
        if dtype not in _FLOATS:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.dim_x = dim_x
        self.x = torch.zeros(dim_x, dtype=dtype)
        self.P = torch.ones(dim_x, dtype=dtype)
        self.F: Coef = 1.0
        self.Q: Coef = 1.0
        self.H: Coef = 1.0
        self.R: Coef = 1.0
        self.y = torch.zeros(dim_x, dtype=dtype)
        self.S = torch.zeros(dim_x, dtype=dtype)
        self.K = torch.zeros(dim_x, dtype=dtype)
        self.nis = math.nan

    @property
    def log_likelihood(self) -> float:
        """Log-likelihood of the last measurement, summed over coordinates."""
        if math.isnan(self.nis):  # no update yet
            return math.nan
        return log_likelihood(self.y, self.S, self.nis)

    def predict(self, u: ArrayLike | None = None) -> None:
        """x = Fx + u, P = F^2 P + Q."""
        self.x, self.P = diag_predict(self.x, self.P, self.F, self.Q, u)

    def update(self, z: ArrayLike, R: Coef | None = None) -> None:
        """Correct with z (d,); R overrides self.R for this call only."""
        r = diag_update(self.x, self.P, z, self.R if R is None else R, self.H)
        self.x, self.P, self.y, self.S, self.K = r.x, r.P, r.y, r.S, r.K
        self.nis = r.nis
