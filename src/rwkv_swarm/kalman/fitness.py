"""`FitnessBelief`: a scalar Kalman filter on the true fitness of a node's current weights.

Each generation: `predict(expected_change)` before mutating, `update(samples)` with the
population's fitness values after evaluating. The measurement is their mean (the population's
centre fitness), with variance R = s^2 / n from their sample variance s^2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from . import _checks as check
from ._stats import chi2_quantile
from .gaussian import Gaussian


@dataclass(frozen=True)
class FitnessConfig:
    """How a `FitnessBelief` models drift, noise and surprise.

    drift: Q, the fitness variance added per generation; None: drift_ratio * R of the first
        update (a scale-free guess that adaptation then corrects).
    adapt_drift: re-estimate Q from the innovations (covariance matching): since
        E[y^2] = S + k (Q_true - Q) after k predicts, each update gives the sample
        q = Q + (min(y^2, threshold S) - S) / k, averaged with weight drift_memory. y^2 is
        capped at the surprise threshold so that one jump (which `respond_to_surprise` handles)
        does not blow Q up. The estimate is noisy when Q << R and then errs upward.
    surprise_p: NIS above the chi-square(1) surprise_p quantile (the threshold) sets
        `surprised`.
    respond_to_surprise: when surprised, inflate this step's Q by the least amount that makes
        the innovation unsurprising (S' = y^2 / threshold) before correcting: after a real
        change the belief moves most of the way at once instead of creeping, while a false
        alarm (1% of updates) costs little.
    sample_var: per-sample fitness variance for one-sample updates before any update with
        >= 2 samples; after those, an average of past sample variances (weight
        sample_var_memory for each new one) is used.
    min_var: floor on R, so that identical samples still give a well-defined update.
    """

    drift: float | None = None
    drift_ratio: float = 0.1
    adapt_drift: bool = True
    drift_memory: float = 0.01
    respond_to_surprise: bool = True
    surprise_p: float = 0.99
    sample_var: float | None = None
    sample_var_memory: float = 0.1
    min_var: float = 1e-12

    def __post_init__(self) -> None:
        if self.drift is not None:
            check.nonnegative_scalar("drift", self.drift)
        if check.finite_scalar("drift_ratio", self.drift_ratio) <= 0:
            raise ValueError(f"drift_ratio must be > 0, got {self.drift_ratio}")
        for name in ("drift_memory", "sample_var_memory"):
            v = check.finite_scalar(name, getattr(self, name))
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        if not 0.0 < check.finite_scalar("surprise_p", self.surprise_p) < 1.0:
            raise ValueError(f"surprise_p must be in (0, 1), got {self.surprise_p}")
        if self.sample_var is not None and check.finite_scalar("sample_var", self.sample_var) <= 0:
            raise ValueError(f"sample_var must be > 0, got {self.sample_var}")
        if check.finite_scalar("min_var", self.min_var) <= 0:
            raise ValueError(f"min_var must be > 0, got {self.min_var}")

    @property
    def threshold(self) -> float:
        """NIS above which the belief is surprised: the chi-square(1) surprise_p quantile."""
        return chi2_quantile(self.surprise_p, 1)


@dataclass(frozen=True)
class FitnessUpdate:
    """What one `FitnessBelief.update` saw: z = sample mean, R its variance, y = z - prior mean,
    S = prior variance + R, nis = y^2/S, gain = K in [0, 1]."""

    z: float
    R: float
    innovation: float
    S: float
    nis: float
    gain: float
    surprised: bool


@dataclass
class FitnessBelief:
    """Belief N(mean, var) about the true fitness of the node's current weights.

    var = inf means nothing is known yet: the first update adopts the measurement.
    drift is the current Q (set from the config, the first update, or adaptation).
    """

    config: FitnessConfig = field(default_factory=FitnessConfig)
    mean: float = 0.0
    var: float = math.inf
    drift: float | None = None
    sample_var: float | None = None
    # drift variance added by predicts since the last update, and how many there were
    drift_added: float = 0.0
    predicts: int = 0
    n_updates: int = 0
    nis: float = 0.0
    gain: float = 0.0
    innovation: float = 0.0

    def __post_init__(self) -> None:
        self.mean = check.finite_scalar("mean", self.mean)
        self.var = float(self.var)
        if math.isnan(self.var) or self.var < 0:
            raise ValueError(f"var must be >= 0 (inf: unknown), got {self.var}")
        if self.drift is None and self.config.drift is not None:
            self.drift = self.config.drift

    @property
    def surprised(self) -> bool:
        """Whether the last update's NIS exceeded the chi-square threshold."""
        return self.nis > self.config.threshold

    def predict(self, expected_change: float = 0.0, drift: float | None = None) -> None:
        """mean += expected_change; var += Q (drift, if given, overrides Q for this step)."""
        dx = check.finite_scalar("expected_change", expected_change)
        if drift is None:
            q = self.drift if self.drift is not None else 0.0
        else:
            q = check.nonnegative_scalar("drift", drift)
        # x = x + u (F = 1, B = 1)
        self.mean += dx
        # P = P + Q
        self.var += q
        self.drift_added += q
        self.predicts += 1

    def update(self, samples: np.ndarray | list[float] | float) -> FitnessUpdate:
        """Correct with the fitness values (n,) of this generation's population."""
        z, R = self._measure(samples)
        if math.isinf(self.var):
            return self._initialise(z, R)
        prior_var, prior_added = self.var, self.drift_added
        # y = z - Hx, H = 1
        y = z - self.mean
        # S = HPH' + R
        S = prior_var + R
        nis = y * y / S
        surprised = nis > self.config.threshold
        if surprised and self.config.respond_to_surprise:
            # the least Q inflation that explains the innovation: S' = y^2/threshold, NIS' at
            # the threshold (a full y^2 - S would make each false alarm cost a gain near 1)
            prior_var += y * y / self.config.threshold - S
        # K = PH'S^-1
        K = prior_var / (prior_var + R)
        # x = x + Ky
        self.mean += K * y
        # P = (I-KH)P(I-KH)' + KRK'
        self.var = (1.0 - K) ** 2 * prior_var + K * K * R
        if self.config.adapt_drift and self.predicts > 0:
            self._adapt_drift(min(y * y, self.config.threshold * S) - S, prior_added)
        self.drift_added, self.predicts = 0.0, 0
        self.n_updates += 1
        self.nis, self.gain, self.innovation = nis, K, y
        return FitnessUpdate(z, R, y, S, nis, K, surprised)

    def inflate(self, factor: float) -> None:
        """var *= factor (>= 1): the world is known to have changed, trust the past less."""
        f = check.finite_scalar("factor", factor)
        if f < 1.0:
            raise ValueError(f"factor must be >= 1, got {f}")
        self.var *= f

    def _measure(self, samples: np.ndarray | list[float] | float) -> tuple[float, float]:
        """z = mean of the samples and R = its variance, s^2/n."""
        s = check.vector("samples", samples)
        n = s.shape[0]
        if n == 0:
            raise ValueError("samples is empty: need at least one fitness value")
        if n >= 2:
            s2 = float(np.var(s, ddof=1))
            m = self.config.sample_var_memory
            self.sample_var = s2 if self.sample_var is None else (1 - m) * self.sample_var + m * s2
        else:
            s2 = self.sample_var if self.sample_var is not None else self.config.sample_var
            if s2 is None:
                raise ValueError("one sample and no variance estimate yet: update with >= 2 "
                                 "samples first or set FitnessConfig.sample_var")
        return float(s.mean()), max(s2 / n, self.config.min_var)

    def _initialise(self, z: float, R: float) -> FitnessUpdate:
        # an infinite prior has gain 1: the belief becomes the measurement
        self.mean, self.var = z, R
        if self.drift is None:
            self.drift = self.config.drift_ratio * R
        self.drift_added, self.predicts = 0.0, 0
        self.n_updates += 1
        self.nis, self.gain, self.innovation = 0.0, 1.0, 0.0
        return FitnessUpdate(z, R, 0.0, math.inf, 0.0, 1.0, False)

    def _adapt_drift(self, excess: float, added: float) -> None:
        # E[y^2 - S] = k Q_true - added, so (added + y^2 - S)/k estimates Q_true; single
        # estimates are often negative and must not be clipped, or the average is biased up
        q = (added + excess) / self.predicts
        m = self.config.drift_memory
        self.drift = max((1 - m) * (self.drift or 0.0) + m * q, self.config.min_var)

    def to_gaussian(self) -> Gaussian:
        """The belief as a 1-D Gaussian for fusion (needs at least one update)."""
        if math.isinf(self.var):
            raise ValueError("FitnessBelief has no finite variance yet: update it first")
        return Gaussian(np.array([self.mean]), np.array([self.var]))

    def with_gaussian(self, g: Gaussian) -> FitnessBelief:
        """A new belief with this one's settings and g's mean and variance (e.g. after fusion)."""
        if g.dim != 1:
            raise ValueError(f"a fitness belief is 1-D, got a Gaussian of dimension {g.dim}")
        return replace(self, mean=float(g.mean[0]), var=float(g.full_cov()[0, 0]))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (floats, ints, None, dicts): msgpack-serialisable, exact round trip."""
        d = asdict(self)
        d["config"] = asdict(self.config)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitnessBelief:
        kw = dict(d)
        kw["config"] = FitnessConfig(**kw["config"])
        return cls(**kw)
