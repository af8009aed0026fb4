"""`DirectionBelief`: a diagonal Kalman filter over the evolution-strategy search gradient.

One scalar filter per weight coordinate (d up to 10^6 and beyond), O(d) memory. The measurement
is the ES gradient estimate g = 1/(P sigma) sum_j u_j eps_j with per-coordinate variance from
the population (`population_gradient`, `antithetic_gradient`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from ..util.codec import decode_tensor, encode_array
from . import _checks as check
from .diagonal import ArrayLike, all_finite, as_state_vector, diag_predict, diag_update
from .gaussian import Gaussian

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def population_gradient(
    contributions: ArrayLike | Iterable[ArrayLike],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient estimate g (d,) = mean_j c_j and its variance (d,) = var_j(c_j) / P.

    contributions: (P, d) per-member (or per-pair) terms c_j whose mean is the gradient, or an
    iterable of P such (d,) rows, consumed in one pass with O(d) memory (Welford). P >= 2.
    """
    if isinstance(contributions, (torch.Tensor, np.ndarray)) and contributions.ndim == 2:
        c = torch.as_tensor(contributions)
        if c.shape[0] < 2:
            raise ValueError(f"need at least 2 contributions for a variance, got {c.shape[0]}")
        if c.dtype not in (torch.float32, torch.float64):
            c = c.to(torch.float64)
        if not all_finite(c):
            raise ValueError("contributions has non-finite values")
        var, mean = torch.var_mean(c, dim=0, correction=1)
        return mean, var / c.shape[0]
    mean = m2 = None
    count = 0
    for row in contributions:
        c = as_state_vector(f"contributions[{count}]", row)
        count += 1
        if mean is None:
            mean, m2 = c.clone(), torch.zeros_like(c)
            continue
        if c.shape != mean.shape:
            raise ValueError(f"contributions[{count - 1}] has shape {tuple(c.shape)}, "
                             f"expected {tuple(mean.shape)}")
        # Welford: mean_k = mean_{k-1} + (c - mean_{k-1})/k, M2 += (c - mean_{k-1})(c - mean_k)
        delta = c - mean
        mean += delta / count
        m2 += delta * (c - mean)
    if count < 2:
        raise ValueError(f"need at least 2 contributions for a variance, got {count}")
    return mean, m2 / (count - 1) / count


