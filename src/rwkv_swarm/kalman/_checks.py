"""Input validation shared by the filters, beliefs and fusion: every error names the value."""

from __future__ import annotations

import math

import numpy as np

# Relative tolerances for "symmetric" and "positive semi-definite": a Joseph-form update leaves
# asymmetry and negative eigenvalues at rounding level, which must not be rejected.
SYMMETRY_RTOL = 1e-8
PSD_RTOL = 1e-10


def finite_scalar(name: str, value: object) -> float:
    """`value` as a finite float, or ValueError naming `name`."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def nonnegative_scalar(name: str, value: object) -> float:
    v = finite_scalar(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def vector(name: str, value: object, n: int | None = None) -> np.ndarray:
    """A finite float64 vector of shape (n,); a scalar counts as (1,), a column (n, 1) as (n,)."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        a = a.reshape(1)
    elif a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be a vector, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite values")
    return a


def matrix(name: str, value: object, shape: tuple[int, int]) -> np.ndarray:
    """A finite float64 matrix of exactly `shape` (a scalar is accepted for (1, 1))."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0 and shape == (1, 1):
        a = a.reshape(1, 1)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite values")
    return a


def covariance(name: str, value: object, n: int) -> np.ndarray:
    """A finite, symmetric, positive semi-definite (n, n) float64 matrix."""
    a = matrix(name, value, (n, n))
    # tolerances relative to the matrix's own scale, so tiny covariances are judged fairly too
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    asym = float(np.max(np.abs(a - a.T)))
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} is not symmetric (max |{name} - {name}'| = {asym:.3g})")
    low = float(np.linalg.eigvalsh(0.5 * (a + a.T))[0])
    if low < -PSD_RTOL * scale:
        raise ValueError(f"{name} is not positive semi-definite (min eigenvalue {low:.3g})")
    return a


def variances(name: str, value: object, n: int | None = None) -> np.ndarray:
    """A finite (n,) float64 vector of variances (all >= 0): a diagonal covariance."""
    a = vector(name, value, n)
    if np.any(a < 0):
        raise ValueError(f"{name} is not positive semi-definite (min variance {a.min():.3g})")
    return a
