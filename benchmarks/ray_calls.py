"""What returning a generation's rows costs on Ray (not a test): one actor call a generation,
one streamed item a generation (a streaming generator), and items of several generations.

An actor spins `--gen-ms` of CPU a "generation" (a node's work) and returns a trace row (a
47-field dict, as a node's row) for each; the caller waits for each item as the coordinator
does (`ray.wait`, then `ray.get`). Printed per generation: wall time, and the CPU time the
caller's process and the actor's process spent beyond the spinning, from /proc (10 ms ticks,
so over hundreds of generations). Side by side in one run, arms interleaved.

    python benchmarks/ray_calls.py [--gens 400] [--gen-ms 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ray
from _cpu import cpu_line, process_cpu_s

ROW = {f"f{i}": float(i) for i in range(47)}


def spin(seconds: float) -> None:
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


@ray.remote(num_cpus=1, max_concurrency=4)
class Node:
    def pid(self) -> int:
        return os.getpid()

    def call(self, gen_s: float) -> list:
        spin(gen_s)
        return [dict(ROW)]

    def stream(self, n: int, gen_s: float, per_item: int):
        batch = []
        for _ in range(n):
            spin(gen_s)
            batch.append([dict(ROW)])
            if len(batch) == per_item:
                yield batch
                batch = []
        if batch:
            yield batch


def arm(node, pid: int, how: str, gens: int, gen_s: float) -> dict:
    me, t0 = os.getpid(), time.perf_counter()
    c0, a0 = process_cpu_s(me), process_cpu_s(pid)
    if how == "call":
        for _ in range(gens):
            ready, _ = ray.wait([node.call.remote(gen_s)], num_returns=1)
            ray.get(ready[0])
    else:
        per_item = 1 if how == "stream" else 4
        stream = node.stream.remote(gens, gen_s, per_item)
        for _ in range(-(-gens // per_item)):
            ray.wait([stream], num_returns=1)
            ray.get(next(stream))
    wall = time.perf_counter() - t0
    return {"wall_ms": 1e3 * wall / gens, "caller_cpu_ms": 1e3 * (process_cpu_s(me) - c0) / gens,
            "actor_cpu_ms": 1e3 * (process_cpu_s(pid) - a0) / gens - 1e3 * gen_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gens", type=int, default=400)
    ap.add_argument("--gen-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        node = Node.remote()
        pid = ray.get(node.pid.remote())
        arms = ("call", "stream", "stream of 4")
        runs: dict[str, list[dict]] = {a: [] for a in arms}
        arm(node, pid, "call", 50, 0.0)  # warm-up
        for _ in range(args.rounds):
            for a in arms:
                runs[a].append(arm(node, pid, a, args.gens, args.gen_ms / 1e3))
    finally:
        ray.shutdown()
    out = {a: {k: round(min(r[k] for r in rs), 3) for k in rs[0]} for a, rs in runs.items()}
    for a, r in out.items():
        print(f"{a:12s} per generation: wall {r['wall_ms']:.3f} ms, caller CPU "
              f"{r['caller_cpu_ms']:.3f} ms, actor CPU beyond its work {r['actor_cpu_ms']:.3f} ms")
    base = out["call"]
    ratios = {a: {k: round(base[k] / r[k], 2) if r[k] > 0 else None
                  for k in ("caller_cpu_ms", "actor_cpu_ms")} for a, r in out.items()}
    print(json.dumps({"per_generation": out, "call_over": ratios, "gen_ms": args.gen_ms,
                      "load": os.getloadavg(), "cpu": cpu_line()}))


if __name__ == "__main__":
    main()
