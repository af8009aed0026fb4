"""Ask/tell evolution strategies over an RWKV-7's weights (`LowRankES`; `KalmanES` in
kalman_es.py).

    strategy = KalmanES(model, KalmanESConfig(population=64))
    for _ in range(generations):
        mutants = strategy.ask()                       # seed, sigma, P, rank: the population
        fitness = evaluate(strategy.population)        # (P,) one value per mutant
        info = strategy.tell(fitness)                  # shaping, update, beliefs; a trace row

`tell` is `step(measure(fitness))`: `measure` shapes the fitness and updates the beliefs, `step`
moves the weights. Between the two a swarm node hands its measurement to its neighbours and
folds theirs in (`step(measured, absorbed=[...])`, see exchange.py): a neighbour's update is
replayed from its seed, never from its weights.

The shared work (seeds, validation, shaping, the gradient, the optimizer, the fitness belief)
is in `Strategy`; subclasses override `_sigma_scale`, `_direction`, `_throttle` and `_step`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ..kalman import FitnessBelief, FitnessConfig, FitnessUpdate
from ..kernels import RWKV7, Population
from ..kernels.population import targets_for
from .fusion import Evidence, Relevance, fuse_estimates, mean_estimates
from .optim import OPTIMIZERS, Calibration, make_optimizer
from .shaping import SHAPINGS, derive_seed, pair_means

WORLD_CHANGE_INFLATION = 100.0  # fitness-belief variance factor when the search itself changes
DRAW_AHEAD = 2  # generations whose noise `draw_ahead` may hold, drawn before they are asked for
DRAW_AHEAD_FLOATS = 1 << 22  # ... while a generation's noise is at most this many floats (16 MB;
# with the sums' products a drawn generation holds about three times that), else one
FUSIONS = ("kalman", "mean")


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
    # perturbed groups (kernels.model.GROUPS): the encoder and head with the block matrices
    # solved CartPole in 5/5 seeds, median 768 episodes, against 1088 for the matrices alone
    include: tuple[str, ...] = ("matrices", "head", "embedding")
    seed: int = 0  # base seed; generation g draws noise from derive_seed(seed, stream, g)
    stream: int = 0  # e.g. the node index, so nodes of one swarm draw different noise
    fusion: str = "kalman"  # neighbours' estimates: "kalman" (by variance and distance) or
    # "mean" (plain average), see exchange.py
    # the fitness belief: its noise is identified from the innovations, since every mutant of a
    # stream segment shares the segment's difficulty (docs/kalman.md)
    fitness: FitnessConfig = field(
        default_factory=lambda: FitnessConfig(noise_model="identified"))

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
            raise ValueError(f"shaping must be one of {sorted(SHAPINGS)}, got {self.shaping!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not 0 <= self.weight_decay < 1 or not 0 <= self.momentum < 1:
            raise ValueError(f"weight_decay and momentum must be in [0, 1), got "
                             f"{self.weight_decay}, {self.momentum}")


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

    @property
    def key(self) -> tuple:
        """What the noise depends on: seed, size, rank and groups (not sigma)."""
        return (self.seed, self.size, self.rank, self.include)


@dataclass
class Measurement:
    """What one generation's evaluation showed: the fitness, its shaping, the belief update.

    The gradient estimate and its per-coordinate variance (flat, in target order) are computed
    on demand and kept, so that a generation draws its noise once."""

    mutants: Mutants
    population: Population
    fitness: np.ndarray  # (P,) raw; NaN/inf for mutants that diverged
    shaped: np.ndarray  # (P,) u, the weights of the gradient estimate
    belief: FitnessUpdate
    _grad: torch.Tensor | None = None
    _var: torch.Tensor | None = None

    @property
    def tied(self) -> bool:
        """Every antithetic pair tied: the estimate is exactly 0 and says nothing."""
        return bool(np.array_equal(self.shaped[0::2], self.shaped[1::2]))

    def gradient(self) -> torch.Tensor:
        """1/(P sigma) sum_j u_j s_j E_j, flat (d,)."""
        if self._grad is None:
            self._grad = self.population.flat_gradient(self.shaped)
        return self._grad

    def variance(self) -> torch.Tensor:
        """The estimate's exact per-coordinate variance, flat (d,)."""
        return self.estimate()[1]

    def estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(`gradient()`, `variance()`), computed together: one pass over the pairs' noise."""
        if self._var is None:
            self._grad, self._var = self.population.flat_gradient_variance(self.shaped)
        assert self._grad is not None
        return self._grad, self._var


