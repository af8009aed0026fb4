"""Where one rollout step's time goes (not a test): a compacted CartPole rollout as
`Node.evaluate` runs it, one torch thread, split into the environment (its numpy world, the
adapter's observation pipeline, the rest of `GymEnv.step`), the policy (the row kernel's call
and the Python around it) and the rollout's own bookkeeping (the remainder: masks, returns,
compaction, obs -> tensor). Microseconds per environment step, medians over repeated rollouts.
Beside it, the same rollout through the native loop (node/native_rollout.py: world and row
step in one C loop, what `Node.evaluate` runs on CartPole), alternating with the Python one.

    python benchmarks/step_cost.py [--sizes 16,1,64 64,2,256] [--reps 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import rollout as bench
import torch
from _cpu import cpu_line

import rwkv_swarm.kernels.native_rows as native_rows
import rwkv_swarm.node.envs._gym_backends as backends
import rwkv_swarm.node.envs.gym as gym_env
from rwkv_swarm.kernels import Population, native
from rwkv_swarm.node import native_rollout as nr
from rwkv_swarm.node.envs import make_env
from rwkv_swarm.node.rollout import COMPACT_BELOW, rollout

ACC: dict[str, float] = {}


def timed(name: str, fn: Callable) -> Callable:
    def wrapper(*a, **k):
        t = time.perf_counter()
        r = fn(*a, **k)
        ACC[name] = ACC.get(name, 0.0) + time.perf_counter() - t
        return r
    return wrapper


def instrument() -> None:
    """Time the row kernel's C call, the env's vector world and its observation pipeline."""
    lib = native.load()

    class Lib:
        rwkv7_rows = staticmethod(timed("kernel", lib.rwkv7_rows))

        def __getattr__(self, name: str):
            return getattr(lib, name)

    proxy = Lib()
    native_rows.native.load = lambda: proxy
    backends.VectorBackend.step = timed("backend", backends.VectorBackend.step)
    gym_env.GymEnv._observe = timed("observe", gym_env.GymEnv._observe)


def case(C: int, L: int, P: int, reps: int) -> dict:
    model = bench.warm_model(C, L, "cartpole", 30)
    pop = Population(model, seed=3, sigma=bench.SIGMA, size=P, include=bench.INCLUDE)
    path = pop.row_path(P)

    def one():
        world = make_env(bench.ENVS["cartpole"])
        world.step = timed("env", world.step)
        policy = timed("policy", bench.new_policy(pop, path))
        t = time.perf_counter()
        r = rollout(world, policy, P, 11, model.zero_state(P), bench.MAX_STEPS,
                    compact=COMPACT_BELOW)
        ACC["total"] = ACC.get("total", 0.0) + time.perf_counter() - t
        return r

    def loop() -> float:
        world = make_env(bench.ENVS["cartpole"])
        t = time.perf_counter()
        nr.native_rollout(world, pop, torch.arange(P, dtype=torch.int32), P, 11,
                          model.zero_state(P), bench.MAX_STEPS, None, None, COMPACT_BELOW, path)
        return time.perf_counter() - t

    r = one()
    loop()
    steps, runs, loops = int(r.steps.max()), [], []
    for _ in range(reps):
        ACC.clear()
        one()
        runs.append(dict(ACC))
        loops.append(loop())
    us = {k: statistics.median(x[k] for x in runs) / steps * 1e6 for k in runs[0]}
    us["loop"] = statistics.median(loops) / steps * 1e6
    us["bookkeeping"] = us["total"] - us["env"] - us["policy"]
    us["env_rest"] = us["env"] - us["backend"] - us["observe"]
    us["policy_python"] = us["policy"] - us["kernel"]
    us["fixed"] = us["total"] - us["kernel"]
    return {"steps": steps, "rows_per_step": r.rows_computed / steps, "path": path, "us": us}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["16,1,32", "16,1,64", "64,2,128", "64,2,256"])
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    instrument()
    print(cpu_line())
    print("us per step: total | env (world, observe, rest) | policy (kernel, python) | "
          "bookkeeping | all but the kernel || native loop, whole step (python / native)")
    for size in args.sizes:
        C, L, P = (int(v) for v in size.split(","))
        r = case(C, L, P, args.reps)
        u = r["us"]
        print(f"  C={C:<3} L={L} P={P:<4} ({r['steps']} steps, {r['rows_per_step']:.1f} rows a "
              f"step): {u['total']:4.0f} | {u['env']:3.0f} ({u['backend']:.0f}, "
              f"{u['observe']:.0f}, {u['env_rest']:.0f}) | {u['policy']:3.0f} ({u['kernel']:.0f}, "
              f"{u['policy_python']:.0f}) | {u['bookkeeping']:3.0f} | {u['fixed']:.0f} || "
              f"{u['loop']:.1f} (x{u['total'] / u['loop']:.1f})")


if __name__ == "__main__":
    main()