def antithetic_gradient(
    diffs: ArrayLike, noise: ArrayLike | Iterable[ArrayLike], sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ES gradient from n antithetic pairs, and its per-coordinate variance.

    diffs (n,): f(theta + sigma eps_j) - f(theta - sigma eps_j) (shaped fitness is fine);
    noise: (n, d) eps_j, or an iterable of n (d,) rows (e.g. regenerated from seeds).
    g = 1/(2 n sigma) sum_j diffs_j eps_j, the mean of c_j = diffs_j eps_j / (2 sigma); pairs,
    not members, are the independent units, so the variance is var_j(c_j) / n.
    """
    s = check.finite_scalar("sigma", sigma)
    if s <= 0:
        raise ValueError(f"sigma must be > 0, got {s}")
    d = check.vector("diffs", torch.as_tensor(diffs).double().numpy())
    if isinstance(noise, (torch.Tensor, np.ndarray)) and (noise.ndim != 2 or len(noise) != len(d)):
        raise ValueError(f"noise must be ({len(d)}, d), one row per diff, got {tuple(noise.shape)}")
    rows = iter(noise)

    def contributions() -> Iterable[torch.Tensor]:
        for j, dj in enumerate(d):
            try:
                eps = next(rows)
            except StopIteration:
                raise ValueError(f"noise has {j} rows, expected {len(d)} (one per diff)") from None
            eps = as_state_vector(f"noise[{j}]", eps)
            yield eps * (float(dj) / (2.0 * s))

    return population_gradient(contributions())


@dataclass(frozen=True)
class DirectionConfig:
    """How a `DirectionBelief` models the gradient's drift between generations.

    drift: Q per coordinate per generation; None: estimated from the innovations, pooled over
        all coordinates (mean of y^2 - S, as in `FitnessConfig.adapt_drift`), which is precise
        for large d; weight drift_memory per new estimate.
    decay: F in [0, 1]; the gradient predicted for the next generation is F times this one.
    min_var: floor on the measurement variances, so coordinates the population never perturbs
        (variance 0) stay well defined.
    dtype: "float32" or "float64" for the state vectors.
    """

    drift: float | None = None
    decay: float = 1.0
    drift_memory: float = 0.3
    min_var: float = 1e-30
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.drift is not None:
            check.nonnegative_scalar("drift", self.drift)
        if not 0.0 <= check.finite_scalar("decay", self.decay) <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {self.decay}")
        if not 0.0 < check.finite_scalar("drift_memory", self.drift_memory) <= 1.0:
            raise ValueError(f"drift_memory must be in (0, 1], got {self.drift_memory}")
        if check.finite_scalar("min_var", self.min_var) <= 0:
            raise ValueError(f"min_var must be > 0, got {self.min_var}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


@dataclass(frozen=True)
class DirectionUpdate:
    """One update: gain K (d,) in [0, 1]; nis = mean over coordinates of y^2/S (about 1 when
    the model is right; NaN for the first update, which has no prior); drift = Q after it."""

    gain: torch.Tensor
    nis: float
    drift: float


@dataclass(eq=False)
class DirectionBelief:
    """Belief N(mean, diag(var)) about the ES gradient, one independent filter per coordinate.

    Before the first update mean and var are None (nothing known); the first update adopts the
    measurement. `direction` is the filtered gradient, `confidence` how sure its signs are.
    Its vectors live on `device` (the node's: its gradient estimates are measured there); a
    `to_dict` is device-free, and `from_dict` places it on the device it is given.
    """

    dim: int
    config: DirectionConfig = field(default_factory=DirectionConfig)
    mean: torch.Tensor | None = None
    var: torch.Tensor | None = None
    gain: torch.Tensor | None = None
    drift: float = 0.0
    # drift added by predicts since the last update, and the decayed count of those predicts
    drift_added: float = 0.0
    drift_weight: float = 0.0
    n_updates: int = 0
    nis: float = math.nan
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if self.dim < 1:
            raise ValueError(f"dim must be 1 or greater, got {self.dim}")
        if self.config.drift is not None:
            self.drift = self.config.drift
        if (self.mean is None) != (self.var is None):
            raise ValueError("mean and var must both be given or both be None")
        # copies, so that the belief never aliases a caller's (or a Gaussian's) arrays
        if self.mean is not None:
            self.mean = self._vector("mean", self.mean).clone()
            self.var = self._vector("var", self.var, nonneg=True).clone()
        if self.gain is not None:
            self.gain = self._vector("gain", self.gain, nonneg=True).clone()

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.config.dtype]

    @property
    def direction(self) -> torch.Tensor:
        """The filtered gradient (d,) (zeros before the first update)."""
        if self.mean is None:
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        return self.mean

    @property
    def confidence(self) -> torch.Tensor:
        """Per coordinate, P(sign of the true gradient = sign of `direction`) = Phi(|m|/sqrt(var)),
        in [0.5, 1]; 0.5 everywhere before the first update."""
        if self.mean is None or self.var is None:
            return torch.full((self.dim,), 0.5, dtype=self.dtype, device=self.device)
        snr = self.mean.abs() / self.var.sqrt().clamp_min(torch.finfo(self.dtype).tiny)
        return torch.special.ndtr(snr)

    def predict(self) -> None:
        """mean = F mean, var = F^2 var + Q (no-op before the first update)."""
        if self.mean is None:
            return
        F, q = self.config.decay, self.drift
        self.mean, self.var = diag_predict(self.mean, self.var, F, q)
        self.drift_added = F * F * self.drift_added + q
        self.drift_weight = F * F * self.drift_weight + 1.0

    def update(self, grad: ArrayLike, var: ArrayLike) -> DirectionUpdate:
        """Correct with a gradient estimate grad (d,) whose per-coordinate variance is var (d,)."""
        z = self._vector("grad", grad)
        R = self._vector("var", var, nonneg=True).clamp_min(self.config.min_var)
        if self.mean is None:
            # an infinite prior has gain 1: the belief becomes the measurement
            self.mean, self.var, self.gain = z.clone(), R, torch.ones_like(z)
            self.nis = math.nan
            self.n_updates += 1
            return DirectionUpdate(self.gain, self.nis, self.drift)
        r = diag_update(self.mean, self.var, z, R)
        self.n_updates += 1
        if self.config.drift is None and self.drift_weight > 0:
            self._adapt_drift(r.y, r.S)
        self.mean, self.var, self.gain = r.x, r.P, r.K
        self.drift_added, self.drift_weight = 0.0, 0.0
        self.nis = r.nis / self.dim
        return DirectionUpdate(self.gain, self.nis, self.drift)

    def _adapt_drift(self, y: torch.Tensor, S: torch.Tensor) -> None:
        # E[y^2 - S] = w Q_true - added per coordinate: pool over coordinates, then average
        excess = float((y * y - S).mean(dtype=torch.float64))
        q = (self.drift_added + excess) / self.drift_weight
        m = self.config.drift_memory
        self.drift = max((1 - m) * self.drift + m * q, 0.0)

    def _vector(self, name: str, value: ArrayLike, nonneg: bool = False) -> torch.Tensor:
        t = as_state_vector(name, value).to(self.dtype)  # checked where it is, then moved
        if t.shape[0] != self.dim:
            raise ValueError(f"{name} must have shape ({self.dim},), got {tuple(t.shape)}")
        if nonneg and bool((t < 0).any()):
            raise ValueError(f"{name} must be >= 0 (variances), min is {float(t.min()):.3g}")
        return t.to(self.device)

    def to_gaussian(self) -> Gaussian:
        """The belief as a diagonal float64 Gaussian for fusion (needs at least one update)."""
        if self.mean is None or self.var is None:
            raise ValueError("DirectionBelief has no estimate yet: update it first")
        return Gaussian(self.mean.double().cpu().numpy(), self.var.double().cpu().numpy())

    def with_gaussian(self, g: Gaussian) -> DirectionBelief:
        """A new belief with this one's settings and g's mean and (diagonal) variances."""
        if g.dim != self.dim:
            raise ValueError(f"Gaussian has dimension {g.dim}, expected {self.dim}")
        var = g.cov if g.is_diagonal else np.diag(g.cov)
        return replace(self, mean=torch.from_numpy(g.mean), var=torch.from_numpy(var.copy()))

    def to_dict(self) -> dict[str, Any]:
        """Plain values, vectors as {dtype, shape, bytes}: msgpack-serialisable, exact."""
        d: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "device":  # where it lives is the loader's to say
                continue
            v = getattr(self, f.name)
            if f.name == "config":
                v = asdict(v)
            elif isinstance(v, torch.Tensor):
                v = encode_array(v)
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str = "cpu") -> DirectionBelief:
        """The belief `to_dict` described, its vectors on `device`."""
        kw = dict(d, device=device)
        kw["config"] = DirectionConfig(**kw["config"])
        for k in ("mean", "var", "gain"):
            if kw[k] is not None:
                kw[k] = decode_tensor(kw[k])
        return cls(**kw)
