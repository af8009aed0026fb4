"""`rwkv-swarm demo`: 4 gossiping nodes on an embedded local Ray learn to predict a stream; at
mid-run a signal shifts the stream's fast frequency; the swarm has to adapt. Prints a summary,
writes the trace and a PNG, and ends with its total time and a verdict."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..report import format_table, plot, summary
from ..trace import load_trace
from .run import shown, watch

if TYPE_CHECKING:
    from ..config import SwarmConfig

SHIFT = {"freq": [0.021, 0.047, 0.25]}  # the fast component moves from 0.113 to 0.25


def demo_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="a 4-node swarm on local Ray, a signal midway")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--generations", type=int, default=40)
    p.add_argument("--run-dir", default="runs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=demo_command)
    return p


def demo_config(nodes: int, generations: int, run_dir: str) -> SwarmConfig:
    """Half a CPU per node on the embedded Ray (one torch thread each, so the nodes share the
    cores without thrashing)."""
    from ..config import Migration, Resources, SwarmConfig

    return SwarmConfig(nodes=nodes, mode="gossip", generations=generations,
                       env={"kind": "signal", "lags": 3}, run_dir=run_dir,
                       migration=Migration(every=5), resources=Resources(cpus=0.5))


def demo_command(args: argparse.Namespace) -> int:
    from ..api import Swarm
    from ..signals import Signal

    t0 = time.perf_counter()
    config = demo_config(args.nodes, args.generations, args.run_dir)
    midway = args.generations // 2
    with Swarm.launch(config) as swarm:
        print(f"run {swarm.run_id}: {config.nodes} gossiping nodes predict a stream; at "
              f"generation {midway} its fast frequency moves 0.113 -> 0.25", flush=True)
        watch(swarm, midway, quiet=args.quiet)
        injected = swarm.inject(Signal("freq_shift", SHIFT))  # at the boundary: the next
        watch(swarm, args.generations - midway, quiet=args.quiet)  # generation is in the new world
    print(format_table(summary(swarm.run_dir)))
    png = plot(swarm.run_dir)
    print(f"trace: {shown(swarm.run_dir / 'trace.parquet')}  plot: {shown(png)}")
    print(verdict(swarm.run_dir, injected, time.perf_counter() - t0))
    return 0


def verdict(run_dir: Any, ack: dict[str, Any], seconds: float) -> str:
    """How much of the shift's damage the swarm undid, in words."""
    t = load_trace(run_dir).to_pydict()
    gens = np.array(t["generation"])
    fit = np.array(t["fitness_mean"])
    if not ack:
        return f"verdict: the run ended before the signal; {seconds:.0f} s in all"
    at = min(ack["applied"].values())
    before = fit[(gens >= at - 3) & (gens < at)].mean()
    hit = fit[gens == at].mean()
    last = gens.max()
    after = fit[gens > last - 3].mean()
    undone = (after - hit) / (before - hit) if before > hit else float("nan")
    word = "adapted" if undone >= 0.5 else "still adapting"
    return (f"verdict: {word}: fitness {before:.1f} before the shift, {hit:.1f} right after, "
            f"{after:.1f} at the end ({undone:.0%} of the drop undone); {seconds:.0f} s in all")
