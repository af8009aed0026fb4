"""KalmanFilter and the pure predict/update: against filterpy, each other, and by statistics."""

from __future__ import annotations

import numpy as np
import pytest
from filterpy.kalman import KalmanFilter as FilterpyKF
from scipy.stats import chi2, multivariate_normal

from rwkv_swarm.kalman import KalmanFilter, predict, update


def random_spd(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    A = rng.normal(size=(n, n))
    return scale * (A @ A.T / n + 0.1 * np.eye(n))


def random_stable_system(rng: np.random.Generator, dim_x: int, dim_z: int, dim_u: int) -> dict:
    A = rng.normal(size=(dim_x, dim_x))
    F = 0.95 * A / np.max(np.abs(np.linalg.eigvals(A)))  # spectral radius 0.95
    return {
        "F": F,
        "H": rng.normal(size=(dim_z, dim_x)),
        "Q": random_spd(rng, dim_x, 0.1),
        "R": random_spd(rng, dim_z),
        "B": rng.normal(size=(dim_x, dim_u)) if dim_u else None,
    }


CASES = [(dx, dz, du) for dx in range(1, 7) for dz in sorted({1, dx}) for du in (0, 2)]


@pytest.mark.parametrize(("dim_x", "dim_z", "dim_u"), CASES)
def test_update_matches_filterpy_on_random_stable_systems(dim_x, dim_z, dim_u):
    rng = np.random.default_rng(1000 + 100 * dim_x + 10 * dim_z + dim_u)
    sys_ = random_stable_system(rng, dim_x, dim_z, dim_u)
    ours, ref = KalmanFilter(dim_x, dim_z, dim_u), FilterpyKF(dim_x, dim_z, dim_u)
    x0 = rng.normal(size=dim_x)
    ours.x, ref.x = x0.copy(), x0.reshape(-1, 1).copy()
    for name in ("F", "H", "Q", "R", "B"):
        setattr(ours, name, sys_[name])
        setattr(ref, name, None if sys_[name] is None else sys_[name].copy())
    truth = rng.normal(size=dim_x)
    for _ in range(200):
        u = rng.normal(size=dim_u) if dim_u else None
        truth = sys_["F"] @ truth + rng.multivariate_normal(np.zeros(dim_x), sys_["Q"])
        if u is not None:
            truth += sys_["B"] @ u
        z = sys_["H"] @ truth + rng.multivariate_normal(np.zeros(dim_z), sys_["R"])
        ours.predict(u)
        ref.predict(None if u is None else u.reshape(-1, 1))
        np.testing.assert_allclose(ours.x_prior, ref.x_prior.ravel(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ours.P_prior, ref.P_prior, rtol=1e-9, atol=1e-9)
        ours.update(z)
        ref.update(z.reshape(-1, 1))
        np.testing.assert_allclose(ours.x, ref.x.ravel(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ours.P, ref.P, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ours.y, ref.y.ravel(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ours.S, ref.S, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ours.K, ref.K, rtol=1e-9, atol=1e-9)
        assert ours.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-9, abs=1e-9)
        assert ours.mahalanobis == pytest.approx(ref.mahalanobis, rel=1e-9, abs=1e-9)


def test_pure_functions_and_class_agree_exactly():
    rng = np.random.default_rng(7)
    sys_ = random_stable_system(rng, 4, 2, 3)
    kf = KalmanFilter(4, 2, 3)
    for name in ("F", "H", "Q", "R", "B"):
        setattr(kf, name, sys_[name])
    x, P = kf.x.copy(), kf.P.copy()
    for _ in range(50):
        u, z = rng.normal(size=3), rng.normal(size=2)
        kf.predict(u)
        x, P = predict(x, P, sys_["F"], sys_["Q"], sys_["B"], u)
        np.testing.assert_array_equal(kf.x_prior, x)
        np.testing.assert_array_equal(kf.P_prior, P)
        kf.update(z)
        r = update(x, P, z, sys_["R"], sys_["H"])
        x, P = r.x, r.P
        np.testing.assert_array_equal(kf.x, x)
        np.testing.assert_array_equal(kf.P, P)
        assert (kf.nis, kf.log_likelihood) == (r.nis, r.log_likelihood)


def test_update_statistics_match_scipy_density():
    rng = np.random.default_rng(3)
    P, R = random_spd(rng, 3), random_spd(rng, 2)
    H, x, z = rng.normal(size=(2, 3)), rng.normal(size=3), rng.normal(size=2)
    r = update(x, P, z, R, H)
    S = H @ P @ H.T + R
    y = z - H @ x
    assert r.nis == pytest.approx(y @ np.linalg.solve(S, y), rel=1e-12)
    assert r.log_likelihood == pytest.approx(multivariate_normal(np.zeros(2), S).logpdf(y), 1e-12)


def test_joseph_form_stays_accurate_symmetric_and_psd_on_an_ill_conditioned_prior():
    # nearly collinear prior, precise measurement: the short form (I-KH)P is off by 2e-5 in
    # P[0, 0] and asymmetric by 1.5e-8 here; the Joseph form must not be
    P = np.array([[1e6, 1e6 - 1e-3], [1e6 - 1e-3, 1e6]])
    R = 1e-6
    r = update(np.zeros(2), P, [1.0], [[R]], [[1.0, 0.0]])
    assert r.P[0, 0] == pytest.approx(1.0 / (1.0 / P[0, 0] + 1.0 / R), rel=1e-9)
    assert np.max(np.abs(r.P - r.P.T)) <= 1e-9 * np.max(np.abs(r.P))
    assert np.linalg.eigvalsh(r.P)[0] > 0


def simulate_cv_filter_errors(q_filter_scale: float, runs: int, steps: int, seed: int):
    """Constant-velocity target, position measured: NEES and NIS for each run and step."""
    rng = np.random.default_rng(seed)
    dt = 1.0
    F = np.array([[1.0, dt], [0.0, 1.0]])
    Q = 0.05 * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
    H, R = np.array([[1.0, 0.0]]), np.array([[1.0]])
    P0 = np.diag([4.0, 1.0])
    nees, nis = np.empty((runs, steps)), np.empty((runs, steps))
    for i in range(runs):
        truth = rng.multivariate_normal(np.zeros(2), P0)
        x, P = np.zeros(2), P0
        for k in range(steps):
            truth = F @ truth + rng.multivariate_normal(np.zeros(2), Q)
            z = H @ truth + rng.normal(0.0, 1.0, size=1)
            x, P = predict(x, P, F, q_filter_scale * Q)
            r = update(x, P, z, R, H)
            x, P = r.x, r.P
            e = truth - x
            nees[i, k], nis[i, k] = e @ np.linalg.solve(P, e), r.nis
    return nees, nis


def test_mean_nees_and_nis_fall_inside_95pct_chi_square_bounds():
    runs, steps = 60, 60
    nees, nis = simulate_cv_filter_errors(1.0, runs, steps, seed=11)
    # each step's mean over independent runs is chi2(runs * dim) / runs. A consistent filter
    # has ~95% of steps inside; steps are correlated, so the fraction scatters more than a
    # binomial (0.87-1.0 over 20 seeds), and a mistuned filter has ~0% (next test).
    for stat, dim in ((nees, 2), (nis, 1)):
        lo, hi = chi2.ppf([0.025, 0.975], runs * dim) / runs
        inside = np.mean((stat.mean(axis=0) >= lo) & (stat.mean(axis=0) <= hi))
        assert inside >= 0.85, f"only {inside:.0%} of steps inside the 95% band (expect ~95%)"
    # innovations are white, so the NIS over all runs and steps is chi2(runs * steps)
    lo, hi = chi2.ppf([0.025, 0.975], runs * steps) / (runs * steps)
    assert lo <= nis.mean() <= hi


def test_consistency_check_rejects_a_filter_with_too_little_process_noise():
    runs, steps = 60, 60
    nees, nis = simulate_cv_filter_errors(0.01, runs, steps, seed=11)
    lo, hi = chi2.ppf([0.025, 0.975], runs * 2) / runs
    assert np.mean(nees.mean(axis=0)[10:] > hi) > 0.9
    assert np.mean((nees.mean(axis=0) >= lo) & (nees.mean(axis=0) <= hi)) < 0.2
    assert nis.mean() > chi2.ppf(0.975, runs * steps) / (runs * steps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"z": [np.nan]}, "z has non-finite"),
        ({"P": [[1.0, 0.0], [0.0, -1.0]]}, "P is not positive semi-definite"),
        ({"P": [[1.0, 0.5], [0.0, 1.0]]}, "P is not symmetric"),
        ({"R": [[-1.0]]}, "R is not positive semi-definite"),
        ({"H": [[1.0, 0.0, 0.0]]}, r"H must have shape \(1, 2\)"),
        ({"x": [0.0, 0.0, 0.0]}, r"P must have shape \(3, 3\)"),
        ({"x": [[0.0, 1.0]]}, "x must be a vector"),
        ({"P": np.zeros((2, 2)), "R": [[0.0]]}, "not positive definite"),
    ],
)
def test_update_rejects_bad_input_naming_it(kwargs, message):
    args = {"x": np.zeros(2), "P": np.eye(2), "z": [1.0], "R": [[1.0]], "H": [[1.0, 0.0]]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        update(**args)


def test_predict_rejects_bad_input_naming_it():
    with pytest.raises(ValueError, match="F has non-finite"):
        predict(np.zeros(2), np.eye(2), [[np.inf, 0.0], [0.0, 1.0]], np.eye(2))
    with pytest.raises(ValueError, match="Q is not positive semi-definite"):
        predict(np.zeros(2), np.eye(2), np.eye(2), -np.eye(2))
    with pytest.raises(ValueError, match="B is None"):
        predict(np.zeros(2), np.eye(2), np.eye(2), np.eye(2), None, [1.0])
    with pytest.raises(ValueError, match=r"B must have shape \(2, 1\)"):
        predict(np.zeros(2), np.eye(2), np.eye(2), np.eye(2), np.ones((2, 2)), [1.0])


def test_constructor_validates_dimensions():
    with pytest.raises(ValueError, match="dim_x must be 1 or greater"):
        KalmanFilter(0, 1)
    with pytest.raises(ValueError, match="dim_z must be 1 or greater"):
        KalmanFilter(1, 0)
    with pytest.raises(ValueError, match="dim_u must be 0 or greater"):
        KalmanFilter(1, 1, -1)
    with pytest.raises(ValueError, match="dim_u is 0"):
        KalmanFilter(2, 1).predict(u=[1.0])
    with pytest.raises(ValueError, match=r"z must have shape \(2,\)"):
        KalmanFilter(2, 2).update([1.0])
