"""GymEnv: batching, per-copy seeding, masking, normalisation, noise, action mapping, state."""

from __future__ import annotations

import gymnasium as gym
import msgpack
import numpy as np
import pytest
from gymnasium import spaces

from rwkv_swarm.node.envs import Environment, GymEnv, make_env
from rwkv_swarm.node.envs._gym_backends import ActionMap
from rwkv_swarm.node.envs._util import copy_int_seed


def balance(obs: np.ndarray) -> np.ndarray:
    """A CartPole controller on raw observations: push towards where the pole falls."""
    u = obs[:, 2] + 0.5 * obs[:, 3] + 0.01 * obs[:, 1]
    return np.stack([-u, u], axis=1)


def rollout(env: GymEnv, n: int, seed: int, outputs_seed: int = 0, steps: int = 40):
    """Reset and step with seeded random outputs; returns stacked obs, rewards, dones."""
    rng = np.random.default_rng(outputs_seed)
    obs = [env.reset(n, seed)]
    rewards, dones = [], []
    for _ in range(steps):
        o, r, d = env.step(rng.standard_normal((n, env.action_dim)))
        obs.append(o)
        rewards.append(r)
        dones.append(d)
    return np.stack(obs), np.stack(rewards), np.stack(dones)


@pytest.mark.parametrize(
    ("env_id", "obs_dim", "action_dim", "vectorized"),
    [("CartPole-v1", 4, 2, True), ("Pendulum-v1", 3, 1, False), ("FrozenLake-v1", 16, 4, False)],
)
def test_dims_follow_spaces_and_env_satisfies_protocol(env_id, obs_dim, action_dim, vectorized):
    env = GymEnv(env_id)
    assert isinstance(env, Environment)
    assert (env.observation_dim, env.action_dim, env.persistent) == (obs_dim, action_dim, False)
    assert env.vectorized is vectorized
    obs = env.reset(3, 0)
    assert obs.shape == (3, obs_dim) and obs.dtype == np.float32


@pytest.mark.parametrize("mode", ["vector", "list"])
def test_copy_i_depends_only_on_seed_and_i_not_on_n(mode):
    kw = {"vectorize": mode, "obs_noise": 0.1, "action_noise": 0.2, "normalize_obs": False}
    small = rollout(GymEnv("CartPole-v1", **kw), 2, seed=5)
    big_env = GymEnv("CartPole-v1", **kw)
    rng = np.random.default_rng(0)
    obs = [big_env.reset(5, 5)]
    rewards = []
    for _ in range(40):  # the first two rows get the same outputs as in `small`
        out = np.concatenate([rng.standard_normal((2, 2)), np.zeros((3, 2))])
        o, r, _ = big_env.step(out)
        obs.append(o)
        rewards.append(r)
    np.testing.assert_array_equal(np.stack(obs)[:, :2], small[0])
    np.testing.assert_array_equal(np.stack(rewards)[:, :2], small[1])


def test_copies_and_seeds_start_differently():
    env = GymEnv("CartPole-v1", normalize_obs=False)
    a, b = env.reset(4, 0), env.reset(4, 1)
    assert len({row.tobytes() for row in a}) == 4
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(env.reset(4, 0), a)


