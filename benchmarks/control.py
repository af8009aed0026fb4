"""The control plane alone (not a test): a `Coordinator` over simulated nodes, plain objects
that answer its calls at once with rows shaped like a node's, at 64 to 4,096 nodes.

What it measures is the coordinator's own time per sync generation (its calls to the nodes
cost nothing here): signals and topology at the boundary, the round trip's bookkeeping,
P(best) and the migration decision, the trace and status; and the memory it holds. The
growth exponent is the least-squares slope of log(time) against log(nodes) over the sizes
measured (1: linear).

    python benchmarks/control.py [--nodes 64,256,1024,4096] [--generations 20] [--ray 8]

and, beside it, a real swarm of `--ray` node actors on this machine's Ray: the coordinator's
wall time per generation outside the nodes' round trips.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
from _cpu import cpu_line

from rwkv_swarm.swarm import Coordinator, SwarmConfig
from rwkv_swarm.swarm.config import Migration

ROW_FLOATS = ("fitness_std", "fitness_max", "fitness_min", "gain", "innovation", "nis", "sigma",
              "lr", "grad_norm", "step_norm", "direction_gain", "expected_change",
              "centre_return", "evaluate_s", "update_s", "communicate_s", "wait_s", "send_s")
ROW_INTS = ("nonfinite", "episodes", "env_steps", "absorbed", "absorbed_from", "refused",
            "missing", "bad_obs", "diverged", "sent", "received", "dropped", "bytes_sent",
            "bytes_received")


class SimulatedNodes:
    """`Nodes` answered by plain objects: each node's row is made fresh per call (a node's
    row crosses a process boundary, so the coordinator never shares it)."""

    def __init__(self, n: int, seed: int = 0):
        self.names = [f"node-{i}" for i in range(n)]
        self.rng = np.random.default_rng(seed)
        self.generation = [0] * n
        self.calls: dict[str, int] = {}

    def _row(self, i: int) -> dict[str, Any]:
        g = self.generation[i]
        self.generation[i] += 1
        mean = float(self.rng.normal(100.0, 10.0))
        row: dict[str, Any] = {k: 0.5 for k in ROW_FLOATS}
        row.update({k: 3 for k in ROW_INTS})
        row.update(fitness_mean=mean, belief_mean=mean, belief_var=4.0, surprised=False,
                   tied=False, fingerprint=f"{i:016x}{g:016x}", name=self.names[i],
                   dropped_by="", signals="", rows_computed=1000, rows_useful=900)
        return row

    def call(self, method: str, args: list[tuple] | tuple = (), only: list[int] | None = None,
             on_fault: Any = None) -> list[Any]:
        idx = range(len(self.names)) if only is None else only
        self.calls[method] = self.calls.get(method, 0) + 1
        if method in ("absorb", "generation"):
            rows = [self._row(i) for i in idx]
            if len(args) > 1 and args[1]:  # a checkpoint follows: the snapshot comes along
                for i, row in zip(idx, rows, strict=True):
                    row["snapshot"] = {"generation": self.generation[i], "snapshot": b"\0" * 64}
            return rows
        if method == "share":
            return [{"generation": self.generation[i]} for i in idx]
        if method == "snapshot":
            return [{"generation": self.generation[i], "snapshot": b"\0" * 64} for i in idx]
        return [None for _ in idx]

    def generations(self, count: int, args: list[tuple] | tuple = (),
                    only: list[int] | None = None, on_fault: Any = None) -> Iterator[list[Any]]:
        for k in range(count):  # the snapshot comes with the last generation only
            yield self.call("generation", args if k == count - 1 else (args[0], False), only)

    def tell(self, method: str, args: tuple = (), only: list[int] | None = None) -> None:
        pass

    def respawn(self, i: int, snapshot: bytes | None) -> bool:
        return False

    def started(self, i: int, timeout_s: float = 0.0) -> dict[str, Any] | None:
        return None

    def transfer(self, src: int, dst: int, belief: tuple[float, float], with_state: bool
                 ) -> dict[str, Any]:
        return {"state": with_state, "fingerprint": "00"}


def config(n: int, run_dir: str, checkpoint_every: int) -> SwarmConfig:
    return SwarmConfig(nodes=n, mode="gossip", run_dir=run_dir, checkpoint_every=checkpoint_every,
                       migration=Migration(every=5, gate=0.6, fraction=0.25), secure=False)


def per_generation(n: int, gens: int, checkpoint_every: int) -> dict[str, Any]:
    """Seconds of coordinator time per generation, from one generation's end to the next's
    (after 2 warm-up generations; the end of `run()` is not counted): the median, and the mean,
    which carries the checkpoints' share; and the calls each generation makes to the nodes."""
    with tempfile.TemporaryDirectory() as tmp:
        nodes = SimulatedNodes(n)
        c = Coordinator(config(n, tmp, checkpoint_every), "bench", tmp, nodes)
        c.run(2, on_generation=lambda status: None)
        before = dict(nodes.calls)
        ends = [time.perf_counter()]
        c.run(gens, on_generation=lambda status: ends.append(time.perf_counter()))
        took = np.diff(ends)
        calls = {k: (v - before.get(k, 0)) / gens for k, v in nodes.calls.items()
                 if v != before.get(k, 0)}
    return {"s_per_generation": float(np.median(took)), "mean_s": float(np.mean(took)),
            "calls_per_generation": calls}


