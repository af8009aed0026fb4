"""Faults and endurance on an embedded local Ray (not a test): a table per task, a JSON last line.

  chaos   8 gossiping nodes, 60 generations of CartPole and of SignalEnv; one node actor's
          process SIGKILLed at a random time every 10-20 s. The run must complete with no row
          lost or repeated (a killed node's rows stop at its fault and start again where it
          rejoined), and its final centre fitness (every node's current weights over 20 fresh
          episodes) should lie within the spread of fault-free seeds. Reports detection time
          (kill -> `fault` event), restart time (`restart` event) and wall time against the
          fault-free runs'.
  soak    32 nodes for 10 minutes: resident memory of every node actor sampled every 15 s;
          after a warm-up it must stay flat within +-10%, and no valid message may be dropped.

    python benchmarks/chaos.py [--tasks chaos,soak] [--seeds 5] [--nodes 8] [--generations 60]
                               [--envs cartpole,signal] [--soak-nodes 32] [--soak-minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import tempfile
import time
from typing import Any

import ray
from _cpu import cpu_line
from _procs import actor_pids, rss_mib

from rwkv_swarm import Swarm, SwarmConfig, load_trace
from rwkv_swarm.node import KalmanESConfig
from rwkv_swarm.swarm import Migration, Resources, read_events

ENVS = {"cartpole": {"kind": "gym", "id": "CartPole-v1"},
        "signal": {"kind": "signal", "lags": 3}}
KILL_EVERY_S = (10.0, 20.0)


def config(env: str, seed: int, nodes: int, generations: int, run_dir: str) -> SwarmConfig:
    return SwarmConfig(nodes=nodes, mode="gossip", generations=generations, seed=seed,
                       env=ENVS[env], es=KalmanESConfig(population=32), run_dir=run_dir,
                       migration=Migration(every=5), resources=Resources(cpus=2 / nodes))


def drive(swarm: Swarm, chaos: bool, seed: int) -> tuple[float, list[tuple[float, int]]]:
    """Run to the end, SIGKILLing a random node actor every 10-20 s when `chaos`; returns the
    wall time and the kills (time, pid)."""
    rng = random.Random(seed)
    kills: list[tuple[float, int]] = []
    t0 = time.monotonic()
    next_kill = t0 + rng.uniform(*KILL_EVERY_S)
    swarm.start()
    while not swarm.done():
        time.sleep(0.1)
        if chaos and time.monotonic() >= next_kill:
            pids = actor_pids()
            if pids:
                victim = rng.choice(pids)
                os.kill(victim, signal.SIGKILL)
                kills.append((time.time(), victim))
            next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)
    swarm.wait()
    return time.monotonic() - t0, kills


def check_rows(run_dir: Any, nodes: int, generations: int) -> dict[str, Any]:
    """Rows repeated, and rows missing outside a node's fault -> rejoin gaps."""
    t = load_trace(run_dir).to_pydict()
    keys = list(zip(t["generation"], t["node"], strict=True))
    present = set(keys)
    gaps: dict[int, list[tuple[int, int]]] = {}
    events = read_events(run_dir)
    for e in events:
        if e["kind"] == "restart":  # rows stop at the lost generation, start again at rejoin
            gaps.setdefault(e["node"], []).append((e["lost_at"], e["generation"]))
    lost = [(g, n) for g in range(generations) for n in range(nodes)
            if (g, n) not in present
            and not any(lo <= g < hi for lo, hi in gaps.get(n, []))]
    return {"rows": len(keys), "repeated": len(keys) - len(present), "lost": len(lost),
            "gap_rows": nodes * generations - len(present) - len(lost),
            "faults": sum(e["kind"] == "fault" for e in events),
            "restarts": sum(e["kind"] == "restart" for e in events), "events": events}


def timings(events: list[dict[str, Any]], kills: list[tuple[float, int]]) -> dict[str, Any]:
    """Detection: each kill to the first `fault` event after it; restart: the `restart`
    events' own durations (fault to rejoin)."""
    faults = sorted(e["time"] for e in events if e["kind"] == "fault")
    detect = [min((f for f in faults if f >= k), default=float("nan")) - k for k, _ in kills]
    restart = [e.get("restart_s", float("nan")) for e in events if e["kind"] == "restart"]
    return {"detect_s": detect, "restart_s": restart}


def centres(swarm: Swarm) -> list[float]:
    """Each live node's current weights over 20 fresh episodes (a node killed near the end may
    still be restarting: it is left out)."""
    alive = [int(i) for i, n in swarm.status()["nodes"].items() if n["alive"]]
    got = ray.get(swarm.coordinator.call_nodes.remote("evaluate_centre", (20, 10_000), alive),
                  timeout=600)
    return [r for r in got if not isinstance(r, BaseException)]  # killed while scored


