"""Migration carries what it promises: the source's weights and its live RWKV state, exported
together at a generation boundary and handed to the migrant whoever its neighbours are; a state
of another model or of other weights is refused; a failed transfer is a fault event, not a
crash; a dead node takes no part. In-process nodes (real NodeHosts and sockets) and, once, Ray.

The worlds decide who migrates: node `EASY`'s stream is nearly flat (its fitness is far the
best), node 0's is three times louder (far the worst), so node 0 adopts node `EASY`'s weights
at the first decision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rwkv_swarm import Swarm, load_trace
from rwkv_swarm.cluster.host import NodeHost
from rwkv_swarm.cluster.nodes import LocalNodes
from rwkv_swarm.node import KalmanESConfig, SwarmKeyring
from rwkv_swarm.node.exchange import fingerprint
from rwkv_swarm.swarm import Coordinator, Migration, Resources, SwarmConfig, Variation, read_events

SIGNAL_ENV = {"kind": "signal", "lags": 3, "segment_length": 16}
OTHER_MODEL = {"n_embd": 32, "n_layer": 1, "head_size": 16}
EASY = 3


def worlds(easy: tuple[int, ...] = (EASY,)) -> tuple[Variation, ...]:
    return (Variation(nodes=easy, env={"amplitude": 0.01, "noise_std": 0.0}),
            Variation(nodes=(0,), env={"amplitude": 3.0}))


def config(tmp_path: Path, **kw) -> SwarmConfig:
    return SwarmConfig(**{"nodes": 6, "env": SIGNAL_ENV, "resources": Resources(cpus=0.5),
                          "es": KalmanESConfig(population=16), "run_dir": str(tmp_path),
                          "variations": worlds(), "wait_s": 1.0, **kw})


def local_swarm(cfg: SwarmConfig, other: dict[int, dict] | None = None
                ) -> tuple[Coordinator, list[NodeHost]]:
    """The swarm of `cfg` on in-process hosts; `other` gives some nodes another model."""
    configs = cfg.node_configs()
    for i, model in (other or {}).items():
        configs[i] = dataclasses.replace(
            cfg.replace(model=model).node_configs()[i], node_id=i)
    ring, keys = SwarmKeyring.generate([f"node-{c.node_id}" for c in configs])
    hosts = [NodeHost(c, "run", keys=keys[f"node-{c.node_id}"], keyring=ring) for c in configs]
    endpoints = [h.endpoint() for h in hosts]
    for h in hosts:
        h.connect(endpoints)
    return Coordinator(cfg, "run", Path(cfg.run_dir) / "run", LocalNodes(hosts)), hosts


def close(hosts: list[NodeHost]) -> None:
    for h in hosts:
        h.close()


def events(coordinator: Coordinator, kind: str) -> list[dict]:
    return [e for e in read_events(coordinator.run_dir) if e["kind"] == kind]


def test_a_migrant_that_is_no_neighbour_of_its_source_takes_its_live_state_and_weights(
        tmp_path):
    coordinator, hosts = local_swarm(config(tmp_path, migration=Migration(every=1)))
    try:
        assert EASY not in coordinator.neighbour_lists[0]
        coordinator.run(1)
        (mig,) = events(coordinator, "migration")
        assert (mig["src"], mig["dst"], mig["state"]) == (EASY, 0, True)
        src, dst = hosts[EASY].node, hosts[0].node
        assert src.live_state.wkv.abs().sum() > 0  # a state that lived a segment, not zeros
        assert dst.live_state.to_bytes() == src.live_state.to_bytes()
        assert fingerprint(dst.model) == fingerprint(src.model)
        assert mig["fingerprint"] == fingerprint(src.model).hex()
        assert load_trace(coordinator.run_dir).to_pydict()["migrated_from"][0] == EASY
        b = src.strategy.fitness_belief
        assert (dst.strategy.fitness_belief.mean, dst.strategy.fitness_belief.var) == \
            (b.mean, b.var)

        # weights only: the migrant starts from a zero state
        ack = hosts[5].adopt(hosts[EASY].export(), hosts[EASY].name, (b.mean, b.var),
                             with_state=False)
        assert ack["state"] is False and ack["fingerprint"] == mig["fingerprint"]
        zero = hosts[5].node.model.zero_state(1).to_bytes()
        assert hosts[5].node.live_state.to_bytes() == zero
    finally:
        close(hosts)


def mismatched(own: NodeHost, other: NodeHost, part: str) -> dict:
    export = own.export()
    if part == "weights":
        export["weights"] = other.export()["weights"]
    elif part == "state":
        export["state"] = other.export()["state"]
    else:  # the weights of one node, named as the weights of another
        export["fingerprint"] = fingerprint(other.node.model)
    return export


@pytest.mark.parametrize("part, message", [
    ("state", r"node-1's live state does not fit this model: state shape \(n_layer, n_embd, "
              r"head_size\) = \(1, 32, 16\) does not match the model's \(1, 16, 16\)"),
    ("weights", r"node-1's weights are not of this model: encoder.weight is \(32, 4\) "
                r"torch.float32, this model's \(16, 4\) torch.float32"),
    ("fingerprint", r"node-1's weights hash to [0-9a-f]{32}, not to the [0-9a-f]{32} their "
                    r"export names"),
])
def test_a_state_or_weights_of_another_model_or_other_weights_is_refused_and_nothing_changes(
        tmp_path, part, message):
    cfg = config(tmp_path, nodes=2, variations=())
    coordinator, hosts = local_swarm(cfg, other={1: OTHER_MODEL})
    source = NodeHost(dataclasses.replace(hosts[0].node.config, node_id=1, seed=9), "run")
    try:
        assert fingerprint(source.node.model) != fingerprint(hosts[0].node.model)
        own = source if part == "fingerprint" else hosts[0]
        export = mismatched(own, hosts[1], part)
        node = hosts[0].node
        before = (fingerprint(node.model), node.live_state.to_bytes(),
                  node.strategy.fitness_belief.var)
        with pytest.raises(ValueError, match=message):
            hosts[0].adopt(export, "node-1", (1.0, 1.0))
        assert (fingerprint(node.model), node.live_state.to_bytes(),
                node.strategy.fitness_belief.var) == before
    finally:
        close([*hosts, source])


def test_a_failed_transfer_is_a_fault_event_and_the_run_goes_on(tmp_path):
    # node EASY runs another model: its weights and state do not fit the migrant's
    coordinator, hosts = local_swarm(config(tmp_path, nodes=4, migration=Migration(every=1)),
                                     other={EASY: OTHER_MODEL})
    try:
        status = coordinator.run(2)
        faults = events(coordinator, "fault")
        assert faults and all((f["phase"], f["src"], f["dst"]) == ("transfer", EASY, 0)
                              for f in faults)
        assert "not of this model" in faults[0]["error"]
        assert events(coordinator, "migration") == [] and coordinator.lineage == []
        assert status["generation"] == 2 and coordinator.alive == {0, 1, 2, 3}
        table = load_trace(coordinator.run_dir).to_pydict()
        assert sorted(zip(table["generation"], table["node"], strict=True)) == \
            [(g, n) for g in range(2) for n in range(4)]
    finally:
        close(hosts)


def test_a_dead_node_is_never_the_source_or_the_migrant(tmp_path):
    # nodes 1 and EASY share the easy world; once EASY (the likely best) and 0 (the worst) are
    # dead, their last rows must not count: node 1 is then best by far and gives its weights
    cfg = config(tmp_path, migration=Migration(every=2), variations=worlds(easy=(1, EASY)),
                 wait_s=0.2)  # the dead nodes' neighbours wait this long for their reports
    coordinator, hosts = local_swarm(cfg)
    try:
        coordinator.run(1)  # no decision at generation 0
        coordinator.alive -= {0, EASY}
        coordinator.run(1)
        assert sorted(s.node for s in coordinator.summaries()) == [1, 2, 4, 5]
        (mig,) = events(coordinator, "migration")
        assert mig["src"] == 1 and mig["dst"] in {2, 4, 5}
        assert events(coordinator, "fault") == []
    finally:
        close(hosts)


@pytest.mark.parametrize("k", [1, 2])
def test_on_ray_a_migrant_that_is_no_neighbour_of_its_source_takes_its_state(
        ray_session, tmp_path, k):
    # a ring of four: node 0's neighbours are 1 and 3, the easy world is node 2's; packed two
    # to an actor, the export goes from slot 0 of the second actor to slot 0 of the first
    cfg = config(tmp_path, nodes=4, generations=1, migration=Migration(every=1),
                 variations=worlds(easy=(2,)),
                 resources=Resources(cpus=0.5, nodes_per_actor=k))
    assert 2 not in cfg.neighbours()[0]
    with Swarm.launch(cfg) as swarm:
        swarm.run(1)
    (mig,) = [e for e in read_events(swarm.run_dir) if e["kind"] == "migration"]
    assert (mig["src"], mig["dst"], mig["state"]) == (2, 0, True)
    table = load_trace(swarm.run_dir).to_pydict()
    rows = {n: i for i, n in enumerate(table["node"])}
    assert table["migrated_from"][rows[0]] == 2
    assert mig["fingerprint"] == table["fingerprint"][rows[2]]
