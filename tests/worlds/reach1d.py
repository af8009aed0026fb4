"""Reach1D: move a point on a line to a target, in two forms a user might write.

`Reach1D` implements rwkv_swarm's batched Environment protocol directly (kind "python");
`Reach1DGym` is a gymnasium.Env, registered on import as "Reach1D-v0" (kind "gym"). Both
observe (position, target), act with one number (a velocity in [-1, 1]) and are rewarded
-(position - target)^2 per step.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

ENV_ID = "Reach1D-v0"


class Reach1D:
    """n copies of the reaching task, stepped together; episodic."""

    observation_dim = 2
    action_dim = 1
    persistent = False
    SIGNALS = {"move_target": {"offset": "added to every target from the next reset"}}

    def __init__(self, length: int = 10, speed: float = 0.2) -> None:
        if length < 1 or speed <= 0:
            raise ValueError(f"need length >= 1 and speed > 0, got {length}, {speed}")
        self.length, self.speed, self.offset = length, speed, 0.0

    def reset(self, n: int, seed: int, keys: Any = None) -> np.ndarray:
        keys = list(range(n)) if keys is None else list(keys)
        starts = [np.random.default_rng([seed, k]).uniform(-1, 1, size=2) for k in keys]
        self.x, self.target = (np.array(v) for v in zip(*starts, strict=True))
        self.target = self.target + self.offset
        self.t, self.done = 0, np.zeros(n, dtype=bool)
        return self._obs()

    def _obs(self) -> np.ndarray:
        return np.stack([self.x, self.target], axis=1).astype(np.float32)

    def step(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        live = ~self.done
        self.x = np.where(live, self.x + self.speed * np.tanh(outputs[:, 0]), self.x)
        reward = np.where(live, -(self.x - self.target) ** 2, 0.0)
        self.t += 1
        self.done = self.done | (self.t >= self.length)
        return self._obs(), reward, self.done.copy()

    def end_generation(self) -> None:
        pass

    def apply_signal(self, name: str, params: dict[str, Any]) -> None:
        if name not in self.SIGNALS or set(params) != {"offset"}:
            raise ValueError(f"Reach1D takes {self.SIGNALS}, got {name!r} {params!r}")
        self.offset = float(params["offset"])

    def state_dict(self) -> dict[str, Any]:
        return {"offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.offset = float(state["offset"])


class Reach1DGym(gymnasium.Env):
    """One copy of the task as a gymnasium environment."""

    observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.x, self.target = self.np_random.uniform(-1, 1, size=2)
        return np.array([self.x, self.target], dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.x += 0.2 * float(action[0])
        obs = np.array([self.x, self.target], dtype=np.float32)
        return obs, -(self.x - self.target) ** 2, False, False, {}


if ENV_ID not in gymnasium.registry:  # imported under two names, the first one registers
    gymnasium.register(ENV_ID, entry_point=Reach1DGym, max_episode_steps=10)
