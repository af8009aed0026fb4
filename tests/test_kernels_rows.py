"""The population step by rows: every path equals the materialised mutants, the native row
kernel's rows never depend on the batch, and the path is the one measured fastest."""

from __future__ import annotations

import pytest
import torch
from test_kernels_model import needs_native, nontrivial
from test_kernels_paths import Timings
from torch.testing import assert_close

from rwkv_swarm.kernels import GROUPS, RWKV7, Population, RWKV7Config, paths, rows

CONTROL = RWKV7Config(n_embd=128, n_layer=2, input_dim=5, output_dim=3)  # N=64
ODD = RWKV7Config(n_embd=72, n_layer=3, head_size=24, input_dim=3, output_dim=1,  # tails
                  dim_w=12, dim_a=20, dim_v=8, dim_g=9, dim_ffn=100)
SMALL = RWKV7Config(n_embd=64, n_layer=2, head_size=16, input_dim=4, output_dim=2,
                    dim_ffn=96)  # N=16
WIDE = RWKV7Config(n_embd=128, n_layer=1, head_size=128, input_dim=2, output_dim=2)  # N=128
TOKEN = RWKV7Config(n_embd=64, n_layer=2, head_size=32, vocab_size=40)  # N=32
PERTURB = {"matrices-r1": (("matrices",), 1), "all-groups-r3": (GROUPS, 3),
           "default-groups-r2": (("matrices", "head", "embedding"), 2)}
MEMBERS = [5, 0, 3, 3, 6, 1, 2, 7, 4]  # any order, repeats, lone members of a pair


def busy_state(model: RWKV7, rows: int, seed: int = 0):
    state = model.zero_state(rows)
    g = torch.Generator().manual_seed(seed)
    for t in state.tensors():
        t.copy_(torch.randn(t.shape, generator=g))
    return state


