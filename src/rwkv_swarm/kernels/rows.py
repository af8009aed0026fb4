"""A population step by rows: row b of the batch is member `members[b]` of the population.

This is what a rollout steps: P mutants x E episodes, and, once episodes end, only the rows
still alive (a batch compacted to its live rows keeps each row's member). Two forms:

- `native:<threads>`: the row kernel (`csrc/rwkv7_rows.c`, native_rows.py), one call per step.
  A row's result never depends on the other rows of the batch, so a compacted batch gives its
  rows the same bits as the full one.
- `torch`: PyTorch ops with gather-based perturbations (`RowOps`); any device. Its GEMMs may
  round a row differently at another batch size.
- `graph` (CUDA only): the `torch` form captured as a CUDA graph per batch bucket and replayed
  (cuda_graph.py `CudaGraphRows`): one launch instead of ~100 small kernels per step.

Which one runs is measured per device (the CPU, or the CUDA device by name), model shape,
perturbation and batch bucket (paths.py). The native kernel reads CPU memory: it is a
candidate for CPU tensors only, and `graph` for CUDA tensors only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from . import native, native_ops, paths
from .cuda_graph import CudaGraphRows
from .model import Ops, PerturbedNorms, embed_input, readout, run_blocks
from .native_rows import row_step
from .state import RWKV7State

if TYPE_CHECKING:
    from .population import Population


class RowOps(PerturbedNorms, Ops):
    """Weights as row b's member sees them: the shared base plus its pair's perturbation,
    gathered per row. Activations are (R, T, features)."""

    def __init__(self, pop: Population, members: torch.Tensor):
        self.pop = pop
        self.p = dict(pop.model.named_parameters())
        self.kinds = {t.name: t.kind for t in pop.targets}
        self.pairs = members // 2
        odd = (members % 2).to(torch.float32)
        self.unit = (1.0 - 2.0 * odd).view(-1, 1)  # s_j = +1 / -1
        self.scale = self.unit * pop.sigma  # (R, 1): s_j sigma
        self.R = members.shape[0]

    def vec(self, name: str) -> torch.Tensor:
        base = self.p[name]
        if name not in self.kinds:
            return base
        core = base.shape[2:] if base.dim() == 3 else base.shape  # (1, 1, C) -> (C,)
        eps = self.pop.noise[name][0].index_select(0, self.pairs).reshape(self.R, -1)
        delta = (eps * self.unit).reshape(self.R, 1, *core)
        return base.reshape(core) + self.pop.sigma * delta

    def _low_rank(self, name: str, y: torch.Tensor, x: torch.Tensor, rows_kind: bool
                  ) -> torch.Tensor:
        """y + s sigma (x . left_p) right_p per row; x (R, T, in), y (R, T, out)."""
        At, Bt = self.pop.noise_t[name]  # (pairs, r, m), (pairs, r, n) of W (m, n)
        left, right = (Bt, At) if rows_kind else (At, Bt)
        left, right = left.index_select(0, self.pairs), right.index_select(0, self.pairs)
        z = torch.bmm(x, left.transpose(1, 2)) * self.scale.view(-1, 1, 1)  # (R, T, r)
        return torch.baddbmm(y, z, right)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.p[name])
        return self._low_rank(name, y, x, True) if name in self.kinds else y

    def lora(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.p[name]
        return self._low_rank(name, y, x, False) if name in self.kinds else y

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        y = F.embedding(tokens, self.p["emb.weight"])
        if "emb.weight" not in self.kinds:
            return y
        A, _ = self.pop.noise["emb.weight"]  # E (V, C): row t of E + s sigma A[t] B^T
        _, Bt = self.pop.noise_t["emb.weight"]
        z = A[self.pairs.view(-1, 1), tokens] * self.scale.view(-1, 1, 1)  # (R, T, r)
        return torch.baddbmm(y, z, Bt.index_select(0, self.pairs))


def step_torch(pop: Population, x: torch.Tensor, state: RWKV7State, members: torch.Tensor,
               out: RWKV7State) -> torch.Tensor:
    """The PyTorch form: outputs (R, n_out); the new state written into `out`."""
    ops = RowOps(pop, members)
    cfg = pop.model.config
    with torch.no_grad():
        h, _ = run_blocks(ops, cfg, embed_input(ops, cfg, x.unsqueeze(1)), state,
                          (x.shape[0],), out)
        return readout(ops, h)[:, 0]


def step_native(pop: Population, x: torch.Tensor, state: RWKV7State, members: torch.Tensor,
                threads: int, inplace: bool) -> tuple[torch.Tensor, RWKV7State]:
    """The native form; token ids are embedded (and perturbed) in PyTorch first."""
    if pop.model.config.token_mode:
        with torch.no_grad():
            x = RowOps(pop, members.long()).embed(x.unsqueeze(1))[:, 0]
    member = members if members.dtype == torch.int32 else members.to(torch.int32)
    member = member.contiguous()
    with torch.no_grad():
        return row_step(pop.model)(x, state, member, pop, threads, inplace)


def row_path(pop: Population, rows: int) -> str:
    """"torch", "native:<threads>" (CPU) or "graph" (CUDA) for a population step of `rows`
    rows: measured once per device, model shape, perturbation and batch bucket (the next
    power of two, run on a zero state), and remembered in this process."""
    model = pop.model
    device = pop.device
    bucket = 1 << (max(rows, 1) - 1).bit_length()
    memo = pop.__dict__.setdefault("_row_paths", {})
    key = (bucket, model.use_native, model.step_path, torch.get_num_threads(), str(device))
    if key in memo:
        return memo[key]
    if device.type == "cuda":
        memo[key] = _cuda_path(pop, bucket)
    elif not (model.use_native and native_ops.usable(model.head.weight)):
        memo[key] = "torch"  # another device, or no native library: PyTorch ops
    elif model.step_path is not None:  # a forced step path forces this one too
        memo[key] = model.step_path
    else:
        sizes = {**model.config.to_dict(), "rank": pop.rank,
                 "include": ",".join(sorted(pop.include)), "batch": bucket}
        memo[key] = native_ops.memo_choose("pop_step", sizes, lambda: _forms(pop, bucket))
        if memo[key] == "torch":
            model._rows = None  # the packed weights (a copy) only where the kernel runs
    return memo[key]


def _cuda_path(pop: Population, bucket: int) -> str:
    """"torch" or "graph" on a CUDA device: forced by the model's `step_path` ("torch" or
    "graph"), else measured, each candidate waiting for its kernels to finish (a rollout
    waits for every step's actions)."""
    forced = pop.model.step_path
    if forced in ("torch", "graph"):
        return forced
    device = pop.device
    cfg = pop.model.config
    x = (torch.zeros(bucket, dtype=torch.long, device=device) if cfg.token_mode
         else torch.zeros(bucket, cfg.input_dim, device=device))
    members = torch.arange(bucket, device=device) % pop.size
    state = pop.model.zero_state(bucket)
    out = state.empty_like()
    graph = CudaGraphRows(step_torch)

    def synced(fn):
        return lambda: (fn(), torch.cuda.synchronize(device))

    cands = {"torch": synced(lambda: step_torch(pop, x, state, members, out)),
             "graph": synced(lambda: graph(pop, x, state, members, out))}
    sizes = {**cfg.to_dict(), "rank": pop.rank, "include": ",".join(sorted(pop.include)),
             "batch": bucket, "device": torch.cuda.get_device_name(device)}
    return paths.default_chooser().choose("pop_step_cuda", sizes, cands)


def _forms(pop: Population, rows: int):
    cfg = pop.model.config
    x = (torch.zeros(rows, dtype=torch.long) if cfg.token_mode
         else torch.zeros(rows, cfg.input_dim))
    members = torch.arange(rows) % pop.size
    state = pop.model.zero_state(rows)
    out = state.empty_like()
    return (lambda: step_torch(pop, x, state, members, out),
            lambda n: step_native(pop, x, state, members, n, False))


def as_members(pop: Population, members: object, rows: int) -> torch.Tensor:
    """Member indices as an integer tensor (int32 kept: the native kernel's type, else int64)
    of `rows` entries in [0, P), or ValueError."""
    m = members if isinstance(members, torch.Tensor) else torch.as_tensor(np.asarray(members))
    if m.dim() != 1 or m.shape[0] != rows or m.dtype.is_floating_point or m.dtype == torch.bool:
        raise ValueError(f"members must be {rows} integer member indices (one per row), got "
                         f"{m.dtype} {tuple(m.shape)}")
    if m.dtype != torch.int32:
        m = m.long()
    if rows:
        low, high = (int(v) for v in torch.aminmax(m))
        if low < 0 or high >= pop.size:
            raise ValueError(f"members must lie in [0, {pop.size}), got values {low}..{high}")
    return m


def step(pop: Population, x: torch.Tensor, state: RWKV7State, members: object,
         inplace: bool = False, path: str | None = None) -> tuple[torch.Tensor, RWKV7State]:
    """See `Population.step_rows`."""
    R = x.shape[0]
    m = as_members(pop, members, R)
    if state.batch != R:
        raise ValueError(f"state has {state.batch} rows, the input has {R}")
    path = path or row_path(pop, R)
    _check_path(path, x.device)
    if path not in ("torch", "graph"):  # "native:<n>", or a forced step path "rows:<n>"
        return step_native(pop, x, state, m, native.threads_of(path), inplace)
    out = state if inplace else state.empty_like()
    m = m.to(x.device, torch.long, non_blocking=True)
    if path == "graph":
        if pop._graphs is None:  # captured for this population: its noise is fixed
            pop._graphs = CudaGraphRows(step_torch)
        return pop._graphs(pop, x, state, m, out), out
    return step_torch(pop, x, state, m, out), out


def _check_path(path: str, device: torch.device) -> None:
    """Refuse a path the input's device cannot run: the native kernel reads CPU memory, the
    graph path replays on a CUDA device."""
    ok = (path == "torch" or (path == "graph" and device.type == "cuda")
          or (path != "graph" and device.type == "cpu"))
    if not ok:
        raise ValueError(f"row path {path!r} cannot run a {device.type} input: 'torch' runs "
                         f"anywhere, the native ones ('native:<threads>') on the CPU, 'graph' "
                         f"on CUDA")