def memory(n: int, gens: int) -> dict[str, float]:
    """Bytes the coordinator holds after `gens` generations, and the peak while running."""
    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.take_snapshot()
        c = Coordinator(config(n, tmp, 0), "bench", tmp, SimulatedNodes(n))
        c.run(gens)
        gc.collect()
        held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"held_bytes": held, "peak_bytes": peak, "held_per_node": held / n}


def on_ray(n: int, gens: int, checkpoint_every: int) -> dict[str, float]:
    """A real swarm of `n` node actors on this machine's Ray (tiny model, 8 mutants each, short
    SignalEnv segments): the coordinator's wall time per generation outside the nodes' round
    trips (wall / generations - the mean `generation_s`); a checkpoint's writing and any
    `snapshot` call count as outside."""
    import ray

    from rwkv_swarm import Swarm, load_trace
    from rwkv_swarm.node import KalmanESConfig
    from rwkv_swarm.swarm import Resources

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SwarmConfig(nodes=n, run_dir=tmp, env={"kind": "signal", "segment_length": 16},
                              es=KalmanESConfig(population=8),
                              checkpoint_every=checkpoint_every,
                              resources=Resources(cpus=2 / n))
            with Swarm.launch(cfg) as swarm:
                swarm.run(2)
                t0 = time.perf_counter()
                swarm.run(gens)
                wall = (time.perf_counter() - t0) / gens
                t = load_trace(swarm.run_dir).to_pydict()
            inside = [s for g, s in zip(t["generation"], t["generation_s"], strict=True)
                      if g >= 2]
    finally:
        ray.shutdown()
    return {"s_per_generation": wall, "round_trip_s": float(np.mean(inside)),
            "coordinator_s": wall - float(np.mean(inside))}


def exponent(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="64,256,1024,4096")
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--ray", type=int, default=8, help="nodes of the real swarm (0: none)")
    args = p.parse_args()
    sizes = [int(s) for s in args.nodes.split(",")]
    print(cpu_line())
    out: dict[str, Any] = {}
    print(f"{'nodes':>6} {'ms/gen':>9} {'mean ms':>9} {'us/node':>8} {'held MiB':>9} "
          f"{'peak MiB':>9}  calls/gen")
    for n in sizes:
        gens = max(2 * args.checkpoint_every, args.generations * 64 // max(64, n))
        t = per_generation(n, gens, args.checkpoint_every)
        m = memory(n, min(gens, 5))
        out[n] = {**t, **m, "generations": gens}
        calls = ", ".join(f"{k} {v:g}" for k, v in sorted(t["calls_per_generation"].items()))
        print(f"{n:>6} {t['s_per_generation'] * 1e3:>9.2f} {t['mean_s'] * 1e3:>9.2f} "
              f"{t['s_per_generation'] / n * 1e6:>8.1f} {m['held_bytes'] / 2**20:>9.2f} "
              f"{m['peak_bytes'] / 2**20:>9.2f}  {calls}")
    slope = exponent(sizes, [out[n]["s_per_generation"] for n in sizes]) \
        if len(sizes) > 1 else math.nan
    mem_slope = exponent(sizes, [max(1, out[n]["held_bytes"]) for n in sizes]) \
        if len(sizes) > 1 else math.nan
    print(f"growth exponent: time {slope:.2f}, memory held {mem_slope:.2f} (1 = linear)")
    ray_out = {every: on_ray(args.ray, args.generations, every)
               for every in (args.checkpoint_every, 0)} if args.ray else {}
    for every, r in ray_out.items():
        print(f"on Ray, {args.ray} node actors, checkpoint_every {every}: "
              f"{r['s_per_generation'] * 1e3:.1f} ms a generation, of which the coordinator "
              f"outside the round trip {r['coordinator_s'] * 1e3:.2f} ms")
    print(json.dumps({"nodes": out, "time_exponent": slope, "memory_exponent": mem_slope,
                      "ray": ray_out, "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
