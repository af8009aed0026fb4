"""Population forward: P low-rank mutants of one RWKV-7 sharing its weights (EGGROLL-style).

Mutant j perturbs each target matrix W (stored shape m x n) to W + sigma * s_j * A_p B_p^T with
p = j // 2 and s_j = +1 for even j, -1 for odd j (antithetic pairs share noise), A_p (m, r) with
entries N(0, 1/r) and B_p (n, r) with entries N(0, 1). Applying it to x needs no weight copy:

    x (W + sigma A B^T)^T = x W^T + sigma (x B) A^T      (one shared GEMM + rank-r terms)

Noise is never stored beyond a generation: pair p's numbers are drawn from a counter-based
Philox generator keyed by (seed, p), so any node rebuilds mutant j from (seed, sigma, j) alone.
Pair p's draw is one flat float32 vector laid out target by target, in the model's parameter
order: a matrix takes m*r numbers for A (row-major) then n*r for B; a vector takes its numel.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import native_ops, rows
from .config import ROW_BLOCK
from .low_rank import cuda_low_rank_form, low_rank_path, low_rank_torch
from .model import (
    GROUPS,
    LORA_NAMES,
    RWKV7,
    Ops,
    PerturbedNorms,
    embed_input,
    is_matrix,
    parameter_group,
    readout,
    run_blocks,
)
from .state import RWKV7State

_MASK64 = (1 << 64) - 1
# floats of materialized noise (pairs x perturbed weights) up to which sums take the flat path:
# flat / factor 0.35-0.45 up to 187k, 1.3 at 281k, 13.6 at 16M (docs/benchmarks.md)
FLAT_SUM_MAX = 200_000
SUM_PATHS = ("flat", "factor")


@dataclass(frozen=True)
class Target:
    """One perturbed tensor: how it is applied and where its noise sits in a pair's draw."""

    name: str
    kind: str  # "rows": (out, in) linear; "cols": (in, out) LoRA; "embed": (V, C); "vector"
    shape: tuple[int, ...]
    offset: int  # start in a pair's flat draw
    size: int  # numbers it takes from the draw


def targets_for(model: RWKV7, rank: int, include: Sequence[str]) -> list[Target]:
    """The perturbed tensors of `model` for the given groups, in parameter order (kept with
    the model: they depend on its parameters' names and shapes alone, and a node asks for them
    with every population)."""
    bad = sorted(set(include) - set(GROUPS))
    if bad:
        raise ValueError(f"unknown perturbation groups {bad}; known: {list(GROUPS)}")
    kept = model.__dict__.setdefault("_targets", {})
    key = (rank, tuple(include))
    if key not in kept:
        kept[key] = _targets(model, rank, include)
    return list(kept[key])


def _targets(model: RWKV7, rank: int, include: Sequence[str]) -> list[Target]:
    out, offset = [], 0
    for name, p in model.named_parameters():
        if parameter_group(name, p) not in include:
            continue
        if is_matrix(name, p):
            if name == "emb.weight":
                kind = "embed"
            elif name.rsplit(".", 1)[-1] in LORA_NAMES:
                kind = "cols"
            else:
                kind = "rows"
            size = (p.shape[0] + p.shape[1]) * rank
        else:
            kind, size = "vector", p.numel()
        out.append(Target(name, kind, tuple(p.shape), offset, size))
        offset += size
    return out


_PHILOX = threading.local()  # one generator per thread, re-keyed per pair


def sum_path(pairs: int, dim: int) -> str:
    """How a population of `pairs` antithetic pairs perturbing `dim` weights sums over its
    pairs' noise: "flat" (every pair's perturbation materialized once, (pairs, dim), then one
    matrix-vector product a sum) while that is at most FLAT_SUM_MAX floats, else "factor" (one
    product of rank-r factors per matrix target). Sizes alone decide: every node of a
    consensus group takes the same path, so their sums agree bit for bit."""
    return "flat" if pairs * dim <= FLAT_SUM_MAX else "factor"


