"""The swarm on Ray (not a test): a table per task and a last-line JSON.

  scaling    (a) strong scaling of one search: wall time of a consensus group of 2 nodes
             (1 CPU each) against one node with the whole population, same seed (the same
             weights every generation, checked), CartPole, C=64 L=2 with 256 mutants and the
             tiny model with 64, 25 generations after 2 of warm-up, where each generation's
             time goes; weak scaling beside it (2 isolated nodes x P against 1 x P: the
             wall times' ratio and the env steps/s ratio)
  stretch    the tiny model's strong-scaling search with stretches of generations (the
             default `stretch_s`) against a generation a round trip (`stretch_s` 0), one node
             and the group of 2, runs interleaved: the fastest and the median runs' ratios,
             and the CPU a generation of the node actors, the coordinator and Ray's daemons
  peer       EvoTorch's GymNE + PGPE on Ray (num_actors 1 and 2) against this project's one node
             and consensus group of 2, CartPole, population 64: env steps/s and the 2/1 ratios
  comm       (b) share of generation time spent communicating (sending the report, waiting for
             the neighbours', broadcasting state and belief), sync gossip, 4 and 8 nodes
  bytes      (c) fitness-channel bytes per generation per node at about 3k, 100k and 1M
             evolved weights (the encoded fitness message times the neighbours it goes to)
  helps      (d) does the swarm help? equal total episodes, 5 seeds: one node, 4 isolated
             nodes, 4 gossiping nodes with migration; masked CartPole (solve rate, total
             episodes to the first node whose centre scores >= 475 over 20 episodes) and
             SignalEnv with an unannounced frequency shift (generations until the best node's
             centre error is back to its own pre-shift level; mean error after the shift)
  fusion     (e) noisy CartPole on Ray actors: Kalman fusion vs plain averaging of the
             neighbours' estimates, total episodes to the target (400), 5 seeds
  state      (f) migration carrying the RWKV state vs the weights alone: the migrant's error
             on its first segment after adopting (SignalEnv), 5 seeds

    python benchmarks/swarm.py [--tasks scaling,comm,bytes,helps,fusion,state] [--seeds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from _cpu import cpu_line, process_cpu_s

from rwkv_swarm import Signal, Swarm, SwarmConfig, load_trace
from rwkv_swarm.cluster.host import NodeHost
from rwkv_swarm.kernels import RWKV7Config
from rwkv_swarm.node import ExchangeConfig, KalmanESConfig, Node, NodeConfig
from rwkv_swarm.node.wire import encode
from rwkv_swarm.swarm import Migration, Resources

SIGNAL = {"kind": "signal", "lags": 3}
MASKED = {"kind": "gym", "id": "CartPole-v1", "obs_mask": [0, 2]}
NOISY = {"kind": "gym", "id": "CartPole-v1", "obs_noise": 0.1, "action_noise": 0.1}
MASKED_ES = KalmanESConfig(population=64, include=("matrices", "head", "embedding", "vectors"))
SHIFT = {"freq": [0.021, 0.047, 0.25]}
SHIFT_AT, SIGNAL_GENS = 30, 60


def swarm_config(tmp: str, **kw: Any) -> SwarmConfig:
    return SwarmConfig(**{"env": SIGNAL, "run_dir": tmp, "resources": Resources(cpus=1.0),
                          **kw})


def rows_by(trace: dict, key: str) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, v in enumerate(trace[key]):
        out.setdefault(v, []).append(i)
    return out


# -- (a) scaling and (b) communication -----------------------------------------------------------


MID_MODEL = {"n_embd": 64, "n_layer": 2, "head_size": 32, "dim_ffn": 256}
CARTPOLE = {"kind": "gym", "id": "CartPole-v1"}
SEARCHES = {"C=64 L=2, 256 mutants": (MID_MODEL, 256, 1.7),
            "C=16 L=1, 64 mutants": (None, 64, 1.4)}
WARM, GENS = 2, 25
REPEATS = {"C=64 L=2, 256 mutants": 3, "C=16 L=1, 64 mutants": 7}  # runs of each arm of the
# strong-scaling comparison, interleaved: the tiny model's last under a second each, and on a
# shared machine two runs of the same code differ by up to 30%
PHASES = ("evaluate_s", "update_s", "communicate_s")


PROCESS_KINDS = ("NodeActor", "CoordinatorActor", "raylet", "gcs_server")


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of this machine's node actors, coordinator actor and Ray daemons
    (from /proc; 10 ms ticks), by kind; this process's as "driver"."""
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            kind = "driver" if int(pid) == os.getpid() else \
                next((k for k in PROCESS_KINDS if k in cmd), None)
            if kind is not None:
                out[kind] = out.get(kind, 0.0) + process_cpu_s(int(pid))
        except OSError:  # ended meanwhile
            continue
    return out


