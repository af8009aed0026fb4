"""Synthetic processes behind `SignalEnv`: configs (frozen) and their stateful generators.

Each generator produces clean values of roughly unit scale, one per stream step, and can be
retuned (new frequencies, same phase) without a jump. Generators draw randomness only from the
generator passed in, so a stream is a function of its seed and the signals applied.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from ...util.codec import decode_array, encode_array
from ._util import finite

TWO_PI = 2.0 * math.pi


def _doc(text: str, default: Any) -> Any:
    return field(default=default, metadata={"doc": text})


def _floats(name: str, values: Any, *, low: float | None = None, strict: bool = False,
            high: float | None = None) -> tuple[float, ...]:
    if isinstance(values, (int, float, np.integer, np.floating)):
        values = (values,)
    try:
        out = tuple(finite(f"{name}[{i}]", v, low=low, strict=strict)
                    for i, v in enumerate(values))
    except TypeError:
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if not out:
        raise ValueError(f"{name} must not be empty")
    if high is not None and any(v >= high for v in out):
        raise ValueError(f"{name} must all be < {high}, got {out}")
    return out


@dataclass(frozen=True)
class Sines:
    """Sum of sines: sum_k amps[k] * sin(phase_k), phase_k advancing 2*pi*freqs[k] per step."""

    name: ClassVar[str] = "sines"
    freqs: tuple[float, ...] = _doc("cycles per step, each in (0, 0.5)", (0.021, 0.047, 0.113))
    amps: tuple[float, ...] | None = _doc("amplitude per component; None: 1.0 each", None)
    phases: tuple[float, ...] | None = _doc("start phase per component (rad); None: 0", None)

    def __post_init__(self) -> None:
        freqs = _floats("freqs", self.freqs, low=0.0, strict=True, high=0.5)
        k = len(freqs)
        amps = (1.0,) * k if self.amps is None else _floats("amps", self.amps)
        phases = (0.0,) * k if self.phases is None else _floats("phases", self.phases)
        if len(amps) != k or len(phases) != k:
            raise ValueError(f"sines needs one amp and phase per frequency ({k}), got "
                             f"{len(amps)} amps and {len(phases)} phases")
        for n, v in (("freqs", freqs), ("amps", amps), ("phases", phases)):
            object.__setattr__(self, n, v)


@dataclass(frozen=True)
class AR:
    """Autoregressive AR(p): x_t = sum_j coeffs[j] x_{t-1-j} + e_t, e_t ~ N(0, 1), scaled to
    unit stationary variance."""

    name: ClassVar[str] = "ar"
    coeffs: tuple[float, ...] = _doc("AR coefficients phi_1..phi_p (must be stationary)",
                                     (1.6, -0.8))

    def __post_init__(self) -> None:
        coeffs = _floats("coeffs", self.coeffs)
        if _spectral_radius(coeffs) >= 1.0 - 1e-9:
            raise ValueError(f"AR coeffs {coeffs} are not stationary (companion matrix "
                             f"spectral radius {_spectral_radius(coeffs):.4g} >= 1)")
        object.__setattr__(self, "coeffs", coeffs)


@dataclass(frozen=True)
class MackeyGlass:
    """Mackey-Glass delay equation dx/dt = beta x(t-tau) / (1 + x(t-tau)^exponent) - gamma x,
    Euler-integrated with step dt, sampled every `sample_every` time units, and standardised
    with its long-run mean/std."""

    name: ClassVar[str] = "mackey_glass"
    tau: float = _doc("delay (17: mildly chaotic)", 17.0)
    beta: float = _doc("production rate", 0.2)
    gamma: float = _doc("decay rate", 0.1)
    exponent: float = _doc("Hill exponent", 10.0)
    dt: float = _doc("Euler step; tau / dt is rounded to whole steps", 0.1)
    sample_every: float = _doc("time between samples; rounded to whole dt steps", 1.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            finite(f.name, getattr(self, f.name), low=0.0, strict=True)
            object.__setattr__(self, f.name, float(getattr(self, f.name)))
        if self.dt > self.tau or self.dt > self.sample_every:
            raise ValueError(f"dt ({self.dt}) must not exceed tau ({self.tau}) or sample_every "
                             f"({self.sample_every})")


Process = Sines | AR | MackeyGlass
PROCESSES: dict[str, type[Process]] = {"sines": Sines, "ar": AR, "mackey_glass": MackeyGlass}


def process_params(name: str) -> dict[str, str]:
    """The parameters of process `name` with their meaning."""
    return {f.name: f.metadata.get("doc", "") for f in fields(PROCESSES[name])}


def make_process(name: str, params: dict[str, Any]) -> Process:
    """The process config `name` with `params`; ValueError listing accepted names/params."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; accepted: {sorted(PROCESSES)}")
    accepted = process_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for process {name!r}; accepted: "
                         f"{accepted}")
    return PROCESSES[name](**params)


