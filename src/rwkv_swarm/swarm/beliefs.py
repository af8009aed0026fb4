"""The swarm's posterior over which node is best, and the migrations it allows.

Each node reports its fitness belief N(m_i, v_i) about its own weights. Nodes whose weights
are the same (a consensus group, or nodes that just adopted one source) hold beliefs about one
quantity whose errors are correlated (the same evaluations, or echoes of each other), so those
are fused with covariance intersection, never multiplied as if independent. Then, with the
lineages' fused beliefs independent Gaussians,

    P(i is best) = integral phi_i(x) prod_{j != i} Phi_j(x) dx

(1-D quadrature), and a migration is allowed only through a gate: the best lineage must be
best with probability >= gate, and better than the migrant with probability >= gate. Pure
noise (identical nodes) gives P(best) near 1/n and moves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..kalman import Gaussian, covariance_intersection

GRID = 1025  # quadrature points for P(best) over +-9 sd: the integrand is smooth
REACH = 9.0  # sds from its mean beyond which a lineage's density or CDF counts as 0 or 1
_SERIAL = 32_768  # elements torch computes in one thread (its parallel grain)


def ndtr(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF, elementwise."""
    return torch.special.ndtr(torch.from_numpy(np.asarray(z, np.float64))).numpy()


def _log_ndtr(z: np.ndarray) -> np.ndarray:
    """log of the standard normal CDF of each row of z, a block of rows at a time: each call
    stays under torch's grain for splitting work over threads, which a busy machine's other
    processes would otherwise stall (a swarm's coordinator shares its cores with nodes)."""
    out = np.empty_like(z)
    rows = max(1, _SERIAL // z.shape[1])
    for a in range(0, z.shape[0], rows):
        out[a:a + rows] = torch.special.log_ndtr(torch.from_numpy(z[a:a + rows])).numpy()
    return out


@dataclass(frozen=True)
class Summary:
    """What the coordinator knows of one node after a generation."""

    node: int
    lineage: str  # nodes with equal lineage hold beliefs about the same weights
    mean: float
    var: float


@dataclass(frozen=True)
class Migration:
    """dst adopts src's weights (and live state): the evidence behind it."""

    dst: int
    src: int
    p_best: float  # P(src's lineage is the best)
    p_better: float  # P(src's fitness > dst's)
    src_var: float  # the fused variance of src's lineage
    dst_var: float


def fuse_lineages(summaries: Sequence[Summary]) -> dict[str, tuple[float, float, list[int]]]:
    """{lineage: (mean, var, nodes)}: each lineage's beliefs fused by covariance intersection
    (a belief fused with copies of itself comes back unchanged)."""
    groups: dict[str, list[Summary]] = {}
    for s in summaries:
        if math.isfinite(s.mean) and math.isfinite(s.var) and s.var > 0:
            groups.setdefault(s.lineage, []).append(s)
    out = {}
    for key, members in groups.items():
        if len(members) == 1:  # a belief fused with nothing else is itself
            out[key] = (float(members[0].mean), float(members[0].var), [members[0].node])
            continue
        g = covariance_intersection([Gaussian(np.array([m.mean]), np.array([m.var]))
                                     for m in members])
        out[key] = (float(g.mean[0]), float(g.full_cov()[0, 0]), sorted(m.node for m in members))
    return out


def prob_best(means: Sequence[float], variances: Sequence[float]) -> np.ndarray:
    """P(i has the highest true value) for independent N(means[i], variances[i]).

    Only x above L = max(mean - 9 sd) matters (below it the lineage reaching L is almost surely
    above x), and a lineage whose mean + 9 sd is below L is best with P < 1e-18 and is almost
    surely below any such x: it gets 0 and leaves the product, so the quadrature runs over the
    lineages that can be best, on [L, max(mean + 9 sd)]."""
    mu, sd = np.asarray(means, float), np.sqrt(np.asarray(variances, float))
    if mu.size == 1:
        return np.ones(1)
    floor = float((mu - REACH * sd).max())
    live = np.flatnonzero(mu + REACH * sd >= floor)
    mu, sd = mu[live], sd[live]
    x = np.linspace(floor, float((mu + REACH * sd).max()), GRID)
    z = (x[None, :] - mu[:, None]) / sd[:, None]
    log_cdf = _log_ndtr(z)  # (n, grid)
    pdf = np.exp(-0.5 * z * z) / (sd[:, None] * math.sqrt(2 * math.pi))
    others = np.exp(log_cdf.sum(0, keepdims=True) - log_cdf)  # prod over j != i
    f = pdf * others
    p = ((f[:, 1:] + f[:, :-1]) * 0.5 * np.diff(x)).sum(1)  # trapezoid rule
    out = np.zeros(len(means))
    out[live] = p / p.sum()
    return out


def p_greater(m1: float, v1: float, m2: float, v2: float) -> float:
    """P(X1 > X2) for independent X1 ~ N(m1, v1), X2 ~ N(m2, v2)."""
    return float(ndtr(np.array((m1 - m2) / math.sqrt(v1 + v2))))


def lineage_p_best(fused: dict[str, tuple[float, float, list[int]]]
                   ) -> tuple[list[str], np.ndarray]:
    """The fused lineages (`fuse_lineages`, at least one) and each one's P(best)."""
    keys = list(fused)
    return keys, prob_best([fused[k][0] for k in keys], [fused[k][1] for k in keys])


def migrations(summaries: Sequence[Summary], gate: float, fraction: float,
               fused: dict[str, tuple[float, float, list[int]]] | None = None) -> list[Migration]:
    """Who adopts whom: the worst `fraction` of the nodes (by belief mean, at least one), each
    only if the best lineage is best with P >= gate and better than it with P >= gate.
    `fused` is `fuse_lineages(summaries)` where the caller has it already."""
    fused = fuse_lineages(summaries) if fused is None else fused
    if len(fused) < 2:
        return []
    keys, p = lineage_p_best(fused)
    best = keys[int(np.argmax(p))]
    if p.max() < gate:
        return []
    b_mean, b_var, b_nodes = fused[best]
    others = sorted((s for s in summaries if s.lineage != best and s.node not in b_nodes
                     and math.isfinite(s.var)), key=lambda s: s.mean)
    budget = max(1, int(fraction * len(summaries)))
    out = []
    for s in others[:budget]:
        better = p_greater(b_mean, b_var, s.mean, s.var)
        if better >= gate:
            out.append(Migration(s.node, b_nodes[0], float(p.max()), better, b_var, s.var))
    return out
