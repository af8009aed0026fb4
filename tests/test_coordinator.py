"""The coordinator as a plain class over in-process nodes (real NodeHosts and sockets, no Ray):
signals once per target at a boundary, the trace and event log, refusals counted."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from rwkv_swarm.cluster.host import NodeHost
from rwkv_swarm.cluster.nodes import LocalNodes
from rwkv_swarm.node import SwarmKeyring
from rwkv_swarm.swarm import (
    Coordinator,
    Migration,
    Resources,
    Scheduled,
    Signal,
    SwarmConfig,
    load_trace,
    read_events,
)
from rwkv_swarm.swarm.checkpoints import CheckpointStore
from rwkv_swarm.swarm.trace import last_generation, trace_parts

SIGNAL_ENV = {"kind": "signal", "lags": 3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def local_swarm(tmp_path: Path, **kw) -> tuple[Coordinator, list[NodeHost]]:
    config = SwarmConfig(env=SIGNAL_ENV, run_dir=str(tmp_path), resources=Resources(cpus=0.5),
                         **{"nodes": 4, **kw})
    configs = config.node_configs()
    ring, keys = SwarmKeyring.generate([f"node-{c.node_id}" for c in configs])
    hosts = [NodeHost(c, "run", keys=keys[f"node-{c.node_id}"], keyring=ring) for c in configs]
    endpoints = [h.endpoint() for h in hosts]
    for h in hosts:
        h.connect(endpoints)
    return Coordinator(config, "run", tmp_path / "run", LocalNodes(hosts)), hosts


@pytest.fixture
def swarm(tmp_path):
    coordinator, hosts = local_swarm(tmp_path)
    yield coordinator, hosts
    for h in hosts:
        h.close()


def test_every_generation_leaves_one_row_per_node_and_the_peers_hear_each_other(swarm):
    coordinator, hosts = swarm
    status = coordinator.run(3)
    table = load_trace(coordinator.run_dir).to_pydict()
    assert status["generation"] == 3 and len(table["node"]) == 12
    assert sorted(zip(table["generation"], table["node"], strict=True)) == \
        [(g, n) for g in range(3) for n in range(4)]
    assert all(a == 2 for a in table["absorbed_from"])  # a ring: two neighbours each
    assert all(r > 0 for r in table["received"]) and all(d == 0 for d in table["dropped"])
    assert all(0 <= p <= 1 for p in table["p_best"])


def record_calls(coordinator: Coordinator) -> list:
    """What the coordinator asks of its nodes, in order: a call as its method's name, a
    stretch of generations as ("generations", count, whether the last brings snapshots)."""
    calls: list = []
    nodes = coordinator.nodes
    call, generations = nodes.call, nodes.generations
    nodes.call = lambda method, *a, **kw: calls.append(method) or call(method, *a, **kw)
    nodes.generations = lambda count, args, **kw: \
        calls.append(("generations", count, args[1])) or generations(count, args, **kw)
    return calls


def test_a_stretch_ends_at_a_due_checkpoint_and_its_last_generation_brings_the_snapshots(
        tmp_path):
    """No snapshot round trip of its own: the nodes send their snapshots with the generation
    before a checkpoint, and those are what a snapshot call at that boundary gives; the best
    node alone is asked for its policy (runs/<id>/best/), there and at the end of run(). A
    stretch of generations (one round trip) ends there: the first generation alone (no pace
    known yet), then as many as `stretch_s` holds up to the next checkpoint."""
    coordinator, hosts = local_swarm(tmp_path, checkpoint_every=2, stretch_s=1e6)
    calls = record_calls(coordinator)
    try:
        coordinator.run(4)
        now = [h.snapshot()["snapshot"] for h in hosts]
    finally:
        for h in hosts:
            h.close()
    assert calls == ["snapshot", ("generations", 1, False), ("generations", 1, True), "policy",
                     ("generations", 2, True), "policy", "policy"]
    coordinator.settle()
    store = coordinator.checkpoints.store
    assert [store.node_generations(i) for i in range(4)] == [[0, 2, 4]] * 4
    assert [store.load_node(i, 4)[1] for i in range(4)] == now
    assert "snapshot" not in load_trace(coordinator.run_dir).column_names


def test_a_sync_generation_is_one_round_trip_per_node_and_a_failure_names_its_phase(tmp_path):
    coordinator, hosts = local_swarm(tmp_path, checkpoint_every=0)
    calls = record_calls(coordinator)
    try:
        coordinator.run(2)  # the second alone too: the run has one generation left
        assert calls == [("generations", 1, False)] * 2 + ["policy"]  # last: best/ at the end
        hosts[1].node.finish = None  # absorb fails once the report is out
        coordinator.run(1)
    finally:
        for h in hosts:
            h.close()
    (fault,) = [e for e in read_events(coordinator.run_dir) if e["kind"] == "fault"]
    assert (fault["node"], fault["phase"], fault["generation"]) == (1, "absorb", 2)
    assert fault["detected_s"] is not None and "TypeError" in fault["error"]


def test_a_run_in_stretches_is_the_run_a_generation_a_round_trip(tmp_path):
    """The same swarm a generation a round trip and in stretches: the same weights, rows and
    signal marks at every generation, and the same migrations. A stretch ends before a
    scheduled signal (generation 4) and before a migration decision (after generation 4)."""
    scheduled = (Scheduled(4, "amplitude", {"scale": 2.0}),)
    runs, stretches = {}, {}
    for stretch_s in (0.0, 1e6):
        coordinator, hosts = local_swarm(tmp_path / str(stretch_s), checkpoint_every=0,
                                         stretch_s=stretch_s, signals=scheduled,
                                         migration=Migration(gate=0.5, fraction=0.5))
        calls = record_calls(coordinator)
        try:
            coordinator.run(7)
        finally:
            for h in hosts:
                h.close()
        t = load_trace(coordinator.run_dir).to_pydict()
        runs[stretch_s] = sorted(zip(t["generation"], t["node"], t["fingerprint"], t["signals"],
                                     t["migrated_from"], strict=True))
        stretches[stretch_s] = [c[1] for c in calls if c[0] == "generations"]
    assert stretches == {0.0: [1] * 7, 1e6: [1, 3, 1, 2]}
    assert runs[0.0] == runs[1e6]
    assert [(g, n) for g, n, _, s, _ in runs[0.0] if s] == [(4, n) for n in range(4)]
    assert any(m >= 0 for *_, m in runs[0.0])  # a migration was decided (gate 0.5: any better)


def test_a_node_failing_in_the_middle_of_a_stretch_is_not_waited_for_by_the_rest_of_it(
        tmp_path):
    coordinator, hosts = local_swarm(tmp_path, checkpoint_every=0, stretch_s=1e6,
                                     migration=Migration(enabled=False))
    calls = record_calls(coordinator)
    node = hosts[1].node
    finish = node.finish

    def fails_at_2(reports=()):
        if node.generation_count == 2:
            raise RuntimeError("finish failed at 2")
        return finish(reports)

    node.finish = fails_at_2
    try:
        coordinator.run(6)
    finally:
        for h in hosts:
            h.close()
    assert [c[1] for c in calls if c[0] == "generations"] == [1, 5]  # 2 is mid-stretch
    (fault,) = [e for e in read_events(coordinator.run_dir) if e["kind"] == "fault"]
    assert (fault["node"], fault["phase"], fault["generation"]) == (1, "absorb", 2)
    assert "finish failed at 2" in fault["error"]
    t = load_trace(coordinator.run_dir).to_pydict()
    rows = {(g, n): a for g, n, a in zip(t["generation"], t["node"], t["absorbed_from"],
                                         strict=True)}
    assert sorted(rows) == sorted([(g, n) for g in range(6) for n in (0, 2, 3)]
                                  + [(0, 1), (1, 1)])
    # node 1's report of 2 went out before its absorb failed; after it, its ring neighbours
    # (0 and 2) absorb from one peer, told at once that it is gone (no wait_s spent)
    assert [rows[g, 0] for g in range(6)] == [2, 2, 2, 1, 1, 1]
    assert all(w < 10 for w in t["communicate_s"])


def test_trace_rows_wait_for_a_part_but_a_checkpoint_never_runs_ahead_of_them(tmp_path):
    coordinator, hosts = local_swarm(tmp_path, checkpoint_every=2, trace_flush_s=3600.0)
    seen = []

    def on_disk(status):  # what a crash now would leave: rows, and the checkpoint resumed from
        run_dir = coordinator.run_dir
        coordinator.settle()  # the checkpoint written beside the next generation: on disk
        seen.append((status["generation"], last_generation(run_dir),
                     CheckpointStore(run_dir).load_coordinator()[0]))

    try:
        coordinator.run(5, on_generation=on_disk)
    finally:
        for h in hosts:
            h.close()
    # the first generation's rows at once (a run has a trace from its first generation), the
    # others held until the checkpoint: on disk, exactly the generations before it
    assert seen == [(1, 0, 0), (2, 1, 2), (3, 1, 2), (4, 3, 4), (5, 3, 4)]
    t = load_trace(coordinator.run_dir).to_pydict()
    assert sorted(zip(t["generation"], t["node"], strict=True)) == \
        [(g, n) for g in range(5) for n in range(4)]  # the held ones written at the end
    # part 0: generation 0 (4 rows); 1: generation 1 (4, at checkpoint 2); 2: generations 2-3
    # (8, at checkpoint 4); 3: generation 4 (4, at the end): fewer than COMPACT_PARTS, unmerged
    parts = trace_parts(coordinator.run_dir / "trace.parquet")
    assert [(first, last) for first, last, _ in parts] == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_a_signal_is_applied_once_per_target_at_the_next_boundary(swarm):
    coordinator, hosts = swarm
    coordinator.run(2)
    signal = Signal("amplitude", {"scale": 2.0}, targets=[1, 3])
    ack = coordinator.inject(signal)
    assert ack["applied"] == {1: 2, 3: 2}
    again = coordinator.inject(signal)  # a repeated delivery: acknowledged, not applied again
    assert again["applied"] == {1: 2, 3: 2}
    assert [h.node.env._next.amplitude for h in hosts] == [1.0, 2.0, 1.0, 2.0]
    coordinator.run(1)
    rows = load_trace(coordinator.run_dir).to_pydict()
    marked = {(g, n) for g, n, s in zip(rows["generation"], rows["node"], rows["signals"],
                                        strict=True) if s}
    assert marked == {(2, 1), (2, 3)}
    events = [e for e in read_events(coordinator.run_dir) if e["kind"] == "signal"]
    assert len(events) == 2 and events[0]["applied"] == {"1": 2, "3": 2}


@pytest.mark.parametrize("signal, message", [
    (Signal("gravity", {"g": 3.0}), r"unknown signal 'gravity'; this environment accepts "
                                    r"\['amplitude', 'freq_shift', 'noise', 'regime'\]"),
    (Signal("amplitude", {"scale": -1.0}), "amplitude.scale must be > 0"),
    (Signal("amplitude", {"scale": 2.0}, targets=[7]), r"targets \[7\] are not node ids"),
])
def test_a_bad_signal_is_refused_by_name_and_nothing_is_applied(swarm, signal, message):
    coordinator, hosts = swarm
    with pytest.raises(ValueError, match=message):
        coordinator.inject(signal)
    assert all(h.applied_signals == {} for h in hosts)
    assert read_events(coordinator.run_dir) == []


def test_a_consensus_group_is_one_lineage_and_never_migrates(tmp_path):
    coordinator, hosts = local_swarm(tmp_path, mode="consensus",
                                     migration=Migration(every=1, gate=0.5))
    try:
        coordinator.run(4)
        prints = load_trace(coordinator.run_dir).to_pydict()["fingerprint"]
        assert len(set(prints[-4:])) == 1 and coordinator.lineage == []
    finally:
        for h in hosts:
            h.close()


def test_group_members_exchange_reports_only_and_neighbours_states_and_beliefs_too(
        swarm, tmp_path):
    """A consensus group's members compute the same weights, state and belief: they send each
    other their reports, nothing more. Gossip neighbours send their state and belief too."""
    coordinator, hosts = swarm  # gossip, a ring
    coordinator.run(3)
    assert all(len(h.peer_beliefs) == 2 for h in hosts)
    group, members = local_swarm(tmp_path / "group", mode="consensus")
    try:
        group.run(3)
        table = load_trace(group.run_dir).to_pydict()
        assert all(a == 3 for a in table["absorbed_from"])  # every member's report came
        assert all(h.peer_beliefs == {} for h in members)
        assert all(h.member.dropped == {} for h in members)
    finally:
        for h in members:
            h.close()


def test_a_report_or_state_of_another_model_is_refused_and_counted(swarm, tmp_path):
    coordinator, hosts = swarm
    other = SwarmConfig(env=SIGNAL_ENV, model={"n_embd": 32, "n_layer": 1, "head_size": 16},
                        run_dir=str(tmp_path)).node_configs()[0]
    a = hosts[0]
    b = NodeHost(dataclasses.replace(other, node_id=7), "run")  # insecure: plain TCP
    plain_a = NodeHost(dataclasses.replace(a.node.config, node_id=8), "run")
    try:
        plain_a.connect([b.endpoint()])
        b.connect([plain_a.endpoint()])
        plain_a.set_peers([b.name], [])
        b.set_peers([plain_a.name], [])
        b.share()
        b.absorb(0.0)  # b's report, state and belief now on their way to plain_a
        # the state leaves after the report: absorb may end before it arrives, and the drain
        # that counts it would miss it; so it is received first
        deadline = time.monotonic() + 30
        while not any(m.type == "state" for m in plain_a.member.other):
            assert time.monotonic() < deadline, "b's state never reached plain_a"
            plain_a.member.service(100)
        plain_a.share()
        row = plain_a.absorb(5.0)
        assert row["absorbed_from"] == 1 and row["absorbed"] == 0
        assert plain_a.node.refused["mismatch"] == 1
        assert plain_a.status()["dropped"]["mismatch"] == 1  # b's state: another model's
        assert set(row["dropped_by"].split(",")) >= {"mismatch:1", "refused_mismatch:1"}
    finally:
        b.close()
        plain_a.close()


def test_without_tensorboard_installed_a_warning_event_says_so(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    coordinator, hosts = local_swarm(tmp_path, tensorboard=True)
    monkeypatch.setattr(builtins, "__import__", real_import)
    try:
        coordinator.run(1)
        (warning,) = [e for e in read_events(coordinator.run_dir) if e["kind"] == "warning"]
        assert "pip install tensorboard" in warning["message"]
    finally:
        for h in hosts:
            h.close()


def test_tensorboard_scalars_are_written_per_node_and_generation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    coordinator, hosts = local_swarm(tmp_path, tensorboard=True)
    try:
        coordinator.run(2)
    finally:
        for h in hosts:
            h.close()
    board = EventAccumulator(str(coordinator.run_dir / "tb"))
    board.Reload()
    steps = [e.step for e in board.Scalars("node2/fitness_mean")]
    assert steps == [0, 1]