def pair_noise(seed: int, pair: int, size: int) -> np.ndarray:
    """The flat float32 standard-normal draw of antithetic pair `pair` under `seed`: that of a
    fresh `Philox(key=(seed, pair))` (re-keying one costs a tenth of making one)."""
    if not hasattr(_PHILOX, "bits"):
        _PHILOX.bits = np.random.Philox(key=np.zeros(2, dtype=np.uint64))
        _PHILOX.fresh, _PHILOX.draw = _PHILOX.bits.state, np.random.Generator(_PHILOX.bits)
    key = np.array([seed & _MASK64, pair & _MASK64], dtype=np.uint64)
    _PHILOX.bits.state = {**_PHILOX.fresh, "state": {"counter": np.zeros(4, dtype=np.uint64),
                                                    "key": key}}
    return _PHILOX.draw.standard_normal(size, dtype=np.float32)


class Population:
    """P = `size` antithetic low-rank mutants of `model` for one generation.

    `forward`/`step` run all mutants in one batched pass; `materialize(j)` gives mutant j's
    full weights (tests, export); `gradient(u)` / `update(u, lr)` turn per-mutant fitness
    weights u into the ES step lr/(P sigma) sum_j u_j s_j A_p B_p^T (`flat_gradient(u)`: flat),
    summing over pairs on the path `sum_path` decides.
    """

    def __init__(self, model: RWKV7, seed: int, sigma: float, size: int, rank: int = 1,
                 include: Sequence[str] = ("matrices",)):
        if size < 2 or size % 2:
            raise ValueError(f"population size must be even and >= 2, got {size}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not (sigma > 0 and np.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        self.model, self.seed, self.sigma = model, int(seed), float(sigma)
        self.size, self.rank, self.include = size, rank, tuple(include)
        self.targets = targets_for(model, rank, self.include)
        if not self.targets:
            raise ValueError(f"groups {self.include} select no parameters of this model")
        self.noise_size = sum(t.size for t in self.targets)
        self.dim = sum(math.prod(t.shape) for t in self.targets)  # perturbed weights
        self.sum_path = sum_path(size // 2, self.dim)  # tests may force either of SUM_PATHS
        self._noise: dict[str, tuple[torch.Tensor, ...]] | None = None
        self._noise_t: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._graphs = None  # rows.CudaGraphRows once a step takes the "graph" path
        self._factor_cache: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._flat_cache: dict[str, torch.Tensor] = {}

    # -- noise ---------------------------------------------------------------------------------

    def _split(self, flat: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        """Flat draws (pairs, noise_size) -> {name: (A (pairs, m, r), B (pairs, n, r))|(eps,)}."""
        pairs, r = flat.shape[0], self.rank
        out = {}
        for t in self.targets:
            chunk = flat[:, t.offset:t.offset + t.size]
            if t.kind == "vector":
                out[t.name] = (chunk.reshape(pairs, *t.shape),)
            else:
                m, n = t.shape
                A = chunk[:, :m * r].reshape(pairs, m, r) / r ** 0.5
                out[t.name] = (A, chunk[:, m * r:].reshape(pairs, n, r))
        return out

    def pair_noise(self, pairs: Sequence[int]) -> dict[str, tuple[torch.Tensor, ...]]:
        """Noise of the given pairs only, on the model's device."""
        flat = np.stack([pair_noise(self.seed, p, self.noise_size) for p in pairs])
        return self._split(torch.from_numpy(flat).to(self.device))

    def adopt_draws(self, other: Population) -> None:
        """Take what `other`, a population of the same seed, size and targets, has built from
        its noise alone (the noise, its transposes, the sums' products) as this one's: drawn
        ahead of time, while a node waits for its peers."""
        if self._noise is None:
            self._noise, self._noise_t = other._noise, other._noise_t
            self._factor_cache, self._flat_cache = dict(other._factor_cache), \
                dict(other._flat_cache)

    @property
    def noise(self) -> dict[str, tuple[torch.Tensor, ...]]:
        if self._noise is None:
            self._noise = self.pair_noise(range(self.size // 2))
        return self._noise

    @property
    def noise_t(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The matrices' noise rank axis first, (A^T (pairs, r, m), B^T (pairs, r, n)), as the
        native low-rank kernel reads it (views at rank 1; copies once per generation above)."""
        if self._noise_t is None:
            self._noise_t = {name: tuple(t.transpose(1, 2).contiguous() for t in parts)
                             for name, parts in self.noise.items() if len(parts) == 2}
        return self._noise_t

    def prepare_transposes(self) -> bool:
        """Build `noise_t` now (see `prepare_sums`); returns whether it was left to build."""
        if self._noise_t is not None:
            return False
        _ = self.noise_t
        return True

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def signs(self) -> torch.Tensor:
        """s_j: +1 for even members, -1 for odd ones. Shape (P,)."""
        return torch.tensor([1.0, -1.0], device=self.device).repeat(self.size // 2)

    # -- running the population ----------------------------------------------------------------

    def forward(self, x: torch.Tensor, state: RWKV7State | None = None,
                members: tuple[int, int] | None = None) -> tuple[torch.Tensor, RWKV7State]:
        """All mutants (or members [lo, hi), an even range) on a sequence.

        x: per-member input (M, B, T) tokens / (M, B, T, input_dim) observations with M the
        members run, or one input (B, T) / (B, T, input_dim) shared by all. State rows are
        member-major (M*B rows). Returns outputs (M, B, T, out) and the new state.
        """
        cfg = self.model.config
        x, state, lo, M, B = self._checked(x, state, members, "population input", ", T")
        block = member_block(M, B * x.shape[2], self.device)
        new, outs = state.empty_like(), []
        with torch.no_grad():
            for a in range(0, M, block):  # cache-sized blocks of members on CPU
                b = min(a + block, M)
                ops = PopulationOps(self, lo + a, lo + b)
                h, _ = run_blocks(ops, cfg, embed_input(ops, cfg, x[a:b]),
                                  state.rows(a * B, b * B), (b - a, B), new.rows(a * B, b * B))
                outs.append(readout(ops, h))
        return (outs[0] if len(outs) == 1 else torch.cat(outs)), new

    def _checked(self, x: torch.Tensor, state: RWKV7State | None,
                 members: tuple[int, int] | None, what: str, time: str
                 ) -> tuple[torch.Tensor, RWKV7State, int, int, int]:
        """(x per member, state, lo, M, B) for members [lo, lo + M): a shared input expanded,
        shapes, features and state rows checked (`time`: ", T" for a sequence, "" a step)."""
        cfg = self.model.config
        lo, hi = self._member_range(members)
        M = hi - lo
        per_member_dims = (2 if cfg.token_mode else 3) + bool(time)
        if x.dim() == per_member_dims - 1:
            x = x.unsqueeze(0).expand(M, *x.shape)
        if x.dim() != per_member_dims or x.shape[0] != M:
            feat = "" if cfg.token_mode else ", input_dim"
            raise ValueError(f"{what} must be (members={M}, B{time}{feat}) or shared, got "
                             f"{tuple(x.shape)}")
        if not cfg.token_mode and x.shape[-1] != cfg.input_dim:
            raise ValueError(f"observations must have {cfg.input_dim} features, got {x.shape[-1]}")
        B = x.shape[1]
        if state is None:
            state = self.model.zero_state(M * B)
        elif state.batch != M * B:
            raise ValueError(f"population state must have P*B = {M * B} rows (P = {M} members "
                             f"run), got {state.batch}")
        return x, state, lo, M, B

    def step(self, x: torch.Tensor, state: RWKV7State | None = None,
             members: tuple[int, int] | None = None) -> tuple[torch.Tensor, RWKV7State]:
        """One token (M, B) / observation (M, B, input_dim) per member row -> (M, B, out).

        Runs as `step_rows` with row m * B + b being member lo + m."""
        x, state, lo, M, B = self._checked(x, state, members, "population step input", "")
        members_of = torch.arange(lo, lo + M).repeat_interleave(B)
        out, state = self.step_rows(x.reshape(M * B, *x.shape[2:]), state, members_of)
        return out.view(M, B, -1), state

    def step_rows(self, x: torch.Tensor, state: RWKV7State, members: Sequence[int] | torch.Tensor,
                  inplace: bool = False, path: str | None = None
                  ) -> tuple[torch.Tensor, RWKV7State]:
        """One token (R,) / observation (R, input_dim) per row, row b run as member
        `members[b]` -> (outputs (R, out), new state of R rows).

        The rows need not be whole pairs or in order: a rollout passes only its live rows.
        `inplace` writes the new state into `state`. `path` ("torch", "native:<threads>" on
        the CPU or "graph" on CUDA) forces a path; by default it is `row_path(R)`. On the
        native path a row's result does not depend on the other rows, so one path for a whole
        rollout keeps a compacted batch bitwise equal to the full one.
        """
        return rows.step(self, x, state, members, inplace, path)

    def row_path(self, batch: int) -> str:
        """The path `step_rows` takes for a batch of `batch` rows (measured once per device)."""
        return rows.row_path(self, batch)

    def _member_range(self, members: tuple[int, int] | None) -> tuple[int, int]:
        if members is None:
            return 0, self.size
        lo, hi = members
        if not (0 <= lo < hi <= self.size and lo % 2 == 0 and hi % 2 == 0):
            raise ValueError(f"members must be an even range [lo, hi) within 0..{self.size} "
                             f"(whole antithetic pairs), got {members}")
        return lo, hi

    def flatten(self, per_target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-target tensors (e.g. `gradient`'s) as one flat vector, in target order."""
        return torch.cat([per_target[t.name].flatten() for t in self.targets])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector (dim,) in target order as per-target tensors (views of it)."""
        parts = flat.split([math.prod(t.shape) for t in self.targets])
        return {t.name: part.view(t.shape) for t, part in zip(self.targets, parts, strict=True)}

    # -- mutants and the update ----------------------------------------------------------------

    def materialize(self, j: int) -> dict[str, torch.Tensor]:
        """Mutant j's full state dict (copies; for tests and export)."""
        if not 0 <= j < self.size:
            raise ValueError(f"member {j} out of range for a population of {self.size}")
        noise = self.pair_noise([j // 2])
        scale = self.sigma * (1.0 if j % 2 == 0 else -1.0)
        sd = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        for t in self.targets:
            parts = noise[t.name]
            delta = parts[0][0] if t.kind == "vector" else parts[0][0] @ parts[1][0].T
            sd[t.name] += scale * delta
        return sd

    def _factors(self, squared: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each matrix target's noise as one product's operands, built once per population:
        (A (m, P/2 * r), B (P/2 * r, n)) with column p * r + k of A and row p * r + k of B
        pair p's k-th factors; `squared`: the factors of E_p[i,j]^2 (rank r^2)."""
        key, cache = ("squared" if squared else "plain"), self._factor_cache
        if key not in cache:
            out = {}
            for t in self.targets:
                if t.kind == "vector":
                    continue
                A, Bn = self.noise[t.name]  # (P/2, m, r), (P/2, n, r)
                if squared:
                    A = (A.unsqueeze(-1) * A.unsqueeze(-2)).flatten(2)  # (P/2, m, r^2)
                    Bn = (Bn.unsqueeze(-1) * Bn.unsqueeze(-2)).flatten(2)
                m, n = t.shape
                out[t.name] = (A.permute(1, 0, 2).reshape(m, -1).contiguous(),
                               Bn.permute(0, 2, 1).reshape(-1, n).contiguous())
            cache[key] = out
        return cache[key]

    def _flat(self, squared: bool) -> torch.Tensor:
        """Every pair's perturbation E_p = A_p B_p^T (vectors: eps_p), or E_p^2 elementwise
        (`squared`), flat in target order: (P/2, dim), built once per population."""
        key, cache = ("squared" if squared else "plain"), self._flat_cache
        if key in cache:
            return cache[key]
        if squared:
            plain = self._flat(False)
            cache[key] = plain * plain
        else:
            pairs = self.size // 2
            E, i = torch.empty(pairs, self.dim, dtype=torch.float32, device=self.device), 0
            for t in self.targets:
                n, parts = math.prod(t.shape), self.noise[t.name]
                out = E[:, i:i + n].view(pairs, *t.shape)  # written in place: no concatenation
                if t.kind == "vector":
                    out.copy_(parts[0])
                elif self.rank == 1:  # an outer product: elementwise, 2.5x a batched GEMM's speed
                    torch.mul(parts[0], parts[1].transpose(1, 2), out=out)
                else:
                    out.copy_(torch.bmm(parts[0], parts[1].transpose(1, 2)))
                i += n
            cache[key] = E
        return cache[key]

    def prepare_sums(self) -> bool:
        """Build one more of what the sums over pairs read (E, then E^2; or the plain, then
        the squared factors) now, e.g. while a node waits for its peers; no result changes.
        Returns whether there was anything left to build: one product a call, so that a node
        looks at its socket between them."""
        build, cache = (self._flat, self._flat_cache) if self.sum_path == "flat" else \
            (self._factors, self._factor_cache)
        for squared, key in ((False, "plain"), (True, "squared")):
            if key not in cache:
                build(squared)
                return True
        return False

    def _weighted_sum(self, c: torch.Tensor, squared: bool) -> torch.Tensor:
        """sum_p c_p E_p (or E_p^2 elementwise, `squared`), flat (dim,) in target order, on
        the population's `sum_path`."""
        if self.sum_path == "flat":
            return c @ self._flat(squared)
        if self.sum_path != "factor":
            raise ValueError(f"sum_path must be one of {SUM_PATHS}, got {self.sum_path!r}")
        factors, out = self._factors(squared), []
        for t in self.targets:
            if t.kind == "vector":
                (eps,) = self.noise[t.name]
                out.append(torch.tensordot(c, eps ** 2 if squared else eps, dims=1).flatten())
            else:
                A, B = factors[t.name]
                per_pair = A.shape[1] // c.numel()  # r (or r^2) factors a pair
                out.append(((A * (c if per_pair == 1 else c.repeat_interleave(per_pair)))
                            @ B).flatten())
        return torch.cat(out)

    def _differences(self, u: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """u_2p - u_2p+1 per antithetic pair (P/2,), float32 on the model's device, u checked."""
        u = torch.as_tensor(u, dtype=torch.float32, device=self.device).flatten()
        if u.numel() != self.size:
            raise ValueError(f"u has {u.numel()} entries, expected one per member ({self.size})")
        if not torch.isfinite(u).all():
            raise ValueError("u has non-finite entries")
        return u[0::2] - u[1::2]

    def flat_gradient(self, u: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """ES gradient estimate 1/(P sigma) sum_j u_j s_j A_p B_p^T, flat (dim,) in target
        order (`gradient` split per target tensor)."""
        return self._weighted_sum(self._differences(u) / (self.size * self.sigma), False)

    def gradient(self, u: Sequence[float] | torch.Tensor) -> dict[str, torch.Tensor]:
        """ES gradient estimate 1/(P sigma) sum_j u_j s_j A_p B_p^T, per target tensor."""
        return self.unflatten(self.flat_gradient(u))

    def flat_gradient_variance(self, u: Sequence[float] | torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient estimate and its per-coordinate variance, exactly, flat (dim,) each.

        The estimate is the mean over pairs of c_p = (u_2p - u_2p+1) / (2 sigma) E_p with
        E_p = A_p B_p^T; its variance is var_p(c_p) / (P/2). The second moment needs only the
        squared factors, E_p[i,j]^2 = sum_{r,s} A_ir A_is B_jr B_js (flat path: E^2)."""
        pairs = self.size // 2
        if pairs < 2:
            raise ValueError(f"a variance needs at least 2 antithetic pairs, got {pairs}")
        diff = self._differences(u)
        grad = self._weighted_sum(diff / (self.size * self.sigma), False)
        w = (diff / (2 * self.sigma)) ** 2 / pairs  # weights of mean_p c_p^2
        second = self._weighted_sum(w, squared=True)
        return grad, (second - grad * grad).clamp_min(0) * (pairs / (pairs - 1)) / pairs

    def gradient_variance(self, u: Sequence[float] | torch.Tensor
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`flat_gradient_variance`, per target tensor."""
        grad, var = self.flat_gradient_variance(u)
        return self.unflatten(grad), self.unflatten(var)

    def update(self, u: Sequence[float] | torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
        """Add lr * gradient(u) to the model's weights in place; returns the step taken."""
        steps = {k: lr * g for k, g in self.gradient(u).items()}
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, s in steps.items():
                params[name].add_(s.to(params[name].dtype))
        return steps


def apply_update(model: RWKV7, seed: int, u: Sequence[float] | torch.Tensor, lr: float,
                 sigma: float, *, rank: int = 1, include: Sequence[str] = ("matrices",)
                 ) -> dict[str, torch.Tensor]:
    """Add lr/(P sigma) sum_j u_j s_j A_p B_p^T to `model`, rebuilding the noise from `seed`."""
    pop = Population(model, seed, sigma, len(u), rank=rank, include=include)
    return pop.update(u, lr)


def member_block(P: int, rows_per_member: int, device: torch.device) -> int:
    """Members per block: all at once on GPUs; on CPUs, about ROW_BLOCK activation rows."""
    if device.type != "cpu":
        return P
    return min(P, max(2, ROW_BLOCK // max(rows_per_member, 1) // 2 * 2))


class PopulationOps(PerturbedNorms, Ops):
    """Weights as seen by members [lo, hi) (an even range): shared base plus perturbation.

    Activations are (hi - lo, B, T, features); members 2p and 2p+1 share pair p's noise.
    """

    def __init__(self, pop: Population, lo: int = 0, hi: int | None = None):
        hi = pop.size if hi is None else hi
        self.p = dict(pop.model.named_parameters())
        self.noise = {k: tuple(t[lo // 2:hi // 2] for t in v) for k, v in pop.noise.items()}
        self.kinds = {t.name: t.kind for t in pop.targets}
        self.P, self.sigma = hi - lo, pop.sigma
        self.sign = torch.tensor([1.0, -1.0], device=pop.device).view(1, 2, 1, 1) * pop.sigma
        self.native = pop.model.use_native and native_ops.usable(self.p["head.weight"])
        if self.native:
            self.noise_t = {k: tuple(t[lo // 2:hi // 2] for t in v)
                            for k, v in pop.noise_t.items()}

    def vec(self, name: str) -> torch.Tensor:
        base = self.p[name]
        if name not in self.kinds:
            return base
        core = base.shape[2:] if base.dim() == 3 else base.shape  # (1, 1, C) -> (C,)
        eps = self.noise[name][0].reshape(-1, 1, *core)  # (P/2, 1, *core)
        delta = (eps * torch.tensor([1.0, -1.0], device=eps.device).view(1, 2, *[1] * len(core)))
        return base.reshape(core) + self.sigma * delta.reshape(self.P, 1, 1, *core)

    def _low_rank(self, name: str, base_out: torch.Tensor, x: torch.Tensor, swap: bool
                  ) -> torch.Tensor:
        """base_out + s sigma (x @ left) @ right^T for every member; x (P, ..., in). (left,
        right) is the noise (A, B), or (B, A) with `swap`. Native where measured faster."""
        P2 = self.P // 2
        rows = x.reshape(P2, -1, x.shape[-1])  # (P/2, 2M, in): both members of a pair
        out = base_out.reshape(P2, -1, base_out.shape[-1])  # (P/2, 2M, out)
        A, Bn = self.noise[name]
        left, right = (Bn, A) if swap else (A, Bn)
        if self.native and x.dtype == torch.float32:
            path = low_rank_path(rows.shape[2], out.shape[2], left.shape[2], rows.shape[1])
            if path != "torch":
                At, Bt = self.noise_t[name]
                native_ops.low_rank(out, rows, *((Bt, At) if swap else (At, Bt)), self.sigma,
                                    native_ops.threads_of(path))
                return base_out
        form = cuda_low_rank_form(rows.shape, out.shape[2], left.shape[2], rows.device) \
            if rows.is_cuda else None
        low_rank_torch(out, rows, left, right, self.sign, form)
        return base_out

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.p[name])
        if name not in self.kinds:
            return y
        return self._low_rank(name, y, x, swap=True)  # W (out, in): x W^T + s sigma (x B) A^T

    def lora(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.p[name]
        if name not in self.kinds:
            return y
        return self._low_rank(name, y, x, swap=False)  # W (in, out): x W + s sigma (x A) B^T

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        y = F.embedding(tokens, self.p["emb.weight"])
        if "emb.weight" not in self.kinds:
            return y
        A, Bn = self.noise["emb.weight"]  # E (V, C): row t of E + s sigma A[t] B^T
        P2, r = self.P // 2, A.shape[-1]
        idx = tokens.reshape(P2, -1, 1).expand(-1, -1, r)
        rows = torch.gather(A, 1, idx)  # (P/2, 2M, r)
        rows = (rows.view(P2, 2, -1, r) * self.sign).view(P2, -1, r)
        out = y.reshape(P2, -1, y.shape[-1])
        for i in range(r):
            out.addcmul_(rows[:, :, i:i + 1], Bn[:, None, :, i])
        return y
