"""ES step cost (not a test): the sums over a population's antithetic pairs on both paths, and
a tiny CartPole node's `Node.finish`.

(a) What one generation's step asks of its population: the gradient with its variance
    (`Measurement.variance`) and a second gradient (`Strategy._predict_change`), from a fresh
    population (noise drawn beforehand and not timed; building E or the factors is timed),
    on each path of `population.sum_path` forced, the two alternating round by round. Per
    size (C, L, P): pairs x perturbed weights (the floats E holds), the medians, flat/factor,
    and the path `sum_path` picks.
(b) `Node.finish` of a tiny CartPole node (KalmanES, population 64, isolated and as a
    consensus group of one): median over generations.

One torch thread. Prints the CPU line and, last, one JSON line.

    python benchmarks/es_step.py [--sizes 16,1,64 64,2,256] [--rounds 15] [--generations 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _cpu import cpu, cpu_line
from rollout import INCLUDE, model_config

from rwkv_swarm.kernels import RWKV7, Population, RWKV7Config
from rwkv_swarm.kernels.population import SUM_PATHS, sum_path
from rwkv_swarm.node import ExchangeConfig, KalmanESConfig, Node, NodeConfig

SIZES = ["16,1,32", "16,1,64", "16,1,128", "16,1,192", "16,1,256", "32,1,64", "64,2,64",
         "64,2,256"]


def model_of(C: int, L: int) -> RWKV7Config:
    """The configs' tiny model at C=16; above, heads of up to 64 and a 4C FFN (as rollout.py's
    C=64)."""
    if C == 16:
        return model_config(C, L, 4, 2)
    return RWKV7Config(n_embd=C, n_layer=L, head_size=min(C, 64), input_dim=4, output_dim=2,
                       dim_ffn=4 * C)


def sums_case(C: int, L: int, P: int, rounds: int) -> dict:
    """Median seconds of one generation's sums per path, alternating."""
    model = RWKV7(model_of(C, L), init="live")
    drawn = Population(model, 1, 0.05, P, include=INCLUDE)
    assert drawn.noise  # drawn; only the noise: each round builds the sums' products itself
    u = torch.randn(P, generator=torch.Generator().manual_seed(0))
    raw = torch.randn(P, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {path: [] for path in SUM_PATHS}
    for i in range(rounds + 1):
        for path in SUM_PATHS:
            pop = Population(model, 1, 0.05, P, include=INCLUDE)
            pop.adopt_draws(drawn)
            pop.sum_path = path
            t = time.perf_counter()
            pop.flat_gradient_variance(u)
            pop.flat_gradient(raw)
            if i:  # the first round warms up
                times[path].append(time.perf_counter() - t)
    pop = Population(model, 1, 0.05, P, include=INCLUDE)
    return {"floats": P // 2 * pop.dim, "picked": sum_path(P // 2, pop.dim),
            **{path: statistics.median(ts) for path, ts in times.items()}}


def finish_case(mode: str, generations: int) -> float:
    """Median seconds of `Node.finish` over `generations` (the first 5 not counted)."""
    cfg = model_config(16, 1, 4, 2)
    exchange = ExchangeConfig(mode=mode) if mode != "consensus" else \
        ExchangeConfig(mode="consensus", group=0, group_size=1, member=0)
    node = Node(NodeConfig(model=cfg, es=KalmanESConfig(population=64, include=INCLUDE),
                           exchange=exchange, seed=1))
    times = []
    for _ in range(generations + 5):
        node.begin()
        node.evaluate()
        t = time.perf_counter()
        node.finish()
        times.append(time.perf_counter() - t)
    return statistics.median(times[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=SIZES)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--generations", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(cpu_line())
    print("(a) one generation's sums (gradient + variance, a second gradient), ms")
    print("  C   L  P     floats     flat  factor  flat/factor  picked")
    sums = {}
    for size in args.sizes:
        C, L, P = (int(v) for v in size.split(","))
        r = sums[size] = sums_case(C, L, P, args.rounds)
        print(f"  {C:<3} {L} {P:<5} {r['floats']:>9,} {r['flat'] * 1e3:8.3f} "
              f"{r['factor'] * 1e3:7.3f} {r['flat'] / r['factor']:8.2f}      {r['picked']}")
    print("(b) Node.finish, tiny CartPole node, population 64, ms (median)")
    finish = {}
    for mode in ("isolated", "consensus"):
        finish[mode] = finish_case(mode, args.generations)
        print(f"  {mode:<10} {finish[mode] * 1e3:.3f}")
    print(json.dumps({"cpu": cpu(), "sums": sums, "finish_s": finish}))


if __name__ == "__main__":
    main()
