"""`Gaussian`: a belief as mean and covariance (full or diagonal), the currency of fusion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..util.codec import decode_array, encode_array
from . import _checks as check


@dataclass(frozen=True, eq=False)
class Gaussian:
    """N(mean, cov). mean (n,); cov (n, n) full, or (n,) variances of a diagonal covariance.

    Validated on construction: finite, matching shapes, cov symmetric positive semi-definite.
    Arrays are stored as float64 copies, so a Gaussian never aliases its inputs.
    """

    mean: np.ndarray
    cov: np.ndarray

    def __post_init__(self) -> None:
        mean = check.vector("mean", self.mean).copy()
        n = mean.shape[0]
        c = np.asarray(self.cov, dtype=np.float64)
        if c.ndim == 1:
            cov = check.variances("cov", c, n).copy()
        elif c.ndim == 2:
            cov = check.covariance("cov", c, n).copy()
        else:
            raise ValueError(f"cov must be ({n}, {n}) or ({n},) variances, got shape {c.shape}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def is_diagonal(self) -> bool:
        return self.cov.ndim == 1

    def full_cov(self) -> np.ndarray:
        """The covariance as an (n, n) matrix."""
        return np.diag(self.cov) if self.is_diagonal else self.cov.copy()

    def nees(self, x_true: np.ndarray) -> float:
        """Normalised estimation error squared (x - mean)' cov^-1 (x - mean) for a known truth."""
        e = check.vector("x_true", x_true, self.dim) - self.mean
        if self.is_diagonal:
            return float(np.sum(e * e / self.cov))
        return float(e @ np.linalg.solve(self.cov, e))

    def to_dict(self) -> dict[str, Any]:
        """Plain, msgpack-serialisable values; `from_dict` restores it bit for bit."""
        return {"mean": encode_array(self.mean), "cov": encode_array(self.cov)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gaussian:
        return cls(decode_array(d["mean"]), decode_array(d["cov"]))
