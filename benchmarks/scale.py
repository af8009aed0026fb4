"""Hundreds of nodes on one machine (not a test): nodes packed per actor
(`resources.nodes_per_actor`), SignalEnv, the tiny model, 32 mutants per node.

  profile   where a node's start-up goes, in this process: importing the node's code (in a
            fresh interpreter, after Ray), building a NodeHost, binding a transport alone
  memory    one actor of k nodes, k = 1, 8, 32, 128: its RSS and PSS after two generations,
            and the memory each additional packed node costs (least squares over k)
  swarm     configs/swarm256.toml (256 nodes, "auto": two actors of 128): launch time and where
            it went (per actor: process start, imports, constructor, nodes up; then wiring),
            RSS and PSS of all node actors (and of the coordinator's), 10 generations with
            every (generation, node) row present, and the coordinator's time per generation
            (its CPU seconds, and the wall time between two generations that is not spent in
            the nodes' calls)

    python benchmarks/scale.py [--tasks profile,memory,swarm] [--nodes 256] [--generations 10]

Ray is started here once (2 CPUs) and shut down at the end; launch times do not include it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from _cpu import cpu_line
from _procs import actor_pids, pss_mib, rss_mib

from rwkv_swarm import Swarm, SwarmConfig, load_trace
from rwkv_swarm.cluster import connect
from rwkv_swarm.cluster.host import NodeHost
from rwkv_swarm.node import SwarmKeyring, Transport
from rwkv_swarm.swarm import Resources

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "swarm256.toml"
IMPORT = ("import time, ray; t = time.perf_counter(); import rwkv_swarm.cluster.actor; "
          "print(time.perf_counter() - t)")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile() -> dict[str, float]:
    """Per-node start-up costs measured in this process."""
    out = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    cfg = SwarmConfig.from_toml(CONFIG).replace(nodes=32)
    configs = cfg.node_configs()
    ring, keys = SwarmKeyring.generate([f"node-{c.node_id}" for c in configs])
    t0 = time.perf_counter()
    hosts = [NodeHost(c, "bench", keys=keys[f"node-{c.node_id}"], keyring=ring)
             for c in configs]
    host_s = (time.perf_counter() - t0) / len(configs)
    t0 = time.perf_counter()
    bare = [Transport(f"node-{i}", keys=keys[f"node-{i}"], keyring=ring) for i in range(32)]
    bind_s = (time.perf_counter() - t0) / len(bare)
    for x in [*hosts, *bare]:
        x.close()
    return {"import_s": float(out.stdout.strip()), "nodehost_s": host_s, "transport_s": bind_s}


def one_actor(k: int, tmp: str) -> dict[str, float]:
    """One actor of k nodes, two generations: its RSS and PSS."""
    cfg = SwarmConfig.from_toml(CONFIG).replace(
        nodes=k, generations=2, run_dir=tmp, checkpoint_every=0,
        resources=Resources(cpus=1 / k, nodes_per_actor=k))
    with Swarm.launch(cfg) as swarm:
        swarm.run()
        (actor,) = ray.get(swarm.coordinator.actors.remote())[:1]
        pid = ray.get(actor.pid.remote())
        return {"k": k, "rss_mib": rss_mib(pid), "pss_mib": pss_mib(pid)}


def memory(tmp: str) -> dict[str, Any]:
    rows = [one_actor(k, tmp) for k in (1, 8, 32, 128)]
    ks = np.array([r["k"] for r in rows], dtype=float)
    slope = {m: float(np.polyfit(ks, [r[m] for r in rows], 1)[0]) for m in ("rss_mib", "pss_mib")}
    return {"actors": rows, "per_node_rss_mib": slope["rss_mib"],
            "per_node_pss_mib": slope["pss_mib"]}


def coordinator_pid() -> int:
    (pid,) = actor_pids("ray::CoordinatorActor")
    return pid


def swarm(nodes: int, generations: int, tmp: str) -> dict[str, Any]:
    cfg = SwarmConfig.from_toml(CONFIG).replace(nodes=nodes, generations=generations,
                                                run_dir=tmp)
    t0 = time.time()
    with Swarm.launch(cfg) as s:
        launch_s = time.time() - t0
        actors = list({a._actor_id: a for a in ray.get(s.coordinator.actors.remote())}.values())
        starts = ray.get([a.startup.remote() for a in actors])
        pids = ray.get([a.pid.remote() for a in actors])
        coord = coordinator_pid()
        c0 = cpu_s(coord)
        s.run()
        coord_cpu = cpu_s(coord) - c0
        rss = [rss_mib(p) for p in pids]
        pss = [pss_mib(p) for p in pids]
        coord_rss, coord_pss = rss_mib(coord), pss_mib(coord)
    t = load_trace(s.run_dir).to_pydict()
    keys = sorted(zip(t["generation"], t["node"], strict=True))
    by_gen: dict[int, tuple[float, float]] = {}
    for g, when, took in zip(t["generation"], t["time"], t["generation_s"], strict=True):
        by_gen[g] = (when, took)
    outside = [by_gen[g][0] - by_gen[g - 1][0] - by_gen[g][1] for g in range(1, generations)]
    phase = {k: [st[k] - t0 for st in starts] for k in ("process", "init", "nodes_up")}
    return {"nodes": nodes, "actors": len(actors), "per_actor": cfg.per_actor(),
            "launch_s": launch_s,
            "startup_s": {k: [round(v, 2) for v in vs] for k, vs in phase.items()},
            "wiring_s": launch_s - max(phase["nodes_up"]),
            "rss_mib": sum(rss), "pss_mib": sum(pss),
            "coordinator_rss_mib": coord_rss, "coordinator_pss_mib": coord_pss,
            "rows_ok": keys == [(g, n) for g in range(generations) for n in range(nodes)],
            "generation_s": statistics.median(by_gen[g][1] for g in by_gen),
            "coordinator_cpu_per_gen_s": coord_cpu / generations,
            "coordinator_wall_outside_calls_s": statistics.median(outside),
            "coordinator_wall_outside_calls_max_s": max(outside)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="profile,memory,swarm")
    p.add_argument("--nodes", type=int, default=256)
    p.add_argument("--generations", type=int, default=10)
    a = p.parse_args()
    print(cpu_line())
    print(f"load: {os.getloadavg()}")
    out: dict[str, Any] = {}
    tasks = a.tasks.split(",")
    if "profile" in tasks:
        out["profile"] = profile()
        print("profile", json.dumps(out["profile"]))
    connect(None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "memory" in tasks:
                out["memory"] = memory(tmp)
                for r in out["memory"]["actors"]:
                    print(f"one actor of {r['k']:>3} nodes: RSS {r['rss_mib']:.0f} MiB, "
                          f"PSS {r['pss_mib']:.0f} MiB")
                m = out["memory"]
                print(f"per additional node: RSS {m['per_node_rss_mib']:.2f} MiB, PSS "
                      f"{m['per_node_pss_mib']:.2f} MiB; k=128 vs 128 actors of one: "
                      f"{m['actors'][-1]['rss_mib'] / (128 * m['actors'][0]['rss_mib']):.3f}")
            if "swarm" in tasks:
                out["swarm"] = swarm(a.nodes, a.generations, tmp)
                print("swarm", json.dumps(out["swarm"]))
    finally:
        ray.shutdown()
    print(f"load: {os.getloadavg()}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
