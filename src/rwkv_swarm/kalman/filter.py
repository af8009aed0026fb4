"""Linear Kalman filter: pure `predict`/`update` functions and a filterpy-compatible class.

Vectors are 1-D numpy arrays (filterpy uses (n, 1) columns; those are accepted on input).
The covariance update is the Joseph form, valid for any gain and symmetric to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _checks as check

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class UpdateResult:
    """Posterior of one update. x (n,), P (n, n), y (m,), S (m, m), K (n, m)."""

    x: np.ndarray
    P: np.ndarray
    y: np.ndarray
    S: np.ndarray
    K: np.ndarray
    log_likelihood: float
    nis: float


def predict(
    x: np.ndarray,
    P: np.ndarray,
    F: np.ndarray,
    Q: np.ndarray,
    B: np.ndarray | None = None,
    u: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Prior (x_prior (n,), P_prior (n, n)) from x (n,), P, F, Q (n, n), B (n, k), u (k,)."""
    x = check.vector("x", x)
    n = x.shape[0]
    P = check.covariance("P", P, n)
    F = check.matrix("F", F, (n, n))
    Q = check.covariance("Q", Q, n)
    # x = Fx + Bu
    x_prior = F @ x
    if u is not None:
        if B is None:
            raise ValueError("u was given but B is None: set the control matrix B (n, k)")
        u = check.vector("u", u)
        B = check.matrix("B", B, (n, u.shape[0]))
        x_prior = x_prior + B @ u
    # P = FPF' + Q
    P_prior = F @ P @ F.T + Q
    return x_prior, P_prior


def update(
    x: np.ndarray, P: np.ndarray, z: np.ndarray, R: np.ndarray, H: np.ndarray
) -> UpdateResult:
    """Posterior after measuring z (m,) = Hx + v, v ~ N(0, R); H (m, n), R (m, m).

    Raises ValueError if the innovation covariance S = HPH' + R is not positive definite.
    """
    x = check.vector("x", x)
    n = x.shape[0]
    P = check.covariance("P", P, n)
    z = check.vector("z", z)
    m = z.shape[0]
    H = check.matrix("H", H, (m, n))
    R = check.covariance("R", R, m)
    # y = z - Hx
    y = z - H @ x
    PHT = P @ H.T
    # S = HPH' + R
    S = H @ PHT + R
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        raise ValueError("S = HPH' + R is not positive definite: R or P is degenerate") from None
    # K = PH'S^-1 (solved, not inverted; S is symmetric so K' = S^-1 HP')
    K = np.linalg.solve(S, PHT.T).T
    # x = x + Ky
    x_post = x + K @ y
    # P = (I-KH)P(I-KH)' + KRK'
    I_KH = np.eye(n) - K @ H
    P_post = I_KH @ P @ I_KH.T + K @ R @ K.T
    # nis = y'S^-1 y, via the Cholesky factor: |L^-1 y|^2
    w = np.linalg.solve(L, y)
    nis = float(w @ w)
    # log N(y; 0, S) = -(nis + log det S + m log 2pi) / 2
    log_det = 2.0 * float(np.sum(np.log(np.diag(L))))
    log_likelihood = -0.5 * (nis + log_det + m * _LOG_2PI)
    return UpdateResult(x_post, P_post, y, S, K, log_likelihood, nis)


class KalmanFilter:
    """Linear Kalman filter with filterpy's attribute names.

    x (dim_x,), P, Q, F (dim_x, dim_x), H (dim_z, dim_x), R (dim_z, dim_z),
    B (dim_x, dim_u) or None. Defaults as filterpy: x = 0, P = Q = F = I, H = 0, R = I.
    After `update`: y, S, K, log_likelihood, nis (= mahalanobis**2), x_post, P_post.
    """

    def __init__(self, dim_x: int, dim_z: int, dim_u: int = 0) -> None:
        if dim_x < 1:
            raise ValueError(f"dim_x must be 1 or greater, got {dim_x}")
        if dim_z < 1:
            raise ValueError(f"dim_z must be 1 or greater, got {dim_z}")
        if dim_u < 0:
            raise ValueError(f"dim_u must be 0 or greater, got {dim_u}")
        self.dim_x, self.dim_z, self.dim_u = dim_x, dim_z, dim_u
        self.x = np.zeros(dim_x)
        self.P = np.eye(dim_x)
        self.Q = np.eye(dim_x)
        self.F = np.eye(dim_x)
        self.H = np.zeros((dim_z, dim_x))
        self.R = np.eye(dim_z)
        self.B: np.ndarray | None = np.zeros((dim_x, dim_u)) if dim_u else None
        self.z: np.ndarray | None = None
        self.y = np.zeros(dim_z)
        self.S = np.zeros((dim_z, dim_z))
        self.K = np.zeros((dim_x, dim_z))
        self.log_likelihood = math.nan
        self.nis = math.nan
        self.x_prior, self.P_prior = self.x.copy(), self.P.copy()
        self.x_post, self.P_post = self.x.copy(), self.P.copy()

    @property
    def mahalanobis(self) -> float:
        """sqrt(nis): how many standard deviations the last measurement was from its prediction."""
        return math.sqrt(self.nis)

    def predict(self, u: np.ndarray | None = None) -> None:
        """x = Fx + Bu, P = FPF' + Q; u (dim_u,) or None."""
        if u is not None and self.dim_u == 0:
            raise ValueError("u was given but dim_u is 0")
        self.x, self.P = predict(self.x, self.P, self.F, self.Q, self.B, u)
        self.x_prior, self.P_prior = self.x.copy(), self.P.copy()

    def update(self, z: np.ndarray | float) -> None:
        """Correct with measurement z (dim_z,) (a scalar when dim_z is 1)."""
        z = check.vector("z", z, self.dim_z)
        r = update(self.x, self.P, z, self.R, self.H)
        self.z = z
        self.x, self.P = r.x, r.P
        self.y, self.S, self.K = r.y, r.S, r.K
        self.log_likelihood, self.nis = r.log_likelihood, r.nis
        self.x_post, self.P_post = self.x.copy(), self.P.copy()
