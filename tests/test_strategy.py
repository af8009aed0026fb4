"""Ask/tell strategies: move uphill, deterministic per seed, shaping, misuse, the Kalman reflex."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwkv_swarm.kalman import DirectionConfig, FitnessUpdate
from rwkv_swarm.kernels import RWKV7, RWKV7Config
from rwkv_swarm.node import (
    ESConfig,
    KalmanES,
    KalmanESConfig,
    LowRankES,
    centered_ranks,
    derive_seed,
    zscore,
)
from rwkv_swarm.node import strategy as strategy_module

CFG = RWKV7Config(n_embd=32, n_layer=1, head_size=16, input_dim=3, output_dim=2)


def quadratic_fitness(model: RWKV7, target: dict[str, torch.Tensor], mutants) -> np.ndarray:
    """-||theta_j - theta*||^2 over the evolved tensors, for every mutant j."""
    pop = mutants.population(model)
    out = []
    for j in range(mutants.size):
        sd = pop.materialize(j)
        out.append(-sum(float(((sd[k] - v) ** 2).sum()) for k, v in target.items()))
    return np.array(out)


def target_weights(model: RWKV7, names: list[str]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    params = dict(model.named_parameters())
    return {n: params[n] + 0.3 * torch.randn(params[n].shape, generator=g) for n in names}


HEAD = {"population": 16, "sigma": 0.05, "seed": 1, "include": ("head",)}


@pytest.mark.parametrize("cls, config", [
    (LowRankES, ESConfig(lr=0.03, **HEAD)),
    (LowRankES, ESConfig(lr=0.003, optimizer="sgd", **HEAD)),
    (KalmanES, KalmanESConfig(lr=0.03, **HEAD)),
], ids=["lowrank-adam", "lowrank-sgd", "kalman-snr"])
def test_strategy_moves_uphill_on_a_quadratic(cls, config):
    """The head (64 weights) evolves toward a target: fitness -||head - target||^2."""
    model = RWKV7(CFG, seed=0)
    es = cls(model, config)
    target = target_weights(model, [t.name for t in es.targets])
    first = None
    for _ in range(40):
        mutants = es.ask()
        info = es.tell(quadratic_fitness(model, target, mutants))
        first = info.fitness_mean if first is None else first
    assert info.fitness_mean > 0.5 * first  # distance to the optimum more than halved (f < 0)


def run(cls, config, generations=5):
    model = RWKV7(CFG, seed=3)
    es = cls(model, config)
    target = target_weights(model, [t.name for t in es.targets][:2])
    infos = [es.tell(quadratic_fitness(model, target, es.ask())) for _ in range(generations)]
    return model, infos


@pytest.mark.parametrize("cls, config_cls", [(LowRankES, ESConfig), (KalmanES, KalmanESConfig)])
def test_identical_seeds_give_bitwise_identical_runs(cls, config_cls):
    a, ia = run(cls, config_cls(population=8, seed=7))
    b, ib = run(cls, config_cls(population=8, seed=7))
    c, _ = run(cls, config_cls(population=8, seed=8))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert [i.to_dict() for i in ia] == [i.to_dict() for i in ib]
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))


def test_nodes_of_one_swarm_draw_different_noise():
    a = LowRankES(RWKV7(CFG), ESConfig(population=8, seed=1, stream=0)).ask()
    b = LowRankES(RWKV7(CFG), ESConfig(population=8, seed=1, stream=1)).ask()
    assert a.seed != b.seed == derive_seed(1, 1, 0)


def test_centered_ranks_are_symmetric_and_rank_nan_worst():
    u = centered_ranks(np.array([3.0, np.nan, -1.0, 10.0, 7.0]))
    assert u.min() == -0.5 and u.max() == 0.5 and abs(u.sum()) < 1e-12
    assert u[3] == 0.5 and u[1] == -0.5  # NaN below every real value


def test_centered_ranks_give_ties_equal_weight_so_tied_pairs_cancel():
    u = centered_ranks(np.array([9.0, 9.0, 12.0, 9.0, np.nan, -np.inf, 30.0, 12.0]))
    assert u[0] == u[1] == u[3] and u[2] == u[7] and u[4] == u[5]
    assert abs(u.sum()) < 1e-12 and u[6] == 0.5


def test_zscore_gives_nonfinite_values_the_worst_score():
    z = zscore(np.array([1.0, 2.0, np.nan, 3.0]))
    assert z[2] == z[0] == z.min() and abs(z[[0, 1, 3]].mean()) < 1e-12


def test_tell_rejects_mismatched_fitness_length_and_tell_before_ask():
    es = LowRankES(RWKV7(CFG), ESConfig(population=8))
    with pytest.raises(RuntimeError, match="before ask"):
        es.tell(np.zeros(8))
    es.ask()
    with pytest.raises(ValueError, match="#fitness values = 7 must equal #mutants = 8"):
        es.tell(np.zeros(7))
    with pytest.raises(ValueError, match=r"at least 2 antithetic pairs with finite fitness, "
                                         r"got 0 \(7 of 8 mutants are NaN/inf\)"):
        es.tell(np.array([np.nan] * 7 + [1.0]))
    with pytest.raises(RuntimeError, match=r"step\(\) needs this generation's measure"):
        es.step()


def test_nonfinite_fitness_is_counted_and_does_not_poison_the_update():
    model = RWKV7(CFG)
    es = LowRankES(model, ESConfig(population=8))
    es.ask()
    info = es.tell(np.array([1.0, np.nan, 2.0, 0.5, np.inf, 1.5, -1.0, 0.0]))
    assert info.nonfinite == 2 and math.isfinite(info.step_norm) and info.step_norm > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"population": 7}, "even"), ({"sigma": 0.0}, "sigma"), ({"optimizer": "rmsprop"}, "adam"),
    ({"shaping": "raw"}, "centered_ranks"), ({"rank": 0}, "rank"),
])
def test_bad_configs_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ESConfig(**kwargs)


def test_kalman_es_explores_after_a_surprise_and_relaxes_after():
    model = RWKV7(CFG)
    es = KalmanES(model, KalmanESConfig(population=8, sigma=0.05, seed=2))
    rng = np.random.default_rng(0)
    for _ in range(8):  # a stationary world: fitness around 0
        es.ask()
        es.tell(rng.normal(0.0, 1.0, 8))
    assert es.sigma_scale == 1.0
    es.ask()
    info = es.tell(rng.normal(-50.0, 1.0, 8))  # the world changes: fitness collapses
    assert info.surprised and es.sigma_scale == 2.0 and es.lr_scale == 1.0
    assert es.ask().sigma == pytest.approx(0.1)
    es.tell(rng.normal(-50.0, 1.0, 8))
    assert es.sigma_scale == pytest.approx(1.6)  # relaxing back toward 1


def update(innovation: float, surprised: bool = False) -> FitnessUpdate:
    return FitnessUpdate(z=0.0, R=1.0, innovation=innovation, S=1.0, nis=innovation ** 2,
                         gain=0.5, surprised=surprised)


def test_kalman_es_adapts_lr_to_whether_measured_changes_beat_predictions():
    es = KalmanES(RWKV7(CFG), KalmanESConfig(population=8, adapt_lr=True))
    scales = [es._throttle(update(y)) for y in (0.3, 0.1, -0.2, 0.0)]
    assert scales == pytest.approx([1.2, 1.44, 1.2, 1.44])
    for _ in range(20):
        es._throttle(update(1.0))
    assert es.lr_scale == 4.0  # clamped to lr_scale_range
    assert es._throttle(update(-5.0, surprised=True)) == 1.0 and es.sigma_scale == 2.0
    assert es._throttle(update(5.0, surprised=True)) == 1.2  # good news: no exploration
    assert es.sigma_scale == pytest.approx(1.6)


def test_kalman_es_with_optimizer_rule_feeds_the_filtered_direction_to_adam():
    """The direction belief adopts its first measurement, so step one equals LowRankES's."""
    a, b = RWKV7(CFG, seed=5), RWKV7(CFG, seed=5)
    cfg = {"population": 8, "seed": 6, "lr": 0.01}
    lowrank, kalman = LowRankES(a, ESConfig(**cfg)), KalmanES(b, KalmanESConfig(
        step_rule="optimizer", **cfg))
    f = np.random.default_rng(1).normal(size=8)
    for es in (lowrank, kalman):
        es.ask()
        es.tell(f)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert kalman.direction_belief.n_updates == 1


