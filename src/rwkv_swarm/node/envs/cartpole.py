"""`CartPoleVector`: n CartPole copies stepped in numpy, gymnasium's `CartPoleVectorEnv`
arithmetic operation for operation (so the same bits for every live copy).

What it leaves out is what a `GymEnv` never reads: the per-step action-space check (the
adapter builds the actions itself) and the autoreset of ended copies (a done copy is masked by
the adapter from then on). A done copy's state is parked at zeros each step so that it stays
finite; its values are never read.
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium import spaces

GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
TOTAL_MASS = MASSPOLE + MASSCART
POLEMASS_LENGTH = MASSPOLE * LENGTH
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4


class CartPoleVector:
    """n copies of CartPole (v0/v1 dynamics, Euler integration); state (4, n) float64."""

    def __init__(self, num_envs: int, max_episode_steps: int = 500,
                 sutton_barto_reward: bool = False) -> None:
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.sutton_barto_reward = sutton_barto_reward
        self.state = np.zeros((4, num_envs))
        self.steps = np.zeros(num_envs, dtype=np.int32)
        self._rate = np.empty((4, num_envs))  # d(state)/dt, reused every step
        self._ones = np.ones(num_envs)
        high = np.array([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD * 2, np.inf], dtype=np.float32)
        self.single_observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = spaces.Discrete(2)

    def reset_to(self, state: np.ndarray) -> np.ndarray:
        """Start every copy at `state` (4, n); returns the observations (n, 4) float32."""
        # C order: the native rollout steps it in place
        self.state = np.array(state, dtype=np.float64, order="C")
        self.steps[:] = 0
        return self.state.T.astype(np.float32)

    def step(self, action: np.ndarray, live: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Push left (0) or right (1); returns (obs (n, 4) float32, reward (n,) float64,
        ended (n,) bool: terminated or truncated). Rows not `live` are parked, not stepped."""
        s, rate = self.state, self._rate
        np.copyto(s, 0.0, where=~live)
        x, x_dot, theta, theta_dot = s
        force = np.sign(action - 0.5) * FORCE_MAG
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + POLEMASS_LENGTH * np.square(theta_dot) * sintheta) / TOTAL_MASS
        thetaacc = (GRAVITY * sintheta - costheta * temp) / (
            LENGTH * (4.0 / 3.0 - MASSPOLE * np.square(costheta) / TOTAL_MASS))
        rate[0] = x_dot
        rate[2] = theta_dot
        np.subtract(temp, POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS, out=rate[1])
        rate[3] = thetaacc
        # x + tau * x_dot, x_dot + tau * xacc, ...: the four Euler updates as two operations
        np.multiply(rate, TAU, out=rate)
        np.add(s, rate, out=s)
        ended = (np.abs(s[0]) > X_THRESHOLD) | (np.abs(s[2]) > THETA_THRESHOLD)
        self.steps += 1
        reward = -ended.astype(np.float64) if self.sutton_barto_reward else self._ones
        ended |= self.steps >= self.max_episode_steps
        return s.T.astype(np.float32), reward, ended
