"""Population rollout benchmark (not a test): env steps per second, the old path vs the new.

For (C, L, P) = (16, 1, 32), (64, 2, 256), (128, 4, 1024), on CartPole and SignalEnv:

- old: every row stepped until the longest episode ends, through the pair-structured
  PyTorch population forward (`Population.forward`, one token), as before the row kernel;
- new: `Population.step_rows` on its measured path, the batch compacted to its live copies
  (`rollout(..., compact=COMPACT_BELOW)`), the Python loop `Node.evaluate` runs in worlds
  the native loop does not cover;
- loop (CartPole on the CPU): the native rollout (node/native_rollout.py), world and row
  step in one C loop, as `Node.evaluate` runs it there; bit for bit "new"'s returns.

Reported per case: useful env steps/s (steps of live copies), computed rows/s, the useful
share of rows computed, the new/old ratio, and the GEMM roofline: the same arithmetic at the
rate of a large plain PyTorch GEMM, measured in the same run. Also the bare
population step (no environment) at each size, old and new.

CartPole episodes come from a centre evolved for a few generations first (a fresh policy's
episodes all end in about 10 steps; a half-trained one's spread out, which is what compaction
is for). The arms alternate round by round; medians of the rounds. Prints the CPU line and,
last, one JSON line.

On `--device cuda` the node, its populations and rollouts live on the GPU ("new" is then the
row step on its measured CUDA path: PyTorch ops or the replayed CUDA graph) and every timed
call waits for the device.

    python benchmarks/rollout.py [--device cuda] [--rounds 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from _cpu import cpu, cpu_line
from kernels import machine, refuse_missing_cuda

from rwkv_swarm.kernels import RWKV7, Population, RWKV7Config
from rwkv_swarm.node import KalmanESConfig, Node, NodeConfig
from rwkv_swarm.node import native_rollout as nr
from rwkv_swarm.node.envs import make_env
from rwkv_swarm.node.rollout import COMPACT_BELOW, rollout

SIZES = [(16, 1, 32), (64, 2, 256), (128, 4, 1024)]
STEP_SIZES = [(16, 1, 32), (64, 2, 32), (64, 2, 256), (128, 4, 1024)]
ENVS = {"cartpole": {"kind": "gym", "id": "CartPole-v1"}, "signal": {"kind": "signal", "lags": 3}}
INCLUDE = ("matrices", "head", "embedding")  # the strategies' default groups
SIGMA, MAX_STEPS = 0.05, 500


def model_config(C: int, L: int, input_dim: int, output_dim: int) -> RWKV7Config:
    if C == 16:  # the configs' TINY_MODEL
        return RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=input_dim,
                           output_dim=output_dim, dim_w=8, dim_a=8, dim_v=8, dim_g=8, dim_ffn=32)
    return RWKV7Config(n_embd=C, n_layer=L, input_dim=input_dim, output_dim=output_dim,
                       dim_ffn=256 if C == 64 else None)


DEVICE = "cpu"  # set by --device: where models, populations and rollouts live


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def warm_model(C: int, L: int, env: str, generations: int) -> RWKV7:
    """A centre evolved on `env` until its episodes spread out (CartPole), or a fresh one."""
    spec = ENVS[env]
    probe = make_env(spec)
    cfg = model_config(C, L, probe.observation_dim, probe.action_dim)
    node = Node(NodeConfig(model=cfg, es=KalmanESConfig(population=32, sigma=SIGMA,
                                                        include=INCLUDE), seed=1, env=spec,
                           max_steps=MAX_STEPS, device=DEVICE))
    for _ in range(generations if env == "cartpole" else 0):
        node.generation()
        if node.evaluate_centre(16, seed=7).mean() >= 60:
            break
    return node.model


def old_policy(pop: Population):
    def policy(obs: torch.Tensor, state):
        out, state = pop.forward(obs.view(pop.size, 1, 1, -1), state)
        return out[:, 0, 0], state
    return policy


def new_policy(pop: Population, path: str):
    member_of = torch.arange(pop.size, dtype=torch.int32)
    batch: list = [None, member_of]  # as Node.evaluate: members gathered once per compaction

    def policy(obs: torch.Tensor, state, rows):
        if rows is not batch[0]:
            batch[:] = rows, member_of[torch.from_numpy(rows)]
        return pop.step_rows(obs, state, batch[1], inplace=True, path=path)
    return policy


def run_rollout(pop: Population, env: str, kind: str) -> dict:
    world = make_env(ENVS[env])
    start = pop.model.zero_state(pop.size)
    t = time.perf_counter()
    if kind == "loop":
        r = nr.native_rollout(world, pop, torch.arange(pop.size, dtype=torch.int32), pop.size,
                              11, start, MAX_STEPS, None, None, COMPACT_BELOW,
                              pop.row_path(pop.size))
    elif kind == "new":
        r = rollout(world, new_policy(pop, pop.row_path(pop.size)), pop.size, 11, start,
                    MAX_STEPS, compact=COMPACT_BELOW)
    else:
        r = rollout(world, old_policy(pop), pop.size, 11, start, MAX_STEPS)
    s = time.perf_counter() - t
    return {"s": s, "useful": r.env_steps, "computed": r.rows_computed,
            "mean_ep": float(r.steps.mean()), "max_ep": int(r.steps.max()),
            "returns": np.nan_to_num(r.returns)}


def flops_per_row(model: RWKV7, rank: int) -> float:
    """Arithmetic of one row's step: every matrix product, the low-rank terms, the WKV."""
    cfg, flops = model.config, 0.0
    for name, p in model.named_parameters():
        if p.dim() == 2 and not name.endswith("r_k"):
            flops += 2 * p.numel() + 2 * rank * (p.shape[0] + p.shape[1])
    return flops + cfg.n_layer * 8 * cfg.n_embd * cfg.head_size


