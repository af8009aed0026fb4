"""runs/<id>/checkpoints/: snapshots written atomically and pruned, a node continued from its
snapshot bitwise as if it had never stopped, and the coordinator's periodic checkpoints."""

from __future__ import annotations

import pytest

from rwkv_swarm.cluster.host import NodeHost
from rwkv_swarm.cluster.nodes import LocalNodes
from rwkv_swarm.node import KalmanESConfig
from rwkv_swarm.node.exchange import fingerprint
from rwkv_swarm.swarm import Coordinator, Resources, SwarmConfig
from rwkv_swarm.swarm.checkpoints import CheckpointStore

SIGNAL_ENV = {"kind": "signal", "lags": 3}


def test_the_store_keeps_the_newest_snapshots_and_finds_the_newest_complete_set(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for g in (0, 5, 10):
        store.save_node(0, g, b"a%d" % g)
        store.save_coordinator(g, {"generation": g, "x": float("nan")})
    store.save_node(1, 5, b"b5")
    assert store.node_generations(0) == [5, 10]  # 0 pruned
    assert store.load_node(0) == (10, b"a10") and store.load_node(0, 5) == (5, b"a5")
    assert store.load_node(0, 0) is None and store.load_node(2) is None
    assert store.latest_complete(2) == 5  # node 1 has no snapshot at 10
    assert store.load_coordinator()[0] == 10
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="generation must be an int >= 0, got -1"):
        store.save_node(0, -1, b"")


def host(config: SwarmConfig, i: int, snapshot: bytes | None = None) -> NodeHost:
    return NodeHost(config.node_configs()[i], "run", snapshot=snapshot)


def test_a_node_continued_from_its_snapshot_matches_one_that_never_stopped(tmp_path):
    config = SwarmConfig(nodes=1, mode="isolated", env=SIGNAL_ENV,
                         es=KalmanESConfig(population=8), run_dir=str(tmp_path))
    a = host(config, 0)
    try:
        for _ in range(2):
            a.share()
            a.absorb(0.0)
        a.apply_signal("s1", "amplitude", {"scale": 2.0})
        snap = a.snapshot()
        assert snap["generation"] == 2
        b = host(config, 0, snap["snapshot"])
        try:
            assert b.applied_signals == {"s1": 2}
            for _ in range(2):
                rows = []
                for h in (a, b):
                    h.share()
                    rows.append(h.absorb(0.0))
                assert rows[0]["fitness_mean"] == rows[1]["fitness_mean"]
            assert fingerprint(a.node.model) == fingerprint(b.node.model)
            assert b.node.generation_count == 4
        finally:
            b.close()
        with pytest.raises(ValueError, match="not a node snapshot"):
            host(config, 0, b"\x01garbage")
    finally:
        a.close()


def test_a_snapshot_of_another_node_is_refused(tmp_path):
    config = SwarmConfig(nodes=2, mode="isolated", env=SIGNAL_ENV,
                         es=KalmanESConfig(population=8), run_dir=str(tmp_path))
    a = host(config, 0)
    try:
        with pytest.raises(ValueError, match="snapshot of node 0, refused for node 1"):
            host(config, 1, a.snapshot()["snapshot"])
    finally:
        a.close()


def test_the_coordinator_checkpoints_every_node_every_checkpoint_every_generations(tmp_path):
    config = SwarmConfig(nodes=2, mode="isolated", env=SIGNAL_ENV, checkpoint_every=2,
                         es=KalmanESConfig(population=8), run_dir=str(tmp_path),
                         resources=Resources(cpus=0.5))
    hosts = [host(config, i) for i in range(2)]
    try:
        coordinator = Coordinator(config, "run", tmp_path / "run", LocalNodes(hosts))
        coordinator.run(5)
        store = coordinator.checkpoints.store
        assert [store.node_generations(i) for i in range(2)] == [[0, 2, 4]] * 2
        assert store.latest_complete(2) == 4
        gen, state = store.load_coordinator()
        assert gen == 4 and state["generation"] == 4 and state["rows"] == 8
        assert sorted(state["last"]) == ["0", "1"] and state["last"]["0"]["generation"] == 3
    finally:
        for h in hosts:
            h.close()
