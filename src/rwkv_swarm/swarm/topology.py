"""Who listens to whom: ring, k-regular, small-world (Watts-Strogatz, seeded) and full graphs
over n nodes, as sorted neighbour lists. Every graph is undirected, so a node absorbs the
reports of exactly the nodes that absorb its own."""

from __future__ import annotations

import numpy as np

KINDS = ("ring", "k-regular", "small-world", "full")


def _ring_lattice(n: int, k: int) -> set[tuple[int, int]]:
    """Each node joined to its k/2 nearest on either side (k even), as edges (a < b)."""
    return {tuple(sorted((i, (i + d) % n))) for i in range(n) for d in range(1, k // 2 + 1)
            if (i + d) % n != i}


def _lists(n: int, edges: set[tuple[int, int]]) -> list[list[int]]:
    out: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        out[a].add(b)
        out[b].add(a)
    return [sorted(s) for s in out]


def neighbours(kind: str, n: int, *, k: int = 2, rewire: float = 0.1, seed: int = 0
               ) -> list[list[int]]:
    """Neighbour lists of node 0..n-1. k: degree of "k-regular" and of the lattice that
    "small-world" rewires (even, < n); rewire: probability of rewiring each lattice edge."""
    if kind not in KINDS:
        raise ValueError(f"topology must be one of {KINDS}, got {kind!r}")
    if n < 1:
        raise ValueError(f"a swarm needs at least 1 node, got {n}")
    if kind == "full":
        return [[j for j in range(n) if j != i] for i in range(n)]
    if kind == "ring":
        return _lists(n, _ring_lattice(n, 2))
    if k < 2 or k % 2 or k >= n:
        raise ValueError(f"{kind} needs an even degree k with 2 <= k < nodes ({n}), got {k}")
    edges = _ring_lattice(n, k)
    if kind == "k-regular":
        return _lists(n, edges)
    if not 0.0 <= rewire <= 1.0:
        raise ValueError(f"rewire must be in [0, 1], got {rewire}")
    return _lists(n, _watts_strogatz(n, edges, rewire, seed))


def _watts_strogatz(n: int, edges: set[tuple[int, int]], p: float, seed: int
                    ) -> set[tuple[int, int]]:
    """Rewire each lattice edge (i, j) to (i, random m) with probability p, avoiding self loops
    and duplicate edges (Watts & Strogatz 1998), in a fixed order so a seed fixes the graph."""
    rng = np.random.default_rng(seed)
    out = set(edges)
    for a, b in sorted(edges):
        if rng.random() >= p:
            continue
        choices = [m for m in range(n) if m != a and tuple(sorted((a, m))) not in out]
        if choices:
            out.discard((a, b))
            out.add(tuple(sorted((a, int(rng.choice(choices))))))
    return out