@dataclass(frozen=True)
class StepInfo:
    """What one generation's step did: a trace row (NaN where a value does not apply)."""

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
    absorbed: int  # neighbours' estimates folded into this step
    tied: bool  # every antithetic pair tied: no evidence on the direction this generation

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # scalars: no deep copy


class Strategy:
    """Shared ask/measure/step machinery. Subclasses override `_sigma_scale`, `_direction`,
    `_throttle` and `_step`."""

    def __init__(self, model: RWKV7, config: ESConfig):
        self.model, self.config = model, config
        self.targets = targets_for(model, config.rank, config.include)
        params = dict(model.named_parameters())
        self.params = [params[t.name] for t in self.targets]
        self.sizes = [p.numel() for p in self.params]
        self.device = self.params[0].device  # the model's: estimates and beliefs live there
        self.dim = sum(self.sizes)
        self.generation = 0
        self.lr_scale = 1.0
        self.fitness_belief = FitnessBelief(config.fitness)
        self.expected_change = 0.0
        self.raw_prediction = 0.0  # g_raw . step of the last step, before calibration
        self.last_z: float | None = None  # last measured population mean fitness
        self.calibration = Calibration()
        self._pending: Mutants | None = None
        self._population: Population | None = None
        self._drawn: dict[tuple, Population] = {}  # draw_ahead's draws, by Mutants.key
        self._measured: Measurement | None = None
        self.relevance = Relevance()  # how much of each neighbour's signal is ours (fusion.py)
        self.reference: torch.Tensor | None = None  # an average of past directions
        c = config
        self.optimizer = make_optimizer(self.params, c.optimizer, c.lr, c.momentum, c.max_speed,
                                        c.weight_decay)

    # -- ask / measure / step -------------------------------------------------------------------

    def ask(self) -> Mutants:
        """This generation's mutants. The fitness belief predicts before they are evaluated."""
        c = self.config
        if self._pending is None:
            self.fitness_belief.predict(expected_change=self.expected_change)
            self._on_predict()
            self._pending = self._mutants(self.generation, c.sigma * self._sigma_scale())
            self._population = self._pending.population(self.model)
            drawn = self._drawn.pop(self._pending.key, None)
            if drawn is not None:
                self._population.adopt_draws(drawn)
        return self._pending

    def draw_ahead(self) -> bool:
        """One piece of the noise of the next `DRAW_AHEAD` generations not asked for yet,
        earliest first: its draw, then each product its step sums over (they depend on the
        seed alone, not on a step), then its transposes (what the native row kernel reads). A
        node waiting for its peers' reports has the time, and looks at its socket between
        pieces. `ask` takes them when their generation comes. Returns False when all of them
        are built already.

        Two ahead, not one: the member a generation waits for has no time to draw then, and
        without the draws of an earlier wait it would draw at the next generation's start
        while its peers wait. One only where a generation's noise is large."""
        first = self.generation + (self._pending is not None)
        noise = self.config.population // 2 * sum(t.size for t in self.targets)
        depth = DRAW_AHEAD if noise <= DRAW_AHEAD_FLOATS else 1
        ahead = [self._mutants(g, 1.0) for g in range(first, first + depth)]  # sigma: later
        keys = {m.key for m in ahead}
        self._drawn = {k: p for k, p in self._drawn.items() if k in keys}  # passed: dropped
        for m in ahead:
            drawn = self._drawn.get(m.key)
            if drawn is None:
                self._drawn[m.key] = drawn = m.population(self.model)
                _ = drawn.noise
                return True
            if drawn.prepare_sums() or drawn.prepare_transposes():
                return True
        return False

    def prepare_step(self) -> bool:
        """Build one of the products this generation's step sums over (the pending
        population's) now: a node waiting for its peers' reports has the time. Returns
        whether there was anything left to build."""
        return self._population is not None and self._population.prepare_sums()

    def _mutants(self, generation: int, sigma: float) -> Mutants:
        c = self.config
        return Mutants(generation, derive_seed(c.seed, c.stream, generation), sigma,
                       c.population, c.rank, tuple(c.include))

    @property
    def population(self) -> Population:
        """The pending generation's population (one per generation: its noise is drawn once)."""
        if self._population is None:
            raise RuntimeError("no pending generation: call ask() first")
        return self._population

    def measure(self, fitness: np.ndarray | list[float] | torch.Tensor) -> Measurement:
        """Fitness of each mutant (P,), higher is better: shaping and the fitness belief."""
        if self._pending is None or self._population is None:
            raise RuntimeError("measure() before ask(): call ask() to get this generation's "
                               "mutants")
        if self._measured is not None:
            raise RuntimeError("this generation is measured already: step() it first")
        f = np.asarray(torch.as_tensor(fitness).detach().cpu(), dtype=np.float64).reshape(-1)
        if f.shape[0] != self._pending.size:
            raise ValueError(f"#fitness values = {f.shape[0]} must equal #mutants = "
                             f"{self._pending.size} (one per mutant, in ask() order)")
        pairs = pair_means(f)
        if pairs.size < 2:
            raise ValueError(f"need at least 2 antithetic pairs with finite fitness, got "
                             f"{pairs.size} ({int((~np.isfinite(f)).sum())} of {f.size} mutants "
                             f"are NaN/inf)")
        belief = self.fitness_belief.update(pairs)
        if self.last_z is not None:  # how much of the last predicted change arrived
            self.calibration.observe(self.raw_prediction, belief.z - self.last_z)
        self.last_z = belief.z
        u = SHAPINGS[self.config.shaping](f)
        self._measured = Measurement(self._pending, self._population, f, u, belief)
        return self._measured

    def step(self, measured: Measurement | None = None,
             absorbed: Sequence[Evidence] = ()) -> StepInfo:
        """Move the weights by this generation's estimate, fused with `absorbed` neighbours'
        estimates (`exchange.replay`). Updates the weights in place."""
        m = self._measured if measured is None else measured
        if m is None or m is not self._measured:
            raise RuntimeError("step() needs this generation's measure() first")
        lr_scale = self._throttle(m.belief)  # first: a surprise resets what _direction filters
        direction, dgain = self._direction(m, list(absorbed))
        grad_norm = float(torch.linalg.vector_norm(direction.double()))
        before = self.flat_params()
        self._step(direction, self.config.lr * lr_scale)
        delta = self.flat_params() - before  # the step as taken, after rounding
        self.raw_prediction = self._predict_change(m, delta)
        self.expected_change = self.calibration.kappa * self.raw_prediction
        self._pending, self._population, self._measured = None, None, None
        self.generation += 1
        f, finite = m.fitness, np.isfinite(m.fitness)
        return StepInfo(
            generation=m.mutants.generation, fitness_mean=float(f[finite].mean()),
            fitness_std=float(f[finite].std()), fitness_max=float(f[finite].max()),
            fitness_min=float(f[finite].min()), nonfinite=int((~finite).sum()),
            sigma=m.mutants.sigma, lr=self.config.lr * lr_scale, grad_norm=grad_norm,
            step_norm=float(torch.linalg.vector_norm(delta.double())),
            belief_mean=self.fitness_belief.mean, belief_var=self.fitness_belief.var,
            gain=m.belief.gain, innovation=m.belief.innovation, nis=m.belief.nis,
            surprised=m.belief.surprised, direction_gain=dgain,
            expected_change=self.expected_change, absorbed=len(absorbed), tied=m.tied)

    def tell(self, fitness: np.ndarray | list[float] | torch.Tensor) -> StepInfo:
        """`step(measure(fitness))`: one generation without neighbours."""
        return self.step(self.measure(fitness))

    def _predict_change(self, m: Measurement, delta: torch.Tensor) -> float:
        """First-order prediction of the step's fitness change: g_raw . delta (flat), in raw
        units."""
        finite = np.isfinite(m.fitness)
        raw = np.where(finite, m.fitness - m.fitness[finite].mean(), 0.0)
        g_raw = m.population.flat_gradient(raw)
        return float(torch.dot(g_raw.double(), delta.double()))

    def flat_params(self) -> torch.Tensor:
        """The perturbed weights as one flat vector (d,) in target order (a copy)."""
        return torch.cat([p.detach().flatten() for p in self.params])

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat (d,) vector as tensors shaped like `params`, in their dtype (views where it
        is theirs already)."""
        flat = flat.to(self.params[0].dtype)
        return [v.view_as(p).to(p.dtype)
                for v, p in zip(flat.split(self.sizes), self.params, strict=True)]

    def _apply(self, flat: torch.Tensor, scale: float) -> None:
        """params += scale * flat, split back into the target tensors."""
        with torch.no_grad():
            torch._foreach_add_(self.params, self._split(flat), alpha=scale)

    def _step(self, direction: torch.Tensor, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for p, g in zip(self.params, self._split(-direction), strict=True):
            p.grad = g  # optimizers minimise; we ascend fitness
        self.optimizer.step()
        for p in self.params:
            p.grad = None

    def adopted(self, belief_mean: float, belief_var: float) -> None:
        """The weights were replaced by another node's: take its fitness belief; what was
        learned about the old weights' neighbourhood (optimizer moments, predictions) goes."""
        fb = self.fitness_belief
        fb.mean, fb.var = float(belief_mean), float(belief_var)
        self.optimizer.state.clear()
        self.expected_change, self.raw_prediction, self.last_z = 0.0, 0.0, None

    def world_changed(self) -> None:
        """The world is known to have changed (an injected signal): trust the past less."""
        if math.isfinite(self.fitness_belief.var):
            self.fitness_belief.inflate(WORLD_CHANGE_INFLATION)

    # -- hooks -------------------------------------------------------------------------------

    def _on_predict(self) -> None:
        pass

    def _sigma_scale(self) -> float:
        return 1.0

    def _direction(self, m: Measurement, absorbed: list[Evidence]) -> tuple[torch.Tensor, float]:
        """Search direction, flat (d,), and a mean direction gain (NaN if not filtered)."""
        if absorbed:
            fused = self.combine(m, absorbed)
            g = m.gradient() if fused is None else fused[0]
        else:
            g = m.gradient()
        ema = 0.9  # the reference direction rho is measured along: past directions, averaged
        self.reference = g.clone() if self.reference is None else ema * self.reference + \
            (1 - ema) * g
        return g, math.nan

    def combine(self, m: Measurement, absorbed: list[Evidence]
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This generation's estimate with the neighbours' (config.fusion): (g, V) flat, None
        when nothing was measured. A generation whose pairs all tied contributes nothing of
        its own (its variance of 0 would claim an exact gradient of 0)."""
        g, v = (None, None) if m.tied else m.estimate()
        if self.config.fusion == "mean":
            return mean_estimates(g, v, absorbed) if g is not None or absorbed else None
        return fuse_estimates(g, v, absorbed, self.relevance, self._reference())

    def _reference(self) -> torch.Tensor | None:
        """The direction a neighbour's relevance is measured along (KalmanES: its filter's)."""
        return self.reference

    def _throttle(self, belief: FitnessUpdate) -> float:
        """lr scale for this step."""
        return 1.0

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that decides the next generations (msgpack-friendly)."""
        if self._pending is not None:
            raise RuntimeError("checkpoint between generations: step() the pending mutants "
                               "first")
        buf = io.BytesIO()
        torch.save(self.optimizer.state_dict(), buf)
        return {"generation": self.generation, "lr_scale": self.lr_scale,
                "expected_change": self.expected_change, "raw_prediction": self.raw_prediction,
                "last_z": self.last_z, "calibration": asdict(self.calibration),
                "optimizer": buf.getvalue(), "fitness_belief": self.fitness_belief.to_dict(),
                "relevance": asdict(self.relevance),
                "reference": host_bytes(self.reference), **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        self.lr_scale = float(state["lr_scale"])
        self.expected_change = float(state["expected_change"])
        self.raw_prediction = float(state["raw_prediction"])
        self.last_z = state["last_z"]
        self.calibration = Calibration(**state["calibration"])
        # moments load on the host; load_state_dict moves them to the parameters' device
        self.optimizer.load_state_dict(torch.load(io.BytesIO(state["optimizer"]),
                                                  map_location="cpu", weights_only=True))
        self.fitness_belief = FitnessBelief.from_dict(state["fitness_belief"])
        self.relevance = Relevance(**state["relevance"])
        self.reference = device_vector(state["reference"], self.device)
        self._pending, self._population, self._measured = None, None, None
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def host_bytes(t: torch.Tensor | None) -> bytes | None:
    """A (d,) vector as float32 bytes on the host (None stays None): state leaving the node."""
    return None if t is None else t.detach().float().cpu().numpy().tobytes()


def device_vector(blob: bytes | None, device: torch.device) -> torch.Tensor | None:
    """The vector `host_bytes` wrote, on `device`."""
    if blob is None:
        return None
    return torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy()).to(device)


class LowRankES(Strategy):
    """EGGROLL-style OpenAI-ES: antithetic low-rank mutants, shaped fitness, SGD or Adam."""

    def __init__(self, model: RWKV7, config: ESConfig | None = None):
        super().__init__(model, config or ESConfig())
