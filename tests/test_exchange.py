"""Nodes learning from each other without Ray: consensus groups equal one big node, gossip
folds neighbours' replayed estimates in, and reports survive the wire."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwkv_swarm.kernels import RWKV7Config
from rwkv_swarm.node import (
    Evidence,
    ExchangeConfig,
    KalmanESConfig,
    Node,
    NodeConfig,
    Relevance,
    Report,
    WeightSketch,
    decode,
    encode,
    fingerprint,
    fuse_estimates,
)

TINY = RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=4, output_dim=2, dim_w=8,
                   dim_a=8, dim_v=8, dim_g=8, dim_ffn=32)
CARTPOLE = {"kind": "gym", "id": "CartPole-v1"}


def over_the_wire(report: Report) -> Report:
    return Report.from_message(decode([bytes(f) for f in encode(report.to_message("s"))]))


def run_generation(nodes: list[Node]) -> list[dict]:
    """One generation of every node, each absorbing every other's report (in member order)."""
    for n in nodes:
        n.begin()
    for n in nodes:
        n.evaluate()
    reports = [over_the_wire(n.report()) for n in nodes]
    return [n.finish([r for r in reports if r.node != n.node_name]) for n in nodes]


def consensus_group(n: int, p: int, seed: int, env: dict, model: RWKV7Config = TINY
                    ) -> list[Node]:
    return [Node(NodeConfig(model=model, env=env, es=KalmanESConfig(population=p), seed=seed,
                            node_id=10 + k,
                            exchange=ExchangeConfig(mode="consensus", group=2, group_size=n,
                                                    member=k)))
            for k in range(n)]


@pytest.mark.parametrize("env", [CARTPOLE, {"kind": "signal", "lags": 3}], ids=["gym", "signal"])
def test_a_consensus_group_of_n_nodes_is_one_node_with_n_times_the_population(env):
    env_model = RWKV7Config(**{**TINY.to_dict(), "output_dim": 1}) if env["kind"] == "signal" \
        else TINY
    group = consensus_group(4, 8, seed=5, env=env, model=env_model)
    single = Node(NodeConfig(model=env_model, env=env, es=KalmanESConfig(population=32), seed=5,
                             node_id=2))  # an isolated node's lineage is its id: group 2's seeds
    for _ in range(5):
        rows = run_generation(group)
        row = single.generation()
        prints = {fingerprint(n.model) for n in group}
        assert len(prints) == 1, "the group's weights drifted apart"
        for a, b in zip(group[0].model.parameters(), single.model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert all(r["fitness_mean"] == pytest.approx(row["fitness_mean"], abs=1e-6)
                   for r in rows)
        assert all(r["missing"] == 0 and r["refused"] == 0 for r in rows)


def test_a_consensus_member_missing_a_slice_counts_it_and_another_generation_is_refused():
    group = consensus_group(3, 8, seed=1, env=CARTPOLE)
    for n in group:
        n.begin()
        n.evaluate()
    reports = [n.report() for n in group]
    row = group[0].finish([reports[1]])  # member 2's report never came
    assert row["missing"] == 1
    for n in group[1:]:
        n.finish([])
    for n in group:
        n.begin()
        n.evaluate()
    late = group[1].finish([reports[0]])  # last generation's report: out of step
    assert late["refused"] == 1 and group[1].refused["out_of_step"] == 1


def test_gossip_replays_neighbours_updates_from_their_seeds_and_drifts_apart():
    model = RWKV7Config(**{**TINY.to_dict(), "output_dim": 1})
    nodes = [Node(NodeConfig(model=model, env={"kind": "signal", "lags": 3},
                             es=KalmanESConfig(population=16), seed=2, node_id=k,
                             exchange=ExchangeConfig(mode="gossip")))
             for k in range(3)]
    start = {fingerprint(n.model) for n in nodes}
    assert len(start) == 1, "gossiping nodes start from one ancestor"
    for _ in range(3):
        rows = run_generation(nodes)
    assert all(r["absorbed"] == 2 and r["refused"] == 0 for r in rows)
    assert len({fingerprint(n.model) for n in nodes}) == 3, "their own noise sets them apart"


def test_a_report_of_another_model_or_groups_is_refused_and_counted():
    nodes = [Node(NodeConfig(model=TINY, env=CARTPOLE, es=KalmanESConfig(population=8,
                                                                      include=include),
                             node_id=k, exchange=ExchangeConfig(mode="gossip")))
             for k, include in enumerate([("matrices",), ("matrices", "head")])]
    rows = run_generation(nodes)
    assert [r["absorbed"] for r in rows] == [0, 0]
    assert [n.refused["mismatch"] for n in nodes] == [1, 1]


def test_a_report_round_trips_through_the_wire_with_nan_fitness_kept():
    node = Node(NodeConfig(model=TINY, env=CARTPOLE, es=KalmanESConfig(population=8)))
    node.begin()
    node.evaluate()
    node._fitness[3] = np.nan  # a diverged mutant
    report = node.report()
    got = over_the_wire(report)
    assert got.node == "node-0" and got.generation == 0 and got.size == 8
    assert np.isnan(got.raw[3]) and np.array_equal(got.raw[~np.isnan(got.raw)],
                                                   report.raw[~np.isnan(report.raw)])
    assert np.array_equal(got.shaped, report.shaped) and np.array_equal(got.sketch, report.sketch)
    assert (got.seed, got.sigma, got.perturbation, got.fingerprint, got.include) == \
        (report.seed, report.sigma, report.perturbation, report.fingerprint, report.include)


def test_the_weight_sketch_estimates_squared_distances_without_bias():
    rng = torch.Generator().manual_seed(0)
    sketch = WeightSketch(5000, 64)
    ratios = []
    for _ in range(200):
        a, b = torch.randn(5000, generator=rng), torch.randn(5000, generator=rng)
        est = float(np.sum((sketch([a]) - sketch([b])) ** 2))
        ratios.append(est / float(((a - b) ** 2).sum()))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.05)  # sd of the mean ~ 0.18/sqrt(200)
    assert np.std(ratios) == pytest.approx(math.sqrt(2 / 64), rel=0.3)


def test_fusion_counts_a_same_weights_neighbour_fully_and_learns_how_much_others_share():
    d = 3000
    g, var = torch.zeros(d), torch.ones(d)
    same = Evidence("same", torch.ones(d), torch.ones(d), distance2=0.0)
    fused, fused_var = fuse_estimates(g, var, [same], Relevance())
    assert torch.allclose(fused, torch.full((d,), 0.5)) and torch.allclose(fused_var,
                                                                           torch.full((d,), 0.5))
    rng = torch.Generator().manual_seed(1)
    truth = torch.randn(d, generator=rng) * 0.3  # a weak signal under unit noise per estimate
    reference = truth.clone()  # what a node's filter accumulates over generations
    relevance = Relevance()
    for _ in range(40):
        own = truth + torch.randn(d, generator=rng)
        half = Evidence("half", 0.5 * truth + torch.randn(d, generator=rng), torch.ones(d), 1.0)
        other = Evidence("other", torch.randn(d, generator=rng) * 0.3 +
                         torch.randn(d, generator=rng), torch.ones(d), 1.0)
        fuse_estimates(own, var, [half, other], relevance, reference)
    assert relevance.rho("half", 1.0) == pytest.approx(0.5, abs=0.1)
    assert relevance.rho("other", 1.0) < 0.1
    _, v = fuse_estimates(own, var, [half], relevance, reference)
    rho = relevance.rho("half", 1.0)
    assert float(v.mean()) == pytest.approx(1 / (1 + rho * rho), rel=1e-5)
