"""DirectionBelief and the ES gradient helpers: exact formulas, filterpy, d = 10^6, statistics."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import torch
from filterpy.kalman import KalmanFilter as FilterpyKF
from scipy.stats import chi2, norm

from rwkv_swarm.kalman import (
    DirectionBelief,
    DirectionConfig,
    antithetic_gradient,
    covariance_intersection,
    population_gradient,
)

F64 = DirectionConfig(dtype="float64")


def test_population_gradient_is_the_mean_and_its_standard_error():
    rng = np.random.default_rng(1)
    C = rng.normal(size=(32, 50)) + rng.normal(size=50)
    g, v = population_gradient(C)
    np.testing.assert_allclose(g.numpy(), C.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(v.numpy(), C.var(axis=0, ddof=1) / 32, rtol=1e-12)
    # the streaming path (one row at a time, O(d) memory) gives the same numbers
    gs, vs = population_gradient(iter(C))
    np.testing.assert_allclose(gs.numpy(), g.numpy(), rtol=1e-12)
    np.testing.assert_allclose(vs.numpy(), v.numpy(), rtol=1e-10)


def test_antithetic_gradient_is_the_es_estimator_over_pairs():
    rng = np.random.default_rng(2)
    n, d, sigma = 16, 40, 0.05
    eps = rng.normal(size=(n, d))
    f_plus, f_minus = rng.normal(size=n), rng.normal(size=n)
    g, v = antithetic_gradient(f_plus - f_minus, eps, sigma)
    # g = 1/(P sigma) sum_j u_j eps_j over the P = 2n members (eps_j, -eps_j)
    members_eps = np.concatenate([eps, -eps])
    members_u = np.concatenate([f_plus, f_minus])
    np.testing.assert_allclose(g.numpy(), members_u @ members_eps / (2 * n * sigma), rtol=1e-12)
    pair_terms = (f_plus - f_minus)[:, None] * eps / (2 * sigma)
    np.testing.assert_allclose(v.numpy(), pair_terms.var(axis=0, ddof=1) / n, rtol=1e-10)
    # noise may be regenerated row by row (e.g. from seeds) instead of held as a matrix
    g2, v2 = antithetic_gradient(f_plus - f_minus, (row for row in eps), sigma)
    np.testing.assert_allclose(g2.numpy(), g.numpy(), rtol=1e-12)
    np.testing.assert_allclose(v2.numpy(), v.numpy(), rtol=1e-10)


def test_reported_variance_matches_the_estimators_sampling_variance():
    """Repeat the ES estimate on one noisy quadratic fitness: the spread of the estimates
    over repetitions must match the variance each estimate reports about itself."""
    rng = np.random.default_rng(3)
    n, d, sigma, reps = 24, 10, 0.1, 600
    theta, a = rng.normal(size=d), rng.normal(size=d)
    A = np.diag(rng.uniform(0.5, 2.0, d))

    def fitness(x):
        return x @ a - 0.5 * np.einsum("...i,ij,...j->...", x, A, x) + rng.normal(size=len(x))

    grads, variances = [], []
    for _ in range(reps):
        eps = rng.normal(size=(n, d))
        diffs = fitness(theta + sigma * eps) - fitness(theta - sigma * eps)
        g, v = antithetic_gradient(diffs, eps, sigma)
        grads.append(g.numpy())
        variances.append(v.numpy())
    ratio = np.var(grads, axis=0, ddof=1) / np.mean(variances, axis=0)
    # each ratio is a variance estimate from 600 reps: relative sd about sqrt(2/599) = 6%
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio
    # and the estimator is unbiased for the smoothed gradient a - A theta
    np.testing.assert_allclose(np.mean(grads, axis=0), a - A @ theta, atol=0.35)


def test_update_matches_scalar_filterpy_per_coordinate():
    rng = np.random.default_rng(4)
    d = 6
    b = DirectionBelief(d, DirectionConfig(drift=0.05, decay=0.9, dtype="float64"))
    z0, r0 = rng.normal(size=d), rng.uniform(0.1, 1.0, d)
    b.update(z0, r0)  # nothing known before: the belief adopts the first measurement
    np.testing.assert_array_equal(b.mean.numpy(), z0)
    np.testing.assert_array_equal(b.var.numpy(), r0)
    refs = []
    for i in range(d):
        ref = FilterpyKF(1, 1)
        ref.x, ref.P, ref.F, ref.Q, ref.H = (np.array([[v]]) for v in (z0[i], r0[i], 0.9, 0.05, 1))
        refs.append(ref)
    for _ in range(30):
        z, r = rng.normal(size=d), rng.uniform(0.1, 1.0, d)
        b.predict()
        u = b.update(z, r)
        for i, ref in enumerate(refs):
            ref.predict()
            ref.update(z[i], R=r[i])
            assert b.mean[i].item() == pytest.approx(ref.x.item(), rel=1e-12, abs=1e-12)
            assert b.var[i].item() == pytest.approx(ref.P.item(), rel=1e-12)
            assert u.gain[i].item() == pytest.approx(ref.K.item(), rel=1e-12)


def test_handles_a_million_coordinates_with_streamed_noise():
    d, n, sigma = 1_000_000, 4, 0.02
    gen = torch.Generator().manual_seed(5)
    true_grad = torch.randn(d, generator=gen)
    b = DirectionBelief(d, DirectionConfig(drift=1e-3))
    for _ in range(3):
        seeds = torch.randint(0, 2**31, (n,), generator=gen).tolist()

        def noise(seeds=seeds):  # regenerated from seeds, one (d,) row at a time
            for s in seeds:
                yield torch.randn(d, generator=torch.Generator().manual_seed(s))

        # a linear fitness: f(theta + sigma eps) - f(theta - sigma eps) = 2 sigma eps . grad
        diffs = [2 * sigma * float(eps @ true_grad) for eps in noise()]
        b.predict()
        u = b.update(*antithetic_gradient(diffs, noise(), sigma))
    assert b.mean.dtype == b.var.dtype == u.gain.dtype == torch.float32
    assert b.mean.shape == b.var.shape == u.gain.shape == b.confidence.shape == (d,)
    assert bool(((u.gain >= 0) & (u.gain <= 1)).all())
    assert bool(torch.isfinite(b.mean).all()) and bool((b.var > 0).all())


def simulate_drifting_gradient(config, d, steps, q, seed, estimate_var=False):
    """True gradient: random walk (variance q per generation) per coordinate. Measurements:
    truth + noise with per-coordinate variance R_i, reported exactly or estimated from 16
    population contributions. Returns truth, the last raw measurement, the belief, and per
    step after the first the NIS and the drift estimate."""
    rng = np.random.default_rng(seed)
    R = rng.uniform(0.1, 2.0, d)
    truth = rng.normal(size=d)
    b = DirectionBelief(d, config)
    raws, nis, drifts = [], [], []
    for _ in range(steps):
        truth = truth + rng.normal(size=d) * math.sqrt(q)
        if estimate_var:
            contributions = truth + rng.normal(size=(16, d)) * np.sqrt(16 * R)
            z, var = population_gradient(contributions)
        else:
            z, var = truth + rng.normal(size=d) * np.sqrt(R), R
        b.predict()
        u = b.update(z, var)
        nis.append(u.nis)
        drifts.append(u.drift)
        raws.append(np.asarray(z))
    return truth, np.asarray(raws[-1]), b, np.array(nis[1:]), np.array(drifts[1:])


def test_filtered_direction_is_more_accurate_than_the_raw_estimate_and_consistent():
    d, q = 5000, 0.05
    truth, raw, b, nis, _ = simulate_drifting_gradient(
        DirectionConfig(drift=q, dtype="float64"), d, 30, q, seed=6
    )
    mse_raw = np.mean((raw - truth) ** 2)
    mse_kf = np.mean((b.mean.numpy() - truth) ** 2)
    assert mse_kf < 0.6 * mse_raw
    # NEES over coordinates at the last step, NIS per coordinate at every step (d dof each)
    lo, hi = chi2.ppf([0.025, 0.975], d) / d
    assert lo <= np.mean((b.mean.numpy() - truth) ** 2 / b.var.numpy()) <= hi
    assert np.mean((nis >= lo) & (nis <= hi)) >= 0.85


def test_pooled_drift_estimate_finds_the_true_drift():
    # Q is a twentieth of R, so one generation's pooled estimate over 20000 coordinates still
    # scatters by ~25%; its average over the last 20 generations is within ~6% (1 sd)
    d, q = 20000, 0.05
    _, _, _, nis, drifts = simulate_drifting_gradient(
        DirectionConfig(dtype="float64"), d, 40, q, seed=7
    )
    assert np.mean(drifts[-20:]) == pytest.approx(q, rel=0.1)
    assert np.mean(nis[-10:]) == pytest.approx(1.0, abs=0.05)


def test_pooled_drift_estimate_errs_upward_when_variances_come_from_few_samples():
    # a noisy R makes the gain noisy, so the true error exceeds the computed P and the excess
    # innovation is read as drift: about +20% with 16 samples (documented); never downward
    d, q = 20000, 0.05
    _, _, _, nis, drifts = simulate_drifting_gradient(
        DirectionConfig(dtype="float64"), d, 40, q, seed=7, estimate_var=True
    )
    assert q < np.mean(drifts[-20:]) < 1.5 * q
    assert 1.0 < np.mean(nis[-10:]) < 1.2


def test_confidence_is_the_calibrated_probability_that_each_sign_is_right():
    d, q = 20000, 0.05
    truth, _, b, _, _ = simulate_drifting_gradient(
        DirectionConfig(drift=q, dtype="float64"), d, 10, q, seed=8
    )
    c = b.confidence.numpy()
    m, s = b.mean.numpy(), np.sqrt(b.var.numpy())
    np.testing.assert_allclose(c, norm.cdf(np.abs(m) / s), rtol=1e-12)
    right = np.sign(m) == np.sign(truth)
    for lo, hi in ((0.5, 0.7), (0.7, 0.9), (0.9, 1.0)):
        sel = (c >= lo) & (c < hi)
        assert sel.sum() > 500
        assert np.mean(right[sel]) == pytest.approx(np.mean(c[sel]), abs=0.03)
    assert bool((DirectionBelief(3).confidence == 0.5).all())


def test_gain_follows_measurement_precision_and_zero_variance_coordinates_stay_defined():
    b = DirectionBelief(3, F64)
    b.update([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    b.predict()
    u = b.update([2.0, 2.0, 2.0], [0.0, 1.0, 1e12])  # exact, as good as the prior, useless
    assert u.gain[0].item() == pytest.approx(1.0)
    assert u.gain[1].item() == pytest.approx(0.5)
    assert u.gain[2].item() == pytest.approx(0.0, abs=1e-11)
    np.testing.assert_allclose(b.mean.numpy(), [2.0, 1.5, 1.0], rtol=1e-9)
    b.predict()
    b.update([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])  # prior var 0 and R 0: floored, not 0/0
    assert bool(torch.isfinite(b.mean).all())


def test_predict_decays_the_direction_and_adds_drift():
    b = DirectionBelief(2, DirectionConfig(drift=0.1, decay=0.5, dtype="float64"))
    b.predict()  # nothing known yet: a no-op
    assert b.mean is None
    b.update([2.0, -4.0], [1.0, 2.0])
    b.predict()
    np.testing.assert_allclose(b.mean.numpy(), [1.0, -2.0])
    np.testing.assert_allclose(b.var.numpy(), [0.25 + 0.1, 0.5 + 0.1])


def test_round_trips_exactly_through_msgpack_and_continues_identically():
    rng = np.random.default_rng(9)
    b = DirectionBelief(1000)
    for _ in range(5):
        b.predict()
        b.update(rng.normal(size=1000), rng.uniform(0.1, 1.0, 1000))
    b.predict()
    restored = DirectionBelief.from_dict(msgpack.unpackb(msgpack.packb(b.to_dict())))
    for name in ("mean", "var", "gain"):
        assert torch.equal(getattr(restored, name), getattr(b, name))
    assert (restored.drift, restored.drift_added, restored.n_updates) == (
        b.drift, b.drift_added, b.n_updates)
    z, r = rng.normal(size=1000), rng.uniform(0.1, 1.0, 1000)
    assert torch.equal(restored.update(z, r).gain, b.update(z, r).gain)
    assert torch.equal(restored.mean, b.mean) and restored.drift == b.drift
    fresh = DirectionBelief.from_dict(msgpack.unpackb(msgpack.packb(DirectionBelief(4).to_dict())))
    assert fresh.mean is None and fresh.dim == 4


def test_fusing_neighbours_gives_a_new_belief_of_the_same_kind():
    rng = np.random.default_rng(10)
    a, b = DirectionBelief(100), DirectionBelief(100)
    # each neighbour is the better one on half of the coordinates
    a.update(rng.normal(size=100), np.repeat([1.0, 4.0], 50))
    b.update(rng.normal(size=100), np.repeat([4.0, 1.0], 50))
    fused = a.with_gaussian(covariance_intersection([a.to_gaussian(), b.to_gaussian()]))
    assert fused is not a and fused.mean.dtype == torch.float32 and fused.dim == 100
    # the trace criterion is never worse than either input (w = 0 and 1 are candidates)
    assert fused.var.sum() < min(a.var.sum(), b.var.sum())
    assert not torch.equal(fused.mean, a.mean) and not torch.equal(fused.mean, b.mean)
    assert a.var[0].item() == 1.0  # inputs untouched


def test_rejects_bad_input_naming_it():
    b = DirectionBelief(3)
    with pytest.raises(ValueError, match=r"grad must have shape \(3,\)"):
        b.update(np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="grad has non-finite"):
        b.update([0.0, np.nan, 0.0], np.ones(3))
    with pytest.raises(ValueError, match="var must be >= 0"):
        b.update(np.zeros(3), [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="dim must be 1 or greater"):
        DirectionBelief(0)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        DirectionConfig(decay=1.5)
    with pytest.raises(ValueError, match="dtype must be"):
        DirectionConfig(dtype="float16")
    with pytest.raises(ValueError, match="drift must be >= 0"):
        DirectionConfig(drift=-1.0)
    with pytest.raises(ValueError, match="at least 2 contributions"):
        population_gradient(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2 contributions"):
        population_gradient(iter([np.ones(3)]))
    with pytest.raises(ValueError, match=r"contributions\[1\] has shape"):
        population_gradient(iter([np.ones(3), np.ones(4)]))
    with pytest.raises(ValueError, match="noise has 1 rows, expected 2"):
        antithetic_gradient([1.0, 2.0], iter([np.ones(3)]), 0.1)
    with pytest.raises(ValueError, match=r"noise must be \(2, d\)"):
        antithetic_gradient([1.0, 2.0], np.ones((3, 3)), 0.1)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        antithetic_gradient([1.0, 2.0], np.ones((2, 3)), 0.0)
    with pytest.raises(ValueError, match="diffs has non-finite"):
        antithetic_gradient([1.0, math.inf], np.ones((2, 3)), 0.1)
