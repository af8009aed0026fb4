"""CartPoleVector: the bits of gymnasium's CartPoleVectorEnv for every live copy."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rwkv_swarm.node.envs import GymEnv
from rwkv_swarm.node.envs._gym_backends import _cartpole_starts
from rwkv_swarm.node.envs._util import copy_int_seed
from rwkv_swarm.node.envs.cartpole import CartPoleVector


def actions_for(obs: np.ndarray, rng: np.random.Generator, p_random: float) -> np.ndarray:
    """Mostly a balancing push (long episodes), sometimes a random one."""
    push = (obs[:, 2] + 0.5 * obs[:, 3] + 0.01 * obs[:, 1] > 0).astype(np.int64)
    random = rng.integers(0, 2, len(obs))
    return np.where(rng.random(len(obs)) < p_random, random, push)


@pytest.mark.parametrize(("kwargs", "p_random"), [
    ({}, 1.0), ({}, 0.2), ({"max_episode_steps": 40}, 0.05),
    ({"sutton_barto_reward": True}, 0.5)])
def test_every_live_copy_matches_gymnasiums_vector_env_bitwise(kwargs, p_random):
    for seed in range(12):
        n = 1 + seed * 7
        rng = np.random.default_rng(seed)
        ref = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point",
                           **kwargs)
        ref.reset(seed=seed)
        start = _cartpole_starts([copy_int_seed(seed, i) for i in range(n)])
        ref.unwrapped.state = start.copy()
        ours = CartPoleVector(n, **{"max_episode_steps": 500, **kwargs})
        obs = ours.reset_to(start)
        np.testing.assert_array_equal(obs, ref.unwrapped.state.T.astype(np.float32))
        live = np.ones(n, dtype=bool)
        steps = 0
        while live.any():
            act = actions_for(obs, rng, p_random)
            r_obs, r_rew, r_term, r_trunc, _ = ref.step(act)
            obs, rew, ended = ours.step(act, live)
            np.testing.assert_array_equal(obs[live], r_obs[live])
            np.testing.assert_array_equal(rew[live], r_rew[live].astype(np.float64))
            np.testing.assert_array_equal(ended[live], (r_term | r_trunc)[live])
            assert np.isfinite(obs).all()  # parked copies stay finite
            live &= ~ended
            steps += 1
        assert steps > 8
        ref.close()


class GymnasiumVector:
    """The adapter's vector path as it was: gymnasium's vector env, autoreset masked."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.env = gym.make_vec("CartPole-v1", num_envs=n,
                                vectorization_mode="vector_entry_point")

    def reset(self, seed: int, keys: list[int]) -> np.ndarray:
        self.env.reset(seed=seed)
        self.env.unwrapped.state = _cartpole_starts([copy_int_seed(seed, k) for k in keys])
        return self.env.unwrapped.state.T.astype(np.float32)

    def step(self, actions: np.ndarray, live: np.ndarray):
        obs, reward, term, trunc, _ = self.env.step(actions)
        return obs, np.asarray(reward, dtype=np.float64), np.logical_or(term, trunc)


def test_gym_env_gives_the_bits_it_gave_on_gymnasiums_vector_env():
    """Normalised observations, rewards and dones over a generation boundary."""
    n, rng = 24, np.random.default_rng(5)
    new, old = GymEnv("CartPole-v1"), GymEnv("CartPole-v1")
    assert new.vectorized
    old._make_backend(n)
    old._backend = GymnasiumVector(n)
    for generation in range(3):
        a, b = new.reset(n, generation), old.reset(n, generation)
        np.testing.assert_array_equal(a, b)
        for _ in range(120):
            out = rng.standard_normal((n, 2))
            for x, y in zip(new.step(out), old.step(out), strict=True):
                np.testing.assert_array_equal(x, y)
        new.end_generation()
        old.end_generation()
    np.testing.assert_array_equal(new.norm.mean, old.norm.mean)
    np.testing.assert_array_equal(new.norm.m2, old.norm.m2)
