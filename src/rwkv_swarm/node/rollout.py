"""Run a batched policy in n environment copies until every copy is done (or max_steps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels import RWKV7State
from .environment import Environment

# (observations (n, obs_dim) float32 tensor, state) -> (outputs (n, action_dim), state)
Policy = Callable[[torch.Tensor, RWKV7State], tuple[torch.Tensor, RWKV7State]]


@dataclass
class Rollout:
    """Returns (n,) summed rewards (NaN for a copy whose policy produced non-finite outputs);
    steps (n,) steps taken; final recurrent state."""

    returns: np.ndarray
    steps: np.ndarray
    state: RWKV7State

    @property
    def env_steps(self) -> int:
        return int(self.steps.sum())


def rollout(env: Environment, policy: Policy, n: int, seed: int, state: RWKV7State,
            max_steps: int, keys: list[int] | None = None) -> Rollout:
    """Step `policy` in `n` copies of `env` from `state` (n rows). Copies end independently:
    a done copy's later rewards are ignored (the batch still computes its row: one batched
    pass is cheaper than compacting it). A copy whose policy outputs turn non-finite (a
    diverged mutant) acts with zeros from then on and returns NaN: it is ranked worst, and
    it never stops the others."""
    obs = env.reset(n, seed) if keys is None else env.reset(n, seed, keys)
    returns = np.zeros(n)
    steps = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    broken = np.zeros(n, dtype=bool)
    for _ in range(max_steps):
        out, state = policy(torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)), state)
        actions = out.detach().cpu().numpy()
        bad = ~np.isfinite(actions).all(axis=1)
        if bad.any():
            broken |= bad & alive
            actions = np.where(bad[:, None], 0.0, actions)
        obs, reward, done = env.step(actions)
        returns += np.where(alive, reward, 0.0)
        steps += alive
        alive &= ~np.asarray(done, dtype=bool)
        if not alive.any():
            break
    returns[broken] = np.nan
    return Rollout(returns, steps, state)