def process_to_dict(p: Process) -> dict[str, Any]:
    """{"name": ..., params} with plain python values (tuples as lists)."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()}
    return {"name": p.name, **d}


def process_from_dict(d: dict[str, Any]) -> Process:
    params = dict(d)
    return make_process(params.pop("name"), params)


def _spectral_radius(coeffs: tuple[float, ...]) -> float:
    p = len(coeffs)
    companion = np.zeros((p, p))
    companion[0] = coeffs
    companion[1:, :-1] = np.eye(p - 1)
    return float(np.max(np.abs(np.linalg.eigvals(companion))))


def _ar_std(coeffs: tuple[float, ...]) -> float:
    """Stationary std of AR(coeffs) with unit innovations (discrete Lyapunov equation)."""
    p = len(coeffs)
    a = np.zeros((p, p))
    a[0] = coeffs
    a[1:, :-1] = np.eye(p - 1)
    q = np.zeros((p, p))
    q[0, 0] = 1.0
    cov = np.linalg.solve(np.eye(p * p) - np.kron(a, a), q.reshape(-1)).reshape(p, p)
    return math.sqrt(cov[0, 0])


class SinesGen:
    """Keeps each component's phase so that retuning frequencies never jumps."""

    def __init__(self, cfg: Sines, rng: np.random.Generator) -> None:
        self.retune(cfg)
        # the phase of the last value produced; each value first advances it with the freqs in
        # force, so a retune changes the very next increment. Start one step back so that the
        # first value has phase `phases`.
        self.phase = np.asarray(cfg.phases, dtype=np.float64) - TWO_PI * self.freqs

    def retune(self, cfg: Sines) -> None:
        self.freqs, self.amps = np.asarray(cfg.freqs), np.asarray(cfg.amps)

    def generate(self, count: int, rng: np.random.Generator) -> np.ndarray:
        step = TWO_PI * self.freqs
        ph = self.phase[None, :] + step[None, :] * np.arange(1, count + 1)[:, None]
        self.phase = np.mod(ph[-1], TWO_PI)  # bounded phase, same sines
        return np.sin(ph) @ self.amps

    def state(self) -> dict[str, Any]:
        return {"phase": encode_array(self.phase)}

    def load(self, state: dict[str, Any]) -> None:
        phase = decode_array(state["phase"])
        if phase.shape != self.freqs.shape:
            raise ValueError(f"sines state has {phase.size} phases, process has "
                             f"{self.freqs.size} components")
        self.phase = phase