def search(tmp: str, nodes: int, population: int, model: dict | None, mode: str = "consensus",
           gens: int = GENS, stretch_s: float | None = None) -> dict:
    """One search on `nodes` actors of 1 CPU each, CartPole: a consensus group splits
    `population` (each member evaluates its share), isolated nodes each run all of it. Wall
    time of `gens` generations after WARM, and where a generation's time went (each phase's
    mean over generations of its slowest node; "coordinator": wall time outside the nodes'
    round trips)."""
    per_node = population // nodes if mode == "consensus" else population
    cfg = swarm_config(tmp, nodes=nodes, mode=mode, env=CARTPOLE, seed=1,
                       es=KalmanESConfig(population=per_node), checkpoint_every=0,
                       migration=Migration(enabled=False), generations=gens,
                       **({"model": model} if model else {}),
                       **({} if stretch_s is None else {"stretch_s": stretch_s}))
    with Swarm.launch(cfg) as swarm:
        swarm.run(WARM)  # imports, the native kernel, first allocations
        cpu0, t0 = cpu_by_kind(), time.perf_counter()
        swarm.run(gens)
        wall = time.perf_counter() - t0
        cpu = {k: 1e3 * (v - cpu0.get(k, 0.0)) / gens for k, v in cpu_by_kind().items()}
    t = load_trace(swarm.run_dir).to_pydict()
    keep = [k for k, g in enumerate(t["generation"]) if g >= WARM]
    by_gen: dict[int, list[int]] = {}
    for k in keep:
        by_gen.setdefault(t["generation"][k], []).append(k)
    phase = {p: statistics.mean(max(t[p][k] for k in ks) for ks in by_gen.values())
             for p in (*PHASES, "generation_s")}
    phase["coordinator"] = wall / gens - phase["generation_s"]
    useful, computed = (sum(t[c][k] for k in keep) for c in ("rows_useful", "rows_computed"))
    return {"wall_s": wall, "s_per_generation": wall / gens, "phases": phase,
            "cpu_ms_per_generation": cpu,
            "env_steps_per_s": useful / wall, "useful_share": useful / max(1, computed),
            "weights": [t["fingerprint"][by_gen[g][0]] for g in sorted(by_gen)],
            "one_node": all(len({t["fingerprint"][k] for k in ks}) == 1
                            for ks in by_gen.values())}


def scaling(tmp: str) -> dict:
    """(a) Strong scaling of one search: a consensus group of 2 nodes against one node with
    the whole population (same seed: the same weights every generation); weak scaling beside
    it: 2 isolated nodes with P each against 1 with P (ideally the same wall time, and twice
    the env steps/s). The isolated nodes run searches of their own, whose episodes can be
    longer or shorter than the single node's: the wall ratio compares unequal work, the
    steps/s ratio does not."""
    out = {}
    for name, (model, population, target) in SEARCHES.items():
        # one, two, one, two: the faster of each arm, so that load from elsewhere that comes
        # and goes weighs on both alike
        runs = [search(f"{tmp}/{arm}{population}-{k}", n, population, model)
                for k in range(REPEATS[name]) for arm, n in (("one", 1), ("two", 2))]
        one = min(runs[0::2], key=lambda r: r["wall_s"])
        two = min(runs[1::2], key=lambda r: r["wall_s"])
        weak = search(f"{tmp}/weak{population}", 2, population, model, mode="isolated")
        same = all(r["weights"] == one["weights"] and r["one_node"] for r in runs)
        median = [statistics.median(r["wall_s"] for r in runs[k::2]) for k in (0, 1)]
        out[name] = {"one": _brief(one), "two": _brief(two), "weak_two": _brief(weak),
                     "strong_speedup": one["wall_s"] / two["wall_s"], "target": target,
                     "median_speedup": median[0] / median[1],
                     "walls": [round(r["wall_s"], 2) for r in runs],
                     "same_weights": same,
                     "weak_wall_ratio": weak["wall_s"] / one["wall_s"],
                     "weak_steps_ratio": weak["env_steps_per_s"] / one["env_steps_per_s"]}
    return out


