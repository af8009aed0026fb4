"""Kernel benchmark: ratios measured side by side in one run (the machine may be noisy).

(a) step latency at batch 1: ours / official `rwkv` package, same checkpoint (target <= 0.7)
(b) population forward member-tokens/s / plain batched inference, P = 64, 256, 1024
    (target >= 0.9 at 1024)
(c) population forward / naive loop over materialized per-mutant weights, P = 256
    (target >= 20x)
(d) population forward achieved GFLOP/s / a plain torch GEMM's GFLOP/s, C=256, L=4, P=1024
    (target >= 0.5)

Contenders alternate round by round and the best round of each is kept, so background load
hits both alike. Prints a table and, last, one JSON line with the ratios.

    python benchmarks/kernels.py [--device cuda] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

from _cpu import cpu, cpu_line  # noqa: E402

from rwkv_swarm.kernels import (  # noqa: E402
    RWKV7,
    Population,
    RWKV7Config,
    paths,
    save_checkpoint,
)


def refuse_missing_cuda(ap: argparse.ArgumentParser, device: str) -> None:
    """`--device cuda` where PyTorch sees no CUDA device: a clear error, before any work."""
    if device == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device cuda: PyTorch sees no CUDA device here (torch {torch.__version__}, "
                 f"CUDA build: {torch.version.cuda or 'none'}); run on a machine with one and a "
                 f"CUDA build of torch, or use --device cpu")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_of(fns: dict[str, Callable[[], object]], rounds: int, device: str, repeat: int = 1
            ) -> dict[str, float]:
    """Seconds per call of each fn: contenders interleaved each round, best round kept."""
    for fn in fns.values():  # warm-up
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(repeat):
                fn()
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - t) / repeat)
    return best


def random_model(cfg: RWKV7Config, seed: int = 0) -> RWKV7:
    """Every block path active ("live" init), so timings include all of the model's work."""
    return RWKV7(cfg, seed=seed, init="live")


def step_latency(C: int, L: int, device: str, rounds: int) -> dict:
    """Batch-1 step of ours and of the official package, on one checkpoint."""
    from rwkv.model import RWKV

    model = random_model(RWKV7Config(n_embd=C, n_layer=L, vocab_size=256))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pth"
        save_checkpoint(model, path, dtype=torch.float32)
        with contextlib.redirect_stdout(io.StringIO()):
            ref = RWKV(model=str(path)[:-4], strategy=f"{device} fp32")
        ours = RWKV7.from_checkpoint(path, device=device)
    if device == "cuda":
        ours.enable_cuda_graph_step(batch=1)
    tok = torch.tensor([7], device=device)
    st = {"ours": ours.zero_state(1), "official": None}

    def run_ours():
        _, st["ours"] = ours.step(tok, st["ours"])

    def run_official():
        _, st["official"] = ref.forward(7, st["official"])

    t = best_of({"ours": run_ours, "official": run_official}, rounds, device, repeat=50)
    path = "cuda graph" if device == "cuda" else ours.chosen_step_path(1)
    return {"C": C, "L": L, "ours_us": t["ours"] * 1e6, "official_us": t["official"] * 1e6,
            "ratio": t["ours"] / t["official"], "path": path}


def bench_population(model: RWKV7, P: int, T: int, device: str, rounds: int) -> dict:
    cfg = model.config
    pop = Population(model, seed=1, sigma=0.01, size=P)
    t0 = time.perf_counter()
    _ = pop.noise
    noise_s = time.perf_counter() - t0
    x = torch.randint(0, cfg.vocab_size, (P, 1, T), device=device)
    state = model.zero_state(P)
    t = best_of({"population": lambda: pop.forward(x, state),
                 "plain": lambda: model(x[:, 0], state)}, rounds, device)
    return {"P": P, "T": T, "noise_s": noise_s, "population_s": t["population"],
            "plain_s": t["plain"], "ratio": t["plain"] / t["population"],
            "member_tokens_per_s": P * T / t["population"]}


