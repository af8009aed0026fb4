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
# the same for the batch's rows only: (observations, state, rows (R,) copy indices)
RowPolicy = Callable[[torch.Tensor, RWKV7State, np.ndarray], tuple[torch.Tensor, RWKV7State]]


@dataclass
class Rollout:
    """returns (n,) summed rewards, NaN for a copy that went wrong: `diverged` (its policy's
    outputs turned non-finite) or `bad_obs` (the environment handed it a non-finite
    observation); steps (n,) steps taken; the final recurrent state; rows_computed: policy
    rows computed over the run (env_steps of them were of live copies)."""

    returns: np.ndarray
    steps: np.ndarray
    state: RWKV7State
    diverged: np.ndarray
    bad_obs: np.ndarray
    rows_computed: int = 0

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


# A compacting rollout gathers its live rows once they fall below this share of the batch:
# at least this share of the rows computed are then live, and each compaction costs about
# one copy of the batch's state.
COMPACT_BELOW = 0.9


def rollout(env: Environment, policy: Policy | RowPolicy, n: int, seed: int, state: RWKV7State,
            max_steps: int, keys: list[int] | None = None,
            on_step: Callable[[int], None] | None = None, compact: float = 0.0) -> Rollout:
    """Step `policy` in `n` copies of `env` from `state` (n rows). Copies end independently,
    and a done copy's later rewards are ignored. A copy that goes wrong (non-finite
    observation or output) acts on zeros from then on and returns NaN: it is ranked worst, and
    it never stops the others. `on_step(t)` runs after every environment step (a node services
    its transport there during a long evaluation).

    `compact` = 0: every row is computed until the last copy is done (`policy(obs, state)`).
    `compact` in (0, 1]: once fewer than that share of the batch's rows are live, the batch is
    compacted to its live rows, so finished copies stop costing compute; `policy(obs, state,
    rows)` then gets the copies `rows` (indices into n) that its batch holds, and the state it
    gets is the rollout's own (it may update it in place). Observations reach the policy on
    the state's device (the environments' numpy arrays are uploaded once per step) and
    actions come back to the host. Done copies act on zeros; a policy
    whose rows never depend on each other gives the live copies the same returns and states.
    The final state holds each copy's state as of its last step in the batch.
    """
    if not 0.0 <= compact <= 1.0:
        raise ValueError(f"compact must be a share of rows in [0, 1], got {compact}")
    obs = env.reset(n, seed) if keys is None else env.reset(n, seed, keys)
    run = _Run(n, state.clone() if compact else state, compact)
    for t in range(max_steps):
        obs = run.clean(np.asarray(obs, dtype=np.float32))
        actions = run.act(policy, obs)
        obs, reward, done = env.step(actions)
        run.record(reward, done)
        if on_step is not None:
            on_step(t)
        if not run.live:
            break
    return run.result()


class _Run:
    """One rollout's bookkeeping: returns, the live copies, and (compacting) the batch's rows.
    Every copy outside the batch is done, so the batch holds all `live` copies."""

    def __init__(self, n: int, state: RWKV7State, compact: float):
        self.n, self.compact = n, compact
        self.returns = np.zeros(n)
        self.steps = np.zeros(n, dtype=np.int64)
        self.alive = np.ones(n, dtype=bool)
        self.live = n  # copies alive
        self.diverged = np.zeros(n, dtype=bool)
        self.bad_obs = np.zeros(n, dtype=bool)
        self.full = state  # n rows: where rows dropped from the batch leave their state
        self.batch = state  # the rows computed
        self.rows = np.arange(n)
        self.compacted = False  # whether the batch is less than all n copies
        self.computed = 0  # rows computed, over the whole run
        self.device = state.device
        self.on_cpu = self.device.type == "cpu"

    def clean(self, obs: np.ndarray) -> np.ndarray:
        if np.isfinite(obs).all():
            return obs
        bad = ~np.isfinite(obs).all(axis=1)
        self.bad_obs |= bad & self.alive
        return np.where(bad[:, None], 0.0, obs).astype(np.float32)

    def act(self, policy: Policy | RowPolicy, obs: np.ndarray) -> np.ndarray:
        if not self.compact:
            out, self.batch = policy(self._upload(obs), self.batch)
            actions = out.detach().cpu().numpy()
        else:
            if self.live < self.compact * len(self.rows):
                self._keep(self.alive[self.rows])
            if self.compacted:
                obs = obs[self.rows]
            out, self.batch = policy(self._upload(obs), self.batch, self.rows)
            actions = out.detach().cpu().numpy()
            if self.compacted:
                every = np.zeros((self.n, actions.shape[1]), dtype=np.float32)
                every[self.rows] = actions
                actions = every
        self.computed += len(self.rows)
        if np.isfinite(actions).all():
            return actions
        bad = ~np.isfinite(actions).all(axis=1)
        self.diverged |= bad & self.alive & ~self.bad_obs
        return np.where(bad[:, None], 0.0, actions)

    def _upload(self, obs: np.ndarray) -> torch.Tensor:
        """Observations as a tensor on the batch state's device (the policy's)."""
        x = torch.from_numpy(np.ascontiguousarray(obs))
        return x if self.on_cpu else x.to(self.device)

    def _keep(self, live: np.ndarray) -> None:
        """Compact the batch to its `live` rows; the others' states go back to `full`."""
        keep, drop = np.flatnonzero(live), np.flatnonzero(~live)
        if self.batch is not self.full and len(drop):
            self.full.assign(torch.from_numpy(self.rows[drop]), self.batch.select(drop))
        self.batch = self.batch.select(keep)
        self.rows = self.rows[keep]
        self.compacted = True

    def record(self, reward: np.ndarray, done: np.ndarray) -> None:
        self.returns += np.where(self.alive, reward, 0.0)
        self.steps += self.alive
        self.alive &= ~np.asarray(done, dtype=bool)
        self.live = int(np.count_nonzero(self.alive))

    def result(self) -> Rollout:
        state = self.batch
        if self.compact and self.batch is not self.full:
            self.full.assign(torch.from_numpy(self.rows), self.batch)
            state = self.full
        self.returns[self.diverged | self.bad_obs] = np.nan
        return Rollout(self.returns, self.steps, state, self.diverged, self.bad_obs,
                       int(self.computed))
