"""A node killed -9 mid-run (not a test): a 4-node sync gossip swarm on Ray (half a CPU each,
wait_s = 60), node 2's actor process SIGKILLed at generation 15; the run goes on until 15
generations after the node rejoined, then stops. Per run: how soon the fault was seen, how
long the restart took, how many generations ran without the node, and the median generation
time before the fault, during the gap and after the rejoin. Each fault run is paired with a
control run without a kill over as many generations, whose medians are taken over the same
generations: what a run's generation time drifts by without any fault.

    python benchmarks/faults.py [--runs 3] [--population 16]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time

import ray
from _cpu import cpu_line

from rwkv_swarm import Swarm, SwarmConfig, load_trace
from rwkv_swarm.node import KalmanESConfig
from rwkv_swarm.swarm import Resources, read_events

KILL_AT, AFTER, NODE = 15, 15, 2


def wait_until(what, bound_s: float = 300.0):
    deadline = time.monotonic() + bound_s
    while not (got := what()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {bound_s} s")
        time.sleep(0.05)
    return got


def config(tmp: str, population: int) -> SwarmConfig:
    return SwarmConfig(nodes=4, env={"kind": "signal", "lags": 3}, run_dir=tmp,
                       resources=Resources(cpus=0.5), wait_s=60.0, checkpoint_every=5,
                       es=KalmanESConfig(population=population))


def fault_run(tmp: str, population: int) -> tuple[dict, dict[str, range]]:
    with Swarm.launch(config(tmp, population)) as swarm:
        swarm.start(100_000)
        wait_until(lambda: swarm.status()["generation"] >= KILL_AT)
        pid = ray.get(ray.get(swarm.coordinator.actors.remote())[NODE].pid.remote())
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        restart = wait_until(lambda: [e for e in read_events(swarm.run_dir)
                                      if e["kind"] == "restart"])[0]
        wait_until(lambda: swarm.status()["generation"] >= restart["generation"] + AFTER)
        ray.get(swarm.coordinator.stop.remote())
        swarm.wait(300)
    fault = next(e for e in read_events(swarm.run_dir) if e["kind"] == "fault")
    lost, back = fault["generation"], restart["generation"]
    windows = {"before": range(1, lost), "gap": range(lost + 1, back),
               "after": range(back + 1, back + AFTER)}  # the fault's and rejoin's own excluded
    per_gen = generation_s(swarm.run_dir)
    return {"detected_s": round(fault["time"] - killed, 3),
            "restart_s": restart["restart_s"], "gap_generations": back - lost,
            "snapshot_generation": restart["snapshot_generation"],
            **medians(per_gen, windows), "fault_generation_s": round(per_gen[lost], 3),
            "rejoin_generation_s": round(per_gen[back], 3)}, windows


def control_run(tmp: str, population: int, windows: dict[str, range]) -> dict:
    with Swarm.launch(config(tmp, population)) as swarm:
        swarm.run(windows["after"].stop)
    return {f"control_{k}": v for k, v in medians(generation_s(swarm.run_dir), windows).items()}


def generation_s(run_dir) -> dict[int, float]:
    return {r["generation"]: r["generation_s"] for r in load_trace(run_dir).to_pylist()}


def medians(per_gen: dict[int, float], windows: dict[str, range]) -> dict[str, float]:
    return {f"{k}_s": round(statistics.median(per_gen[g] for g in gens), 3)
            for k, gens in windows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--tmp", default="/tmp/rwkv-swarm-bench")
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    runs = []
    for k in range(args.runs):
        tmp = f"{args.tmp}/faults-{int(time.time())}-{k}"
        fault, windows = fault_run(tmp, args.population)
        runs.append({**fault, **control_run(f"{tmp}-control", args.population, windows)})
        print(json.dumps(runs[-1]), flush=True)
    ray.shutdown()
    print(json.dumps({"faults": runs, "cpu": cpu_line()}))


if __name__ == "__main__":
    main()