def test_vector_and_list_paths_give_the_same_episodes():
    vec = rollout(GymEnv("CartPole-v1", vectorize="vector"), 6, seed=3, steps=60)
    lst = rollout(GymEnv("CartPole-v1", vectorize="list"), 6, seed=3, steps=60)
    np.testing.assert_allclose(vec[0], lst[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(vec[1], lst[1])
    np.testing.assert_array_equal(vec[2], lst[2])


def test_list_path_copy_matches_a_plain_gymnasium_env_under_argmax():
    env = GymEnv("CartPole-v1", vectorize="list", normalize_obs=False)
    ref = gym.make("CartPole-v1")
    obs = env.reset(3, 9)
    ref_obs, _ = ref.reset(seed=copy_int_seed(9, 2))
    np.testing.assert_array_equal(obs[2], ref_obs)
    for _ in range(8):
        out = balance(obs)
        obs, reward, _ = env.step(out)
        ref_obs, ref_r, *_ = ref.step(int(np.argmax(out[2])))
        np.testing.assert_array_equal(obs[2], ref_obs)
        assert reward[2] == ref_r


@pytest.mark.parametrize("mode", ["vector", "list"])
def test_done_copies_stay_done_with_zero_reward_and_frozen_finite_obs(mode):
    env = GymEnv("CartPole-v1", vectorize=mode)
    n = 8
    env.reset(n, 2)
    rng = np.random.default_rng(1)
    done_at = np.full(n, -1)
    last_obs = None
    for t in range(120):
        obs, reward, done = env.step(rng.standard_normal((n, 2)))
        assert np.isfinite(obs).all() and reward.dtype == np.float64
        was_done = done_at >= 0
        assert done[was_done].all()
        assert (reward[was_done] == 0).all()
        if last_obs is not None:
            np.testing.assert_array_equal(obs[was_done], last_obs[was_done])
        assert (reward[~was_done] == 1).all()
        done_at[done & ~was_done] = t
        last_obs = obs
    assert (done_at >= 0).all()
    assert len(set(done_at.tolist())) > 1  # episodes end independently


def test_max_steps_truncates_every_copy():
    env = GymEnv("CartPole-v1", max_steps=10, normalize_obs=False)
    obs = env.reset(4, 0)
    total = np.zeros(4)
    for t in range(12):
        obs, reward, done = env.step(balance(obs))
        total += reward
        assert done.all() == (t >= 9)
    np.testing.assert_array_equal(total, 10.0)


def test_mask_keeps_the_listed_entries_and_boolean_form_is_equivalent():
    full = GymEnv("CartPole-v1", normalize_obs=False)
    by_index = GymEnv("CartPole-v1", normalize_obs=False, obs_mask=(0, 2))
    by_bool = GymEnv("CartPole-v1", normalize_obs=False, obs_mask=[True, False, True, False])
    assert by_index.observation_dim == by_bool.observation_dim == 2
    f, i, b = (rollout(e, 3, seed=4, steps=15)[0] for e in (full, by_index, by_bool))
    np.testing.assert_array_equal(i, f[..., [0, 2]])
    np.testing.assert_array_equal(b, i)


@pytest.mark.parametrize("mask", [(), (0, 4), (1, 1), (-1,), [True, False], [False] * 4, (0.5,)])
def test_bad_masks_are_rejected(mask):
    with pytest.raises(ValueError, match="obs_mask"):
        GymEnv("CartPole-v1", obs_mask=mask)


def live_rows(obs: np.ndarray, dones: np.ndarray) -> np.ndarray:
    """The observations of copies still running when they were returned (reset rows, then
    each step's rows of copies not done before that step)."""
    before = np.concatenate([np.zeros((1, dones.shape[1]), bool), dones[:-1]])
    return np.concatenate([obs[0], obs[1:][~before]])


def test_normalisation_is_frozen_within_a_generation_and_standardises_after():
    env = GymEnv("CartPole-v1")
    raw, _, dones = rollout(GymEnv("CartPole-v1", normalize_obs=False), 8, seed=0)
    first = rollout(env, 8, seed=0)[0]
    again = rollout(env, 8, seed=0)[0]  # same generation: stats unchanged by the first run
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, np.clip(raw, -5, 5))  # no stats yet: identity
    env.end_generation()
    seen = live_rows(raw, dones).astype(np.float64)  # seen twice: same mean and variance
    np.testing.assert_allclose(env.norm.mean, seen.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(env.norm.var, seen.var(axis=0), rtol=1e-9)
    assert env.norm.count == 2 * len(seen)
    after = rollout(env, 8, seed=0)[0]
    expected = np.clip((raw - seen.mean(axis=0)) / np.sqrt(seen.var(axis=0) + 1e-8), -5, 5)
    np.testing.assert_allclose(after, expected.astype(np.float32), rtol=1e-5, atol=1e-5)
    assert np.abs(after).max() > np.abs(first).max()  # now on a unit scale, not raw


def test_normalisation_stats_count_only_live_observations():
    env = GymEnv("CartPole-v1")
    obs, _, dones = rollout(env, 4, seed=1, steps=200)
    assert dones[-1].all()  # every copy ended, so later rows were frozen repeats
    env.end_generation()
    assert env.norm.count == len(live_rows(obs, dones))


def test_normalisation_can_be_disabled():
    env = GymEnv("CartPole-v1", normalize_obs=False)
    first = rollout(env, 4, seed=0)[0]
    env.end_generation()
    np.testing.assert_array_equal(rollout(env, 4, seed=0)[0], first)
    assert env.norm.count == 0


def test_discrete_action_noise_one_ignores_the_policy_and_zero_obeys_it():
    def run(level: float, favour: int) -> np.ndarray:
        env = GymEnv("CartPole-v1", action_noise=level, normalize_obs=False)
        env.reset(4, 3)
        out = np.zeros((4, 2))
        out[:, favour] = 1.0
        return np.stack([env.step(out)[0] for _ in range(6)])

    np.testing.assert_array_equal(run(1.0, 0), run(1.0, 1))
    assert not np.array_equal(run(0.0, 0), run(0.0, 1))


def test_obs_noise_has_the_configured_std_and_depends_on_the_seed():
    clean = GymEnv("CartPole-v1", normalize_obs=False)
    noisy = GymEnv("CartPole-v1", normalize_obs=False, obs_noise=0.3)
    diff = noisy.reset(400, 7).astype(np.float64) - clean.reset(400, 7)
    assert abs(diff.std() - 0.3) < 0.02 and abs(diff.mean()) < 0.02
    assert not np.array_equal(noisy.reset(3, 8)[0], noisy.reset(3, 7)[0])


def test_box_actions_are_tanh_scaled_like_a_plain_env():
    env = GymEnv("Pendulum-v1", normalize_obs=False)
    ref = gym.make("Pendulum-v1")
    obs = env.reset(2, 4)
    ref_obs, _ = ref.reset(seed=copy_int_seed(4, 1))
    np.testing.assert_array_equal(obs[1], ref_obs)
    for out in (0.3, -2.0, 50.0):
        obs, reward, _ = env.step(np.full((2, 1), out))
        torque = -2.0 + (np.tanh(out) + 1.0) / 2.0 * 4.0
        ref_obs, ref_r, *_ = ref.step(np.array([torque], dtype=np.float32))
        np.testing.assert_array_equal(obs[1], ref_obs)
        assert reward[1] == pytest.approx(ref_r, rel=1e-6)


def test_continuous_action_noise_stays_within_bounds():
    amap = ActionMap(spaces.Box(-2.0, 2.0, (3,), np.float32))
    out = np.array([[10.0, -10.0, 0.0]] * 4)
    noise = np.random.default_rng(0).standard_normal((4, 3))
    act = amap(out, 5.0, noise)
    assert act.shape == (4, 3) and act.dtype == np.float32
    assert (act >= -2).all() and (act <= 2).all()
    assert not np.array_equal(act, amap(out, 0.0, None))


def test_unsupported_spaces_are_rejected_with_what_is_supported():
    with pytest.raises(ValueError, match="supported: Discrete"):
        ActionMap(spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="infinite bounds"):
        ActionMap(spaces.Box(-np.inf, np.inf, (2,)))
    with pytest.raises(ValueError, match="supported: Box"):
        GymEnv("Blackjack-v1")


def test_unknown_id_lists_close_matches_and_how_to_list_ids():
    with pytest.raises(ValueError, match=r"CartPol-v1.*CartPole-v1.*gymnasium.registry"):
        GymEnv("CartPol-v1")


@pytest.mark.parametrize(
    ("outputs", "match"),
    [(np.zeros((3, 2)), r"\(2, 2\)"), (np.zeros(2), "shape"), ([[0, np.nan], [0, 0]], "finite"),
     ([[np.inf, 0], [0, 0]], "finite"), (np.array([["a", "b"], ["c", "d"]]), "real numbers")],
)
def test_bad_outputs_are_rejected(outputs, match):
    env = GymEnv("CartPole-v1")
    env.reset(2, 0)
    with pytest.raises(ValueError, match=match):
        env.step(outputs)


def test_step_before_reset_and_bad_reset_arguments_fail_clearly():
    env = GymEnv("CartPole-v1")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="positive int"):
        env.reset(0, 0)
    with pytest.raises(ValueError, match="non-negative int"):
        env.reset(2, -1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"obs_noise": -1.0}, "obs_noise"), ({"action_noise": 1.5}, "probability"),
     ({"vectorize": "fast"}, "vectorize"), ({"max_steps": 0}, "max_steps"),
     ({"colour": 1}, r"accepted: \['env_id'"), ({"env_kwargs": {"bogus": 1}}, "env_kwargs"),
     ({"env_id": "Pendulum-v1", "vectorize": "vector"}, "vectorised")],
)
def test_bad_config_is_rejected_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GymEnv(**kwargs)


