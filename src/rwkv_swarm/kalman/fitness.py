"""`FitnessBelief`: a scalar Kalman filter on the true fitness of a node's current weights.

Each generation: `predict(expected_change)` before mutating, `update(samples)` with the
population's fitness values after evaluating. The measurement is their mean (the population's
centre fitness), with variance R_w = s^2 / n from their sample variance s^2.

Two noise models (`FitnessConfig.noise_model`):

- "sampled": R_w is the whole measurement noise; Q is re-estimated by covariance matching and
  surprise is a chi-square(1) test. Right when the samples are independent draws of
  everything that varies between generations.
- "identified": Q and R are identified from the innovations' own moments (Mehra 1970), and the
  surprise test allows for that estimate's uncertainty (an F(1, n) quantile, n its effective
  sample size). Right when the samples cannot show all the noise: every mutant is judged on
  one shared stream segment (its difficulty moves the whole population), or learning moves
  the fitness faster than any fixed drift. docs/kalman.md has the measurements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from . import _checks as check
from ._stats import chi2_quantile, f1_quantile
from .gaussian import Gaussian

NOISE_MODELS = ("sampled", "identified")


@dataclass(frozen=True)
class FitnessConfig:
    """How a `FitnessBelief` models drift, noise and surprise.

    noise_model: "sampled" or "identified" (see the module docstring).
    drift: Q, the fitness variance added per generation, to start with; None: drift_ratio * R
        of the first update.
    adapt_drift: "sampled" only: re-estimate Q from the innovations (covariance matching:
        E[y^2] = S + k (Q_true - Q) after k predicts, each update giving the sample
        q = Q + (min(y^2, threshold S) - S) / k, averaged with weight drift_memory). Off, with
        respond_to_surprise off, the belief is an exact textbook filter.
    noise_memory: "identified" only: weight of each new innovation in the moments; Q and R
        then rest on about (2 - m)/m effective innovations (9 at 0.2).
    respond_to_surprise: when surprised, inflate this step's prior variance by the least amount
        that makes the innovation unsurprising (S' = y^2 / threshold) before correcting: after
        a real change the belief moves most of the way at once instead of creeping.
    surprise_p: NIS above the surprise_p quantile of its null distribution sets `surprised`.
    sample_var: per-sample fitness variance for one-sample updates before any update with
        >= 2 samples; after those, an average of past sample variances (weight
        sample_var_memory for each new one) is used.
    min_var: floor on R and Q, so that identical samples still give a well-defined update.
    """

    noise_model: str = "sampled"
    drift: float | None = None
    drift_ratio: float = 0.1
    adapt_drift: bool = True
    drift_memory: float = 0.01
    noise_memory: float = 0.2
    respond_to_surprise: bool = True
    surprise_p: float = 0.99
    sample_var: float | None = None
    sample_var_memory: float = 0.1
    min_var: float = 1e-12

    def __post_init__(self) -> None:
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {NOISE_MODELS}, got "
                             f"{self.noise_model!r}")
        if self.drift is not None:
            check.nonnegative_scalar("drift", self.drift)
        if check.finite_scalar("drift_ratio", self.drift_ratio) <= 0:
            raise ValueError(f"drift_ratio must be > 0, got {self.drift_ratio}")
        for name in ("drift_memory", "noise_memory", "sample_var_memory"):
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
        """NIS threshold when Q and R are known: the chi-square(1) surprise_p quantile."""
        return chi2_quantile(self.surprise_p, 1)


@dataclass(frozen=True)
class FitnessUpdate:
    """What one `FitnessBelief.update` saw: z = sample mean, R its variance (all parts),
    y = z - prior mean, S = prior variance + R, nis = y^2/S, gain = K in [0, 1]."""

    z: float
    R: float
    innovation: float
    S: float
    nis: float
    gain: float
    surprised: bool


@dataclass
class InnovationMoments:
    """Exponentially weighted moments of the innovations, for Mehra's identification of Q and
    R from a running filter. For a steady gain K, prior error e and innovation y = e + v:

        C0 = E[y_t^2]         = M + R
        C1 = E[y_t y_{t-1}]   = (1 - K) M - K R      (M = E[e^2])

    so R = (1 - K) C0 - C1, M = C0 - R and, from M = (1-K)^2 M + K^2 R + Q,
    Q = K (2 - K) M - K^2 R. `count` is the effective sample size (sum w)^2 / sum w^2.
    """

    weight: float = 0.0  # sum of weights
    weight2: float = 0.0  # sum of squared weights
    c0: float = 0.0
    c1: float = 0.0
    gain: float = 0.0  # mean Kalman gain over the same window
    R_w: float = 0.0  # mean sample-measured R over the same window
    last_y: float | None = None

    @property
    def count(self) -> float:
        return self.weight * self.weight / self.weight2 if self.weight2 > 0 else 0.0

    def add(self, y: float, gain: float, R_w: float, memory: float) -> None:
        self.weight = (1 - memory) * self.weight + 1.0
        self.weight2 = (1 - memory) ** 2 * self.weight2 + 1.0
        a = 1.0 / self.weight  # the newest value's share of the weighted mean
        self.c0 += a * (y * y - self.c0)
        self.gain += a * (gain - self.gain)
        self.R_w += a * (R_w - self.R_w)
        if self.last_y is not None:
            self.c1 += a * (y * self.last_y - self.c1)
        self.last_y = y

    def identify(self, floor: float) -> tuple[float, float]:
        """(Q, R), R at least the sample-measured part and Q at least `floor`."""
        K = min(max(self.gain, 0.02), 0.98)  # the equations degenerate at K = 0 or 1
        R = max((1 - K) * self.c0 - self.c1, self.R_w)
        M = max(self.c0 - R, 0.0)
        return max(K * (2 - K) * M - K * K * R, floor), R


@dataclass
class FitnessBelief:
    """Belief N(mean, var) about the true fitness of the node's current weights.

    var = inf means nothing is known yet: the first update adopts the measurement.
    drift is the current Q; extra_var is R_s, the measurement noise beyond what the samples
    show (always 0 in the "sampled" model); threshold the NIS threshold of the last update
    (inf: no test yet, as before the "identified" model has seen an innovation).
    """

    config: FitnessConfig = field(default_factory=FitnessConfig)
    mean: float = 0.0
    var: float = math.inf
    drift: float | None = None
    extra_var: float = 0.0
    sample_var: float | None = None
    # drift variance added by predicts since the last update, and how many there were
    drift_added: float = 0.0
    predicts: int = 0
    moments: InnovationMoments = field(default_factory=InnovationMoments)
    n_updates: int = 0
    nis: float = 0.0
    gain: float = 0.0
    innovation: float = 0.0
    threshold: float = math.inf

    def __post_init__(self) -> None:
        self.mean = check.finite_scalar("mean", self.mean)
        self.var = float(self.var)
        if math.isnan(self.var) or self.var < 0:
            raise ValueError(f"var must be >= 0 (inf: unknown), got {self.var}")
        if self.drift is None and self.config.drift is not None:
            self.drift = self.config.drift

    @property
    def identified(self) -> bool:
        return self.config.noise_model == "identified"

    @property
    def surprised(self) -> bool:
        """Whether the last update's NIS exceeded its threshold."""
        return self.nis > self.threshold

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
        """Correct with the fitness values (n,) of this generation's population. Antithetic
        pairs that meet the same episodes are not independent: pass their means."""
        z, R_w = self._measure(samples)
        if math.isinf(self.var):
            return self._initialise(z, R_w)
        prior_var, prior_added, R = self.var, self.drift_added, R_w + self.extra_var
        # y = z - Hx, H = 1
        y = z - self.mean
        # S = HPH' + R
        S = prior_var + R
        nis = y * y / S
        threshold = self._threshold()
        surprised = nis > threshold
        if surprised and self.config.respond_to_surprise:
            # the least inflation that explains the innovation: S' = y^2/threshold, NIS' at
            # the threshold (a full y^2 - S would make each false alarm cost a gain near 1)
            prior_var += y * y / threshold - S
        # K = PH'S^-1
        K = prior_var / (prior_var + R)
        # x = x + Ky
        self.mean += K * y
        # P = (I-KH)P(I-KH)' + KRK'
        self.var = (1.0 - K) ** 2 * prior_var + K * K * R
        # a jump (handled by respond_to_surprise) must not blow the noise estimates up: its
        # innovation enters capped at the surprise threshold
        capped = min(y * y, threshold * S) if math.isfinite(threshold) else y * y
        if self.identified:
            self._identify(math.copysign(math.sqrt(capped), y), K, R_w)
        elif self.config.adapt_drift and self.predicts > 0:
            self._match_drift(capped - S, prior_added)
        self.drift_added, self.predicts = 0.0, 0
        self.n_updates += 1
        self.nis, self.gain, self.innovation, self.threshold = nis, K, y, threshold
        return FitnessUpdate(z, R, y, S, nis, K, surprised)

    def _threshold(self) -> float:
        """chi-square(1) when the variances are known; F(1, n) when identified from n
        effective innovations (none before the first)."""
        if not self.identified:
            return self.config.threshold
        n = self.moments.count
        return f1_quantile(self.config.surprise_p, n) if n >= 1.0 else math.inf

    def _identify(self, y: float, K: float, R_w: float) -> None:
        self.moments.add(y, K, R_w, self.config.noise_memory)
        Q, R = self.moments.identify(self.config.min_var)
        self.drift, self.extra_var = Q, R - self.moments.R_w

    def _match_drift(self, excess: float, added: float) -> None:
        # E[y^2 - S] = k Q_true - added, so (added + y^2 - S)/k estimates Q_true; single
        # estimates are often negative and must not be clipped, or the average is biased up
        q = (added + excess) / self.predicts
        m = self.config.drift_memory
        self.drift = max((1 - m) * (self.drift or 0.0) + m * q, self.config.min_var)

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
        self.threshold = self._threshold()
        return FitnessUpdate(z, R, 0.0, math.inf, 0.0, 1.0, False)

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
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitnessBelief:
        kw = dict(d)
        kw["config"] = FitnessConfig(**kw["config"])
        kw["moments"] = InnovationMoments(**kw["moments"])
        return cls(**kw)
