"""Population forward: equals materialized mutants, deterministic, antithetic, exact update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_kernels_model import nontrivial
from torch.testing import assert_close

from rwkv_swarm.kernels import GROUPS, RWKV7, Population, RWKV7Config, apply_update
from rwkv_swarm.kernels.population import FLAT_SUM_MAX, SUM_PATHS, sum_path, targets_for

CONTROL = RWKV7Config(n_embd=128, n_layer=2, input_dim=5, output_dim=3)
TOKEN = RWKV7Config(n_embd=64, n_layer=2, head_size=32, vocab_size=40)


def inputs(cfg: RWKV7Config, P: int, B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if cfg.token_mode:
        return torch.randint(0, cfg.vocab_size, (P, B, T), generator=g)
    return torch.randn(P, B, T, cfg.input_dim, generator=g)


@pytest.mark.parametrize("cfg", [CONTROL, TOKEN], ids=["control", "token"])
@pytest.mark.parametrize("include, rank", [(("matrices",), 1), (GROUPS, 3), (GROUPS, 6)],
                         ids=["matrices-r1", "all-groups-r3", "all-groups-r6-batched-gemm"])
def test_population_forward_equals_each_materialized_mutant(cfg, include, rank):
    model = nontrivial(cfg, seed=1)
    P, B, T = 6, 2, 19
    pop = Population(model, seed=2026, sigma=0.05, size=P, rank=rank, include=include)
    x = inputs(cfg, P, B, T)
    out, state = pop.forward(x)
    for j in range(P):
        mutant = RWKV7(cfg)
        mutant.load_state_dict(pop.materialize(j))
        mutant.use_native = False
        expected, expected_state = mutant(x[j])
        assert_close(out[j], expected, atol=1e-4, rtol=1e-4)
        rows = slice(j * B, (j + 1) * B)
        assert_close(state.wkv[:, rows], expected_state.wkv, atol=1e-4, rtol=1e-4)
        assert_close(state.att_x_prev[:, rows], expected_state.att_x_prev, atol=1e-4, rtol=1e-4)


def test_population_step_equals_population_sequence():
    pop = Population(nontrivial(CONTROL), seed=5, sigma=0.1, size=4, include=GROUPS)
    x = inputs(CONTROL, 4, 3, 12, seed=1)
    out_seq, state_seq = pop.forward(x)
    state, outs = None, []
    for t in range(12):
        out, state = pop.step(x[:, :, t], state)
        outs.append(out)
    assert_close(torch.stack(outs, 2), out_seq, atol=1e-4, rtol=1e-4)  # fp32 chunk vs recurrence
    assert_close(state.wkv, state_seq.wkv, atol=1e-4, rtol=1e-4)


def test_shared_input_is_broadcast_to_every_member():
    pop = Population(nontrivial(TOKEN), seed=1, sigma=0.1, size=4)
    x = inputs(TOKEN, 1, 2, 5)[0]
    shared, _ = pop.forward(x)
    explicit, _ = pop.forward(x.expand(4, *x.shape))
    assert torch.equal(shared, explicit)
    assert not torch.allclose(shared[0], shared[1])  # members differ


def test_same_seed_gives_bitwise_identical_outputs_and_other_seeds_differ():
    model = nontrivial(CONTROL)
    x = inputs(CONTROL, 8, 2, 6)
    a, _ = Population(model, seed=77, sigma=0.02, size=8).forward(x)
    b, _ = Population(model, seed=77, sigma=0.02, size=8).forward(x)
    c, _ = Population(model, seed=78, sigma=0.02, size=8).forward(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_pair_noise_depends_only_on_seed_and_pair_not_on_population_size():
    model = RWKV7(CONTROL)
    small = Population(model, seed=9, sigma=0.1, size=4).pair_noise([1])
    large = Population(model, seed=9, sigma=0.1, size=64).noise
    for name, (A, B) in small.items():
        assert torch.equal(A[0], large[name][0][1]) and torch.equal(B[0], large[name][1][1])


def test_antithetic_members_mirror_the_base_weights():
    model = RWKV7(CONTROL)
    pop = Population(model, seed=3, sigma=0.1, size=4, include=GROUPS)
    plus, minus = pop.materialize(2), pop.materialize(3)
    for name, base in model.named_parameters():
        assert_close(plus[name] + minus[name], 2 * base, atol=1e-6, rtol=0)


def test_matrix_perturbation_has_the_requested_rank():
    model = RWKV7(CONTROL)
    for rank in (1, 4):
        pop = Population(model, seed=1, sigma=1.0, size=2, rank=rank)
        delta = pop.materialize(0)["blocks.1.att.key.weight"] - model.blocks[1].att.key.weight
        assert torch.linalg.matrix_rank(delta.double(), rtol=1e-5).item() == rank


def test_noise_entries_have_the_documented_scale():
    pop = Population(RWKV7(CONTROL), seed=11, sigma=0.1, size=200, rank=4)
    A, B = pop.noise["blocks.0.ffn.key.weight"]  # A: (100, 512, 4) ~ N(0, 1/4); B ~ N(0, 1)
    assert abs(A.mean().item()) < 0.01 and abs(A.var().item() - 0.25) < 0.01
    assert abs(B.mean().item()) < 0.01 and abs(B.var().item() - 1.0) < 0.02


@pytest.mark.parametrize("path", SUM_PATHS)
def test_update_with_equal_fitness_inside_each_pair_is_exactly_zero(path):
    model = RWKV7(CONTROL)
    pop = Population(model, seed=4, sigma=0.05, size=8, include=GROUPS)
    pop.sum_path = path
    u = torch.tensor([0.3, 0.3, -1.0, -1.0, 2.5, 2.5, 0.0, 0.0])
    for name, g in pop.gradient(u).items():
        assert torch.equal(g, torch.zeros_like(g)), name


@pytest.mark.parametrize("include, rank", [(("matrices",), 1), (GROUPS, 2)])
def test_apply_update_equals_explicit_sum_of_materialized_perturbations(include, rank):
    model = RWKV7(TOKEN, seed=2)
    before = {k: v.clone() for k, v in model.named_parameters()}
    P, sigma, lr, seed = 10, 0.03, 0.2, 123
    u = torch.linspace(-0.5, 0.5, P)[torch.randperm(P, generator=torch.Generator().manual_seed(0))]
    pop = Population(model, seed=seed, sigma=sigma, size=P, rank=rank, include=include)
    mutants = [pop.materialize(j) for j in range(P)]
    apply_update(model, seed, u, lr, sigma, rank=rank, include=include)
    for name, param in model.named_parameters():
        explicit = sum(u[j] * (mutants[j][name] - before[name]) / sigma for j in range(P))
        expected = before[name] + lr / (P * sigma) * explicit
        assert_close(param, expected, atol=1e-5, rtol=0)


def test_misuse_fails_loudly():
    model = RWKV7(CONTROL)
    with pytest.raises(ValueError, match="must be even"):
        Population(model, seed=0, sigma=0.1, size=5)
    with pytest.raises(ValueError, match="unknown perturbation groups"):
        Population(model, seed=0, sigma=0.1, size=4, include=("weights",))
    with pytest.raises(ValueError, match="sigma must be"):
        Population(model, seed=0, sigma=float("nan"), size=4)
    pop = Population(model, seed=0, sigma=0.1, size=4)
    with pytest.raises(ValueError, match="3 entries, expected one per member"):
        pop.gradient([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-finite"):
        pop.gradient([1.0, float("inf"), 0.0, 0.0])
    with pytest.raises(ValueError, match="out of range"):
        pop.materialize(4)
    with pytest.raises(ValueError, match="P\\*B = 8 rows"):
        pop.forward(inputs(CONTROL, 4, 2, 3), model.zero_state(3))


def test_cache_blocking_on_cpu_does_not_change_results(monkeypatch):
    from rwkv_swarm.kernels import model as model_mod
    from rwkv_swarm.kernels import population as pop_mod

    model = nontrivial(TOKEN)
    pop = Population(model, seed=8, sigma=0.05, size=8, include=GROUPS)
    x = inputs(TOKEN, 8, 3, 6)
    whole, whole_state = pop.forward(x)
    plain, plain_state = model(x[0])
    monkeypatch.setattr(pop_mod, "ROW_BLOCK", 30)  # 2 members (2 x 3 x 6 = 36 rows) per block
    monkeypatch.setattr(model_mod, "ROW_BLOCK", 6)  # 1 row per block
    assert pop_mod.member_block(8, 18, torch.device("cpu")) == 2
    blocked, blocked_state = pop.forward(x)
    plain_blocked, plain_blocked_state = model(x[0])
    tol = {"atol": 1e-5, "rtol": 1e-5}  # only GEMM summation order differs between blockings
    assert_close(blocked, whole, **tol)
    assert_close(blocked_state.wkv, whole_state.wkv, **tol)
    assert_close(plain_blocked, plain, **tol)
    assert_close(plain_blocked_state.ffn_x_prev, plain_state.ffn_x_prev, **tol)


def per_pair_terms(pop: Population, u: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: c_p = (u_2p - u_2p+1) / (2 sigma) E_p per pair (pairs, *shape), float64,
    E_p read off materialized mutants of a model with all-zero weights (mutant = sigma E_p)."""
    params = dict(pop.model.named_parameters())
    assert all(not p.any() for p in params.values())
    mutants = [pop.materialize(2 * p) for p in range(pop.size // 2)]
    u = u.double()
    return {t.name: torch.stack([(u[2 * p] - u[2 * p + 1]) / (2 * pop.sigma)
                                 * m[t.name].double() / pop.sigma
                                 for p, m in enumerate(mutants)]) for t in pop.targets}


def zero_model(cfg: RWKV7Config) -> RWKV7:
    model = RWKV7(cfg, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


@pytest.mark.parametrize("path", SUM_PATHS)
@pytest.mark.parametrize("rank", [1, 3])
def test_gradient_and_variance_equal_the_per_pair_reference_on_both_paths(path, rank):
    P, sigma = 12, 0.1
    pop = Population(zero_model(CONTROL), seed=5, sigma=sigma, size=P, rank=rank,
                     include=GROUPS)
    pop.sum_path = path  # forced: both paths against the one reference
    u = torch.randn(P, generator=torch.Generator().manual_seed(3))
    terms = per_pair_terms(pop, u)
    grads, var = pop.gradient_variance(u)
    flat_g, flat_v = pop.flat_gradient_variance(u)
    assert torch.equal(flat_g, pop.flatten(grads)) and torch.equal(flat_v, pop.flatten(var))
    assert torch.equal(pop.flat_gradient(u), flat_g)
    for t in pop.targets:
        c = terms[t.name]
        assert_close(grads[t.name].double(), c.mean(0), atol=1e-6, rtol=1e-5)
        assert_close(var[t.name].double(), c.var(0, correction=1) / (P // 2), atol=1e-6,
                     rtol=1e-4)
        assert_close(pop.gradient(u)[t.name].double(), c.mean(0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("path", SUM_PATHS)
def test_sums_prepared_ahead_give_the_same_bits(path):
    model = nontrivial(CONTROL, seed=2)
    u = torch.randn(8, generator=torch.Generator().manual_seed(1))
    out = []
    for prepare in (False, True):
        pop = Population(model, seed=6, sigma=0.05, size=8, rank=2, include=GROUPS)
        pop.sum_path = path
        if prepare:
            assert [pop.prepare_sums() for _ in range(3)] == [True, True, False]  # one a call
            assert len(pop._flat_cache if path == "flat" else pop._factor_cache) == 2
        out.append((*pop.flat_gradient_variance(u), pop.flat_gradient(-u)))
    assert all(torch.equal(a, b) for a, b in zip(*out, strict=True))


def test_the_sum_path_is_flat_for_the_tiny_model_and_factor_for_a_big_one():
    from rwkv_swarm.swarm.config import TINY_MODEL

    tiny = RWKV7(RWKV7Config(**TINY_MODEL, input_dim=4, output_dim=2))
    assert Population(tiny, 0, 0.05, 64, include=GROUPS).sum_path == "flat"
    assert Population(RWKV7(CONTROL), 0, 0.05, 256, include=GROUPS).sum_path == "factor"
    assert sum_path(1000, FLAT_SUM_MAX // 1000) == "flat"
    assert sum_path(1000, FLAT_SUM_MAX // 1000 + 1) == "factor"
    pop = Population(tiny, 0, 0.05, 8)
    pop.sum_path = "dense"
    with pytest.raises(ValueError, match="sum_path must be one of .*'dense'"):
        pop.gradient(torch.ones(8))


def test_a_range_of_members_runs_exactly_as_those_members_of_the_whole_population():
    model = RWKV7(CONTROL, init="live")
    pop = Population(model, seed=3, sigma=0.1, size=8, include=("matrices", "head"))
    x = torch.randn(8, 2, 5, CONTROL.input_dim)
    whole, _ = pop.forward(x)
    part, state = pop.forward(x[2:6], members=(2, 6))
    assert_close(part, whole[2:6], rtol=1e-5, atol=1e-6)
    assert state.batch == 4 * 2
    for bad in [(1, 5), (2, 10), (4, 4)]:
        with pytest.raises(ValueError, match="even range"):
            pop.forward(x[:2], members=bad)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_both_low_rank_forms_add_the_same_terms(rank):
    from rwkv_swarm.kernels.low_rank import low_rank_torch

    g = torch.Generator().manual_seed(rank)
    rows, left = torch.randn(4, 6, 10, generator=g), torch.randn(4, 10, rank, generator=g)
    right, base = torch.randn(4, 7, rank, generator=g), torch.randn(4, 6, 7, generator=g)
    sign = torch.tensor([0.05, -0.05]).view(1, 2, 1, 1)
    expected = base + torch.cat([s * (rows.view(4, 2, 3, 10)[:, k] @ left @ right.transpose(1, 2))
                                 for k, s in enumerate((0.05, -0.05))], dim=1)
    for form in ("rank1", "bmm", None):
        out = base.clone()
        low_rank_torch(out, rows, left, right, sign, form)
        assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_pair_noise_is_a_fresh_philox_draw_in_any_order_and_thread():
    from concurrent.futures import ThreadPoolExecutor

    from rwkv_swarm.kernels.population import pair_noise

    def fresh(seed: int, pair: int, size: int) -> np.ndarray:
        key = np.array([seed & (2**64 - 1), pair], dtype=np.uint64)
        return np.random.Generator(np.random.Philox(key=key)).standard_normal(
            size, dtype=np.float32)

    cases = [(s, p, n) for s in (0, 7, -3, 2**63 + 5) for p in (0, 1, 9) for n in (1, 422, 3000)]
    for case in cases + cases[::-1]:  # each draw starts afresh, whatever ran before
        assert np.array_equal(pair_noise(*case), fresh(*case))
    with ThreadPoolExecutor(4) as pool:
        drawn = list(pool.map(lambda c: pair_noise(*c), cases * 8))
    assert all(np.array_equal(d, fresh(*c)) for d, c in zip(drawn, cases * 8, strict=True))


def test_targets_are_kept_with_the_model_per_rank_and_groups():
    model = RWKV7(RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=4, output_dim=2),
                  seed=0, init="live")
    plain = targets_for(model, 1, ("matrices",))
    again = targets_for(model, 1, ("matrices",))
    assert again == plain and again is not plain  # the same targets, a list of the caller's own
    assert [t.size for t in targets_for(model, 2, ("matrices",))] == [2 * t.size for t in plain]
    assert [t.name for t in targets_for(model, 1, ("matrices", "head"))] == \
        [t.name for t in plain] + ["head.weight"]
    with pytest.raises(ValueError, match="unknown perturbation groups"):
        targets_for(model, 1, ("matrices", "bias"))
