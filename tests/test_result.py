"""The result of a run, through the Python API: the best node and its P(best), a node's
snapshot and policy now, runs/<id>/best/ kept as the run goes, on_generation, events.jsonl for
an uneventful run, an early end at the config's target, and the trace's compaction."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rwkv_swarm.node import KalmanESConfig
from rwkv_swarm.node.policy import Policy
from rwkv_swarm.swarm import Resources, Swarm, SwarmConfig
from rwkv_swarm.swarm.trace import (
    COMPACT_PARTS,
    TraceWriter,
    load_trace,
    read_events,
    trace_parts,
    truncate_trace,
)
from rwkv_swarm.util.configio import ConfigError

SIGNAL_ENV = {"kind": "signal", "lags": 3}


def config(tmp_path, **more) -> SwarmConfig:
    base = {"nodes": 2, "mode": "isolated", "generations": 4, "env": SIGNAL_ENV,
            "es": KalmanESConfig(population=16), "resources": Resources(cpus=0.5),
            "checkpoint_every": 2, "run_dir": str(tmp_path)}
    return SwarmConfig(**{**base, **more})


def test_best_checkpoint_policy_and_best_dir_of_a_running_swarm(ray_session, tmp_path):
    seen = []
    with Swarm.launch(config(tmp_path, migration={"enabled": False})) as swarm:
        assert read_events(swarm.run_dir) == []  # an uneventful run has the file all along
        assert (swarm.run_dir / "events.jsonl").is_file()
        assert swarm.best() is None  # no generation has ended
        with pytest.raises(ValueError, match="has no best node yet"):
            swarm.policy()
        status = swarm.run(on_generation=seen.append)
        best = swarm.best()
        assert best["node"] in (0, 1) and 0 < best["p_best"] <= 1
        assert best["generation"] == 3 and best["belief_var"] > 0
        row = status["nodes"][best["node"]]
        others = [n["belief_mean"] for n in status["nodes"].values()]
        assert row["belief_mean"] == best["belief_mean"] == max(others)  # isolated: no fusion
        assert status["best"] == best
        policy = swarm.policy("best")
        assert policy.origin == {"node": f"node-{best['node']}", "generation": 4}
        assert policy.kind == "signal" and math.isfinite(policy.act(np.zeros(4)))
        other = 1 - best["node"]
        assert Policy.from_snapshot(swarm.checkpoint(other)).origin["node"] == f"node-{other}"
        with pytest.raises(ValueError, match=r"node must be a node id in 0..1, got 2"):
            swarm.checkpoint(2)
        with pytest.raises(ValueError, match=r"node id or 'best', got 'worst'"):
            swarm.policy("worst")
        with pytest.raises(ValueError, match=r"node id in 0..1 or 'best', got 2"):
            swarm.policy(2)
        written = Policy.load(swarm.run_dir / "best")  # at the end of run()
        record = json.loads((swarm.run_dir / "best" / "best.json").read_text())
    assert [s["generation"] for s in seen][-1] == 4 and seen == sorted(
        seen, key=lambda s: s["generation"])
    assert [e["kind"] for e in read_events(swarm.run_dir)] == ["end"]
    assert record["node"] == best["node"] and record["generation"] == 4
    assert record["p_best"] == best["p_best"] and record["belief_mean"] == best["belief_mean"]
    assert written.origin == policy.origin
    for a, b in zip(written.model.state_dict().values(), policy.model.state_dict().values(),
                    strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    parts = trace_parts(swarm.run_dir / "trace.parquet")
    # a part for the first generation's rows, one per checkpoint's (generation 1, 2-3): fewer
    # than COMPACT_PARTS, so not merged
    assert [(f, last) for f, last, _ in parts] == [(0, 0), (1, 1), (2, 2)]
    assert load_trace(swarm.run_dir).num_rows == 8
    assert not list((swarm.run_dir / "best").glob(".*.tmp"))


def test_a_world_no_policy_describes_runs_on_without_a_best_policy_or_a_fault(ray_session,
                                                                             tmp_path):
    world = {"kind": "python", "class": "worlds.reach1d:Reach1D", "length": 6}
    model = {"n_embd": 16, "n_layer": 1, "head_size": 16, "dim_w": 8, "dim_a": 8, "dim_v": 8,
             "dim_g": 8, "dim_ffn": 32}
    with Swarm.launch(config(tmp_path, env=world, model=model)) as swarm:
        status = swarm.run()
        with pytest.raises(ValueError, match="node-1 has no policy: a policy needs a GymEnv or "
                                             "SignalEnv world"):
            swarm.policy(1)
    assert status["generation"] == 4 and all(n["alive"] for n in status["nodes"].values())
    events = read_events(swarm.run_dir)
    assert not [e for e in events if e["kind"] in ("fault", "restart")]
    warnings = [e["message"] for e in events if e["kind"] == "warning"]
    # at the checkpoints before generations 2 and 4, and at the end of run()
    assert len(warnings) == 3 and all(w.startswith(
        "best policy not written: ValueError: a policy needs a GymEnv or SignalEnv world")
        for w in warnings)
    assert not (swarm.run_dir / "best" / "policy.pt").exists()


def test_a_target_ends_the_run_early_with_a_target_event(ray_session, tmp_path):
    c = config(tmp_path, generations=6, target=-1e9, checkpoint_every=0)
    with Swarm.launch(c) as swarm:
        status = swarm.run()
    assert status["generation"] == 1 and status["target_reached"]
    (event,) = read_events(swarm.run_dir, kind="target")
    assert event["generation"] == 0 and event["target"] == -1e9
    assert event["belief_mean"] >= -1e9 and event["node"] in (0, 1)
    assert (swarm.run_dir / "best" / "policy.pt").is_file()  # checkpoint_every = 0: at the end


def test_a_target_that_is_not_a_number_is_refused():
    for bad in ("high", math.inf, True):
        with pytest.raises(ConfigError, match=r"target: got .*, expected a finite number"):
            config("runs", target=bad)


def rows(path) -> list[tuple[int, int]]:
    t = load_trace(path).to_pydict()
    return list(zip(t["generation"], t["node"], strict=True))


def test_compaction_merges_parts_and_a_crash_between_its_steps_loses_or_doubles_nothing(
        tmp_path):
    writer = TraceWriter(tmp_path)
    for g in range(5):
        writer.write([{"generation": g, "node": n} for n in (0, 1)])
    expected = [(g, n) for g in range(5) for n in (0, 1)]
    assert writer.compact(min_parts=6) is None  # five small parts: not yet
    merged = writer.compact(min_parts=5)
    assert merged.name == "part-000000-000004.parquet"
    assert sorted(p.name for p in writer.dir.iterdir()) == [merged.name]
    assert rows(tmp_path) == expected and writer.compact(min_parts=1) is None  # one part

    # a crash after the merged part is written, before the parts it covers are removed
    for g in (5, 6):
        writer.write([{"generation": g, "node": 0}])
    table = pq.read_table(merged)
    for name in ("part-000005.parquet", "part-000006.parquet"):
        table = pa.concat_tables([table, pq.read_table(writer.dir / name)])
    crashed = writer.dir / "part-000000-000006.parquet"
    pq.write_table(table, crashed)
    expected += [(5, 0), (6, 0)]
    assert len(list(writer.dir.iterdir())) == 4 and rows(tmp_path) == expected  # read once
    assert truncate_trace(tmp_path, 6) == 1  # leftovers first, then each row cut once
    assert sorted(p.name for p in writer.dir.iterdir()) == [crashed.name]
    assert rows(tmp_path) == expected[:-1]
    again = TraceWriter(tmp_path)  # a new writer goes on after the widest part
    again.write([{"generation": 6, "node": 1}])
    assert again.parts == 8 and rows(tmp_path) == expected[:-1] + [(6, 1)]


def test_a_run_s_end_merges_the_small_parts_once_there_are_compact_parts_of_them(tmp_path):
    writer = TraceWriter(tmp_path)
    for g in range(COMPACT_PARTS - 1):
        writer.write([{"generation": g, "node": 0}])
        assert writer.compact() is None
    writer.write([{"generation": COMPACT_PARTS - 1, "node": 0}])
    merged = writer.compact()
    assert merged.name == f"part-000000-{COMPACT_PARTS - 1:06d}.parquet"
    assert rows(tmp_path) == [(g, 0) for g in range(COMPACT_PARTS)]


def test_big_parts_are_left_alone_and_a_new_writer_finishes_an_interrupted_compaction(
        tmp_path):
    writer = TraceWriter(tmp_path)
    for g in range(3):
        writer.write([{"generation": g, "node": n} for n in range(3)])
    writer.write([{"generation": 3, "node": 0}])
    merged = writer.compact(max_rows=2, min_parts=2)  # parts of 3 rows stay as they are
    assert merged is None
    writer.write([{"generation": 3, "node": 1}])
    merged = writer.compact(max_rows=2, min_parts=2)
    assert merged.name == "part-000003-000004.parquet"
    names = sorted(p.name for p in writer.dir.iterdir())
    assert names == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet",
                     merged.name]
    pq.write_table(pq.read_table(writer.dir / "part-000001.parquet"),
                   writer.dir / "part-000001-000001.parquet")  # a stale twin: one row each
    TraceWriter(tmp_path)
    assert len(list(writer.dir.iterdir())) == 4
    assert rows(tmp_path) == [(g, n) for g in range(3) for n in range(3)] + [(3, 0), (3, 1)]