def bench_naive(model: RWKV7, P: int, T: int, device: str, rounds: int) -> dict:
    """Naive ES: a full weight copy per mutant, then one forward each."""
    cfg = model.config
    pop = Population(model, seed=1, sigma=0.01, size=P)
    x = torch.randint(0, cfg.vocab_size, (P, 1, T), device=device)
    mutant = RWKV7(cfg).to(device)
    mutant.use_native = False

    def naive():
        for j in range(P):
            mutant.load_state_dict(pop.materialize(j))
            mutant(x[j])

    def population():
        Population(model, seed=1, sigma=0.01, size=P).forward(x)  # noise generation included

    t = best_of({"population": population, "naive": naive}, max(2, rounds // 2), device)
    return {"P": P, "T": T, "population_s": t["population"], "naive_s": t["naive"],
            "speedup": t["naive"] / t["population"]}


def model_flops_per_token(cfg: RWKV7Config, rank: int, perturbed: bool) -> float:
    """Multiply-adds x 2 of every matrix product, the low-rank terms, and the WKV recurrence."""
    C, N, F = cfg.n_embd, cfg.head_size, cfg.ffn_dim
    d = cfg.lora_dims
    per_layer = 4 * C * C + 2 * C * F + 2 * C * (d["w"] + d["a"] + d["g"] + d["v"])
    lowrank = 0
    if perturbed:  # (x B) A^T for each perturbed matrix (m x n): (m + n) r
        lowrank = 4 * 2 * C + 2 * (C + F) + 2 * (d["w"] + d["a"] + d["g"] + d["v"] + 4 * C)
        lowrank *= rank
    wkv = 4 * C * N  # S*w, S a, (S a) b^T, v k^T, S r: ~4 N^2 per head
    head = C * cfg.vocab_size
    return 2 * (cfg.n_layer * (per_layer + lowrank + wkv) + head)


def bench_gflops(model: RWKV7, P: int, T: int, device: str, rounds: int) -> dict:
    cfg = model.config
    pop = Population(model, seed=1, sigma=0.01, size=P)
    x = torch.randint(0, cfg.vocab_size, (P, 1, T), device=device)
    state = model.zero_state(P)
    a = torch.randn(P * T, cfg.n_embd, device=device)
    b = torch.randn(cfg.n_embd, cfg.ffn_dim, device=device)
    t = best_of({"population": lambda: pop.forward(x, state), "gemm": lambda: a @ b},
                rounds, device)
    flops = model_flops_per_token(cfg, pop.rank, True) * P * T
    pop_gflops = flops / t["population"] / 1e9
    gemm_gflops = 2 * a.shape[0] * a.shape[1] * b.shape[1] / t["gemm"] / 1e9
    return {"P": P, "T": T, "population_gflops": pop_gflops, "gemm_gflops": gemm_gflops,
            "gemm_shape": [a.shape[0], a.shape[1], b.shape[1]], "ratio": pop_gflops / gemm_gflops}


def print_latency(lat: list[dict]) -> None:
    print("\n(a) step latency, batch 1 (us)     ours   official   ratio   our path")
    for r in lat:
        print(f"    C={r['C']:<4} L={r['L']:<3}            {r['ours_us']:7.0f}  "
              f"{r['official_us']:9.0f}   {r['ratio']:.2f}    {r['path']}")


def forward_paths() -> dict[str, str]:
    """The forward kernels' measured paths in this run, e.g. {"wkv H4 N64 T16": "native:2"}."""
    names = {"wkv": "wkv H{} N{} T{}", "low_rank": "low_rank {}x{} r{} rows{}",
             "low_rank_cuda": "low_rank pairs{} rows{} {}x{} r{}"}
    return {names[k[0]].format(*k[1:-1]): v for k, v in paths.default_chooser().memo.items()
            if k[0] in names}


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, " \
           f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=16, help="sequence length T per member")
    ap.add_argument("--quick", action="store_true", help="fewer sizes, for a smoke run")
    args = ap.parse_args(argv)
    refuse_missing_cuda(ap, args.device)
    dev, R, T = args.device, args.rounds, args.tokens
    torch.set_grad_enabled(False)
    print(cpu_line())
    print(f"machine: {machine(dev)}")

    sizes = [(128, 2)] if args.quick else [(128, 2), (256, 4), (768, 12)]
    lat = [step_latency(C, L, dev, R) for C, L in sizes]
    print_latency(lat)

    model = random_model(RWKV7Config(n_embd=256, n_layer=4, vocab_size=256)).to(dev)
    pops = [bench_population(model, P, T, dev, R) for P in ((64,) if args.quick else
                                                          (64, 256, 1024))]
    print(f"\n(b) population / plain inference, C=256 L=4 T={T}")
    for r in pops:
        print(f"    P={r['P']:<5} pop {r['population_s'] * 1e3:8.1f} ms  plain "
              f"{r['plain_s'] * 1e3:8.1f} ms  ratio {r['ratio']:.3f}  "
              f"({r['member_tokens_per_s']:.0f} member-tokens/s; "
              f"noise {r['noise_s'] * 1e3:.0f} ms)")

    naive = [bench_naive(model, 32 if args.quick else 256, t, dev, R) for t in (T, 1)]
    print("\n(c) population vs naive per-mutant weights (copy + forward per mutant)")
    for r in naive:
        print(f"    P={r['P']} T={r['T']:<3} pop {r['population_s']:.3f} s  naive "
              f"{r['naive_s']:.3f} s  speedup {r['speedup']:.1f}x")

    gf = bench_gflops(model, 64 if args.quick else 1024, T, dev, R)
    print(f"\n(d) GFLOP/s, P={gf['P']}: population {gf['population_gflops']:.1f}  GEMM "
          f"{gf['gemm_shape']} {gf['gemm_gflops']:.1f}  ratio {gf['ratio']:.2f}")
    chosen = forward_paths()
    print(f"\nforward kernel paths (measured on this {dev.upper()}):", ", ".join(
        f"{k} {v}" for k, v in chosen.items()) or "none (PyTorch only)")

    result = {
        "device": dev, "machine": machine(dev), "cpu": cpu(),
        "step_latency_ratio": {f"C{r['C']}_L{r['L']}": round(r["ratio"], 3) for r in lat},
        "population_vs_plain": {f"P{r['P']}": round(r["ratio"], 3) for r in pops},
        "population_vs_naive_speedup": {f"T{r['T']}": round(r["speedup"], 1) for r in naive},
        "gflops_ratio": round(gf["ratio"], 3),
        "step_paths": {f"C{r['C']}_L{r['L']}": r["path"] for r in lat},
        "forward_paths": chosen,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