class ARGen:
    """Latent AR history (newest first), burnt in from zero so it starts near stationarity."""

    BURN_IN = 500

    def __init__(self, cfg: AR, rng: np.random.Generator) -> None:
        self.retune(cfg)
        self.hist = [0.0] * len(cfg.coeffs)
        self.generate(self.BURN_IN, rng)

    def retune(self, cfg: AR) -> None:
        if hasattr(self, "hist") and len(cfg.coeffs) != len(self.hist):
            raise ValueError("an AR retune must keep the order p")
        self.coeffs, self.scale = cfg.coeffs, 1.0 / _ar_std(cfg.coeffs)

    def generate(self, count: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(count)
        hist, coeffs = self.hist, self.coeffs
        for t, e in enumerate(rng.standard_normal(count).tolist()):
            x = e + sum(c * h for c, h in zip(coeffs, hist, strict=True))
            hist = [x, *hist[:-1]]
            out[t] = x
        self.hist = hist
        return out * self.scale

    def state(self) -> dict[str, Any]:
        return {"hist": encode_array(np.asarray(self.hist))}

    def load(self, state: dict[str, Any]) -> None:
        hist = decode_array(state["hist"]).tolist()
        if len(hist) != len(self.coeffs):
            raise ValueError(f"AR state has order {len(hist)}, process has {len(self.coeffs)}")
        self.hist = hist


@functools.lru_cache(maxsize=32)
def _mg_moments(tau: float, beta: float, gamma: float, exponent: float, dt: float) -> tuple:
    """Long-run mean and std of Mackey-Glass from the classic constant history 1.2."""
    ring, x, i = [1.2] * max(1, round(tau / dt)), 1.2, 0
    n_burn, n_keep = round(500 / dt), round(2000 / dt)
    total = total2 = 0.0
    for k in range(n_burn + n_keep):
        xd = ring[i]
        ring[i] = x
        i = (i + 1) % len(ring)
        x += dt * (beta * xd / (1.0 + xd**exponent) - gamma * x)
        if k >= n_burn:
            total, total2 = total + x, total2 + x * x
    mean = total / n_keep
    return mean, math.sqrt(max(total2 / n_keep - mean * mean, 1e-12))


class MackeyGlassGen:
    """Delay ring buffer of x over the last tau; a seeded perturbation of the constant 1.2
    initial history, then a burn-in onto the attractor."""

    BURN_IN = 300  # samples

    def __init__(self, cfg: MackeyGlass, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.ring = (1.2 + 0.1 * rng.uniform(-1.0, 1.0, max(1, round(cfg.tau / cfg.dt)))).tolist()
        self.x, self.i = 1.2, 0
        self.retune(cfg)
        self.generate(self.BURN_IN, rng)

    def retune(self, cfg: MackeyGlass) -> None:
        if round(cfg.tau / cfg.dt) != len(self.ring):
            raise ValueError("a Mackey-Glass retune must keep tau / dt")
        self.cfg = cfg
        self.mean, self.std = _mg_moments(cfg.tau, cfg.beta, cfg.gamma, cfg.exponent, cfg.dt)

    def generate(self, count: int, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        sub = max(1, round(c.sample_every / c.dt))
        ring, x, i, h = self.ring, self.x, self.i, len(self.ring)
        out = np.empty(count)
        for t in range(count):
            for _ in range(sub):
                xd = ring[i]
                ring[i] = x
                i = i + 1 if i + 1 < h else 0
                x += c.dt * (c.beta * xd / (1.0 + xd**c.exponent) - c.gamma * x)
            out[t] = x
        self.x, self.i = x, i
        return (out - self.mean) / self.std

    def state(self) -> dict[str, Any]:
        return {"ring": encode_array(np.asarray(self.ring)), "x": self.x, "i": self.i}

    def load(self, state: dict[str, Any]) -> None:
        ring = decode_array(state["ring"]).tolist()
        if len(ring) != len(self.ring):
            raise ValueError(f"Mackey-Glass state has {len(ring)} delay steps, process has "
                             f"{len(self.ring)}")
        self.ring, self.x, self.i = ring, float(state["x"]), int(state["i"])


Generator = SinesGen | ARGen | MackeyGlassGen
_GENERATORS: dict[str, type[Generator]] = {"sines": SinesGen, "ar": ARGen,
                                           "mackey_glass": MackeyGlassGen}


def make_generator(cfg: Process, rng: np.random.Generator) -> Generator:
    """A fresh generator for `cfg`, started (and burnt in) from `rng`."""
    return _GENERATORS[cfg.name](cfg, rng)  # type: ignore[arg-type]
