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
    """Returns (n,) summed rewards; steps (n,) steps taken; final recurrent state."""

    returns: np.ndarray
    steps: np.ndarray
    state: RWKV7State

    @property
    def env_steps(self) -> int:
        return int(self.steps.sum())


def rollout(env: Environment, policy: Policy, n: int, seed: int, state: RWKV7State,
            max_steps: int) -> Rollout:
    """Step `policy` in `n` copies of `env` from `state` (n rows). Copies end independently:
    a done copy's later rewards are ignored (the batch still computes its row: one batched
    pass is cheaper than compacting it)."""
    obs = env.reset(n, seed)
    returns = np.zeros(n)
    steps = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    for _ in range(max_steps):
        out, state = policy(torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)), state)
        obs, reward, done = env.step(out.detach().cpu().numpy())
        returns += np.where(alive, reward, 0.0)
        steps += alive
        alive &= ~np.asarray(done, dtype=bool)
        if not alive.any():
            break
    return Rollout(returns, steps, state)
