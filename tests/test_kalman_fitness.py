"""FitnessBelief: exact against filterpy, then tracking, surprise and adaptation by statistics."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from filterpy.kalman import KalmanFilter as FilterpyKF
from scipy.signal import lfilter
from scipy.stats import chi2

from rwkv_swarm.kalman import FitnessBelief, FitnessConfig, fuse_information

FIXED = FitnessConfig(drift=0.01, adapt_drift=False, respond_to_surprise=False)


def ema(z: np.ndarray, alpha: float) -> np.ndarray:
    """m_0 = z_0, m_t = m_{t-1} + alpha (z_t - m_{t-1})."""
    out, _ = lfilter([alpha], [1.0, alpha - 1.0], z, zi=[(1.0 - alpha) * z[0]])
    return out


def drifting_fitness(rng, steps: int, q: float, n: int):
    """True fitness: random walk with variance q per generation; each generation n samples
    around it with a per-sample spread that changes from generation to generation."""
    truth = np.cumsum(rng.normal(0.0, math.sqrt(q), steps))
    spread = np.exp(rng.uniform(math.log(0.5), math.log(2.0), steps))
    samples = truth[:, None] + spread[:, None] * rng.normal(size=(steps, n))
    return truth, samples


def run_belief(config: FitnessConfig, samples: np.ndarray):
    b = FitnessBelief(config)
    means, gains, flags = [], [], []
    for s in samples:
        b.predict()
        u = b.update(s)
        means.append(b.mean)
        gains.append(u.gain)
        flags.append(u.surprised)
    return np.array(means), np.array(gains), np.array(flags)


def test_first_update_adopts_the_population_mean_and_its_standard_error():
    samples = np.array([1.0, 2.0, 4.0, 5.0])
    b = FitnessBelief()
    b.predict(expected_change=3.0)  # nothing known yet: the prior stays uninformative
    u = b.update(samples)
    R = np.var(samples, ddof=1) / 4
    assert (b.mean, b.var, u.gain, u.nis, u.surprised) == (3.0, R, 1.0, 0.0, False)
    assert b.drift == pytest.approx(0.1 * R)


def test_update_matches_scalar_filterpy_when_adaptation_is_off():
    rng = np.random.default_rng(1)
    b = FitnessBelief(FIXED, mean=0.5, var=2.0)
    ref = FilterpyKF(1, 1, 1)
    ref.x, ref.P, ref.Q, ref.H = np.array([[0.5]]), np.array([[2.0]]), np.array([[0.01]]), \
        np.array([[1.0]])
    ref.B = np.array([[1.0]])
    for _ in range(100):
        change = rng.normal(0.0, 0.1)
        samples = rng.normal(1.0, rng.uniform(0.5, 2.0), size=rng.integers(2, 20))
        b.predict(expected_change=change)
        u = b.update(samples)
        ref.predict(u=np.array([[change]]))
        ref.update(samples.mean(), R=np.var(samples, ddof=1) / len(samples))
        assert b.mean == pytest.approx(ref.x.item(), rel=1e-12, abs=1e-12)
        assert b.var == pytest.approx(ref.P.item(), rel=1e-12)
        assert u.gain == pytest.approx(ref.K.item(), rel=1e-12)
        assert u.innovation == pytest.approx(ref.y.item(), rel=1e-12, abs=1e-12)
        assert u.nis == pytest.approx(ref.mahalanobis**2, rel=1e-12, abs=1e-12)


def test_tracks_a_drifting_fitness_better_than_raw_measurements_and_a_same_lag_ema():
    """'Same lag': the EMA's alpha is the belief's mean Kalman gain over the run, so both
    respond equally fast on average (an EMA with gain alpha lags a ramp by (1-alpha)/alpha).
    The belief runs with default settings (drift unknown, estimated from innovations)."""
    rng = np.random.default_rng(2)
    burn, wins, rmse = 100, 0, np.zeros(3)
    runs = 20
    for _ in range(runs):
        truth, samples = drifting_fitness(rng, 500, q=0.01, n=16)
        est, gains, _ = run_belief(FitnessConfig(), samples)
        raw = samples.mean(axis=1)
        same_lag = ema(raw, float(gains[burn:].mean()))
        r = [np.sqrt(np.mean((e[burn:] - truth[burn:]) ** 2)) for e in (est, raw, same_lag)]
        assert r[0] < r[1]
        wins += r[0] < r[2]
        rmse += r
    assert rmse[0] < rmse[2] < rmse[1]
    assert wins >= 0.8 * runs


def test_with_the_right_drift_it_beats_every_ema_on_a_grid():
    rng = np.random.default_rng(3)
    burn, runs, wins = 100, 20, 0
    for _ in range(runs):
        truth, samples = drifting_fitness(rng, 500, q=0.01, n=16)
        est, _, _ = run_belief(FIXED, samples)
        raw = samples.mean(axis=1)
        kf = np.sqrt(np.mean((est[burn:] - truth[burn:]) ** 2))
        best = min(
            np.sqrt(np.mean((ema(raw, a)[burn:] - truth[burn:]) ** 2))
            for a in np.linspace(0.01, 1.0, 100)
        )
        wins += kf < best
    assert wins >= 0.9 * runs


def step_trials(config: FitnessConfig, trials: int, step_sds: float, seed: int):
    """Stationary stretch (60 generations, 16 samples of sd 1), then the true fitness jumps
    by step_sds measurement standard deviations (sqrt(R) = 1/4). Returns the surprise flags
    before the step (after a 20-generation burn-in), the flags of the 3 updates after it, and
    the absolute tracking errors of those 3 updates."""
    rng = np.random.default_rng(seed)
    before, after, errors = [], [], []
    for _ in range(trials):
        truth = np.cumsum(rng.normal(0.0, 0.03, 63))
        truth[60:] += step_sds * 0.25
        samples = truth[:, None] + rng.normal(size=(63, 16))
        est, _, flags = run_belief(config, samples)
        before.append(flags[20:60])
        after.append(flags[60:])
        errors.append(np.abs(est[60:] - truth[60:]))
    return np.array(before), np.array(after), np.array(errors)


def test_raises_surprised_within_3_updates_of_a_step_with_few_false_alarms():
    before, after, _ = step_trials(FitnessConfig(), trials=300, step_sds=6.0, seed=4)
    assert after.any(axis=1).mean() >= 0.99, "6-sd steps are flagged within 3 updates"
    # the nominal false-alarm rate is 1%; R is estimated from 16 samples (t-distributed
    # tails), so a little above 1% is expected
    assert before.mean() <= 0.03, f"false alarm rate {before.mean():.1%} on stationary stretches"


def test_smaller_steps_are_still_flagged_most_of_the_time():
    _, after, _ = step_trials(FitnessConfig(), trials=200, step_sds=4.0, seed=5)
    assert after.any(axis=1).mean() >= 0.9


def test_responding_to_surprise_reacquires_a_jump_faster():
    steady = FitnessConfig(respond_to_surprise=False)
    _, _, slow = step_trials(steady, trials=100, step_sds=12.0, seed=6)
    _, _, fast = step_trials(FitnessConfig(), trials=100, step_sds=12.0, seed=6)
    # a 12-sd jump is 3.0 in fitness; with the jump response the belief is within noise at once
    assert fast[:, 0].mean() < 0.3 < slow[:, 0].mean()
    assert fast[:, 2].mean() < 0.5 * slow[:, 2].mean()


def test_adaptive_drift_moves_from_a_wrong_start_to_the_true_drift():
    # one run's estimate is noisy (Q is a seventh of R here), so judge the median of 20 runs
    rng = np.random.default_rng(7)
    q_true = 0.01
    for start in (1.0, 1e-4):  # 100x too large, 100x too small
        final = []
        for _ in range(20):
            _, samples = drifting_fitness(rng, 600, q=q_true, n=16)
            b = FitnessBelief(FitnessConfig(drift=start))
            for s in samples:
                b.predict()
                b.update(s)
            final.append(b.drift)
        assert 0.5 * q_true < np.median(final) < 2.0 * q_true, (start, np.median(final))


def test_surprise_threshold_is_the_chi_square_quantile():
    for p in (0.9, 0.95, 0.99, 0.999):
        assert FitnessConfig(surprise_p=p).threshold == pytest.approx(chi2.ppf(p, 1), rel=1e-12)
    b = FitnessBelief(FIXED, mean=0.0, var=1.0)
    u = b.update([3.0, 3.2, 2.8, 3.0])  # y = 3, R = (0.08/3)/4, S = 1 + R
    assert u.nis == pytest.approx(9.0 / (1.0 + 0.02 / 3), rel=1e-12)
    assert u.surprised and b.surprised
    b.update([b.mean, b.mean + 0.1, b.mean - 0.1])
    assert not b.surprised


def test_one_sample_updates_use_the_running_sample_variance():
    b = FitnessBelief(FIXED)
    with pytest.raises(ValueError, match="one sample and no variance estimate yet"):
        b.update([1.0])
    assert FitnessBelief(FitnessConfig(sample_var=4.0)).update([1.0]).R == 4.0
    first, second = np.array([0.0, 2.0]), np.array([1.0, 1.0, 4.0])
    b.update(first)
    b.update(second)
    m = FIXED.sample_var_memory
    running = (1 - m) * np.var(first, ddof=1) + m * np.var(second, ddof=1)
    b.predict()
    u = b.update([2.0])
    assert u.R == pytest.approx(running, rel=1e-12)
    assert b.sample_var == pytest.approx(running, rel=1e-12)


def test_identical_samples_still_give_a_well_defined_update():
    b = FitnessBelief(FIXED)
    b.update([1.0, 1.0, 1.0])
    b.predict()
    u = b.update([2.0, 2.0])
    assert u.R == FIXED.min_var and math.isfinite(b.mean) and 0.0 < u.gain <= 1.0


def test_predict_adds_the_expected_change_and_the_drift():
    b = FitnessBelief(FIXED, mean=1.0, var=0.5)
    b.predict(expected_change=0.25)
    assert (b.mean, b.var) == (1.25, 0.5 + 0.01)
    b.predict(drift=0.2)
    assert (b.mean, b.var) == (1.25, 0.51 + 0.2)
    with pytest.raises(ValueError, match="expected_change must be finite"):
        b.predict(expected_change=math.nan)
    with pytest.raises(ValueError, match="drift must be >= 0"):
        b.predict(drift=-1.0)


def test_inflate_scales_the_variance_and_raises_the_next_gain():
    b = FitnessBelief(FIXED, mean=0.0, var=0.1)
    b.inflate(10.0)
    assert b.var == pytest.approx(1.0)
    u = b.update([0.0, 1.0])  # R = 0.25
    assert u.gain == pytest.approx(1.0 / 1.25)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        b.inflate(0.5)
    with pytest.raises(ValueError, match="factor must be finite"):
        b.inflate(math.inf)


def test_round_trips_exactly_through_msgpack_and_continues_identically():
    rng = np.random.default_rng(8)
    b = FitnessBelief()
    for _ in range(30):
        b.predict(expected_change=0.01)
        b.update(rng.normal(size=8))
    b.predict()
    restored = FitnessBelief.from_dict(msgpack.unpackb(msgpack.packb(b.to_dict())))
    assert restored == b
    samples = rng.normal(size=8)
    assert restored.update(samples) == b.update(samples)
    assert restored == b
    fresh = FitnessBelief()
    assert FitnessBelief.from_dict(msgpack.unpackb(msgpack.packb(fresh.to_dict()))) == fresh


def test_fusing_two_nodes_beliefs_gives_a_new_belief():
    a = FitnessBelief(FIXED, mean=1.0, var=1.0)
    b = FitnessBelief(FIXED, mean=3.0, var=1.0)
    fused = a.with_gaussian(fuse_information([a.to_gaussian(), b.to_gaussian()]))
    assert (fused.mean, fused.var) == (2.0, 0.5)
    assert (a.mean, a.var) == (1.0, 1.0) and fused is not a
    with pytest.raises(ValueError, match="update it first"):
        FitnessBelief().to_gaussian()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drift": -1.0}, "drift must be >= 0"),
        ({"drift_ratio": 0.0}, "drift_ratio must be > 0"),
        ({"noise_memory": 1.5}, r"noise_memory must be in \(0, 1\]"),
        ({"surprise_p": 1.0}, r"surprise_p must be in \(0, 1\)"),
        ({"sample_var": 0.0}, "sample_var must be > 0"),
        ({"min_var": math.nan}, "min_var must be finite"),
    ],
)
def test_config_rejects_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FitnessConfig(**kwargs)


def test_update_and_constructor_reject_bad_input_naming_it():
    b = FitnessBelief()
    with pytest.raises(ValueError, match="samples has non-finite"):
        b.update([1.0, math.nan])
    with pytest.raises(ValueError, match="samples is empty"):
        b.update([])
    with pytest.raises(ValueError, match="samples must be a vector"):
        b.update(np.ones((2, 2)))
    with pytest.raises(ValueError, match="var must be >= 0"):
        FitnessBelief(var=-1.0)
    with pytest.raises(ValueError, match="mean must be finite"):
        FitnessBelief(mean=math.inf)