def stretches(tmp: str) -> dict:
    """Stretches of generations against a generation a round trip (`stretch_s` 0), the tiny
    model's strong-scaling search (where a generation is shortest): one node and the group of
    2 with each, runs interleaved; the weights must be the same every generation in all."""
    model, population, _ = SEARCHES["C=16 L=1, 64 mutants"]
    arms = [(n, st) for n in (1, 2) for st in (0.0, None)]
    runs: dict = {arm: [] for arm in arms}
    for k in range(REPEATS["C=16 L=1, 64 mutants"]):
        for n, st in arms:
            runs[n, st].append(search(f"{tmp}/{n}-{st}-{k}", n, population, model,
                                      stretch_s=st))
    first = runs[arms[0]][0]["weights"]
    best = {arm: min(r["wall_s"] for r in rs) for arm, rs in runs.items()}
    med = {arm: statistics.median(r["wall_s"] for r in rs) for arm, rs in runs.items()}
    name = {0.0: "one_a_trip", None: "stretches"}
    return {"walls": {f"{n}-{name[st]}": [round(r["wall_s"], 3) for r in rs]
                      for (n, st), rs in runs.items()},
            "stretches_over_one_a_trip": {f"{n} node(s)": [round(best[n, 0.0] / best[n, None], 3),
                                                          round(med[n, 0.0] / med[n, None], 3)]
                                          for n in (1, 2)},
            "strong_speedup": {name[st]: [round(best[1, st] / best[2, st], 3),
                                          round(med[1, st] / med[2, st], 3)]
                               for st in (0.0, None)},
            "phases_fastest": {f"{n}-{name[st]}": min(rs, key=lambda r: r["wall_s"])["phases"]
                               for (n, st), rs in runs.items()},
            "cpu_ms_per_generation": {  # medians over the runs, by process kind
                f"{n}-{name[st]}": {k: round(statistics.median(r["cpu_ms_per_generation"].get(k, 0)
                                                               for r in rs), 2)
                                    for k in (*PROCESS_KINDS, "driver")}
                for (n, st), rs in runs.items()},
            "same_weights": all(r["weights"] == first and r["one_node"]
                                for rs in runs.values() for r in rs)}


def evotorch_rate(actors: int, gens: int = GENS, population: int = 64) -> dict:
    """EvoTorch's GymNE + PGPE on CartPole (its 16-unit tanh MLP, one episode per solution),
    `actors` Ray actors (1: EvoTorch evaluates in this process), on this benchmark's local Ray:
    env steps/s over `gens` generations after WARM."""
    from evotorch.algorithms import PGPE
    from evotorch.neuroevolution import GymNE

    torch.manual_seed(1)
    problem = GymNE(env="CartPole-v1", network="Linear(obs_length, 16) >> Tanh() >> "
                    "Linear(16, act_length)", observation_normalization=True, num_episodes=1,
                    num_actors=actors)
    searcher = PGPE(problem, popsize=population, center_learning_rate=0.075,
                    stdev_learning_rate=0.1, stdev_init=0.08, optimizer="clipup",
                    optimizer_config={"max_speed": 0.15}, ranking_method="centered")
    for _ in range(WARM):
        searcher.step()
    steps0 = problem.status["total_interaction_count"]
    t0 = time.perf_counter()
    for _ in range(gens):
        searcher.step()
    wall = time.perf_counter() - t0
    steps = problem.status["total_interaction_count"] - steps0
    if actors > 1:  # with one, EvoTorch made none
        problem.kill_actors()
    return {"wall_s": wall, "env_steps_per_s": steps / wall,
            "env_steps_per_generation": steps / gens}


def peer(tmp: str) -> dict:
    """Side by side with EvoTorch on Ray: CartPole, population 64, 1 and 2 actors (this
    project: one node with all 64 mutants, a consensus group of 2 with 32 each), env steps/s
    and the 2/1 ratio of each."""
    ours = {n: search(f"{tmp}/ours{n}", n, 64, None) for n in (1, 2)}
    theirs = {n: evotorch_rate(n) for n in (1, 2)}
    return {"ours": {n: _brief(r) for n, r in ours.items()}, "evotorch": theirs,
            "ours_ratio": ours[2]["env_steps_per_s"] / ours[1]["env_steps_per_s"],
            "evotorch_ratio": theirs[2]["env_steps_per_s"] / theirs[1]["env_steps_per_s"],
            "per_actor_vs_evotorch": {n: ours[n]["env_steps_per_s"] / theirs[n]["env_steps_per_s"]
                                      for n in (1, 2)},
            "target_per_actor": 3.0}


def _brief(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("weights", "one_node")}


def comm_share(tmp: str) -> dict:
    out = {}
    for n in (4, 8):
        cfg = swarm_config(f"{tmp}/comm{n}", nodes=n, mode="gossip",
                           resources=Resources(cpus=2 / n), es=KalmanESConfig(population=32),
                           generations=10)
        with Swarm.launch(cfg) as swarm:
            swarm.run(10)
        t = load_trace(swarm.run_dir).to_pydict()
        share = [c / g for c, g in zip(t["communicate_s"], t["generation_s"], strict=True)]
        out[n] = {"median_share": statistics.median(share), "max_share": max(share)}
    return {"share": out, "target": 0.05}