def one_run(env: str, seed: int, chaos: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(env, seed, args.nodes, args.generations, tmp)
        with Swarm.launch(cfg) as swarm:
            wall, kills = drive(swarm, chaos, seed)
            final = centres(swarm)
        rows = check_rows(swarm.run_dir, args.nodes, args.generations)
    out = {"env": env, "seed": seed, "chaos": chaos, "wall_s": wall, "kills": len(kills),
           "final": statistics.fmean(final), **timings(rows.pop("events"), kills), **rows}
    print(f"  {env:8s} seed {seed} {'chaos' if chaos else 'clean':5s}: {wall:6.1f} s, "
          f"kills {len(kills)}, faults {out['faults']}, restarts {out['restarts']}, rows "
          f"{out['rows']} (repeated {out['repeated']}, lost {out['lost']}, in gaps "
          f"{out['gap_rows']}), final {out['final']:.2f}", flush=True)
    return out


def chaos_task(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for env in args.envs.split(","):
        print(f"chaos: {env}, {args.nodes} nodes, {args.generations} generations", flush=True)
        clean = [one_run(env, s, False, args) for s in range(args.seeds)]
        hit = one_run(env, 100, True, args)
        finals = [r["final"] for r in clean]
        lo, hi = min(finals), max(finals)
        ratio = hit["wall_s"] / statistics.fmean(r["wall_s"] for r in clean)
        det = [d for d in hit["detect_s"] if d == d]
        res = [r for r in hit["restart_s"] if r == r]
        print(f"  -> final {hit['final']:.2f} vs fault-free [{lo:.2f}, {hi:.2f}] "
              f"({'within' if lo <= hit['final'] <= hi else 'OUTSIDE'}); wall x{ratio:.2f} of "
              f"fault-free; detection {_span(det)} s; restart {_span(res)} s", flush=True)
        results[env] = {"clean": clean, "chaos": hit, "wall_ratio": ratio,
                        "within_spread": lo <= hit["final"] <= hi}
    return results


def _span(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f} (median {statistics.median(xs):.2f})" if xs else "n/a"


def soak_task(args: argparse.Namespace) -> dict[str, Any]:
    nodes, seconds = args.soak_nodes, args.soak_minutes * 60
    print(f"soak: {nodes} nodes, SignalEnv, {args.soak_minutes} min", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SwarmConfig(nodes=nodes, mode="gossip", generations=10**6, env=ENVS["signal"],
                          es=KalmanESConfig(population=16), run_dir=tmp,
                          resources=Resources(cpus=2 / nodes))
        t_launch = time.monotonic()
        with Swarm.launch(cfg) as swarm:
            launch_s = time.monotonic() - t_launch
            swarm.start()
            samples: list[tuple[float, dict[int, float]]] = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                time.sleep(15)
                samples.append((time.monotonic() - t0,
                                {p: m for p in actor_pids() if (m := rss_mib(p)) is not None}))
            swarm.coordinator.stop.remote()
            status = swarm.wait()
    return soak_report(samples, status, launch_s, nodes)


def soak_report(samples: list[tuple[float, dict[int, float]]], status: dict[str, Any],
                launch_s: float, nodes: int) -> dict[str, Any]:
    warm = [s for t, s in samples if t >= min(120.0, samples[-1][0] / 5)]
    pids = set(warm[0]).intersection(*warm) if warm else set()
    drift = [max(s[p] for s in warm) / warm[0][p] - 1 for p in pids] + \
        [min(s[p] for s in warm) / warm[0][p] - 1 for p in pids]
    dropped = sum(n["dropped"] or 0 for n in status["nodes"].values())
    mean_rss = statistics.fmean(warm[-1][p] for p in pids) if pids else float("nan")
    print(f"  launch {launch_s:.1f} s, {status['generation']} generations, {status['rows']} rows; "
          f"node actor RSS {mean_rss:.0f} MiB (mean, last sample), drift after warm-up "
          f"{min(drift):+.1%} .. {max(drift):+.1%} over {len(pids)} actors; dropped {dropped}",
          flush=True)
    return {"nodes": nodes, "launch_s": launch_s, "generations": status["generation"],
            "rss_mib": mean_rss, "drift": [min(drift), max(drift)] if drift else None,
            "dropped": dropped, "flat": bool(drift) and max(map(abs, drift)) <= 0.10}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="chaos,soak")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--generations", type=int, default=60)
    p.add_argument("--envs", default="cartpole,signal")
    p.add_argument("--soak-nodes", type=int, default=32)
    p.add_argument("--soak-minutes", type=float, default=10.0)
    args = p.parse_args()
    print(cpu_line(), flush=True)
    out: dict[str, Any] = {}
    if "chaos" in args.tasks:
        out["chaos"] = chaos_task(args)
    if "soak" in args.tasks:
        out["soak"] = soak_task(args)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