def test_env_kwargs_reach_the_environment():
    env = GymEnv("CartPole-v1", env_kwargs={"sutton_barto_reward": True})
    env.reset(2, 0)
    _, reward, _ = env.step(np.zeros((2, 2)))
    np.testing.assert_array_equal(reward, 0.0)  # Sutton-Barto: 0 per step until failure


def test_noise_signal_takes_effect_at_the_next_reset():
    env = GymEnv("CartPole-v1", normalize_obs=False)
    twin = GymEnv("CartPole-v1", normalize_obs=False)
    np.testing.assert_array_equal(env.reset(3, 0), twin.reset(3, 0))
    env.apply_signal("obs_noise", {"std": 0.5})
    for _ in range(3):  # the evaluation in flight is unchanged
        np.testing.assert_array_equal(env.step(np.zeros((3, 2)))[0],
                                      twin.step(np.zeros((3, 2)))[0])
    assert np.abs(env.reset(3, 0) - twin.reset(3, 0)).max() > 0.05
    with pytest.raises(ValueError, match="accepted"):
        env.apply_signal("gravity", {"g": 3})
    with pytest.raises(ValueError, match="probability"):
        env.apply_signal("action_noise", {"level": 2.0})
    with pytest.raises(ValueError, match="exactly the parameters"):
        env.apply_signal("obs_noise", {"sigma": 0.1})


