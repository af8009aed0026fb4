"""Ask/tell evolution strategies over an RWKV-7's weights: `LowRankES` and `KalmanES`.

    strategy = KalmanES(model, KalmanESConfig(population=64))
    for _ in range(generations):
        mutants = strategy.ask()                     # seed, sigma, P, rank: the whole population
        fitness = evaluate(mutants.population(model))  # (P,) one value per mutant
        info = strategy.tell(fitness)                # shaping, update, beliefs; a trace row

`tell` updates the model's weights in place. The shared work (seeds, validation, shaping, the
low-rank gradient, the optimizer, the fitness belief) is in `Strategy`; subclasses override only
`_sigma_scale`, `_direction` and `_throttle`. Both strategies keep a `FitnessBelief`, so their
traces have the same columns; only `KalmanES` lets it steer.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..kalman import DirectionBelief, DirectionConfig, FitnessBelief, FitnessConfig
from ..kernels import RWKV7, Population
from ..kernels.population import targets_for

SHAPINGS = ("centered_ranks", "zscore")
STEP_RULES = ("snr", "optimizer")
WORLD_CHANGE_INFLATION = 100.0  # fitness-belief variance factor on an announced world change
OPTIMIZERS = ("adam", "sgd", "clipup")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. swarm seed, node, generation), stable everywhere."""
    digest = hashlib.blake2b(b",".join(str(int(k)).encode() for k in keys), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def centered_ranks(f: np.ndarray) -> np.ndarray:
    """Ranks mapped to [-0.5, 0.5]; non-finite values rank worst.

    Tied values share their average rank. Episode returns tie often (every early CartPole
    episode lasts 8-12 steps), and breaking ties by position would give every tied antithetic
    pair a spurious difference, all pointing the same way relative to their noise.
    """
    f = np.where(np.isfinite(f), f, -np.inf)
    values, inverse, counts = np.unique(f, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    average = first + (counts - 1) / 2.0  # mean of the ranks first .. first + count - 1
    return average[inverse] / (len(f) - 1) - 0.5


def zscore(f: np.ndarray) -> np.ndarray:
    """(f - mean) / std over the finite values; non-finite values get the worst finite score."""
    ok = np.isfinite(f)
    if not ok.any():
        return np.zeros(len(f))
    mu, sd = f[ok].mean(), f[ok].std()
    z = np.where(ok, (f - mu) / (sd if sd > 0 else 1.0), 0.0)
    return np.where(ok, z, z[ok].min())


@dataclass(frozen=True)
class ESConfig:
    """Settings shared by both strategies."""

    population: int = 64  # P mutants per generation (even: antithetic pairs)
    rank: int = 1  # rank r of each matrix perturbation
    sigma: float = 0.05  # perturbation scale
    lr: float = 0.05  # optimizer learning rate
    optimizer: str = "adam"  # "adam", "sgd" or "clipup" (Toklu et al. 2020)
    momentum: float = 0.9  # SGD and ClipUp momentum
    max_speed: float = 0.3  # ClipUp: largest norm of one whole step
    weight_decay: float = 0.0  # decoupled weight decay per step
    shaping: str = "centered_ranks"  # "centered_ranks" or "zscore"
    include: tuple[str, ...] = ("matrices",)  # perturbed groups (kernels.population.GROUPS)
    seed: int = 0  # base seed; generation g draws noise from derive_seed(seed, stream, g)
    stream: int = 0  # e.g. the node index, so nodes of one swarm draw different noise
    fitness: FitnessConfig = field(default_factory=FitnessConfig)

    def __post_init__(self) -> None:
        if self.population < 4 or self.population % 2:
            raise ValueError(f"population must be even and >= 4, got {self.population}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        for name in ("sigma", "lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.shaping not in SHAPINGS:
            raise ValueError(f"shaping must be one of {SHAPINGS}, got {self.shaping!r}")
        if not 0 <= self.weight_decay < 1 or not 0 <= self.momentum < 1:
            raise ValueError(f"weight_decay and momentum must be in [0, 1), got "
                             f"{self.weight_decay}, {self.momentum}")


@dataclass(frozen=True)
class KalmanESConfig(ESConfig):
    """`ESConfig` plus the reflex: how beliefs throttle the step and the exploration."""

    direction: DirectionConfig = field(default_factory=DirectionConfig)
    step_rule: str = "snr"  # "snr": lr * m / sqrt(m^2 + Rbar), m the filtered gradient, Rbar
    # the running per-coordinate variance of one estimate; "optimizer": m fed to `optimizer`
    noise_memory: float = 0.9  # weight kept per generation by the running variance Rbar
    drift_floor: float = 0.2  # per-coordinate process noise at least drift_floor * Rbar: a
    # steady-state gain of at least K with K^2 / (1 - K) = drift_floor (0.2: K ~ 0.36)
    adapt_lr: bool = False  # scale lr by lr_up / lr_down as measured changes beat / miss the
    # predicted ones
    lr_up: float = 1.2  # lr scale factor when the measured change beats the prediction
    lr_down: float = 1 / 1.2  # ... when it falls short
    lr_scale_range: tuple[float, float] = (0.25, 4.0)
    sigma_surprise: float = 2.0  # sigma scale factor on a surprise (explore the new world)
    sigma_relax: float = 0.8  # per generation, the sigma scale relaxes toward 1 by this factor
    sigma_scale_max: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be one of {STEP_RULES}, got {self.step_rule!r}")


class ClipUp(torch.optim.Optimizer):
    """ClipUp (Toklu et al., PPSN 2020): momentum on the normalised gradient, speed clipped.

        v <- momentum * v - lr * grad / ||grad||;  v <- v * min(1, max_speed / ||v||);  x += v

    Norms are over all parameters together, so a step keeps the estimate's direction and its
    size is set by lr and max_speed alone, whatever the number of coordinates or the fitness
    scale (unlike Adam's per-coordinate normalisation, which moves every coordinate by about
    lr even where the estimate is pure noise).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, max_speed: float = 0.3,
                 weight_decay: float = 0.0):
        if not (lr > 0 and max_speed > 0):
            raise ValueError(f"lr and max_speed must be > 0, got {lr}, {max_speed}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "max_speed": max_speed,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer.step
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            gnorm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
            if gnorm == 0:
                continue
            vel = [self.state[p].setdefault("velocity", torch.zeros_like(p)) for p in params]
            for v, p in zip(vel, params, strict=True):
                v.mul_(group["momentum"]).add_(p.grad, alpha=-group["lr"] / float(gnorm))
            vnorm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in vel)))
            scale = min(1.0, group["max_speed"] / vnorm) if vnorm > 0 else 1.0
            for v, p in zip(vel, params, strict=True):
                v.mul_(scale)
                p.mul_(1 - group["weight_decay"]).add_(v)
        return None


@dataclass
class Calibration:
    """How much of a predicted fitness change arrives: kappa in [0, 1], by exponentially
    weighted least squares of measured (population mean) on predicted changes, shrunk toward a
    prior of 0. Noise in the measured change only adds variance, not bias, to the slope.

    The first-order prediction g . step is biased upward: the step is computed from the same
    noisy g it is dotted with. kappa learns the discount instead of assuming one.
    """

    sxy: float = 0.0  # weighted sum of predicted * measured
    sxx: float = 0.0  # weighted sum of predicted^2
    memory: float = 0.9  # weight kept per generation
    prior: float = 0.0  # kappa before any evidence: predictions are not trusted until they
    # have been seen to come true
    prior_share: float = 0.1  # the prior counts as this share of the evidence

    @property
    def kappa(self) -> float:
        if self.sxx <= 0:
            return self.prior
        w = self.prior_share * self.sxx
        return min(max((self.sxy + self.prior * w) / (self.sxx + w), 0.0), 1.0)

    def observe(self, predicted: float, realised: float) -> None:
        if math.isfinite(predicted) and math.isfinite(realised):
            self.sxy = self.memory * self.sxy + predicted * realised
            self.sxx = self.memory * self.sxx + predicted * predicted


@dataclass(frozen=True)
class Mutants:
    """One generation's population, named by its seed: P antithetic rank-r mutants."""

    generation: int
    seed: int
    sigma: float
    size: int
    rank: int
    include: tuple[str, ...]

    def population(self, model: RWKV7) -> Population:
        return Population(model, self.seed, self.sigma, self.size, self.rank, self.include)


@dataclass(frozen=True)
class StepInfo:
    """What one `tell` did: a trace row (NaN where a value does not apply)."""

    generation: int
    fitness_mean: float
    fitness_std: float
    fitness_max: float
    fitness_min: float
    nonfinite: int  # mutants whose fitness was NaN/inf (ranked worst)
    sigma: float
    lr: float
    grad_norm: float
    step_norm: float
    belief_mean: float
    belief_var: float
    gain: float
    innovation: float
    nis: float
    surprised: bool
    direction_gain: float  # mean Kalman gain of the direction belief (KalmanES)
    expected_change: float  # fitness change the step is predicted to bring

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Strategy:
    """Shared ask/tell machinery. Subclasses override `_sigma_scale`, `_direction`, `_throttle`."""

    def __init__(self, model: RWKV7, config: ESConfig):
        self.model, self.config = model, config
        self.targets = targets_for(model, config.rank, config.include)
        params = dict(model.named_parameters())
        self.params = [params[t.name] for t in self.targets]
        self.generation = 0
        self.lr_scale = 1.0
        self.fitness_belief = FitnessBelief(config.fitness)
        self.expected_change = 0.0
        self.raw_prediction = 0.0  # g_raw . step of the last step, before calibration
        self.last_z: float | None = None  # last measured population mean fitness
        self.calibration = Calibration()
        self._pending: Mutants | None = None
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "clipup":
            return ClipUp(self.params, lr=c.lr, momentum=c.momentum, max_speed=c.max_speed,
                          weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.AdamW(self.params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(self.params, lr=c.lr, momentum=c.momentum,
                               weight_decay=c.weight_decay)

    # -- ask / tell ----------------------------------------------------------------------------

    def ask(self) -> Mutants:
        """This generation's mutants. The fitness belief predicts before they are evaluated."""
        c = self.config
        if self._pending is None:
            self.fitness_belief.predict(expected_change=self.expected_change)
            self._on_predict()
            self._pending = Mutants(self.generation, derive_seed(c.seed, c.stream, self.generation),
                                    c.sigma * self._sigma_scale(), c.population, c.rank,
                                    tuple(c.include))
        return self._pending

    def tell(self, fitness: np.ndarray | list[float] | torch.Tensor) -> StepInfo:
        """Fitness of each mutant (P,), higher is better. Updates the weights in place."""
        if self._pending is None:
            raise RuntimeError("tell() before ask(): call ask() to get this generation's mutants")
        f = np.asarray(torch.as_tensor(fitness).detach().cpu(), dtype=np.float64).reshape(-1)
        mutants = self._pending
        if f.shape[0] != mutants.size:
            raise ValueError(f"#fitness values = {f.shape[0]} must equal #mutants = "
                             f"{mutants.size} (one per mutant, in ask() order)")
        finite = np.isfinite(f)
        if finite.sum() < 2:
            raise ValueError(f"need at least 2 finite fitness values, got {int(finite.sum())}")
        belief = self.fitness_belief.update(f[finite])
        if self.last_z is not None:  # how much of the last predicted change arrived
            self.calibration.observe(self.raw_prediction, belief.z - self.last_z)
        self.last_z = belief.z
        u = centered_ranks(f) if self.config.shaping == "centered_ranks" else zscore(f)
        pop = mutants.population(self.model)
        lr_scale = self._throttle(belief)  # first: a surprise resets what _direction filters with
        direction, dgain = self._direction(pop, u)
        grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in direction)))
        before = [p.detach().clone() for p in self.params]
        self._step(direction, self.config.lr * lr_scale)
        deltas = [p.detach() - b for p, b in zip(self.params, before, strict=True)]
        self.raw_prediction = self._predict_change(pop, f, finite, deltas)
        self.expected_change = self.calibration.kappa * self.raw_prediction
        self._pending = None
        self.generation += 1
        return StepInfo(
            generation=mutants.generation, fitness_mean=float(f[finite].mean()),
            fitness_std=float(f[finite].std()), fitness_max=float(f[finite].max()),
            fitness_min=float(f[finite].min()), nonfinite=int((~finite).sum()),
            sigma=mutants.sigma, lr=self.config.lr * lr_scale, grad_norm=grad_norm,
            step_norm=float(torch.sqrt(sum((d.double() ** 2).sum() for d in deltas))),
            belief_mean=self.fitness_belief.mean, belief_var=self.fitness_belief.var,
            gain=belief.gain, innovation=belief.innovation, nis=belief.nis,
            surprised=belief.surprised, direction_gain=dgain,
            expected_change=self.expected_change)

    def _step(self, direction: list[torch.Tensor], lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for p, g in zip(self.params, direction, strict=True):
            p.grad = -g.to(p.dtype)  # optimizers minimise; we ascend fitness
        self.optimizer.step()
        for p in self.params:
            p.grad = None

    def _predict_change(self, pop: Population, f: np.ndarray, finite: np.ndarray,
                        deltas: list[torch.Tensor]) -> float:
        """First-order prediction of the step's fitness change: g_raw . delta, in raw units."""
        raw = np.where(finite, f - f[finite].mean(), 0.0)
        g_raw = pop.gradient(raw)
        return float(sum((g_raw[t.name].double() * d.double()).sum()
                         for t, d in zip(self.targets, deltas, strict=True)))

    def world_changed(self) -> None:
        """The world is known to have changed (an injected signal): trust the past less."""
        if math.isfinite(self.fitness_belief.var):
            self.fitness_belief.inflate(WORLD_CHANGE_INFLATION)

    # -- hooks -------------------------------------------------------------------------------

    def _on_predict(self) -> None:
        pass

    def _sigma_scale(self) -> float:
        return 1.0

    def _direction(self, pop: Population, u: np.ndarray) -> tuple[list[torch.Tensor], float]:
        """Search direction per target (and a mean direction gain, NaN if not filtered)."""
        grads = pop.gradient(u)
        return [grads[t.name] for t in self.targets], math.nan

    def _throttle(self, belief) -> float:
        """lr scale for this step."""
        return 1.0

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that decides the next generations (msgpack-friendly)."""
        if self._pending is not None:
            raise RuntimeError("checkpoint between generations: tell() the pending mutants first")
        buf = io.BytesIO()
        torch.save(self.optimizer.state_dict(), buf)
        return {"generation": self.generation, "lr_scale": self.lr_scale,
                "expected_change": self.expected_change, "raw_prediction": self.raw_prediction,
                "last_z": self.last_z,
                "calibration": asdict(self.calibration), "optimizer": buf.getvalue(),
                "fitness_belief": self.fitness_belief.to_dict(), **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        self.lr_scale = float(state["lr_scale"])
        self.expected_change = float(state["expected_change"])
        self.raw_prediction = float(state["raw_prediction"])
        self.last_z = state["last_z"]
        self.calibration = Calibration(**state["calibration"])
        self.optimizer.load_state_dict(torch.load(io.BytesIO(state["optimizer"]),
                                                  weights_only=True))
        self.fitness_belief = FitnessBelief.from_dict(state["fitness_belief"])
        self._pending = None
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class LowRankES(Strategy):
    """EGGROLL-style OpenAI-ES: antithetic low-rank mutants, shaped fitness, SGD or Adam."""

    def __init__(self, model: RWKV7, config: ESConfig | None = None):
        super().__init__(model, config or ESConfig())


class KalmanES(Strategy):
    """`LowRankES` with the organism's reflex.

    - the direction is the `DirectionBelief`'s filtered gradient m with variance P (a
      per-coordinate Kalman gain from the population's own per-coordinate variance), and the
      step is lr * m / sqrt(m^2 + Rbar), Rbar the running variance of one estimate: Adam's
      m / sqrt(v) with both moments taken from the filter (`step_rule="snr"`);
    - optionally (`adapt_lr`) the lr scale grows by `lr_up` when the measured change beats
      the prediction and shrinks by `lr_down` when it falls short;
    - on a bad surprise (NIS above its chi-square threshold, fitness below the prediction)
      sigma is multiplied by
      `sigma_surprise` (then relaxes back), the lr scale returns to 1, the optimizer's moments
      and the direction belief are reset: the old world's statistics are dropped.
    """

    def __init__(self, model: RWKV7, config: KalmanESConfig | None = None):
        super().__init__(model, config or KalmanESConfig())
        self.dim = sum(p.numel() for p in self.params)
        self.direction_belief = DirectionBelief(self.dim, self.config.direction)
        self.sigma_scale = 1.0
        self.noise_var: torch.Tensor | None = None  # Rbar: running variance of one estimate

    def _on_predict(self) -> None:
        db = self.direction_belief
        db.predict()
        if db.var is not None and self.noise_var is not None and self.config.drift_floor > 0:
            # the pooled drift estimate is dominated by the many weights whose gradient never
            # moves; a floor per coordinate keeps the relevant ones from being over-smoothed
            floor = self.config.drift_floor * self.noise_var.to(db.var.dtype)
            db.var = db.var + torch.clamp(floor - db.drift, min=0.0)

    def _sigma_scale(self) -> float:
        return self.sigma_scale

    def _direction(self, pop: Population, u: np.ndarray) -> tuple[list[torch.Tensor], float]:
        db = self.direction_belief
        if np.array_equal(u[0::2], u[1::2]):
            # every antithetic pair tied (common on a plateau): the estimate is exactly 0 with
            # a sample variance of 0, which is no evidence at all, not an exact measurement of
            # 0 (gain 1 would erase the direction). A missing measurement: predict only.
            m, gain = db.direction, 0.0
        else:
            grads, var = pop.gradient_variance(u)
            flat = torch.cat([grads[t.name].flatten() for t in self.targets])
            flat_var = torch.cat([var[t.name].flatten() for t in self.targets])
            b = self.config.noise_memory
            self.noise_var = flat_var.clone() if self.noise_var is None \
                else b * self.noise_var + (1 - b) * flat_var
            gain = float(db.update(flat, flat_var).gain.mean())
            m = db.direction
        m = m.to(self.params[0].dtype)
        out, i = [], 0
        for p in self.params:
            out.append(m[i:i + p.numel()].view_as(p))
            i += p.numel()
        return out, gain

    def _throttle(self, belief) -> float:
        c: KalmanESConfig = self.config
        if belief.surprised and belief.innovation < 0:  # worse than predicted: the world changed
            self._explore()
            return self.lr_scale
        self.sigma_scale = max(1.0, self.sigma_scale * c.sigma_relax)
        if c.adapt_lr and math.isfinite(belief.S):
            lo, hi = c.lr_scale_range
            factor = c.lr_up if belief.innovation >= 0 else c.lr_down
            self.lr_scale = min(max(self.lr_scale * factor, lo), hi)
        return self.lr_scale

    def _explore(self) -> None:
        """Drop the old world's statistics and widen the search."""
        c: KalmanESConfig = self.config
        self.sigma_scale = min(self.sigma_scale * c.sigma_surprise, c.sigma_scale_max)
        self.lr_scale = 1.0
        self.optimizer.state.clear()
        self.direction_belief = DirectionBelief(self.dim, c.direction)

    def world_changed(self) -> None:
        super().world_changed()
        self._explore()

    def _step(self, direction: list[torch.Tensor], lr: float) -> None:
        if self.config.step_rule == "optimizer":
            return super()._step(direction, lr)
        m = self.direction_belief.mean  # step_i = lr m_i / sqrt(m_i^2 + Rbar_i): |step_i| <= lr
        if m is None or self.noise_var is None:  # no evidence yet: every pair has tied so far
            return None
        snr_step = m / torch.sqrt(m * m + self.noise_var.to(m.dtype)).clamp_min(1e-30)
        with torch.no_grad():
            i = 0
            for p in self.params:
                p.mul_(1 - lr * self.config.weight_decay)
                p.add_(lr * snr_step[i:i + p.numel()].view_as(p).to(p.dtype))
                i += p.numel()
        return None

    def _extra_state(self) -> dict[str, Any]:
        return {"sigma_scale": self.sigma_scale,
                "direction_belief": self.direction_belief.to_dict(),
                "noise_var": None if self.noise_var is None
                else self.noise_var.float().numpy().tobytes()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.sigma_scale = float(state["sigma_scale"])
        self.direction_belief = DirectionBelief.from_dict(state["direction_belief"])
        nv = state["noise_var"]
        self.noise_var = None if nv is None else torch.from_numpy(
            np.frombuffer(nv, dtype=np.float32).copy())


STRATEGIES = {"lowrank": LowRankES, "kalman": KalmanES}