def test_lowrank_es_never_throttles():
    es = LowRankES(RWKV7(CFG), ESConfig(population=8))
    assert es._throttle(update(-5.0, surprised=True)) == 1.0 and es.ask().sigma == 0.05


def test_snr_step_is_bounded_by_lr_per_coordinate():
    model = RWKV7(CFG)
    es = KalmanES(model, KalmanESConfig(population=8, seed=4, lr=0.01))
    before = [p.clone() for p in es.params]
    es.ask()
    es.tell(np.random.default_rng(0).normal(size=8))
    moved = torch.cat([(p - b).flatten() for p, b in zip(es.params, before, strict=True)])
    assert moved.abs().max() <= 0.01 + 1e-7 and moved.abs().max() > 0.009


def test_direction_filter_keeps_a_per_coordinate_process_noise_floor():
    gains = {}
    for floor in (0.0, 0.2):  # pooled drift pinned at 0: the case where smoothing runs away
        es = KalmanES(RWKV7(CFG), KalmanESConfig(population=8, seed=2, drift_floor=floor,
                                                 direction=DirectionConfig(drift=0.0)))
        rng = np.random.default_rng(3)  # the same fitness values for both
        for _ in range(10):
            es.ask()
            es.tell(rng.normal(size=8))
        es.ask()  # predict: the prior variance now includes at least floor * Rbar
        db = es.direction_belief
        assert bool((db.var >= floor * es.noise_var.to(db.var.dtype) * (1 - 1e-6)).all())
        es.tell(rng.normal(size=8))
        gains[floor] = float(db.gain.median())
    assert gains[0.0] < 0.15 and gains[0.2] > 2 * gains[0.0]  # ~1/n without the floor