# -- (c) bytes -----------------------------------------------------------------------------------


SIZES = {"3k": {"n_embd": 16, "n_layer": 1, "head_size": 16, "dim_w": 8, "dim_a": 8, "dim_v": 8,
                "dim_g": 8, "dim_ffn": 32},
         "100k": {"n_embd": 64, "n_layer": 2, "head_size": 32},
         "1M": {"n_embd": 192, "n_layer": 4, "head_size": 64}}


def fitness_bytes() -> dict:
    out = {}
    for name, model in SIZES.items():
        cfg = NodeConfig(model=RWKV7Config(**model, input_dim=4, output_dim=1), env=SIGNAL,
                         es=KalmanESConfig(population=32),
                         exchange=ExchangeConfig(mode="gossip"))
        node = Node(cfg)
        node.begin()
        node.evaluate()
        frames = encode(node.report().to_message("bench"))
        out[name] = {"weights": node.strategy.dim, "bytes_per_neighbour":
                     sum(memoryview(f).nbytes for f in frames), "ring_neighbours": 2}
        node.finish()
    b = [v["bytes_per_neighbour"] for v in out.values()]
    return {"sizes": out, "largest_over_smallest": max(b) / min(b), "target": 1.1}


# -- (d) does the swarm help? -------------------------------------------------------------------


def first_solve(swarm: Swarm, gens: int, seed: int, target: float) -> tuple[bool, int]:
    """Run one generation at a time; (solved, total training episodes until the first node's
    centre reaches `target` over 20 fresh episodes)."""
    for g in range(gens):
        status = swarm.run(1)
        if max(swarm.evaluate(20, seed=10_000 * (seed + 1) + g)) >= target:
            return True, sum(n["episodes"] for n in status["nodes"].values())
    return False, sum(n["episodes"] for n in status["nodes"].values())


def masked_arm(tmp: str, arm: str, seed: int, budget: int) -> dict:
    nodes = 1 if arm == "single" else 4
    mode = "gossip" if arm == "gossip" else "isolated"
    gens = budget // (nodes * MASKED_ES.population)
    cfg = swarm_config(tmp, nodes=nodes, mode=mode, env=MASKED, es=MASKED_ES, seed=seed,
                       resources=Resources(cpus=0.5), migration=Migration(enabled=arm == "gossip"))
    with Swarm.launch(cfg) as swarm:
        solved, episodes = first_solve(swarm, gens, seed, 475.0)
    return {"solved": solved, "episodes": episodes}


def signal_arm(tmp: str, arm: str, seed: int) -> dict:
    nodes = 1 if arm == "single" else 4
    mode = "gossip" if arm == "gossip" else "isolated"
    pop = 128 if arm == "single" else 32  # equal episodes per generation
    cfg = swarm_config(tmp, nodes=nodes, mode=mode, seed=seed, es=KalmanESConfig(population=pop),
                       resources=Resources(cpus=0.5), migration=Migration(enabled=arm == "gossip"))
    with Swarm.launch(cfg) as swarm:
        swarm.run(SHIFT_AT)
        swarm.inject(Signal("freq_shift", SHIFT, announce=False))  # the nodes are not told
        swarm.run(SIGNAL_GENS - SHIFT_AT)
    t = load_trace(swarm.run_dir).to_pydict()
    err = {}
    for i, g in enumerate(t["generation"]):  # the best node's centre error per generation
        err[g] = min(err.get(g, np.inf), -t["centre_return"][i] / 64)
    pre = statistics.mean(err[g] for g in range(SHIFT_AT - 5, SHIFT_AT))
    back = next((g - SHIFT_AT for g in range(SHIFT_AT, SIGNAL_GENS) if err[g] <= pre),
                SIGNAL_GENS - SHIFT_AT)
    return {"recovery_generations": back, "pre_shift_mse": pre,
            "post_shift_mse": statistics.mean(err[g] for g in range(SHIFT_AT, SIGNAL_GENS))}


