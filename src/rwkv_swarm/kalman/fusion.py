"""Fusing Gaussian beliefs about the same quantity (neighbours, the coordinator).

Information form (independent errors):   P^-1 = sum_i P_i^-1,      P^-1 x = sum_i P_i^-1 x_i
Covariance intersection (unknown cross-correlation, e.g. gossip that may echo itself):
                                         P^-1 = sum_i w_i P_i^-1,  P^-1 x = sum_i w_i P_i^-1 x_i
with w on the simplex chosen to minimise tr(P) or log det(P). Both objectives are convex in w.
Two beliefs: golden-section search on w_1 in [0, 1]. More: start from the fast-CI weights
w_i ~ 1/tr(P_i) and run pairwise golden-section sweeps (move weight between two beliefs at a
time, keeping the sum 1) until an entire sweep improves the objective by less than 1e-12.
All functions return new Gaussians; inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Literal

import numpy as np

from .gaussian import Gaussian

Criterion = Literal["trace", "logdet"]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
_OMEGA_TOL = 1e-10
_MAX_SWEEPS = 50


def _validated(beliefs: Sequence[Gaussian]) -> list[Gaussian]:
    bs = list(beliefs)
    if not bs:
        raise ValueError("beliefs is empty: need at least one Gaussian")
    for i, b in enumerate(bs):
        if not isinstance(b, Gaussian):
            raise ValueError(f"beliefs[{i}] must be a Gaussian, got {type(b).__name__}")
        if b.dim != bs[0].dim:
            raise ValueError(f"beliefs[{i}] has dimension {b.dim}, expected {bs[0].dim}")
    return bs


def _information(bs: list[Gaussian]) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Per belief the information matrix P_i^-1 (or its diagonal) and vector P_i^-1 x_i."""
    diagonal = all(b.is_diagonal for b in bs)
    infos, vecs = [], []
    for i, b in enumerate(bs):
        if diagonal:
            if np.any(b.cov <= 0):
                raise ValueError(f"beliefs[{i}].cov has a zero variance: need positive definite")
            info = 1.0 / b.cov
            infos.append(info)
            vecs.append(info * b.mean)
            continue
        P = b.full_cov()
        try:
            np.linalg.cholesky(P)
        except np.linalg.LinAlgError:
            raise ValueError(f"beliefs[{i}].cov is singular: need positive definite") from None
        info = np.linalg.inv(P)
        info = 0.5 * (info + info.T)
        infos.append(info)
        vecs.append(info @ b.mean)
    return infos, vecs, diagonal


def _from_information(info: np.ndarray, vec: np.ndarray, diagonal: bool) -> Gaussian:
    if diagonal:
        # P = I^-1, x = P i
        return Gaussian(vec / info, 1.0 / info)
    P = np.linalg.inv(info)
    # symmetrise: inv() leaves rounding-level asymmetry that later Cholesky factorisations dislike
    return Gaussian(np.linalg.solve(info, vec), 0.5 * (P + P.T))


def fuse_information(beliefs: Sequence[Gaussian]) -> Gaussian:
    """Product of independent Gaussian beliefs: the batch least-squares posterior.

    P = (sum_i P_i^-1)^-1, x = P sum_i P_i^-1 x_i. Diagonal if every input is diagonal.
    """
    infos, vecs, diagonal = _information(_validated(beliefs))
    return _from_information(sum(infos), sum(vecs), diagonal)


def _objective(criterion: Criterion, diagonal: bool) -> Callable[[np.ndarray], float]:
    """f(M) for the fused information M: tr(M^-1) or log det(M^-1)."""
    if criterion == "trace":
        if diagonal:
            return lambda M: float(np.sum(1.0 / M))
        return lambda M: float(np.trace(np.linalg.inv(M)))
    if criterion == "logdet":
        if diagonal:
            return lambda M: -float(np.sum(np.log(M)))
        return lambda M: -float(np.linalg.slogdet(M)[1])
    raise ValueError(f"criterion must be 'trace' or 'logdet', got {criterion!r}")


