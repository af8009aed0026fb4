"""Belief fusion: information sum = batch least squares; covariance intersection is consistent."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.stats import chi2

from rwkv_swarm.kalman import Gaussian, ci_weights, covariance_intersection, fuse_information


def random_spd(rng: np.random.Generator, n: int) -> np.ndarray:
    A = rng.normal(size=(n, n))
    return A @ A.T / n + 0.1 * np.eye(n)


def random_beliefs(rng: np.random.Generator, k: int, n: int, diagonal: bool = False):
    if diagonal:
        return [Gaussian(rng.normal(size=n), rng.uniform(0.1, 3.0, n)) for _ in range(k)]
    return [Gaussian(rng.normal(size=n), random_spd(rng, n)) for _ in range(k)]


def objective(beliefs, w, criterion):
    """tr or log det of the CI covariance (sum_i w_i P_i^-1)^-1, computed densely."""
    info = sum(wi * np.linalg.inv(b.full_cov()) for wi, b in zip(w, beliefs, strict=True))
    P = np.linalg.inv(info)
    return np.trace(P) if criterion == "trace" else np.linalg.slogdet(P)[1]


def test_information_fusion_equals_batch_least_squares_posterior():
    rng = np.random.default_rng(1)
    beliefs = random_beliefs(rng, 4, 3)
    # stacked measurements z_i = x + v_i, whitened by each covariance's Cholesky factor
    A, b = [], []
    for g in beliefs:
        Li = np.linalg.inv(np.linalg.cholesky(g.cov))
        A.append(Li)
        b.append(Li @ g.mean)
    A, b = np.vstack(A), np.concatenate(b)
    x_ls = np.linalg.lstsq(A, b, rcond=None)[0]
    P_ls = np.linalg.inv(A.T @ A)
    fused = fuse_information(beliefs)
    np.testing.assert_allclose(fused.mean, x_ls, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fused.cov, P_ls, rtol=1e-10, atol=1e-12)


def test_information_fusion_is_order_free_and_associative():
    rng = np.random.default_rng(11)
    a, b, c = random_beliefs(rng, 3, 3)
    once = fuse_information([a, b, c])
    for other in (fuse_information([c, a, b]), fuse_information([fuse_information([a, b]), c])):
        np.testing.assert_allclose(other.mean, once.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(other.cov, once.cov, rtol=1e-10, atol=1e-12)


def test_diagonal_and_mixed_inputs_fuse_like_their_full_matrices():
    rng = np.random.default_rng(2)
    diag = random_beliefs(rng, 3, 4, diagonal=True)
    full = [Gaussian(g.mean, np.diag(g.cov)) for g in diag]
    for fuse in (fuse_information, lambda bs: covariance_intersection(bs, weights=[0.2, 0.3, 0.5])):
        d, f = fuse(diag), fuse(full)
        assert d.is_diagonal and not f.is_diagonal
        np.testing.assert_allclose(d.mean, f.mean, rtol=1e-12)
        np.testing.assert_allclose(np.diag(d.cov), f.cov, rtol=1e-12, atol=1e-15)
        mixed = fuse([diag[0], full[1], diag[2]])
        assert not mixed.is_diagonal
        np.testing.assert_allclose(mixed.mean, f.mean, rtol=1e-12)


def test_fusion_returns_new_beliefs_and_leaves_inputs_alone():
    rng = np.random.default_rng(3)
    beliefs = random_beliefs(rng, 2, 3)
    before = [(g.mean.copy(), g.cov.copy()) for g in beliefs]
    for fused in (fuse_information(beliefs), covariance_intersection(beliefs)):
        assert all(fused is not g and fused.mean is not g.mean for g in beliefs)
    for g, (m, c) in zip(beliefs, before, strict=True):
        np.testing.assert_array_equal(g.mean, m)
        np.testing.assert_array_equal(g.cov, c)


@pytest.mark.parametrize("diagonal", [False, True])
def test_ci_of_a_belief_with_itself_returns_that_belief(diagonal):
    rng = np.random.default_rng(4)
    (g,) = random_beliefs(rng, 1, 3, diagonal)
    for copies in (2, 3):
        same = covariance_intersection([g] * copies)
        np.testing.assert_array_equal(same.mean, g.mean)
        np.testing.assert_array_equal(same.cov, g.cov)
    # not a special case: a copy perturbed at rounding level comes back within rounding
    twin = Gaussian(g.mean * (1 + 1e-15), g.cov * (1 + 1e-15))
    near = covariance_intersection([g, twin])
    np.testing.assert_allclose(near.mean, g.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(near.cov, g.cov, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("criterion", ["trace", "logdet"])
@pytest.mark.parametrize("diagonal", [False, True])
def test_ci_weights_for_two_beliefs_minimise_the_criterion(criterion, diagonal):
    rng = np.random.default_rng(5)
    for _ in range(5):
        beliefs = random_beliefs(rng, 2, 3, diagonal)
        w = ci_weights(beliefs, criterion)
        assert w.shape == (2,) and w.sum() == pytest.approx(1.0) and np.all(w >= 0)
        ref = minimize_scalar(
            lambda t, bs=beliefs: objective(bs, [t, 1 - t], criterion),
            bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-12},
        )
        ends = [objective(beliefs, [t, 1 - t], criterion) for t in (0.0, 1.0)]
        best = min(ref.fun, *ends)
        assert objective(beliefs, w, criterion) <= best + 1e-9 * abs(best)


@pytest.mark.parametrize("criterion", ["trace", "logdet"])
def test_ci_weights_for_many_beliefs_reach_the_simplex_optimum(criterion):
    rng = np.random.default_rng(6)
    for k in (3, 5):
        beliefs = random_beliefs(rng, k, 3)
        w = ci_weights(beliefs, criterion)
        assert w.shape == (k,) and w.sum() == pytest.approx(1.0, abs=1e-12) and np.all(w >= 0)
        best = np.inf
        for start in [np.full(k, 1 / k), *np.eye(k) * 0.9 + 0.1 / k]:
            ref = minimize(
                lambda v, bs=beliefs: objective(bs, v, criterion), start, method="SLSQP",
                bounds=[(0, 1)] * k, constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}],
                options={"ftol": 1e-14, "maxiter": 500},
            )
            best = min(best, ref.fun)
        assert objective(beliefs, w, criterion) <= best + 1e-7 * abs(best)


@pytest.mark.parametrize("criterion", ["trace", "logdet"])
def test_ci_covariance_bounds_the_true_error_covariance_for_any_correlation(criterion):
    rng = np.random.default_rng(7)
    n, k = 2, 3
    info_violations = 0
    for _ in range(20):
        # a random joint covariance of the k estimates' errors, cross-correlations included
        A = rng.normal(size=(n * k, n * k))
        joint = A @ A.T + 0.01 * np.eye(n * k)
        blocks = [[joint[i * n:(i + 1) * n, j * n:(j + 1) * n] for j in range(k)] for i in range(k)]
        beliefs = [Gaussian(np.zeros(n), blocks[i][i]) for i in range(k)]
        w = ci_weights(beliefs, criterion)
        fused = covariance_intersection(beliefs, w)
        # x_ci = sum_i W_i x_i with W_i = P_ci w_i P_i^-1, so cov(error) = sum_ij W_i C_ij W_j'
        W = [fused.cov @ (wi * np.linalg.inv(b.cov)) for wi, b in zip(w, beliefs, strict=True)]
        true_cov = sum(W[i] @ blocks[i][j] @ W[j].T for i in range(k) for j in range(k))
        assert np.linalg.eigvalsh(fused.cov - true_cov)[0] >= -1e-9 * np.trace(fused.cov)
        # the information sum has no such guarantee: it is right for independent errors only
        info = fuse_information(beliefs)
        Wi = [info.cov @ np.linalg.inv(b.cov) for b in beliefs]
        info_true = sum(Wi[i] @ blocks[i][j] @ Wi[j].T for i in range(k) for j in range(k))
        info_violations += np.linalg.eigvalsh(info.cov - info_true)[0] < 0
    assert info_violations >= 10


def test_information_sum_is_overconfident_on_correlated_estimates_while_ci_stays_consistent():
    rng = np.random.default_rng(8)
    n, k, trials = 2, 3, 400
    shared = np.array([[1.0, 0.3], [0.3, 0.8]])  # noise common to every estimate
    own = [np.diag(rng.uniform(0.1, 0.4, n)) for _ in range(k)]
    nees_info, nees_ci = [], []
    for _ in range(trials):
        truth = rng.normal(size=n)
        common = rng.multivariate_normal(np.zeros(n), shared)
        beliefs = [
            Gaussian(truth + common + rng.multivariate_normal(np.zeros(n), R), shared + R)
            for R in own
        ]  # each belief alone is exactly right about its own error
        nees_info.append(fuse_information(beliefs).nees(truth))
        nees_ci.append(covariance_intersection(beliefs).nees(truth))
    hi = chi2.ppf(0.975, trials * n) / trials
    assert np.mean(nees_info) > 2 * hi, "information sum should be overconfident here"
    assert np.mean(nees_ci) <= hi, "covariance intersection must stay consistent"


def test_diagonal_ci_handles_a_million_coordinates():
    rng = np.random.default_rng(9)
    d = 1_000_000
    a = Gaussian(rng.normal(size=d), rng.uniform(0.5, 2.0, d))
    b = Gaussian(rng.normal(size=d), rng.uniform(0.1, 4.0, d))
    (w1, w2) = ci_weights([a, b])
    fused = covariance_intersection([a, b], [w1, w2])
    assert fused.is_diagonal and fused.cov.shape == (d,)

    def trace(t: float) -> float:
        return float(np.sum(1.0 / (t / a.cov + (1 - t) / b.cov)))

    assert np.sum(fused.cov) == pytest.approx(trace(w1), rel=1e-12)
    assert trace(w1) <= min(trace(w1 - 1e-4), trace(w1 + 1e-4))


def test_gaussian_round_trips_exactly_through_msgpack():
    rng = np.random.default_rng(10)
    for g in (random_beliefs(rng, 1, 4)[0], random_beliefs(rng, 1, 50, diagonal=True)[0]):
        back = Gaussian.from_dict(msgpack.unpackb(msgpack.packb(g.to_dict())))
        np.testing.assert_array_equal(back.mean, g.mean)
        np.testing.assert_array_equal(back.cov, g.cov)
        assert back.is_diagonal == g.is_diagonal


@pytest.mark.parametrize(
    ("mean", "cov", "message"),
    [
        ([np.nan, 0.0], np.eye(2), "mean has non-finite"),
        ([0.0, 0.0], [[1.0, 0.0], [0.0, np.inf]], "cov has non-finite"),
        ([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], "cov is not positive semi-definite"),
        ([0.0, 0.0], [1.0, -0.5], "cov is not positive semi-definite"),
        ([0.0, 0.0], [[1e-12, 0.0], [0.0, -1e-13]], "cov is not positive semi-definite"),
        ([0.0, 0.0], [[1e-12, 1e-13], [0.0, 1e-12]], "cov is not symmetric"),
        ([0.0, 0.0], np.eye(3), r"cov must have shape \(2, 2\)"),
        ([0.0, 0.0], np.ones((2, 2, 2)), "cov must be"),
    ],
)
def test_gaussian_rejects_bad_input_naming_it(mean, cov, message):
    with pytest.raises(ValueError, match=message):
        Gaussian(np.asarray(mean), np.asarray(cov))


def test_fusion_rejects_bad_input_naming_it():
    a, b = Gaussian(np.zeros(2), np.eye(2)), Gaussian(np.zeros(3), np.eye(3))
    singular = Gaussian(np.zeros(2), np.array([[1.0, 1.0], [1.0, 1.0]]))
    zero_var = Gaussian(np.zeros(2), np.array([1.0, 0.0]))
    cases = [
        (lambda: fuse_information([]), "beliefs is empty"),
        (lambda: fuse_information([a, b]), r"beliefs\[1\] has dimension 3, expected 2"),
        (lambda: covariance_intersection([a, "x"]), r"beliefs\[1\] must be a Gaussian"),
        (lambda: fuse_information([a, singular]), r"beliefs\[1\].cov is singular"),
        (lambda: fuse_information([Gaussian(np.zeros(2), np.ones(2)), zero_var]),
         r"beliefs\[1\].cov has a zero variance"),
        (lambda: covariance_intersection([a, singular]), r"beliefs\[1\].cov is singular"),
        (lambda: covariance_intersection([a, singular], weights=[0.5]), "weights must be 2"),
        (lambda: covariance_intersection([a, singular], weights=[1.5, -0.5]), "weights must be"),
        (lambda: covariance_intersection([a, singular], weights=[0.5, 0.6]), "sum to 1"),
        (lambda: ci_weights([a, singular], criterion="det"), "criterion must be"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
