"""What a node tells its neighbours about one generation, and how a neighbour's report becomes
evidence about this node's gradient, without any weights changing hands.

A `Report` (the wire's `fitness` message) names the population by its seed, sigma, size, rank
and perturbed groups, and carries the fitness of the members its sender evaluated: raw (so a
consensus group can shape the union of its members' populations) and shaped. Any node of the
same architecture regenerates the low-rank noise from the seed (`replay`). The `perturbation`
key (a hash of the architecture, rank and groups) makes a mismatched report refusable before
any work, the `fingerprint` names the weights the mutants were drawn around, and the `sketch`
(a count sketch of the evolvable weights) lets a receiver estimate how far apart two nodes'
weights are: ||sketch_a - sketch_b||^2 estimates ||theta_a - theta_b||^2 without bias.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..kalman import FitnessBelief
from ..kernels import RWKV7, Population
from .fusion import Evidence
from .shaping import derive_seed
from .strategy import Mutants, Strategy
from .wire import Message, ProtocolError, message

SKETCH_SEED = 0x5EED  # the sketch's buckets and signs: the same on every node


def fingerprint(model: RWKV7) -> bytes:
    """16 bytes that differ for any two different weight sets (blake2b over every tensor).

    Kept with the model until a parameter changes (its data pointer or PyTorch's version
    counter, which every in-place update bumps): a node asks at every generation's start and
    end, and the weights change once in between."""
    params = list(model.named_parameters())
    key = [(p.data_ptr(), p._version) for _, p in params]
    memo = getattr(model, "_fingerprint", None)
    if memo is not None and memo[0] == key:
        return memo[1]
    h = hashlib.blake2b(digest_size=16)
    for name, p in params:
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    model._fingerprint = (key, h.digest())
    return model._fingerprint[1]


def perturbation_key(model: RWKV7, rank: int, include: tuple[str, ...]) -> bytes:
    """8 bytes naming what a seed's noise means: the architecture, the rank and the groups."""
    text = json.dumps([model.config.to_dict(), rank, sorted(include)], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


class WeightSketch:
    """A count sketch of a flat weight vector: coordinate i adds s_i x_i to bucket b_i, with
    b_i uniform over `size` buckets and s_i = +-1, both fixed by SKETCH_SEED. E ||S x||^2 =
    ||x||^2, with a relative standard deviation of about sqrt(2 / size)."""

    def __init__(self, dim: int, size: int):
        rng = np.random.Generator(np.random.Philox(key=derive_seed(SKETCH_SEED, dim, size)))
        self.size = size
        self.bucket = torch.from_numpy(rng.integers(0, size, dim))
        self.sign = torch.from_numpy(rng.integers(0, 2, dim).astype(np.float32) * 2 - 1)

    def __call__(self, params: list[torch.Tensor]) -> np.ndarray:
        flat = torch.cat([p.detach().flatten().float().cpu() for p in params])
        out = torch.zeros(self.size).index_add_(0, self.bucket, flat * self.sign)
        return out.numpy()


@dataclass(frozen=True)
class Report:
    """One node's generation, as its neighbours receive it (the wire's `fitness` message)."""

    node: str
    generation: int
    seed: int
    sigma: float
    size: int  # mutants in the whole population (a consensus group's, for a group member)
    first: int  # the first member reported; raw/shaped cover first .. first + len(raw)
    rank: int
    include: tuple[str, ...]
    perturbation: bytes
    fingerprint: bytes
    sketch: np.ndarray  # float32 (k,)
    raw: np.ndarray  # float64, NaN where a member's fitness was not finite
    shaped: np.ndarray  # float32
    belief_mean: float
    belief_var: float
    obs_stats: tuple[float, np.ndarray, np.ndarray] | None = None  # (count, mean, m2)

    def to_message(self, swarm: str) -> Message:
        valid = np.isfinite(self.raw)
        arrays = {"raw": np.where(valid, self.raw, 0.0).astype(np.float64),
                  "valid": valid.astype(np.uint8), "shaped": self.shaped.astype(np.float32),
                  "sketch": self.sketch.astype(np.float32)}
        if self.obs_stats is not None:
            count, mean, m2 = self.obs_stats
            arrays.update(obs_count=np.array([count], dtype=np.float64),
                          obs_mean=np.asarray(mean, np.float64), obs_m2=np.asarray(m2, np.float64))
        return message("fitness", swarm=swarm, node=self.node, gen=self.generation,
                       arrays=arrays, seed=self.seed, sigma=self.sigma, size=self.size,
                       first=self.first, rank=self.rank, include=list(self.include),
                       perturbation=self.perturbation, fingerprint=self.fingerprint,
                       belief_mean=self.belief_mean if math.isfinite(self.belief_var) else 0.0,
                       belief_var=self.belief_var if math.isfinite(self.belief_var) else 0.0)

    @classmethod
    def from_message(cls, msg: Message) -> Report:
        """The report a decoded `fitness` message carries (arrays copied out of the frames)."""
        if msg.type != "fitness":
            raise ProtocolError("type", f"expected a fitness message, got {msg.type!r}")
        f, a = msg.fields, msg.arrays
        raw = np.where(a["valid"].astype(bool), a["raw"], np.nan)
        stats = None
        if "obs_count" in a:
            stats = (float(a["obs_count"][0]), a["obs_mean"].copy(), a["obs_m2"].copy())
        var = f["belief_var"] if f["belief_var"] > 0 else math.inf  # 0 on the wire: unknown
        return cls(msg.node, msg.gen, f["seed"], f["sigma"], f["size"], f["first"], f["rank"],
                   tuple(f["include"]), f["perturbation"], f["fingerprint"],
                   a["sketch"].copy(), raw, a["shaped"].copy(), f["belief_mean"], var, stats)


def report_of(node_id: str, mutants: Mutants, first: int, raw: np.ndarray, shaped: np.ndarray,
              perturbation: bytes, weights: bytes, sketch: np.ndarray, belief: FitnessBelief,
              obs_stats: tuple[float, np.ndarray, np.ndarray] | None = None) -> Report:
    """The report of members first .. first + len(raw) of `mutants`' population."""
    mu = mutants
    return Report(node_id, mu.generation, mu.seed, mu.sigma, mu.size, first, mu.rank,
                  tuple(mu.include), perturbation, weights, sketch,
                  np.asarray(raw, np.float64), np.asarray(shaped, np.float32),
                  float(belief.mean), float(belief.var), obs_stats)


def replay(report: Report, strategy: Strategy, sketch: np.ndarray) -> Evidence | None:
    """A neighbour's gradient estimate and its exact variance, rebuilt from its seed on this
    node's model (None when all its pairs tied: no evidence); raises ProtocolError("mismatch")
    when its noise would mean something else."""
    c = strategy.config
    key = perturbation_key(strategy.model, c.rank, tuple(c.include))
    if report.perturbation != key:
        raise ProtocolError("mismatch", f"report of {report.node!r} perturbs another model, rank "
                                        f"or groups (key {report.perturbation.hex()}, ours "
                                        f"{key.hex()}): its estimate is not of our gradient")
    if report.first != 0 or len(report.shaped) != report.size or report.size < 4:
        raise ProtocolError("mismatch", f"report of {report.node!r} covers members "
                                        f"[{report.first}, {report.first + len(report.raw)}) of "
                                        f"{report.size}; gossip replays whole populations")
    if report.sketch.shape != sketch.shape:
        raise ProtocolError("mismatch", f"sketch of {report.sketch.size} buckets, ours has "
                                        f"{sketch.size}")
    shaped = report.shaped.astype(np.float64)
    if np.array_equal(shaped[0::2], shaped[1::2]):
        return None
    pop = Population(strategy.model, report.seed, report.sigma, report.size, report.rank,
                     report.include)
    grad, var = pop.flat_gradient_variance(shaped)
    distance2 = float(np.sum((report.sketch.astype(np.float64) - sketch) ** 2))
    return Evidence(report.node, grad, var, distance2)
