"""A dead node loses nothing: its peers stop waiting for it at once, it is restarted from its
newest snapshot in a new actor (or host) and rejoins at the swarm's generation; a consensus
member re-syncs to its group. In-process hosts for the coordinator's logic, then real Ray
actors killed with SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_swarm.cluster.host import NodeHost
from rwkv_swarm.cluster.nodes import LocalNodes
from rwkv_swarm.node import KalmanESConfig, SwarmKeyring
from rwkv_swarm.swarm import Coordinator, Resources, SwarmConfig, load_trace, read_events

SIGNAL_ENV = {"kind": "signal", "lags": 3}
WAIT_S = 60.0  # the peers' longest wait: a test that met it once would take a minute


def config(tmp_path: Path, **kw) -> SwarmConfig:
    return SwarmConfig(**{"nodes": 4, "env": SIGNAL_ENV, "resources": Resources(cpus=0.5),
                          "es": KalmanESConfig(population=16), "run_dir": str(tmp_path),
                          "wait_s": WAIT_S, "checkpoint_every": 2, **kw})


def local_swarm(cfg: SwarmConfig, run_dir: Path) -> tuple[Coordinator, LocalNodes]:
    """Hosts in this process over real sockets; a dead one is made again with its keys."""
    configs = cfg.node_configs()
    ring, keys = SwarmKeyring.generate([f"node-{c.node_id}" for c in configs])

    def make(i: int, snapshot: bytes | None = None) -> NodeHost:
        return NodeHost(configs[i], "run", keys=keys[f"node-{i}"], keyring=ring,
                        snapshot=snapshot)

    nodes = LocalNodes([make(i) for i in range(cfg.nodes)], factory=make)
    endpoints = [h.endpoint() for h in nodes.hosts]
    for h in nodes.hosts:
        h.connect(endpoints)
    return Coordinator(cfg, "run", run_dir, nodes), nodes


def kill_at(nodes: LocalNodes, node: int, generation: int):
    """An on_generation hook that closes node's sockets once `generation` is next: its next
    call fails, as a dead actor's would."""
    def hook(status):
        if status["generation"] == generation:
            nodes.hosts[node].close()
    return hook


def rows_by_node(run_dir: Path) -> dict[int, dict[int, dict]]:
    t = load_trace(run_dir).to_pylist()
    out: dict[int, dict[int, dict]] = {}
    for r in t:
        out.setdefault(r["node"], {})[r["generation"]] = r
    return out


@pytest.fixture
def closing():
    made: list[LocalNodes] = []
    yield made
    for nodes in made:
        for h in nodes.hosts:
            h.close()


def test_a_dead_gossip_node_is_not_waited_for_and_rejoins_from_its_snapshot(tmp_path, closing):
    coordinator, nodes = local_swarm(config(tmp_path), tmp_path / "run")
    closing.append(nodes)
    coordinator.run(7, on_generation=kill_at(nodes, 2, 3))
    rows = rows_by_node(coordinator.run_dir)
    assert {n: sorted(g) for n, g in rows.items()} == \
        {0: list(range(7)), 1: list(range(7)), 2: [0, 1, 2, 4, 5, 6], 3: list(range(7))}
    # the peers waited for nobody: communicate_s holds each absorb's wait
    assert all(r["communicate_s"] < 10 for g in rows.values() for r in g.values())
    events = read_events(coordinator.run_dir)
    (fault,) = [e for e in events if e["kind"] == "fault"]
    (restart,) = [e for e in events if e["kind"] == "restart"]
    assert (fault["node"], fault["generation"], fault["phase"], fault["restart"]) == \
        (2, 3, "share", True)
    assert (restart["node"], restart["lost_at"], restart["generation"],
            restart["snapshot_generation"], restart["source"]) == (2, 3, 4, 2, "snapshot")
    # the snapshot before generation 2 holds the weights that generation 1 left
    assert restart["fingerprint"] == rows[2][1]["fingerprint"]
    assert rows[2][4]["fingerprint"] != restart["fingerprint"]  # and they move on from there
    # its peers reach its new endpoint and it reaches theirs: two neighbours' reports again
    assert all(rows[n][g]["absorbed_from"] == 2 for n in range(4) for g in (5, 6))
    assert nodes.hosts[2].node.generation_count == 7
    assert coordinator.status()["nodes"][2]["restarts"] == 1


def test_a_restarted_consensus_member_takes_its_groups_weights(tmp_path, closing):
    coordinator, nodes = local_swarm(config(tmp_path, mode="consensus"), tmp_path / "run")
    closing.append(nodes)
    coordinator.run(6, on_generation=kill_at(nodes, 1, 3))
    rows = rows_by_node(coordinator.run_dir)
    assert sorted(rows[1]) == [0, 1, 2, 4, 5]
    for g in range(6):  # one node throughout: the three left, then the four again
        prints = {rows[n][g]["fingerprint"] for n in range(4) if g in rows[n]}
        assert len(prints) == 1, (g, prints)
    assert [rows[0][g]["missing"] for g in range(6)] == [0, 0, 0, 1, 0, 0]
    (restart,) = [e for e in read_events(coordinator.run_dir) if e["kind"] == "restart"]
    assert (restart["generation"], restart["source"]) == (4, "node-0")
    assert restart["fingerprint"] == rows[0][3]["fingerprint"]  # the group's, not its own
    host = nodes.hosts[1]
    assert (host.node.config.node_id, host.node.config.members) == \
        (1, config(tmp_path).replace(mode="consensus").node_configs()[1].members)
