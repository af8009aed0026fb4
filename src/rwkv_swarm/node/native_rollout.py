"""The native rollout (`kernels/csrc/rwkv7_cartpole.c`): a population's CartPole copies and
its row step in one C loop, with the results of `rollout` bit for bit.

`rollout` pays about 150 us of Python a step (the numpy world, the observation pipeline, the
masks, the kernel's call) through the longest episode, whatever the rows cost; with small
models that fixed cost was the whole step (docs/kernels.md, "The rollout loop"). The C loop
does the same arithmetic in the same order and calls the same row kernel, so each copy's
return, steps, final state and the world's observation statistics are those of `rollout`.

`usable` is the one place that decides: a `GymEnv` stepping the numpy CartPole world with no
noise (`GymEnv.native_cartpole`), a control-mode model on the CPU, and a native row path.
Everything else runs `rollout`.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

import numpy as np
import torch

from ..kernels import Population, RWKV7State, native
from ..kernels.native_rows import row_step
from .envs.gym import GymEnv
from .rollout import Rollout

CALL_S = 0.005  # about this long per call into C: `on_step` (a node's transport) runs between
MAX_CHUNK = 256  # steps per call at most
_P = ctypes.c_void_p
_I32, _I64, _F64 = ctypes.c_int32, ctypes.c_int64, ctypes.c_double


class CartRun(ctypes.Structure):
    """rwkv7_cartpole.c's CartRun, field for field."""

    _fields_ = [*((f, _I32) for f in ("n", "n_keep", "n_out", "max_steps", "episode_limit",
                                      "sutton_barto", "normalize", "L", "C", "HNN", "t",
                                      "batch", "live", "pad_")),
                ("computed", _I64), ("compact", _F64), ("clip", _F64),
                *((f, _P) for f in ("keep", "shift", "inv_std", "pending", "cart", "obs", "rows",
                                    "member", "att", "wkv", "ffn", "att_full", "wkv_full",
                                    "ffn_full", "x", "out", "xs", "returns", "steps", "alive",
                                    "diverged", "bad_obs", "action"))]


def usable(env: object, pop: Population, path: str) -> bool:
    """Whether `native_rollout` can run this evaluation: see the module docstring."""
    return (isinstance(env, GymEnv) and env.native_cartpole() is not None
            and path not in ("torch", "graph") and pop.device.type == "cpu"
            and not pop.model.config.token_mode and native.load() is not None)


def native_rollout(env: GymEnv, pop: Population, members: torch.Tensor, n: int, seed: int,
                   state: RWKV7State, max_steps: int, keys: list[int] | None = None,
                   on_step: Callable[[int], None] | None = None, compact: float = 0.9,
                   path: str = "native:1") -> Rollout:
    """`rollout(env, <pop.step_rows on `path`>, n, seed, state, max_steps, keys, on_step,
    compact)` in one C loop: copy i is member `members[i]` (int32, (n,)). `on_step(t)` runs
    between calls into C, about every CALL_S seconds, and after the last step (not after
    every step)."""
    if not usable(env, pop, path):
        raise ValueError("the native rollout needs a GymEnv over the numpy CartPole world with "
                         "no noise, a control-mode model on the CPU and a native row path, got "
                         f"{env!r}, path {path!r}")
    if not 0.0 <= compact <= 1.0:
        raise ValueError(f"compact must be a share of rows in [0, 1], got {compact}")
    obs = env.reset(n, seed) if keys is None else env.reset(n, seed, keys)
    world = env.native_cartpole()
    assert world is not None  # usable() said so before the reset
    run, bufs = _prepare(world, pop, members, n, obs, state, max_steps, compact)
    tables = row_step(pop.model).tables(pop)
    threads = native.threads_of(path) or 1
    fn = native.load().rwkv7_cartpole_run
    chunk = 1
    while run.live > 0 and run.t < max_steps:
        t0, steps0 = time.perf_counter(), run.t
        if fn(ctypes.byref(run), chunk, threads, *tables) != 0:
            raise MemoryError("the native rollout could not allocate the row kernel's scratch")
        if on_step is not None:
            on_step(run.t - 1)
        per_step = (time.perf_counter() - t0) / max(1, run.t - steps0)
        chunk = max(1, min(MAX_CHUNK, int(CALL_S / max(per_step, 1e-7))))
    env.finish_native(bufs["obs"], ~bufs["alive"].astype(bool), bufs["pending"], run.t)
    returns = bufs["returns"]
    diverged, bad_obs = bufs["diverged"].astype(bool), bufs["bad_obs"].astype(bool)
    returns[diverged | bad_obs] = np.nan
    return Rollout(returns, bufs["steps"], bufs["full"], diverged, bad_obs, int(run.computed))


