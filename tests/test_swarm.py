"""The swarm on real Ray actors (one local Ray for the session, 2 CPUs; half a CPU per node):
rows, signals during a run, repeatable sync runs, consensus equal to one big node, async;
with one node per actor and with two (`resources.nodes_per_actor`), which change nothing."""

from __future__ import annotations

import time

import pytest

from rwkv_swarm import Signal, Swarm, SwarmConfig, load_trace
from rwkv_swarm.node import KalmanESConfig, Node, NodeConfig
from rwkv_swarm.node.exchange import fingerprint
from rwkv_swarm.swarm import Resources, Variation, read_events

SIGNAL_ENV = {"kind": "signal", "lags": 3}
HALF = Resources(cpus=0.5)
TIME_DEPENDENT = {"evaluate_s", "update_s", "communicate_s", "generation_s", "time", "received",
                  "bytes_sent", "bytes_received"}  # when a message arrives is not repeatable
WAIT_S = 120.0


def packed(k: int) -> Resources:
    """Half a CPU per node, k nodes per actor."""
    return Resources(cpus=0.5, nodes_per_actor=k)


def config(tmp_path, **kw) -> SwarmConfig:
    return SwarmConfig(**{"nodes": 4, "env": SIGNAL_ENV, "resources": HALF,
                          "es": KalmanESConfig(population=16), "run_dir": str(tmp_path), **kw})


def wait_for_generation(swarm: Swarm, gen: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while swarm.status()["generation"] < gen and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_swarm_run_leaves_a_row_per_node_and_generation_and_applies_a_signal_once(
        ray_session, tmp_path):
    # two nodes per actor (one per actor: the identical-traces test below, and test_cli)
    with Swarm.launch(config(tmp_path, generations=8, resources=packed(2))) as swarm:
        swarm.start()
        wait_for_generation(swarm, 2)
        ack = swarm.inject(Signal("freq_shift", {"freq": [0.021, 0.047, 0.25]}))
        swarm.wait(WAIT_S)
        status = swarm.status()
    table = load_trace(swarm.run_dir).to_pydict()
    keys = list(zip(table["generation"], table["node"], strict=True))
    assert len(keys) == 32 and sorted(set(keys)) == [(g, n) for g in range(8) for n in range(4)]
    k, boundary = ack["injected_during"], ack["boundary"]
    assert sorted(ack["applied"]) == [0, 1, 2, 3]
    # at the first boundary: the end of the stretch of generations in flight when injected
    assert k is None or (k < boundary and set(ack["applied"].values()) == {boundary})
    marked = [(g, n) for g, n, s in zip(table["generation"], table["node"], table["signals"],
                                        strict=True) if s]
    assert sorted(n for _, n in marked) == [0, 1, 2, 3]  # once per node, at its boundary
    assert all(g == ack["applied"][n] for g, n in marked)
    assert [e["kind"] for e in read_events(swarm.run_dir)].count("signal") == 1
    assert all(r > 0 for r in table["received"]) and all(a == 2 for a in table["absorbed_from"])
    assert all(n["received"] > 0 and n["dropped"] == 0 for n in status["nodes"].values())


def comparable(run_dir) -> dict:
    t = load_trace(run_dir).to_pydict()
    return {k: v for k, v in t.items() if k not in TIME_DEPENDENT}


@pytest.mark.parametrize("mode, packings", [("gossip", (2, 4)), ("consensus", (1, 4))])
def test_two_sync_runs_with_one_seed_leave_identical_traces_whatever_the_packing(
        ray_session, tmp_path, mode, packings):
    traces = []
    for k in packings:  # e.g. four actors of one node, one of four: the same swarm
        with Swarm.launch(config(tmp_path / str(k), mode=mode, seed=3,
                                 resources=packed(k))) as swarm:
            swarm.run(3)
        traces.append(comparable(swarm.run_dir))
    assert traces[0] == traces[1]
    if mode == "consensus":  # the group across actors is one node with 4 x 16 mutants
        node = config(tmp_path, mode=mode, seed=3).node_configs()[0]
        single = Node(NodeConfig(model=node.model, env=SIGNAL_ENV, seed=3,
                                 es=KalmanESConfig(population=64)))
        for _ in range(3):
            single.generation()
        assert set(traces[0]["fingerprint"][-4:]) == {fingerprint(single.model).hex()}


def test_an_async_swarm_counts_stale_reports_and_never_applies_one_twice(ray_session, tmp_path):
    # two nodes per actor, each looping in a thread of it (one per actor: test_faults' async
    # run with a node killed); a signal reaches each at its own boundary
    slow = Variation(nodes=(0,), env={"segment_length": 256})  # node 0 lags the others
    with Swarm.launch(config(tmp_path, sync=False, variations=(slow,),
                             resources=packed(2))) as swarm:
        swarm.start(6)
        ack = swarm.inject(Signal("freq_shift", {"freq": [0.021, 0.047, 0.25]}))
        swarm.wait(WAIT_S)
        status = swarm.status()
    table = load_trace(swarm.run_dir).to_pydict()
    assert sorted(zip(table["node"], table["generation"], strict=True)) == \
        [(n, g) for n in range(4) for g in range(6)]
    assert sorted(ack["applied"]) == [0, 1, 2, 3]
    # once in the row of each node that was still running (node 0, the laggard, was)
    marked = sorted(n for n, s in zip(table["node"], table["signals"], strict=True) if s)
    assert marked == sorted(n for n, g in ack["applied"].items() if g < 6) and 0 in marked
    assert all(0 <= a <= 2 for a in table["absorbed"])  # never more than its two neighbours
    dropped = sum(n["dropped"] for n in status["nodes"].values())
    assert dropped > 0, "a lagging neighbour's reports arrive late: stale, counted, dropped"