def test_state_round_trip_through_msgpack_gives_identical_future():
    env = GymEnv("CartPole-v1", obs_noise=0.05, action_noise=0.1)
    rollout(env, 6, seed=1)
    env.end_generation()
    rollout(env, 6, seed=2)  # pending statistics not yet folded in
    env.apply_signal("obs_noise", {"std": 0.2})
    state = msgpack.unpackb(msgpack.packb(env.state_dict()))
    twin = GymEnv("CartPole-v1", obs_noise=0.05, action_noise=0.1)
    twin.load_state_dict(state)
    for gen in range(2):
        a, b = rollout(env, 6, seed=10 + gen), rollout(twin, 6, seed=10 + gen)
        for x, y in zip(a, b, strict=True):
            assert x.tobytes() == y.tobytes()
        env.end_generation()
        twin.end_generation()
    with pytest.raises(ValueError, match="Pendulum"):
        GymEnv("Pendulum-v1").load_state_dict(state)
    with pytest.raises(ValueError, match="unknown pending signals"):
        twin.load_state_dict({**state, "pending": {"gravity": 1.0}})


def test_changing_n_keeps_working_on_both_paths():
    for mode in ("vector", "list"):
        env = GymEnv("CartPole-v1", vectorize=mode, normalize_obs=False)
        first = env.reset(5, 0)
        np.testing.assert_array_equal(env.reset(2, 0), first[:2])
        np.testing.assert_array_equal(env.reset(7, 0)[:5], first)
        assert env.step(np.zeros((7, 2)))[0].shape == (7, 4)


def test_make_env_builds_gym_envs_and_lists_kinds_on_error():
    env = make_env({"kind": "gym", "id": "CartPole-v1", "obs_mask": [0, 2], "max_steps": 50})
    assert isinstance(env, GymEnv) and env.observation_dim == 2
    assert isinstance(make_env("gym:Pendulum-v1"), GymEnv)
    with pytest.raises(ValueError, match="accepted kinds"):
        make_env("atari:Pong")
    with pytest.raises(ValueError, match="accepted kinds"):
        make_env({"kind": "mujoco"})
    with pytest.raises(ValueError, match="needs 'id'"):
        make_env({"kind": "gym"})


def test_copies_with_equal_keys_meet_the_same_episode_and_noise():
    env = GymEnv("CartPole-v1", obs_noise=0.05, action_noise=0.2, normalize_obs=False)
    obs = env.reset(4, seed=9, keys=[0, 0, 5, 5])
    assert np.array_equal(obs[0], obs[1]) and np.array_equal(obs[2], obs[3])
    assert not np.array_equal(obs[0], obs[2])
    for _ in range(30):  # same actions in -> same noisy trajectories out, pair by pair
        obs, reward, done = env.step(np.tile([[0.3, -0.1]], (4, 1)))
        assert np.array_equal(obs[0], obs[1]) and np.array_equal(obs[2], obs[3])
    default = GymEnv("CartPole-v1", normalize_obs=False)
    keyed = GymEnv("CartPole-v1", normalize_obs=False)
    assert np.array_equal(default.reset(3, seed=2), keyed.reset(3, seed=2, keys=[0, 1, 2]))
    with pytest.raises(ValueError, match="keys must be 3 non-negative ints"):
        keyed.reset(3, seed=2, keys=[0, -1, 2])