def _prepare(world: dict, pop: Population, members: torch.Tensor, n: int, obs: np.ndarray,
             state: RWKV7State, max_steps: int, compact: float) -> tuple[CartRun, dict]:
    """The run's buffers (kept alive by the returned dict) and the struct pointing at them."""
    cfg = pop.model.config
    if state.batch != n or members.shape != (n,):
        raise ValueError(f"state rows ({state.batch}) and members {tuple(members.shape)} must "
                         f"both be the {n} copies")
    d = len(world["keep"])
    norm = world["norm"]
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in state.tensors()):
        raise ValueError("the native rollout steps a float32 state on the CPU")
    batch, full = _owned(state), _owned(state)
    b = {"keep": np.ascontiguousarray(world["keep"], dtype=np.int64),
         "shift": np.ascontiguousarray(norm.scaling[0] if norm else np.zeros(d)),
         "inv_std": np.ascontiguousarray(norm.scaling[1] if norm else np.ones(d)),
         "pending": np.concatenate([[norm.pending[0]], *norm.pending[1:]]) if norm
         else np.zeros(1 + 2 * d),
         "cart": world["cart"].state, "obs": np.array(obs, dtype=np.float32, order="C"),
         "rows": np.arange(n, dtype=np.int32),
         "member": members.to(torch.int32).numpy().copy(),
         "batch": batch, "full": full, "x": np.zeros((n, d), np.float32),
         "out": np.zeros((n, cfg.output_dim), np.float32), "xs": np.zeros((n, d)),
         "returns": np.zeros(n), "steps": np.zeros(n, np.int64),
         "alive": np.ones(n, np.uint8), "diverged": np.zeros(n, np.uint8),
         "bad_obs": np.zeros(n, np.uint8), "action": np.zeros(n, np.int32)}
    assert b["cart"].flags.c_contiguous and b["cart"].dtype == np.float64
    ptr = {k: (v.ctypes.data if isinstance(v, np.ndarray) else None) for k, v in b.items()}
    tensors = dict(zip(("att", "wkv", "ffn"), batch.tensors(), strict=True))
    tensors.update(zip(("att_full", "wkv_full", "ffn_full"), b["full"].tensors(), strict=True))
    ptr.update({k: t.data_ptr() for k, t in tensors.items()})
    run = CartRun(n=n, n_keep=d, n_out=cfg.output_dim, max_steps=max_steps,
                  episode_limit=world["cart"].max_episode_steps,
                  sutton_barto=int(world["cart"].sutton_barto_reward), normalize=int(bool(norm)),
                  L=cfg.n_layer, C=cfg.n_embd, HNN=cfg.n_embd * cfg.head_size, t=0, batch=n,
                  live=n, computed=0, compact=compact, clip=norm.clip if norm else 0.0,
                  **{k: ptr[k] for k in ("keep", "shift", "inv_std", "pending", "cart", "obs",
                                         "rows", "member", "att", "wkv", "ffn", "att_full",
                                         "wkv_full", "ffn_full", "x", "out", "xs", "returns",
                                         "steps", "alive", "diverged", "bad_obs", "action")})
    return run, b


def _owned(state: RWKV7State) -> RWKV7State:
    """A contiguous copy of `state` (the C loop writes into it)."""
    return RWKV7State(*(t.detach().clone(memory_format=torch.contiguous_format)
                        for t in state.tensors()))