def inputs(cfg: RWKV7Config, rows: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if cfg.token_mode:
        return torch.randint(0, cfg.vocab_size, (rows,), generator=g)
    return torch.randn(rows, cfg.input_dim, generator=g)


def mutant(pop: Population, j: int) -> RWKV7:
    m = RWKV7(pop.model.config)
    m.load_state_dict(pop.materialize(j))
    m.use_native = False
    return m


def native_paths() -> list[str]:
    return ["native:1", "native:2"]


@pytest.mark.parametrize("cfg", [CONTROL, ODD, SMALL, WIDE, TOKEN],
                         ids=["control-N64", "odd-sizes-N24", "N16", "N128", "token-N32"])
@pytest.mark.parametrize("perturb", list(PERTURB), ids=list(PERTURB))
@pytest.mark.parametrize("path", ["torch", *native_paths()])
def test_each_row_equals_its_materialized_mutant(cfg, perturb, path):
    if path != "torch" and rows.native.load() is None:
        pytest.skip("no C compiler for the native kernels")
    include, rank = PERTURB[perturb]
    model = nontrivial(cfg, seed=2)
    pop = Population(model, seed=7, sigma=0.05, size=8, rank=rank, include=include)
    R = len(MEMBERS)
    x, state = inputs(cfg, R), busy_state(model, R)
    out, new = pop.step_rows(x, state, MEMBERS, path=path)
    for b, j in enumerate(MEMBERS):
        expected, expected_state = mutant(pop, j).step(x[b:b + 1], state.select(b))
        assert_close(out[b:b + 1], expected, atol=1e-4, rtol=1e-4)
        for got, want in zip(new.select(b).tensors(), expected_state.tensors(), strict=True):
            assert_close(got, want, atol=1e-4, rtol=1e-4)


@needs_native
@pytest.mark.parametrize("cfg", [CONTROL, ODD, SMALL], ids=["N64", "odd-sizes", "N16"])
@pytest.mark.parametrize("path", native_paths())
def test_a_rows_bits_do_not_depend_on_the_rest_of_the_batch(cfg, path):
    """What makes a compacted rollout equal the full one: any subset, order or position."""
    model = nontrivial(cfg, seed=3)
    pop = Population(model, seed=9, sigma=0.1, size=40, rank=2, include=GROUPS)
    R = 40
    members = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    x, state = inputs(cfg, R, seed=4), busy_state(model, R, seed=5)
    full, full_state = pop.step_rows(x, state, members, path=path)
    for keep in ([7], [3, 38], list(range(0, 40, 3)), list(range(33)), [39, 0, 20, 5, 11]):
        idx = torch.tensor(keep)
        part, part_state = pop.step_rows(x[idx], state.select(idx), members[idx], path=path)
        assert torch.equal(part, full[idx])
        assert part_state.equal(full_state.select(idx))


@needs_native
@pytest.mark.parametrize("path", ["torch", *native_paths()])
def test_in_place_steps_write_the_same_state_into_the_given_one(path):
    model = nontrivial(SMALL, seed=1)
    pop = Population(model, seed=2, sigma=0.1, size=6)
    x, state = inputs(SMALL, 6), busy_state(model, 6)
    expected_out, expected = pop.step_rows(x, state, range(6), path=path)
    out, same = pop.step_rows(x, state, range(6), inplace=True, path=path)
    assert same is state and state.equal(expected) and torch.equal(out, expected_out)


@needs_native
def test_the_native_row_step_sees_in_place_weight_updates():
    model = nontrivial(SMALL, seed=4)
    pop = Population(model, seed=3, sigma=0.05, size=4, include=GROUPS)
    x, state = inputs(SMALL, 4), busy_state(model, 4)
    before, _ = pop.step_rows(x, state, range(4), path="native:1")
    pop.update(torch.tensor([1.0, -1.0, 0.5, 0.0]), lr=0.5)  # the base weights move
    after, _ = pop.step_rows(x, state, range(4), path="native:1")
    assert not torch.allclose(before, after)
    expected, _ = mutant(pop, 2).step(x[2:3], state.select(2))
    assert_close(after[2:3], expected, atol=1e-4, rtol=1e-4)


@needs_native
def test_the_native_row_step_sees_weights_given_new_storage():
    """Packed buffers are refreshed in place while the parameters stay put, and laid out anew
    when one moves: either way a row runs its mutant of the weights as they are now."""
    model = nontrivial(SMALL, seed=6)
    pop = Population(model, seed=2, sigma=0.05, size=4, include=GROUPS)
    x, state = inputs(SMALL, 4), busy_state(model, 4)
    before, _ = pop.step_rows(x, state, range(4), path="native:1")
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data * 1.25 + 0.01  # new storage, new pointers
    after, _ = pop.step_rows(x, state, range(4), path="native:1")
    assert not torch.allclose(before, after)
    for j in (1, 2):
        expected, _ = mutant(pop, j).step(x[j:j + 1], state.select(j))
        assert_close(after[j:j + 1], expected, atol=1e-4, rtol=1e-4)


def test_the_population_step_runs_its_members_as_rows():
    model = nontrivial(SMALL, seed=5)
    pop = Population(model, seed=4, sigma=0.05, size=8, include=GROUPS)
    x = torch.randn(4, 3, SMALL.input_dim)
    state = busy_state(model, 12)
    out, new = pop.step(x, state, members=(2, 6))
    members = torch.arange(2, 6).repeat_interleave(3)
    expected, expected_state = pop.step_rows(x.reshape(12, -1), state, members)
    assert torch.equal(out.reshape(12, -1), expected) and new.equal(expected_state)
    seq, seq_state = pop.forward(x.unsqueeze(2), state, members=(2, 6))  # the pair form
    assert_close(out, seq[:, :, 0], atol=1e-4, rtol=1e-4)
    assert_close(new.wkv, seq_state.wkv, atol=1e-4, rtol=1e-4)


class Ran(Exception):
    pass


def test_the_row_step_runs_the_path_measured_fastest(tmp_path, monkeypatch):
    def native_stub(*args):
        raise Ran(f"native:{args[4]}")

    def torch_stub(*args):
        raise Ran("torch")

    model = nontrivial(SMALL)
    x, state = inputs(SMALL, 4), model.zero_state(4)
    cases = [(Timings(other=2.0, torch=1.0), "torch"), (Timings(other=1.0, torch=2.0), "native:1")]
    for i, (timings, expected) in enumerate(cases):
        paths.set_default(paths.PathChooser(tmp_path / str(i), measure=timings))
        pop = Population(model, seed=i, sigma=0.1, size=4)
        if expected != "torch" and rows.native.load() is None:
            continue
        assert pop.row_path(4) == expected and timings.calls == 1
        monkeypatch.setattr(rows, "step_native", native_stub)
        monkeypatch.setattr(rows, "step_torch", torch_stub)
        with pytest.raises(Ran, match=expected):
            pop.step_rows(x, state, range(4))
        monkeypatch.undo()
        assert pop.row_path(3) == expected and timings.calls == 1  # the same bucket, remembered
        pop.row_path(5)
        assert timings.calls == 2  # another bucket is measured apart


def test_forced_and_disabled_native_paths_are_not_measured(tmp_path):
    timings = Timings(other=1.0, torch=2.0)
    paths.set_default(paths.PathChooser(tmp_path, measure=timings))
    model = nontrivial(SMALL)
    model.step_path = "torch"
    assert Population(model, seed=1, sigma=0.1, size=4).row_path(4) == "torch"
    model.step_path, model.use_native = None, False
    assert Population(model, seed=1, sigma=0.1, size=4).row_path(4) == "torch"
    assert timings.calls == 0


def test_bad_members_are_refused_naming_what_is_accepted():
    model = nontrivial(SMALL)
    pop = Population(model, seed=1, sigma=0.1, size=4)
    x, state = inputs(SMALL, 3), model.zero_state(3)
    with pytest.raises(ValueError, match=r"members must lie in \[0, 4\), got values 0..4"):
        pop.step_rows(x, state, [0, 4, 1])
    with pytest.raises(ValueError, match="3 integer member indices"):
        pop.step_rows(x, state, [0, 1])
    with pytest.raises(ValueError, match="3 integer member indices"):
        pop.step_rows(x, state, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="state has 2 rows, the input has 3"):
        pop.step_rows(x, model.zero_state(2), [0, 1, 2])


@needs_native
def test_the_packed_weights_are_kept_only_where_the_row_kernel_runs(tmp_path):
    model = nontrivial(SMALL)
    x = inputs(SMALL, 2)
    paths.set_default(paths.PathChooser(tmp_path / "a", measure=Timings(other=1.0, torch=0.5)))
    model.step(x)  # every candidate measured, the row kernel among them; torch chosen
    assert model._rows is None
    pop = Population(model, seed=1, sigma=0.1, size=2)
    assert pop.row_path(2) == "torch" and model._rows is None
    paths.set_default(paths.PathChooser(tmp_path / "b", measure=Timings(other=1.0,
                                                                        **{"rows:1": 0.5})))
    model._step_paths.clear()
    model.step(x)
    assert model._rows is not None
