"""Diagonal (per-coordinate) Kalman filter: against filterpy, at d = 10^6, and by statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from filterpy.kalman import KalmanFilter as FilterpyKF
from scipy.stats import chi2

from rwkv_swarm.kalman import DiagonalKalmanFilter, diag_predict, diag_update


def random_coefficients(rng: np.random.Generator, d: int) -> dict[str, np.ndarray]:
    return {
        "F": rng.uniform(0.5, 1.0, d),
        "Q": rng.uniform(0.01, 0.5, d),
        "H": rng.uniform(0.5, 2.0, d),
        "R": rng.uniform(0.1, 2.0, d),
    }


def test_diagonal_filter_matches_filterpy_with_diagonal_matrices():
    rng = np.random.default_rng(21)
    d = 5
    c = random_coefficients(rng, d)
    ref = FilterpyKF(d, d)
    ref.F, ref.Q, ref.H, ref.R = (np.diag(c[k]) for k in ("F", "Q", "H", "R"))
    ref.P = np.diag(rng.uniform(0.5, 2.0, d))
    kf = DiagonalKalmanFilter(d)
    kf.P = torch.tensor(np.diag(ref.P).copy())
    kf.F, kf.Q, kf.H, kf.R = (torch.tensor(c[k]) for k in ("F", "Q", "H", "R"))
    for _ in range(100):
        u = rng.normal(size=d)
        ref.predict(u=u.reshape(-1, 1), B=np.eye(d))
        kf.predict(u)
        np.testing.assert_allclose(kf.x.numpy(), ref.x.ravel(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(kf.P.numpy(), np.diag(ref.P), rtol=1e-9, atol=1e-9)
        z = rng.normal(size=d) * 3
        ref.update(z.reshape(-1, 1))
        kf.update(z)
        np.testing.assert_allclose(kf.x.numpy(), ref.x.ravel(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(kf.P.numpy(), np.diag(ref.P), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(kf.y.numpy(), ref.y.ravel(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(kf.S.numpy(), np.diag(ref.S), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(kf.K.numpy(), np.diag(ref.K), rtol=1e-9, atol=1e-9)
        assert kf.nis == pytest.approx(ref.mahalanobis**2, rel=1e-9)
        assert kf.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-9)
        # off-diagonal terms stay exactly zero in filterpy, so nothing is lost by the diagonal
        assert np.count_nonzero(ref.P - np.diag(np.diag(ref.P))) == 0


def test_a_million_coordinates_in_one_call_match_scalar_filterpy_filters():
    rng = np.random.default_rng(5)
    d = 1_000_000
    c = random_coefficients(rng, d)
    x, P = rng.normal(size=d), rng.uniform(0.5, 2.0, d)
    zs = [rng.normal(size=d) for _ in range(3)]
    xt, Pt = torch.from_numpy(x), torch.from_numpy(P)
    for z in zs:
        xt, Pt = diag_predict(xt, Pt, c["F"], c["Q"])
        r = diag_update(xt, Pt, z, c["R"], c["H"])
        xt, Pt = r.x, r.P
    assert xt.shape == Pt.shape == r.K.shape == (d,)
    for i in rng.choice(d, size=40, replace=False):
        ref = FilterpyKF(1, 1)
        ref.x, ref.P = np.array([[x[i]]]), np.array([[P[i]]])
        ref.F, ref.Q, ref.H, ref.R = ([[c[k][i]]] for k in ("F", "Q", "H", "R"))
        ref.F, ref.H = np.array(ref.F), np.array(ref.H)
        for z in zs:
            ref.predict()
            ref.update(z[i])
        assert xt[i].item() == pytest.approx(ref.x.item(), rel=1e-12, abs=1e-12)
        assert Pt[i].item() == pytest.approx(ref.P.item(), rel=1e-12)
        assert r.K[i].item() == pytest.approx(ref.K.item(), rel=1e-12)


def test_float32_state_stays_float32_and_close_to_float64():
    rng = np.random.default_rng(8)
    d = 10_000
    c = {k: torch.from_numpy(v) for k, v in random_coefficients(rng, d).items()}
    x64, P64 = torch.from_numpy(rng.normal(size=d)), torch.ones(d, dtype=torch.float64)
    x32, P32 = x64.float(), P64.float()
    for _ in range(20):
        z = torch.from_numpy(rng.normal(size=d))
        x64, P64 = diag_predict(x64, P64, c["F"], c["Q"])
        r64 = diag_update(x64, P64, z, c["R"], c["H"])
        x64, P64 = r64.x, r64.P
        x32, P32 = diag_predict(x32, P32, c["F"], c["Q"])
        r32 = diag_update(x32, P32, z, c["R"], c["H"])
        x32, P32 = r32.x, r32.P
    assert x32.dtype == P32.dtype == r32.K.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(P32.double(), P64, rtol=1e-4, atol=1e-6)


def test_pure_functions_and_class_agree_exactly():
    rng = np.random.default_rng(9)
    d = 100
    c = random_coefficients(rng, d)
    kf = DiagonalKalmanFilter(d)
    kf.F, kf.Q, kf.H = 0.9, torch.from_numpy(c["Q"]), torch.from_numpy(c["H"])
    x, P = kf.x, kf.P
    for _ in range(10):
        z, R = rng.normal(size=d), rng.uniform(0.1, 1.0, d)
        kf.predict()
        kf.update(z, R=R)
        x, P = diag_predict(x, P, 0.9, c["Q"])
        r = diag_update(x, P, z, R, c["H"])
        x, P = r.x, r.P
        assert torch.equal(kf.x, x) and torch.equal(kf.P, P) and torch.equal(kf.K, r.K)
        assert kf.nis == r.nis


def simulate_random_walks(r_scale: float, d: int, steps: int, seed: int):
    """d independent random walks with their own Q_i and R_i: NEES and NIS per coordinate."""
    rng = np.random.default_rng(seed)
    Q, R = rng.uniform(0.01, 1.0, d), rng.uniform(0.1, 2.0, d)
    truth = rng.normal(size=d)
    x, P = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    truth = truth * 1.0  # truth ~ N(0, 1) = the filter's prior
    nees, nis = np.empty((steps, d)), np.empty((steps, d))
    for k in range(steps):
        truth = truth + rng.normal(size=d) * np.sqrt(Q)
        z = truth + rng.normal(size=d) * np.sqrt(R)
        x, P = diag_predict(x, P, 1.0, Q)
        r = diag_update(x, P, z, r_scale * R)
        x, P = r.x, r.P
        e = truth - x.numpy()
        nees[k], nis[k] = e * e / P.numpy(), (r.y * r.y / r.S).numpy()
    return nees, nis


def test_mean_nees_and_nis_over_coordinates_fall_inside_95pct_chi_square_bounds():
    d, steps = 2000, 40
    nees, nis = simulate_random_walks(1.0, d, steps, seed=13)
    lo, hi = chi2.ppf([0.025, 0.975], d) / d
    for stat in (nees, nis):
        inside = np.mean((stat.mean(axis=1) >= lo) & (stat.mean(axis=1) <= hi))
        assert inside >= 0.85, f"only {inside:.0%} of steps inside the 95% band (expect ~95%)"
    lo, hi = chi2.ppf([0.025, 0.975], d * steps) / (d * steps)
    assert lo <= nis.mean() <= hi


def test_consistency_check_rejects_an_overconfident_measurement_model():
    d, steps = 2000, 40
    nees, nis = simulate_random_walks(0.3, d, steps, seed=13)
    hi = chi2.ppf(0.975, d) / d
    assert np.all(nees.mean(axis=1) > hi)
    assert np.all(nis.mean(axis=1) > hi)


def test_numpy_inputs_give_torch_results_and_are_not_modified():
    x, P, z = np.zeros(3), np.ones(3), np.array([1.0, 2.0, 3.0])
    r = diag_update(x, P, z, 1.0)
    assert isinstance(r.x, torch.Tensor)
    np.testing.assert_array_equal(r.x.numpy(), z / 2)
    np.testing.assert_array_equal(r.K.numpy(), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(x, np.zeros(3))
    np.testing.assert_array_equal(P, np.ones(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"z": [np.nan, 0.0]}, "z has non-finite"),
        ({"x": [0.0, np.inf]}, "x has non-finite"),
        ({"P": [1.0, -1.0]}, "P is not positive semi-definite"),
        ({"R": -1.0}, "R must be finite and >= 0"),
        ({"R": [1.0, 1.0, 1.0]}, r"R must be a float or have shape \(2,\)"),
        ({"x": [[0.0, 0.0]]}, r"x must be a vector"),
        ({"P": [0.0, 1.0], "R": 0.0}, "not positive for 1 coordinates"),
        ({"x": torch.zeros(2, dtype=torch.float16)}, "x must be float32 or float64"),
    ],
)
def test_diag_update_rejects_bad_input_naming_it(kwargs, message):
    args = {"x": [0.0, 0.0], "P": [1.0, 1.0], "z": [1.0, 1.0], "R": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        diag_update(**args)


def test_diag_predict_and_constructor_reject_bad_input():
    with pytest.raises(ValueError, match="Q must be finite and >= 0"):
        diag_predict([0.0], [1.0], 1.0, -0.1)
    with pytest.raises(ValueError, match="F has non-finite"):
        diag_predict([0.0, 0.0], [1.0, 1.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="dim_x must be 1 or greater"):
        DiagonalKalmanFilter(0)
    with pytest.raises(ValueError, match="dtype must be"):
        DiagonalKalmanFilter(2, dtype=torch.int64)


def test_huge_finite_values_pass_the_finiteness_check_and_infinities_do_not():
    # the check sums first; a float32 sum of these overflows although every entry is finite
    huge = torch.tensor([3e38, 3e38], dtype=torch.float32)
    assert torch.equal(diag_predict(huge, [1.0, 1.0])[0], huge)
    with pytest.raises(ValueError, match="x has non-finite"):
        diag_predict(torch.tensor([np.inf, -np.inf]), [1.0, 1.0])
