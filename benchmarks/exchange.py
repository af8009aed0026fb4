"""How nodes learn from each other, in one process (not a test): a table and a last-line JSON.

  consensus  4 nodes x 8 mutants in one consensus group against one node with 32 mutants on the
             same seeds, CartPole-v1: the largest weight difference over the generations.
  gossip     noisy CartPole-v1 (observation and action noise 0.1), 4 nodes x 32 mutants each,
             equal total episodes: gossip with Kalman fusion of the neighbours' estimates,
             gossip with their plain average, and 4 isolated nodes. Episodes (all 4 nodes
             together) until the first node's centre reaches a mean return of 400 over 20
             fresh episodes (checks are not counted); a run that never gets there counts as
             the cap. Target: Kalman fusion >= 20% fewer episodes than plain averaging.

    python benchmarks/exchange.py [--seeds 5] [--generations 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _cpu import cpu_line

from rwkv_swarm.kernels import RWKV7Config
from rwkv_swarm.node import ExchangeConfig, KalmanESConfig, Node, NodeConfig

TINY = RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=4, output_dim=2, dim_w=8,
                   dim_a=8, dim_v=8, dim_g=8, dim_ffn=32)
NOISY = {"kind": "gym", "id": "CartPole-v1", "obs_noise": 0.1, "action_noise": 0.1}
TARGET, CHECK_EPISODES, NODES, POPULATION = 400.0, 20, 4, 32
ARMS = {"gossip+kalman": ("gossip", "kalman"), "gossip+mean": ("gossip", "mean"),
        "isolated": ("isolated", "kalman")}


def one_generation(nodes: list[Node]) -> None:
    for n in nodes:
        n.begin()
        n.evaluate()
    reports = [n.report() for n in nodes]
    for n in nodes:
        n.finish([r for r in reports if r.node != n.node_name])


def best_centre(nodes: list[Node], seed: int, gen: int) -> float:
    return max(n.score(CHECK_EPISODES, seed=10_000 * (seed + 1) + gen) for n in nodes)


def gossip_run(arm: str, seed: int, generations: int) -> dict:
    mode, fusion = ARMS[arm]
    nodes = [Node(NodeConfig(model=TINY, env=NOISY, seed=seed, node_id=k,
                             es=KalmanESConfig(population=POPULATION, fusion=fusion),
                             exchange=ExchangeConfig(mode=mode))) for k in range(NODES)]
    t0 = time.perf_counter()
    for g in range(generations):
        one_generation(nodes)
        if best_centre(nodes, seed, g) >= TARGET:
            return {"solved": True, "episodes": sum(n.episodes_used for n in nodes),
                    "seconds": time.perf_counter() - t0}
    return {"solved": False, "episodes": sum(n.episodes_used for n in nodes),
            "seconds": time.perf_counter() - t0}


def consensus_gap(generations: int = 10) -> float:
    cartpole = {"kind": "gym", "id": "CartPole-v1"}
    group = [Node(NodeConfig(model=TINY, env=cartpole, es=KalmanESConfig(population=8),
                             node_id=k, exchange=ExchangeConfig(mode="consensus", group=0,
                                                                group_size=4, member=k)))
             for k in range(4)]
    single = Node(NodeConfig(model=TINY, env=cartpole, es=KalmanESConfig(population=32)))
    gap = 0.0
    for _ in range(generations):
        one_generation(group)
        single.generation()
        for n in group:
            gap = max(gap, max(float((a - b).abs().max()) for a, b in
                               zip(n.model.parameters(), single.model.parameters(), strict=True)))
    return gap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--generations", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(cpu_line())
    gap = consensus_gap()
    print(f"consensus: 4 x 8 vs 1 x 32 over 10 generations, largest weight difference {gap:.1e}")
    runs = {arm: [gossip_run(arm, s, args.generations) for s in range(args.seeds)]
            for arm in ARMS}
    summary = {}
    for arm, rs in runs.items():
        eps = [r["episodes"] for r in rs]
        summary[arm] = {"solved": sum(r["solved"] for r in rs), "episodes": eps,
                        "median": statistics.median(eps),
                        "seconds": statistics.median(r["seconds"] for r in rs)}
        s = summary[arm]
        print(f"{arm:14} solved {s['solved']}/{args.seeds}  median episodes {s['median']:>6}  "
              f"per seed {eps}  median {s['seconds']:.0f} s")
    fewer = 1 - summary["gossip+kalman"]["median"] / summary["gossip+mean"]["median"]
    print(f"Kalman fusion vs plain averaging: {fewer:.0%} fewer episodes (target >= 20%)")
    print(json.dumps({"consensus_max_weight_gap": gap, "gossip": summary,
                      "fusion_fewer_episodes": fewer, "cpu": cpu_line()}))


if __name__ == "__main__":
    main()