def test_all_pairs_tied_is_a_missing_measurement_not_a_zero_gradient():
    es = KalmanES(RWKV7(CFG), KalmanESConfig(population=8, seed=5, lr=0.01))
    es.ask()
    first = es.tell(np.repeat([1.0, 2.0, 3.0, 4.0], 2))  # tied before any evidence: no step
    assert first.step_norm == 0.0 and first.direction_gain == 0.0
    assert es.direction_belief.mean is None
    rng = np.random.default_rng(1)
    for _ in range(3):
        es.ask()
        es.tell(rng.normal(size=8))
    mean, var = es.direction_belief.mean.clone(), es.direction_belief.var.clone()
    noise_var = es.noise_var.clone()
    es.ask()  # a plateau at the predicted level (no surprise): every antithetic pair tied
    info = es.tell(es.fitness_belief.mean + np.repeat([-0.5, 0.5, -0.2, 0.2], 2))
    assert not info.surprised
    db = es.direction_belief
    assert torch.equal(db.mean, mean) and torch.equal(es.noise_var, noise_var)
    assert bool((db.var >= var).all())  # predicted only: uncertainty grew, nothing was measured
    assert info.direction_gain == 0.0 and info.step_norm > 0.0  # keeps walking the filtered way


def test_noise_drawn_ahead_is_the_next_generations_own_and_only_it_takes_it():
    def strategy():
        return KalmanES(RWKV7(CFG, seed=1, init="live"), KalmanESConfig(population=8, seed=4))

    ahead, plain = strategy(), strategy()
    for s in (ahead, plain):
        s.ask()
    # while generation 0 is pending: generation 1, then 2, then nothing (two ahead at most),
    # each a piece at a time: the draw, the two products, the transposes
    assert [ahead.draw_ahead() for _ in range(9)] == [True] * 8 + [False]
    drawn = {g: ahead._drawn[ahead._mutants(g, 1.0).key].noise for g in (1, 2)}
    for g in (1, 2):
        for s in (ahead, plain):
            s.tell(np.arange(8.0)[::(-1) ** g].copy())
            s.ask()
        assert ahead.population._noise is drawn[g]  # taken, not drawn again
        assert set(ahead.population._flat_cache) == {"plain", "squared"}  # products too
        assert ahead.population._noise_t is not None  # and the transposes
        for name, parts in plain.population.noise.items():
            assert all(torch.equal(a, b) for a, b in zip(parts, drawn[g][name], strict=True))
    steps = [s.tell(np.arange(8.0)[::-1].copy()).to_dict() for s in (ahead, plain)]
    assert steps[0] == steps[1] and all(torch.equal(a, b) for a, b in zip(
        ahead.params, plain.params, strict=True))
    assert pieces(ahead) == 8  # between generations: 3 and 4
    assert set(ahead._drawn) == {ahead._mutants(g, 1.0).key for g in (3, 4)}
    ahead._drawn[("another seed",)] = ahead._drawn.pop(ahead._mutants(3, 1.0).key)
    ahead.ask()
    assert ahead.population._noise is None  # not 3's key: not taken, drawn afresh when needed
    assert pieces(ahead) == 4  # 5 (4 is held), and what no coming generation needs is let go
    assert set(ahead._drawn) == {ahead._mutants(g, 1.0).key for g in (4, 5)}


