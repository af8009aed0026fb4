"""Folding neighbours' gradient estimates into a node's own (the gossip mode's rule).

A neighbour's estimate g_k, replayed from its seed (exchange.replay), measures the gradient at
its weights, not ours. Modelled as a measurement of our gradient g,

    g_k = rho_k g + n_k,     n_k ~ N(0, V_k)   (V_k exact, from its own population)

rho_k in [0, 1] is how much of the neighbour's signal is ours: 1 for the same weights (equal
fingerprints, sketch distance 0), falling as the weights drift apart. The optimal use of such a
measurement is g_k / rho_k with variance V_k / rho_k^2, so

    I = 1/V + sum_k rho_k^2 / V_k,      g_fused = (g/V + sum_k rho_k g_k / V_k) / I

rho_k is estimated along this node's own filtered direction m (accumulated over generations,
so its signal is far above one estimate's noise): E<g_k, m> = rho_k E<g, m>, so
rho_k = sum <g_k, m> / sum <g, m> over past generations (exponentially weighted). Per
coordinate, a single estimate here is nearly pure noise (|g|/sd about 0.86, cosine between
neighbours' estimates about 0.01), which is why an excess-variance test per coordinate could
not see neighbours drift away and averaging them in hurt (docs/swarm.md has the measurements).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

MIN_RHO = 0.05  # below, a neighbour's estimate carries under 0.25% of an own one's information


@dataclass(frozen=True)
class Evidence:
    """A neighbour's gradient estimate replayed on this node's model, as a measurement."""

    source: str
    gradient: torch.Tensor  # (d,)
    variance: torch.Tensor  # (d,) from the neighbour's own population
    distance2: float  # estimated squared distance between its weights and ours (0: the same)


@dataclass
class Relevance:
    """rho_k per neighbour: exponentially weighted sums of <g_k, m> and <g, m> (m: this node's
    filtered direction, normalised), plain values so that it checkpoints as it is."""

    sums: dict[str, list[float]] = field(default_factory=dict)  # source -> [num, den]
    memory: float = 0.8  # weight kept per generation

    def rho(self, source: str, distance2: float) -> float:
        if distance2 == 0.0:
            return 1.0  # the same weights: the same gradient
        num, den = self.sums.get(source, (0.0, 0.0))
        return min(max(num / den, 0.0), 1.0) if den > 0 else 0.0

    def observe(self, own: torch.Tensor, evidence: Sequence[Evidence],
                direction: torch.Tensor | None) -> None:
        """Add this generation's projections on `direction` (before this generation's step)."""
        if direction is None or own is None:
            return
        norm = float(torch.linalg.vector_norm(direction))
        if norm == 0.0:
            return
        unit = direction.double() / norm
        mine = float(torch.dot(own.double(), unit))
        for e in evidence:
            num, den = self.sums.get(e.source, (0.0, 0.0))
            theirs = float(torch.dot(e.gradient.double(), unit))
            self.sums[e.source] = [self.memory * num + theirs, self.memory * den + mine]


def fuse_estimates(grad: torch.Tensor | None, var: torch.Tensor | None,
                   evidence: Sequence[Evidence], relevance: Relevance,
                   direction: torch.Tensor | None = None, min_var: float = 1e-30
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Our estimate (grad, var) and the neighbours', weighted by information: (g, V) fused,
    or None when there is no evidence at all. grad None: we have no estimate of our own this
    generation (every pair tied). `direction`: our filtered direction before this generation
    (what rho is estimated along)."""
    relevance.observe(grad, evidence, direction)
    if grad is None or var is None:
        info = vec = torch.zeros_like(evidence[0].gradient)
    else:
        info = 1.0 / var.clamp_min(min_var)
        vec = grad * info
    for e in evidence:
        rho = relevance.rho(e.source, e.distance2)
        if rho < MIN_RHO:
            continue
        w = 1.0 / e.variance.clamp_min(min_var)  # g_k / rho with variance V_k / rho^2
        info = info + rho * rho * w
        vec = vec + rho * e.gradient * w
    if grad is None and not bool((info > 0).any()):
        return None
    info = info.clamp_min(min_var)
    return vec / info, 1.0 / info


def mean_estimates(grad: torch.Tensor | None, var: torch.Tensor | None,
                   evidence: Sequence[Evidence]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain average of our estimate and the neighbours' (the baseline fusion): its
    variance as if the n estimates were independent, sum V_i / n^2."""
    grads = [e.gradient for e in evidence] + ([] if grad is None else [grad])
    variances = [e.variance for e in evidence] + ([] if var is None else [var])
    n = len(grads)
    return torch.stack(grads).mean(0), torch.stack(variances).sum(0) / (n * n)
