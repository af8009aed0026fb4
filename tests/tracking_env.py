"""A small deterministic environment for node tests: act a * W obs, reward -||action - W obs||^2.

Episodic (fixed length, fresh observations per reset seed) or continuing (one stream of
segments; every reset replays the current segment until `end_generation`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TrackingEnv:
    observation_dim = 3
    action_dim = 2

    def __init__(self, length: int = 20, persistent: bool = False, seed: int = 0):
        self.length, self.persistent = length, persistent
        self.W = np.random.default_rng(seed).normal(size=(2, 3))
        self.segment = 0
        self.resets = 0

    def reset(self, n: int, seed: int, keys=None) -> np.ndarray:
        self.resets += 1
        key = self.segment if self.persistent else seed
        rng = np.random.default_rng(key)
        shared = rng.normal(size=(self.length + 1, 1, 3))  # continuing: one world for all copies
        keys = np.arange(n) if keys is None else np.asarray(keys)
        self.last_keys = keys.tolist()
        per_copy = rng.normal(size=(self.length + 1, int(keys.max()) + 1, 3))[:, keys]
        self.obs = np.broadcast_to(shared, (self.length + 1, n, 3)) if self.persistent \
            else per_copy
        self.t = 0
        return self.obs[0].astype(np.float32)

    def step(self, outputs: np.ndarray):
        target = self.obs[self.t] @ self.W.T
        reward = -((outputs - target) ** 2).sum(axis=1)
        self.t += 1
        done = np.full(len(outputs), self.t >= self.length)
        return self.obs[self.t].astype(np.float32), reward, done

    def end_generation(self) -> None:
        self.segment += 1

    def apply_signal(self, name: str, params: dict[str, Any]) -> None:
        if name != "scale":
            raise ValueError(f"unknown signal {name!r}; accepted: ['scale']")
        self.W = self.W * float(params["factor"])

    def state_dict(self) -> dict[str, Any]:
        return {"W": self.W.tolist(), "segment": self.segment}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.W = np.array(state["W"])
        self.segment = state["segment"]
