"""SignalEnv: segments, rewards, persistence, signals, processes, state."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from rwkv_swarm.node.envs import (
    AR,
    Environment,
    MackeyGlass,
    SignalConfig,
    SignalEnv,
    Sines,
    make_env,
    make_process,
    process_params,
)
from rwkv_swarm.node.envs.processes import make_generator

PURE = Sines(freqs=(0.05,), amps=(1.0,), phases=(0.3,))  # one noiseless sine: analytic values


def evaluate(env: SignalEnv, n: int, outputs_seed: int | None = None):
    """One evaluation: persistence predictions (or seeded random ones); returns obs, rewards."""
    rng = None if outputs_seed is None else np.random.default_rng(outputs_seed)
    obs = env.reset(n, 0)
    all_obs, rewards, done = [obs], [], np.zeros(n, bool)
    while not done.all():
        out = obs[:, :1].astype(np.float64) if rng is None else rng.standard_normal((n, 1))
        obs, r, done = env.step(out)
        all_obs.append(obs)
        rewards.append(r)
    return np.stack(all_obs), np.stack(rewards)


def test_dims_and_protocol():
    env = SignalEnv(lags=3)
    assert isinstance(env, Environment)
    assert (env.observation_dim, env.action_dim, env.persistent) == (4, 1, True)
    obs = env.reset(5, 0)
    assert obs.shape == (5, 4) and obs.dtype == np.float32


def test_all_copies_see_the_segment_and_reward_is_minus_squared_error():
    env = SignalEnv(segment_length=16)
    values = env.segment_values
    assert values.shape == (17,)
    obs = env.reset(3, 0)
    np.testing.assert_array_equal(obs, np.float32(values[0]))
    preds = np.random.default_rng(0).standard_normal((16, 3, 1))
    total = np.zeros(3)
    for t in range(16):
        obs, reward, done = env.step(preds[t])
        np.testing.assert_array_equal(obs, np.float32(values[t + 1]))
        np.testing.assert_allclose(reward, -np.square(preds[t, :, 0] - values[t + 1]))
        assert done.all() == (t == 15)
        total += reward
    np.testing.assert_allclose(env.segment_mse, -total / 16)
    obs, reward, done = env.step(np.ones((3, 1)))
    assert done.all() and (reward == 0).all()
    np.testing.assert_array_equal(obs, np.float32(values[16]))


def test_resets_replay_a_segment_until_end_generation_and_the_stream_runs_on():
    env = SignalEnv(segment_length=32)
    first, _ = evaluate(env, 2)
    again, _ = evaluate(env, 4)
    np.testing.assert_array_equal(first[:, 0], again[:, 0])
    end = env.segment_values[-1]
    env.end_generation()
    assert env.position == 32
    nxt = env.segment_values
    assert nxt[0] == end  # the next segment starts with this one's last target
    assert not np.array_equal(nxt, first[:, 0, 0].astype(np.float64))


def test_lagged_observations_are_newest_first_and_continue_across_segments():
    env = SignalEnv(lags=2, segment_length=8)
    env.reset(1, 0)
    stream = list(env.segment_values)
    env.end_generation()
    stream += list(env.segment_values[1:])
    obs = env.reset(1, 0)
    np.testing.assert_array_equal(obs[0], np.float32([stream[8], stream[7], stream[6]]))
    obs, _, _ = env.step(np.zeros((1, 1)))
    np.testing.assert_array_equal(obs[0], np.float32([stream[9], stream[8], stream[7]]))


def test_stream_is_a_function_of_the_seed():
    a, b, c = SignalEnv(seed=1), SignalEnv(seed=1), SignalEnv(seed=2)
    for _ in range(3):
        assert a.segment_values.tobytes() == b.segment_values.tobytes()
        assert not np.array_equal(a.segment_values, c.segment_values)
        for env in (a, b, c):
            env.end_generation()


def test_end_generation_without_an_evaluation_still_moves_time_on():
    looked, skipped = SignalEnv(seed=3), SignalEnv(seed=3)
    evaluate(looked, 1)
    looked.end_generation()
    skipped.end_generation()
    np.testing.assert_array_equal(looked.segment_values, skipped.segment_values)


def test_sines_values_are_analytic_and_freq_shift_keeps_phase_from_the_next_segment():
    env = SignalEnv(process=PURE, noise_std=0.0, segment_length=20)
    t = np.arange(21)
    np.testing.assert_allclose(env.segment_values, np.sin(0.3 + 2 * np.pi * 0.05 * t),
                               atol=1e-12)
    env.reset(2, 0)
    env.apply_signal("freq_shift", {"factor": 2.0})  # mid-generation: this segment is kept
    np.testing.assert_allclose(env.segment_values, np.sin(0.3 + 2 * np.pi * 0.05 * t),
                               atol=1e-12)
    env.end_generation()
    assert env.process.freqs == (0.1,)
    expected = np.sin(0.3 + 2 * np.pi * 0.05 * 20 + 2 * np.pi * 0.1 * t)
    np.testing.assert_allclose(env.segment_values, expected, atol=1e-12)
    env.apply_signal("freq_shift", {"freq": 0.2})
    env.end_generation()
    assert env.process.freqs == (0.2,)


def test_amplitude_scales_and_noise_sets_the_measurement_noise():
    base = SignalEnv(process=PURE, noise_std=0.0, segment_length=40)
    env = SignalEnv(process=PURE, noise_std=0.0, segment_length=40)
    env.apply_signal("amplitude", {"scale": 3.0})
    np.testing.assert_allclose(env.segment_values, 3.0 * base.segment_values)
    env.apply_signal("amplitude", {"scale": 0.5})  # multiplies: 1.5 from the next segment
    env.apply_signal("noise", {"std": 0.2})
    for e in (env, base):
        e.end_generation()
    residual = env.segment_values[1:] - 1.5 * base.segment_values[1:]
    assert 0.1 < residual.std() < 0.3 and np.abs(residual).max() < 1.0


def test_mackey_glass_freq_shift_samples_faster_from_the_next_segment():
    slow = SignalEnv(process=MackeyGlass(), noise_std=0.0, segment_length=30)
    fast = SignalEnv(process=MackeyGlass(), noise_std=0.0, segment_length=30)
    np.testing.assert_array_equal(slow.segment_values, fast.segment_values)
    fast.apply_signal("freq_shift", {"factor": 2.0})
    for env in (slow, fast):
        env.end_generation()
    first = slow.segment_values
    slow.end_generation()
    slow_vals = np.concatenate([first, slow.segment_values[1:]])
    # the same trajectory, sampled every 2 time units instead of every 1
    np.testing.assert_allclose(fast.segment_values, slow_vals[::2], atol=1e-12)


def test_regime_switches_process_at_the_next_segment():
    env = SignalEnv(process=PURE, noise_std=0.0)
    env.reset(1, 0)
    env.apply_signal("regime", {"process": "ar", "coeffs": [0.5]})
    assert env.process == PURE
    env.end_generation()
    assert env.process == AR(coeffs=(0.5,))
    values = env.segment_values
    assert not np.allclose(values[1:], np.sin(0.3 + 2 * np.pi * 0.05 * np.arange(65, 129)))


@pytest.mark.parametrize(
    ("process", "samples"), [(AR(), 20000), (AR(coeffs=(0.3, 0.2, -0.1)), 20000),
                             (MackeyGlass(), 4000)])
def test_processes_have_roughly_zero_mean_unit_variance(process, samples):
    gen = make_generator(process, np.random.default_rng(0))
    x = gen.generate(samples, np.random.default_rng(1))
    assert abs(x.mean()) < 0.15 and 0.8 < x.std() < 1.2


def test_mackey_glass_is_not_a_fixed_point_or_a_plain_cycle():
    gen = make_generator(MackeyGlass(), np.random.default_rng(0))
    x = gen.generate(600, np.random.default_rng(0))
    assert x.std() > 0.5
    peaks = x[1:-1][(x[1:-1] > x[:-2]) & (x[1:-1] > x[2:])]
    assert peaks.std() > 0.05  # peak heights vary: chaotic at tau=17


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [("shift", {}, r"accepted: .*freq_shift"),
     ("freq_shift", {}, "exactly one of"),
     ("freq_shift", {"factor": 2.0, "freq": 0.1}, "exactly one of"),
     ("freq_shift", {"factor": -1.0}, "factor"),
     ("freq_shift", {"factor": 20.0}, "< 0.5"),
     ("freq_shift", {"freq": [0.1, 0.2]}, "one amp and phase per frequency"),
     ("amplitude", {"scale": 0.0}, "scale"),
     ("amplitude", {"gain": 2.0}, "scale"),
     ("noise", {"std": float("nan")}, "finite"),
     ("regime", {"coeffs": [0.5]}, "needs 'process'"),
     ("regime", {"process": "lorenz"}, r"accepted: \['ar', 'mackey_glass', 'sines'\]"),
     ("regime", {"process": "ar", "order": 2}, r"accepted: \{'coeffs'"),
     ("regime", {"process": "ar", "coeffs": [1.2]}, "not stationary")],
)
def test_bad_signals_fail_at_the_call_naming_what_is_accepted(name, params, match):
    env = SignalEnv(process=PURE)
    before = env.state_dict()
    with pytest.raises(ValueError, match=match):
        env.apply_signal(name, params)
    assert env.state_dict() == before


def test_freq_shift_does_not_apply_to_ar():
    env = SignalEnv(process=AR())
    with pytest.raises(ValueError, match="applies to sines"):
        env.apply_signal("freq_shift", {"factor": 2.0})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"segment_length": 0}, "segment_length"), ({"lags": -1}, "lags"),
     ({"noise_std": -0.1}, "noise_std"), ({"process": "sines"}, "process must be one of"),
     ({"window": 3}, r"accepted: \['process'")],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SignalEnv(**kwargs)


def test_bad_outputs_and_step_before_reset_fail_clearly():
    env = SignalEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((1, 1)))
    env.reset(2, 0)
    with pytest.raises(ValueError, match=r"\(2, 1\)"):
        env.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([[0.0], [np.nan]]))


@pytest.mark.parametrize(
    "process", [PURE, Sines(), AR(coeffs=(0.6, 0.2)), MackeyGlass()], ids=lambda p: p.name)
def test_state_round_trip_through_msgpack_gives_identical_future(process):
    env = SignalEnv(process=process, lags=2, segment_length=24, seed=4)
    evaluate(env, 3)
    env.end_generation()
    evaluate(env, 3)  # a segment in progress; and pending signals
    env.apply_signal("regime", {"process": process.name})  # a restart, even to the same one
    env.apply_signal("amplitude", {"scale": 1.5})
    env.apply_signal("noise", {"std": 0.2})
    state = msgpack.unpackb(msgpack.packb(env.state_dict()))
    twin = SignalEnv(lags=2, segment_length=24, seed=99)
    twin.load_state_dict(state)
    for gen in range(3):
        if gen == 2:  # a later regime change, after the saved one took effect
            for e in (env, twin):
                e.apply_signal("regime", {"process": "mackey_glass"})
        a, b = evaluate(env, 3, outputs_seed=gen), evaluate(twin, 3, outputs_seed=gen)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
        env.end_generation()
        twin.end_generation()
    with pytest.raises(ValueError, match="segment_length"):
        SignalEnv(segment_length=10).load_state_dict(state)


def test_state_round_trip_before_the_first_segment():
    env = SignalEnv(process=AR(), seed=5)
    twin = SignalEnv(seed=6)
    twin.load_state_dict(msgpack.unpackb(msgpack.packb(env.state_dict())))
    assert env.segment_values.tobytes() == twin.segment_values.tobytes()


def test_process_registry_describes_parameters():
    assert set(process_params("sines")) == {"freqs", "amps", "phases"}
    assert set(process_params("mackey_glass")) >= {"tau", "sample_every"}
    assert make_process("ar", {"coeffs": [0.1]}) == AR(coeffs=(0.1,))
    with pytest.raises(ValueError, match="same length|one amp"):
        make_process("sines", {"freqs": [0.1, 0.2], "amps": [1.0]})
    with pytest.raises(ValueError, match="dt"):
        make_process("mackey_glass", {"dt": 2.0})


def test_make_env_builds_signal_envs():
    assert isinstance(make_env("signal"), SignalEnv)
    assert make_env("signal:mackey_glass").process == MackeyGlass()
    env = make_env({"kind": "signal", "process": {"name": "ar", "coeffs": [0.9]},
                    "segment_length": 128, "lags": 1})
    assert env.process == AR(coeffs=(0.9,)) and env.observation_dim == 2
    assert env.config == SignalConfig(process=AR(coeffs=(0.9,)), segment_length=128, lags=1)
    assert make_env({"kind": "signal", "process": "ar"}).process == AR()
    with pytest.raises(ValueError, match="needs 'name'"):
        make_env({"kind": "signal", "process": {"coeffs": [0.9]}})
    with pytest.raises(ValueError, match="accepted"):
        make_env("signal:lorenz")
    assert math.isclose(make_env("signal").segment_values.std(), 1.0, rel_tol=0.5)
