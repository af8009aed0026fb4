"""Topologies: the graphs are what their names say, undirected, and small-world is seeded."""

from __future__ import annotations

import pytest

from rwkv_swarm.swarm.topology import neighbours


def edges(lists):
    return {(a, b) for a, ns in enumerate(lists) for b in ns}


@pytest.mark.parametrize("kind, n, k", [("ring", 5, 2), ("k-regular", 8, 4), ("full", 6, 2),
                                         ("small-world", 12, 4)])
def test_every_topology_is_undirected_without_self_loops(kind, n, k):
    lists = neighbours(kind, n, k=k, rewire=0.3, seed=1)
    e = edges(lists)
    assert all((b, a) in e for a, b in e) and all(a != b for a, b in e)


def test_ring_k_regular_and_full_have_their_degrees():
    assert neighbours("ring", 5) == [[1, 4], [0, 2], [1, 3], [2, 4], [0, 3]]
    assert all(len(ns) == 4 for ns in neighbours("k-regular", 9, k=4))
    assert all(len(ns) == 6 for ns in neighbours("full", 7))


def test_small_world_keeps_the_edge_count_and_is_seeded():
    lattice = edges(neighbours("k-regular", 20, k=4))
    a = neighbours("small-world", 20, k=4, rewire=0.3, seed=7)
    assert len(edges(a)) == len(lattice)
    assert edges(a) != lattice  # some edges moved
    assert a == neighbours("small-world", 20, k=4, rewire=0.3, seed=7)
    assert a != neighbours("small-world", 20, k=4, rewire=0.3, seed=8)
    assert edges(neighbours("small-world", 20, k=4, rewire=0.0)) == lattice


@pytest.mark.parametrize("args, message", [
    (("mesh", 4), "topology must be one of"),
    (("k-regular", 4, 3), "even degree k"),
    (("k-regular", 4, 4), "2 <= k < nodes"),
    (("full", 0), "at least 1 node"),
])
def test_bad_topologies_name_the_problem(args, message):
    kind, n, *k = args
    with pytest.raises(ValueError, match=message):
        neighbours(kind, n, k=k[0] if k else 2)