def _golden_min(f: Callable[[float], float], lo: float, hi: float) -> float:
    """argmin of a unimodal f on [lo, hi] to _OMEGA_TOL, endpoints included."""
    a, b = lo, hi
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    while b - a > _OMEGA_TOL:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = f(d)
    candidates = [(f(lo), lo), (f(hi), hi), (f(0.5 * (a + b)), 0.5 * (a + b))]
    return min(candidates)[1]


def _simplex_min(
    infos: list[np.ndarray], f: Callable[[np.ndarray], float], w0: np.ndarray
) -> np.ndarray:
    """Pairwise golden-section sweeps over the simplex starting at w0."""
    w = w0.copy()
    best = f(sum(wi * I for wi, I in zip(w, infos, strict=True)))
    for _ in range(_MAX_SWEEPS):
        start = best
        for i, j in combinations(range(len(w)), 2):
            s = w[i] + w[j]
            rest = sum(w[k] * infos[k] for k in range(len(w)) if k not in (i, j))

            def along(t: float, i: int = i, j: int = j, s: float = s, rest=rest) -> float:
                return f(rest + t * infos[i] + (s - t) * infos[j])

            t = _golden_min(along, 0.0, s)
            ft = along(t)
            if ft < best:
                w[i], w[j], best = t, s - t, ft
        if start - best <= 1e-12 * max(1.0, abs(start)):
            break
    return w


def ci_weights(beliefs: Sequence[Gaussian], criterion: Criterion = "trace") -> np.ndarray:
    """Covariance-intersection weights w (n,) on the simplex minimising tr or log det of P."""
    bs = _validated(beliefs)
    f = _objective(criterion, all(b.is_diagonal for b in bs))
    infos, _, _ = _information(bs)
    if len(bs) == 1:
        return np.ones(1)
    if len(bs) == 2:
        w1 = _golden_min(lambda t: f(t * infos[0] + (1.0 - t) * infos[1]), 0.0, 1.0)
        return np.array([w1, 1.0 - w1])
    # fast CI (Niehsen 2002): w_i ~ 1/tr(P_i), a good start for the sweeps
    traces = [float(np.sum(b.cov) if b.is_diagonal else np.trace(b.cov)) for b in bs]
    inv_tr = 1.0 / np.array(traces)
    return _simplex_min(infos, f, inv_tr / inv_tr.sum())


def covariance_intersection(
    beliefs: Sequence[Gaussian],
    weights: Sequence[float] | np.ndarray | None = None,
    criterion: Criterion = "trace",
) -> Gaussian:
    """Consistent fusion when the beliefs' cross-correlations are unknown.

    P^-1 = sum_i w_i P_i^-1, x = P sum_i w_i P_i^-1 x_i; w from `ci_weights` unless given
    (then n non-negative finite numbers summing to 1). Diagonal if every input is diagonal.
    A belief fused with copies of itself comes back unchanged.
    """
    bs = _validated(beliefs)
    if all(np.array_equal(b.mean, bs[0].mean) and np.array_equal(b.cov, bs[0].cov) for b in bs):
        return Gaussian(bs[0].mean, bs[0].cov)
    if weights is None:
        w = ci_weights(bs, criterion)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(bs),) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be {len(bs)} finite numbers >= 0, got {weights!r}")
        if abs(w.sum() - 1.0) > 1e-9:
            raise ValueError(f"weights must sum to 1, got sum {w.sum()}")
    infos, vecs, diagonal = _information(bs)
    # P^-1 = sum_i w_i P_i^-1, P^-1 x = sum_i w_i P_i^-1 x_i
    info = sum(wi * I for wi, I in zip(w, infos, strict=True))
    vec = sum(wi * v for wi, v in zip(w, vecs, strict=True))
    return _from_information(info, vec, diagonal)
