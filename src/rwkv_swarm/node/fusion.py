"""Folding neighbours' gradient estimates into a node's own (the gossip mode's rule).

A neighbour's estimate g_k, replayed from its seed (exchange.replay), measures the gradient at
its weights, not ours. Taken as a measurement of our gradient g it carries its own sampling
variance V_k (exact, from its population) plus a discrepancy D_k: the gradients of two weight
vectors a distance d_k apart differ by about H (theta_k - theta), per coordinate a variance
that grows with d_k^2. So D_k = lambda d_k^2, with lambda learned from the estimates
themselves: E[(g_k - g)^2] = V + V_k + D_k per coordinate, pooled over the d coordinates.

    fused information  I = 1/V + sum_k 1/(V_k + D_k),   fused g = (g/V + sum_k g_k/(V_k + D_k)) / I
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Evidence:
    """A neighbour's gradient estimate replayed on this node's model, as a measurement."""

    source: str
    gradient: torch.Tensor  # (d,)
    variance: torch.Tensor  # (d,) from the neighbour's own population
    distance2: float  # estimated squared distance between its weights and ours (0: the same)


@dataclass
class Discrepancy:
    """lambda in D_k = lambda d_k^2: exponentially weighted least squares through the origin of
    the pooled excess (mean over coordinates of (g_k - g)^2 - V - V_k) on d_k^2."""

    sxy: float = 0.0  # weighted sum of d^2 * excess
    sxx: float = 0.0  # weighted sum of d^4
    memory: float = 0.7  # weight kept per generation

    @property
    def slope(self) -> float:
        return max(self.sxy / self.sxx, 0.0) if self.sxx > 0 else 0.0

    def observe(self, distance2: float, excess: float) -> None:
        self.sxy = self.memory * self.sxy + distance2 * excess
        self.sxx = self.memory * self.sxx + distance2 * distance2

    def variance(self, distance2: float) -> float:
        return self.slope * distance2


def learn_discrepancy(grad: torch.Tensor, var: torch.Tensor, evidence: Sequence[Evidence],
                      discrepancy: Discrepancy) -> None:
    """Add this generation's excess of each neighbour's estimate over our own to `discrepancy`."""
    for e in evidence:
        if e.distance2 > 0:
            excess = float(((e.gradient - grad) ** 2 - var - e.variance).double().mean())
            discrepancy.observe(e.distance2, excess)


def fuse_estimates(grad: torch.Tensor | None, var: torch.Tensor | None,
                   evidence: Sequence[Evidence], discrepancy: Discrepancy,
                   min_var: float = 1e-30) -> tuple[torch.Tensor, torch.Tensor]:
    """Our estimate (grad, var) and the neighbours', weighted by information: (g, V) fused.
    grad None: we have no estimate of our own this generation (every pair tied)."""
    if grad is None or var is None:
        info = vec = torch.zeros_like(evidence[0].gradient)
    else:
        learn_discrepancy(grad, var, evidence, discrepancy)
        info = 1.0 / var.clamp_min(min_var)
        vec = grad * info
    for e in evidence:
        w = 1.0 / (e.variance + discrepancy.variance(e.distance2)).clamp_min(min_var)
        info = info + w
        vec = vec + e.gradient * w
    return vec / info, 1.0 / info


def mean_estimates(grad: torch.Tensor | None, var: torch.Tensor | None,
                   evidence: Sequence[Evidence]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain average of our estimate and the neighbours' (the baseline fusion): its
    variance as if the n estimates were independent, sum V_i / n^2."""
    grads = [e.gradient for e in evidence] + ([] if grad is None else [grad])
    variances = [e.variance for e in evidence] + ([] if var is None else [var])
    n = len(grads)
    return torch.stack(grads).mean(0), torch.stack(variances).sum(0) / (n * n)
