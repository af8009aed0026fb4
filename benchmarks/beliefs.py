"""Beliefs a coordinator can trust (not a test): in a world that never changes, how often does a
node's fitness belief cry surprise, does a run ever sit at a zero step, and do the default
settings solve CartPole? Default NodeConfig / KalmanESConfig throughout, 5 seeds, a table and a
last-line JSON.

  stationary   surprise flags / generations over `--generations` generations, CartPole-v1
               and SignalEnv (default stream), nominal rate 1% (surprise_p 0.99), target <= 5%;
               and the longest run of generations whose step was exactly 0 (target: a few)
  solve        CartPole-v1 with the default settings until the centre's mean return over 20
               fresh episodes is >= 475: solved seeds and episodes

    python benchmarks/beliefs.py [--seeds 5] [--generations 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from _cpu import cpu_line

from rwkv_swarm.kernels import RWKV7Config
from rwkv_swarm.node import Node, NodeConfig

# what a new user runs: the README's model, every other setting left at its default
CARTPOLE = RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=4, output_dim=2)
SIGNAL = RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=1, output_dim=1)
WORLDS = {"cartpole": (CARTPOLE, {"kind": "gym", "id": "CartPole-v1"}),
          "signal": (SIGNAL, {"kind": "signal"})}


def longest_zero_run(rows: list[dict]) -> int:
    run = best = 0
    for r in rows:
        run = run + 1 if r["step_norm"] == 0 else 0
        best = max(best, run)
    return best


def stationary(world: str, seeds: int, generations: int) -> dict:
    model, env = WORLDS[world]
    flags, zero_runs = [], []
    for seed in range(seeds):
        node = Node(NodeConfig(model=model, env=env, seed=seed))
        rows = [node.generation() for _ in range(generations)]
        flags.append(sum(r["surprised"] for r in rows))
        zero_runs.append(longest_zero_run(rows))
    rate = sum(flags) / (seeds * generations)
    return {"world": world, "flags": flags, "rate": rate, "longest_zero_step_run": max(zero_runs)}


def solve(seeds: int, max_generations: int = 60) -> dict:
    episodes, t0 = [], time.perf_counter()
    for seed in range(seeds):
        node = Node(NodeConfig(model=CARTPOLE, seed=seed))
        for g in range(max_generations):
            node.generation()
            if node.score(20, seed=10_000 * (seed + 1) + g) >= 475:
                episodes.append(node.episodes_used)
                break
        else:
            episodes.append(None)
    solved = [e for e in episodes if e is not None]
    return {"solved": len(solved), "seeds": seeds, "episodes": episodes,
            "median_episodes": statistics.median(solved) if solved else None,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--generations", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(cpu_line())
    out = {"stationary": [stationary(w, args.seeds, args.generations) for w in WORLDS],
           "solve": solve(args.seeds)}
    print(f"{'world':10} {'surprise flags per seed':28} {'rate':>6}  longest zero-step run")
    for s in out["stationary"]:
        print(f"{s['world']:10} {str(s['flags']):28} {s['rate']:6.1%}  "
              f"{s['longest_zero_step_run']}")
    v = out["solve"]
    print(f"CartPole default settings: {v['solved']}/{v['seeds']} solved, episodes "
          f"{v['episodes']}, median {v['median_episodes']} ({v['seconds']:.0f} s)")
    print(json.dumps({**out, "cpu": cpu_line(), "torch_threads": 1}, default=float))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
