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
    """returns (n,) summed rewards, NaN for a copy that went wrong: `diverged` (its policy's
    outputs turned non-finite) or `bad_obs` (the environment handed it a non-finite
    observation); steps (n,) steps taken; the final recurrent state."""

    returns: np.ndarray
    steps: np.ndarray
    state: RWKV7State
    diverged: np.ndarray
    bad_obs: np.ndarray

    @property
    def env_steps(self) -> int:
        return int(self.steps.sum())

    def why_nan(self) -> str:
        """Why copies scored NaN, in words (empty when none did)."""
        parts = []
        if self.bad_obs.any():
            parts.append(f"{int(self.bad_obs.sum())} of {len(self.returns)} copies got non-finite "
                         "observations from the environment")
        if self.diverged.any():
            parts.append(f"{int(self.diverged.sum())} diverged (the policy's outputs turned "
                         "non-finite)")
        return "; ".join(parts)


def rollout(env: Environment, policy: Policy, n: int, seed: int, state: RWKV7State,
            max_steps: int, keys: list[int] | None = None,
            on_step: Callable[[int], None] | None = None) -> Rollout:
    """Step `policy` in `n` copies of `env` from `state` (n rows). Copies end independently:
    a done copy's later rewards are ignored (the batch still computes its row: one batched
    pass is cheaper than compacting it). A copy that goes wrong (non-finite observation or
    output) acts on zeros from then on and returns NaN: it is ranked worst, and it never stops
    the others. `on_step(t)` runs after every environment step (a node services its
    transport there during a long evaluation)."""
    obs = env.reset(n, seed) if keys is None else env.reset(n, seed, keys)
    returns = np.zeros(n)
    steps = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    diverged = np.zeros(n, dtype=bool)
    bad_obs = np.zeros(n, dtype=bool)
    for t in range(max_steps):
        obs = np.asarray(obs, dtype=np.float32)
        bad = ~np.isfinite(obs).all(axis=1)
        if bad.any():
            bad_obs |= bad & alive
            obs = np.where(bad[:, None], 0.0, obs).astype(np.float32)
        out, state = policy(torch.from_numpy(np.ascontiguousarray(obs)), state)
        actions = out.detach().cpu().numpy()
        bad = ~np.isfinite(actions).all(axis=1)
        if bad.any():
            diverged |= bad & alive & ~bad_obs
            actions = np.where(bad[:, None], 0.0, actions)
        obs, reward, done = env.step(actions)
        returns += np.where(alive, reward, 0.0)
        steps += alive
        alive &= ~np.asarray(done, dtype=bool)
        if on_step is not None:
            on_step(t)
        if not alive.any():
            break
    returns[diverged | bad_obs] = np.nan
    return Rollout(returns, steps, state, diverged, bad_obs)
