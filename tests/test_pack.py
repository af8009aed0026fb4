"""Nodes packed in one process (`NodePack`, what one node actor hosts): each keeps its own
identity on the wire, a "generation" sends every report before any node waits, one node's
failure is its own result and leaves its pack-mates as they were, a node restarts in its slot;
`resources.nodes_per_actor` resolves to the rule docs/config.md states."""

from __future__ import annotations

import math

import pytest

from rwkv_swarm.cluster import pack as pack_module
from rwkv_swarm.cluster.host import PhaseError, in_batches
from rwkv_swarm.cluster.pack import NodePack, NodeSpec
from rwkv_swarm.node import KalmanESConfig, SwarmKeyring
from rwkv_swarm.node.exchange import fingerprint
from rwkv_swarm.swarm import Resources, SwarmConfig
from rwkv_swarm.util.configio import ConfigError

SIGNAL_ENV = {"kind": "signal", "lags": 3}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def pack():
    """Three gossip nodes in a ring, all in one pack, over real sockets."""
    cfg = SwarmConfig(nodes=3, env=SIGNAL_ENV, es=KalmanESConfig(population=8))
    configs = cfg.node_configs()
    ring, keys = SwarmKeyring.generate([f"node-{c.node_id}" for c in configs])
    p = NodePack("run", host="127.0.0.1", keyring=ring)
    specs = [NodeSpec(c, keys[f"node-{c.node_id}"]) for c in configs]
    endpoints = p.start([0, 1, 2], specs)
    names = [e["name"] for e in endpoints]
    p.tell("connect", None, (endpoints,))
    p.call("set_peers", [0, 1, 2], [([n for n in names if n != m], []) for m in names])
    yield p, specs
    p.close()


def test_a_generation_sends_every_report_before_any_packed_node_waits(pack):
    p, _ = pack
    rows = p.call("generation", [0, 1, 2], [(30.0,)] * 3)
    assert [r["name"] for r in rows] == ["node-0", "node-1", "node-2"]
    assert all(r["absorbed_from"] == 2 and r["wait_s"] < 5 for r in rows)
    # every message crossed a socket and was counted by its own node: a report, a state and a
    # belief to each of its two peers, and at least their two reports in
    status = p.call("status", [0, 1, 2], [()] * 3)
    assert all(s["sent"] == 6 and s["received"] >= 2 for s in status)
    assert [sorted(s["peers"]) for s in status] == \
        [["node-1", "node-2"], ["node-0", "node-2"], ["node-0", "node-1"]]


def test_one_packed_node_failing_is_its_own_result_and_restarts_in_its_slot(pack):
    p, specs = pack
    p.call("generation", [0, 1, 2], [(30.0,)] * 3)
    snap = p.call("snapshot", [1], [()])[0]["snapshot"]
    before = [fingerprint(p.hosts[s].node.model) for s in (0, 2)]
    got = p.call("rejoin", [0, 1, 2], [(1, None), (1, b"not a snapshot"), (1, None)])
    assert isinstance(got[1], ValueError) and "not a node snapshot" in str(got[1])
    assert got[0]["generation"] == got[2]["generation"] == 1
    old = p.hosts[1]
    (endpoint,) = p.start([1], [NodeSpec(specs[1].config, specs[1].keys, snap)])
    assert endpoint["name"] == "node-1" and p.hosts[1] is not old and old.member.transport.closed
    assert p.hosts[1].node.generation_count == 1
    assert [fingerprint(p.hosts[s].node.model) for s in (0, 2)] == before
    assert isinstance(p.call("ping", [5], [()])[0], RuntimeError)  # an empty slot


def test_a_packed_node_failing_in_a_generation_names_its_phase(pack):
    """As NodeHost.generation does for an unpacked node: the coordinator reports the fault
    with the phase it happened in."""
    p, _ = pack

    def broken(*_args):
        raise RuntimeError("the world fell over")

    p.hosts[1].member.share = broken
    p.hosts[2].member.absorb = broken
    rows = p.call("generation", [0, 1, 2], [(0.5,)] * 3)
    assert isinstance(rows[0], dict) and rows[0]["name"] == "node-0"
    assert isinstance(rows[1], PhaseError) and rows[1].phase == "share"
    assert isinstance(rows[2], PhaseError) and rows[2].phase == "absorb"
    assert "the world fell over" in str(rows[2])


@pytest.mark.parametrize("nodes, cpus, k, expected", [
    (256, 2 / 256, "auto", 128), (256, 0.5, "auto", 2), (10, 0.25, "auto", 5),
    (4, 2.0, "auto", 1), (3, 0.1, "auto", 3), (8, 0.5, 3, 3)])
def test_nodes_per_actor_auto_keeps_the_actors_to_the_whole_cpus_given(nodes, cpus, k,
                                                                        expected):
    cfg = SwarmConfig(nodes=nodes, env=SIGNAL_ENV,
                      resources=Resources(cpus=cpus, nodes_per_actor=k))
    assert cfg.per_actor() == expected


@pytest.mark.parametrize("k", [0, -1, 1.5, "many", True])
def test_a_bad_nodes_per_actor_is_refused_naming_the_key(k):
    with pytest.raises(ConfigError, match=r"resources.nodes_per_actor.*integer >= 1 or 'auto'"):
        SwarmConfig(nodes=4, env=SIGNAL_ENV, resources=Resources(nodes_per_actor=k))


def test_a_stretch_of_generations_comes_in_batches_and_a_failure_at_once():
    """`in_batches`: the generations ended since the last batch, handed on when the time is
    up, at once on a new failure (not on the same failure given again), and at the end."""
    boom = RuntimeError("boom")
    gens = [["a0", "b0"], ["a1", "b1"], ["a2", boom], ["a3", boom], ["a4", boom]]
    assert list(in_batches(iter(gens), math.inf)) == [gens[:3], gens[3:]]
    assert list(in_batches(iter(gens), 0.0)) == [[g] for g in gens]
    assert list(in_batches(iter([]), 0.0)) == []


def test_a_packs_stretch_streams_its_generations_in_batches(pack, monkeypatch):
    """Three generations of the pack in one stretch, as one batch (no time limit on a
    batch): a result per slot a generation, the snapshot with the last only."""
    monkeypatch.setattr(pack_module, "BATCH_S", math.inf)
    p, _ = pack
    (batch,) = list(p.generations([0, 1, 2], [(60.0, True)] * 3, 3))
    assert [[r["name"] for r in g] for g in batch] == [["node-0", "node-1", "node-2"]] * 3
    assert [[("snapshot" in r) for r in g] for g in batch] == [[False] * 3] * 2 + [[True] * 3]
    assert all(r["absorbed_from"] == 2 for g in batch for r in g)
    assert [h.node.generation_count for h in p.hosts.values()] == [3, 3, 3]