def test_a_generation_of_large_noise_is_drawn_only_one_ahead(monkeypatch):
    es = KalmanES(RWKV7(CFG, seed=1, init="live"), KalmanESConfig(population=8, seed=4))
    noise = 4 * sum(t.size for t in es.targets)  # 4 pairs
    monkeypatch.setattr(strategy_module, "DRAW_AHEAD_FLOATS", noise)
    assert pieces(es) == 8 and len(es._drawn) == 2
    es._drawn = {}
    monkeypatch.setattr(strategy_module, "DRAW_AHEAD_FLOATS", noise - 1)
    assert pieces(es) == 4
    assert set(es._drawn) == {es._mutants(0, 1.0).key}


def pieces(es) -> int:
    """How many pieces `draw_ahead` builds before it has nothing left to build."""
    n = 0
    while es.draw_ahead():
        n += 1
    return n


def reference_gradient(pop, u: np.ndarray) -> torch.Tensor:
    """1/(P sigma) sum_j u_j s_j E_j flat in target order, float64, from the pairs' noise."""
    noise, u = pop.pair_noise(range(pop.size // 2)), torch.as_tensor(u, dtype=torch.float64)
    parts = []
    for t in pop.targets:
        n = [x.double() for x in noise[t.name]]
        E = n[0] if t.kind == "vector" else n[0] @ n[1].transpose(1, 2)  # (pairs, *shape)
        parts.append(torch.tensordot(u[0::2] - u[1::2], E, dims=1).flatten())
    return torch.cat(parts) / (pop.size * pop.sigma)


@pytest.mark.parametrize("strategy, extra", [
    (LowRankES, {}), (KalmanES, {}), (KalmanES, {"weight_decay": 0.1}),
    (KalmanES, {"step_rule": "optimizer", "optimizer": "sgd"})],
    ids=["lowrank-adam", "kalman-snr", "kalman-snr-decay", "kalman-sgd"])
def test_step_reports_the_weight_change_it_made_and_predicts_from_the_raw_gradient(
        strategy, extra):
    config = (ESConfig if strategy is LowRankES else KalmanESConfig)(
        population=8, seed=4, lr=0.01, **extra)
    es = strategy(RWKV7(CFG, seed=2), config)
    flat = lambda: torch.cat([p.detach().double().flatten() for p in es.params])  # noqa: E731
    fitness = np.random.default_rng(5).normal(size=8)
    fitness[3] = np.nan  # a diverged mutant: no raw fitness of its own in the prediction
    for _ in range(2):  # the second step runs on moments / beliefs that hold something
        before = flat()
        es.ask()
        pop = es.population
        info = es.tell(fitness)
        fitness = fitness[::-1].copy()
    delta = flat() - before
    assert info.step_norm == pytest.approx(float(delta.norm()), rel=1e-6)
    f = fitness[::-1]
    raw = np.where(np.isfinite(f), f - f[np.isfinite(f)].mean(), 0.0)
    g_raw = reference_gradient(pop, raw)
    assert abs(es.raw_prediction - float(g_raw @ delta)) <= 1e-5 * g_raw.norm() * delta.norm()
    if extra.get("weight_decay") and strategy is KalmanES:
        m, R = es.direction_belief.mean.double(), es.noise_var.double()
        expected = before * (1 - 0.01 * 0.1) + 0.01 * m / torch.sqrt(m * m + R)
        torch.testing.assert_close(flat(), expected, atol=1e-6, rtol=0)