def gemm_rate(rounds: int, rows: int = 2048, n: int = 512) -> float:
    """FLOP/s of a plain PyTorch GEMM (rows x n x n): what this device's GEMM sustains."""
    x, w = torch.randn(rows, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    return 2 * rows * n * n / best_time(lambda: F.linear(x, w), rounds)


def best_time(fn: Callable[[], object], rounds: int, sample_s: float = 0.05) -> float:
    """Seconds per call in the best round; each call waits for the device."""
    inner = fn

    def fn():
        inner()
        sync()

    fn()
    t = time.perf_counter()
    fn()
    reps = max(1, int(sample_s / max(time.perf_counter() - t, 1e-7)))
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def step_times(C: int, L: int, P: int, rounds: int) -> dict:
    """The bare population step, old (pair forward) and new (row path), interleaved medians."""
    model = RWKV7(model_config(C, L, 4, 2), init="live").to(DEVICE)
    pop = Population(model, seed=1, sigma=SIGMA, size=P, include=INCLUDE)
    x, state = torch.randn(P, 4, device=DEVICE), model.zero_state(P)
    path, members = pop.row_path(P), torch.arange(P)
    own = state.clone()
    fns = {"old": lambda: pop.forward(x.view(P, 1, 1, 4), state),
           "new": lambda: pop.step_rows(x, own, members, inplace=True, path=path)}
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(best_time(fn, 1, 0.2))
    old, new = (statistics.median(samples[k]) * 1e3 for k in ("old", "new"))
    return {"old_ms": old, "new_ms": new, "ratio": old / new, "path": path}


def rollout_case(C: int, L: int, P: int, env: str, rounds: int, warm: int) -> dict:
    model = warm_model(C, L, env, warm)
    pop = Population(model, seed=3, sigma=SIGMA, size=P, include=INCLUDE)
    kinds = ["old", "new"]
    if nr.usable(make_env(ENVS[env]), pop, pop.row_path(P)):
        kinds.append("loop")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(rounds):
        for kind in (kinds if i % 2 == 0 else kinds[::-1]):
            runs[kind].append(run_rollout(pop, env, kind))
    out = {"mean_episode": runs["new"][0]["mean_ep"], "longest": runs["new"][0]["max_ep"],
           "path": pop.row_path(P)}
    for kind, rs in runs.items():
        s = statistics.median(r["s"] for r in rs)
        out[kind] = {"useful_per_s": rs[0]["useful"] / s, "computed_per_s": rs[0]["computed"] / s,
                     "useful_share": rs[0]["useful"] / rs[0]["computed"], "seconds": s}
    out["ratio"] = out["new"]["useful_per_s"] / out["old"]["useful_per_s"]
    if "loop" in runs:
        out["loop_over_new"] = out["loop"]["useful_per_s"] / out["new"]["useful_per_s"]
        out["loop_same_returns"] = bool(np.array_equal(runs["loop"][0]["returns"],
                                                       runs["new"][0]["returns"]))
    out["same_returns"] = float(np.mean(np.isclose(runs["old"][0]["returns"],
                                                   runs["new"][0]["returns"], rtol=1e-4)))
    rate = gemm_rate(rounds)
    out["flops_per_row"] = flops_per_row(model, pop.rank)
    out["roofline_rows_per_s"] = rate / out["flops_per_row"]
    out["gemm_gflops"] = rate / 1e9
    return out


def main(argv: list[str] | None = None) -> dict:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warm", type=int, default=30, help="CartPole warm-up generations (cap)")
    ap.add_argument("--quick", action="store_true", help="skip the largest size")
    args = ap.parse_args(argv)
    refuse_missing_cuda(ap, args.device)
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    print(cpu_line())
    print(f"device: {DEVICE} ({machine(DEVICE)})")
    print(f"torch threads: {args.threads}; rounds: {args.rounds} (old/new interleaved, medians)")
    sizes = SIZES[:-1] if args.quick else SIZES
    result = {"cpu": cpu(), "device": DEVICE, "machine": machine(DEVICE),
              "threads": args.threads, "steps": {}, "rollouts": {}}
    print("\npopulation step (no environment), ms per step")
    for C, L, P in STEP_SIZES[:-1] if args.quick else STEP_SIZES:
        r = step_times(C, L, P, max(args.rounds, 5))
        result["steps"][f"C{C}-L{L}-P{P}"] = r
        print(f"  C={C:<3} L={L} P={P:<5} old {r['old_ms']:8.3f}  new {r['new_ms']:7.3f} "
              f"({r['path']})  x{r['ratio']:.1f}")
    print("\nrollouts: useful env steps/s | computed rows/s | useful share; roofline rows/s")
    for C, L, P in sizes:
        for env in ENVS:
            r = rollout_case(C, L, P, env, args.rounds, args.warm)
            result["rollouts"][f"{env}-C{C}-L{L}-P{P}"] = r
            print(f"  {env:8} C={C:<3} L={L} P={P:<5} episodes mean {r['mean_episode']:.0f} "
                  f"longest {r['longest']}")
            for kind in ("old", "new", "loop"):
                if kind in r:
                    v = r[kind]
                    print(f"    {kind:4}: {v['useful_per_s']:10.0f} | "
                          f"{v['computed_per_s']:10.0f} | {v['useful_share']:.2f}")
            if "loop" in r:
                print(f"    loop/new useful steps/s x{r['loop_over_new']:.1f}, returns "
                      f"{'bitwise equal' if r['loop_same_returns'] else 'DIFFERENT'}")
            print(f"    new/old useful steps/s x{r['ratio']:.1f}; roofline "
                  f"{r['roofline_rows_per_s']:.0f} rows/s (GEMM {r['gemm_gflops']:.0f} GFLOP/s); "
                  f"returns equal (1e-4) for {r['same_returns']:.0%} of copies")
    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()