def helps(tmp: str, seeds: int) -> dict:
    out: dict[str, Any] = {"masked": {}, "signal": {}}
    for arm in ("single", "isolated", "gossip"):
        m = [masked_arm(f"{tmp}/m-{arm}-{s}", arm, s, budget=9600) for s in range(seeds)]
        out["masked"][arm] = {"solved": sum(r["solved"] for r in m),
                              "episodes": [r["episodes"] for r in m],
                              "median": statistics.median(r["episodes"] for r in m)}
        sig = [signal_arm(f"{tmp}/s-{arm}-{s}", arm, s) for s in range(seeds)]
        out["signal"][arm] = {k: [r[k] for r in sig] for k in sig[0]}
        out["signal"][arm]["median_recovery"] = statistics.median(
            r["recovery_generations"] for r in sig)
    return out


# -- (e) fusion on Ray, (f) state with migration -----------------------------------------------


def fusion(tmp: str, seeds: int) -> dict:
    out = {}
    for fuse in ("kalman", "mean"):
        runs = []
        for s in range(seeds):
            cfg = swarm_config(f"{tmp}/f-{fuse}-{s}", nodes=4, mode="gossip", env=NOISY, seed=s,
                               es=KalmanESConfig(population=32, fusion=fuse),
                               resources=Resources(cpus=0.5), migration=Migration(enabled=False))
            with Swarm.launch(cfg) as swarm:
                runs.append(first_solve(swarm, 60, s, 400.0))
        out[fuse] = {"solved": sum(r[0] for r in runs), "episodes": [r[1] for r in runs],
                     "median": statistics.median(r[1] for r in runs)}
    out["fewer"] = 1 - out["kalman"]["median"] / out["mean"]["median"]
    return {**out, "target": 0.2}


def state_transfer(seeds: int) -> dict:
    """Two nodes on one stream; after 20 generations the weaker adopts the stronger's weights,
    with its live state (exported with the weights) or with a zero state."""
    out: dict[str, list[float]] = {"with_state": [], "weights_only": [], "source": []}
    for s in range(seeds):
        for with_state in (True, False):
            hosts = [NodeHost(dataclasses.replace(c, seed=s + 10 * k), "bench")
                     for k, c in enumerate(swarm_config("/tmp").replace(nodes=2, mode="isolated")
                                           .node_configs())]
            eps = [h.endpoint() for h in hosts]
            for h in hosts:
                h.connect(eps)
                h.set_peers([x.name for x in hosts if x is not h], [])
            for _ in range(20):
                for h in hosts:
                    h.share()
                rows = [h.absorb(1.0) for h in hosts]
            src, dst = (0, 1) if rows[0]["centre_return"] > rows[1]["centre_return"] else (1, 0)
            b = hosts[src].node.strategy.fitness_belief
            ack = hosts[dst].adopt(hosts[src].export(), hosts[src].name, (b.mean, b.var),
                                   with_state)
            assert ack["state"] == with_state, ack
            for h in hosts:
                h.share()
            rows = [h.absorb(1.0) for h in hosts]
            out["with_state" if with_state else "weights_only"].append(
                -rows[dst]["centre_return"] / 64)
            if with_state:
                out["source"].append(-rows[src]["centre_return"] / 64)
            for h in hosts:
                h.close()
    return {k: {"per_seed": v, "median_mse": statistics.median(v)} for k, v in out.items()}


TASKS = {"scaling": scaling, "stretch": stretches, "peer": peer, "comm": comm_share,
         "bytes": fitness_bytes, "helps": helps, "fusion": fusion, "state": state_transfer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="scaling,peer,comm,bytes,state,fusion,helps")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tmp", default="/tmp/rwkv-swarm-bench")
    args = ap.parse_args()
    if "peer" in args.tasks.split(",") and importlib.util.find_spec("evotorch") is None:
        sys.exit("the peer task runs EvoTorch: pip install -e '.[bench]', or leave peer out "
                 "of --tasks")
    torch.set_num_threads(1)
    print(cpu_line(), flush=True)
    # a Ray of its own on this machine (EvoTorch's actors use it too), shut down at the end
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    results = {}
    try:
        run_tasks(args, results)
    finally:
        ray.shutdown()
    print(json.dumps({**results, "cpu": cpu_line()}))


def run_tasks(args: argparse.Namespace, results: dict) -> None:
    for task in args.tasks.split(","):
        t0 = time.perf_counter()
        fn = TASKS[task]
        kwargs = {"tmp": f"{args.tmp}/{task}-{int(time.time())}"} if "tmp" in \
            fn.__code__.co_varnames[:fn.__code__.co_argcount] else {}
        if "seeds" in fn.__code__.co_varnames[:fn.__code__.co_argcount]:
            kwargs["seeds"] = args.seeds
        results[task] = fn(**kwargs)
        results[task]["load"] = os.getloadavg()
        print(f"{task} ({time.perf_counter() - t0:.0f} s): {json.dumps(results[task])}",
              flush=True)


if __name__ == "__main__":
    main()
