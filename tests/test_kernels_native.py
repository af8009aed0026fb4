"""The native forward kernels equal their PyTorch forms; the forward takes the measured path."""

from __future__ import annotations

import pytest
import torch
from test_kernels_model import CONTROL, TOKEN, needs_native, nontrivial
from test_kernels_paths import Timings
from torch.testing import assert_close

from rwkv_swarm.kernels import native_ops, paths, wkv
from rwkv_swarm.kernels.low_rank import low_rank_torch

pytestmark = needs_native


def projections(rows, T, H, N, seed=0):
    """(S, r, logw, k, v, kk, a_lr) as time_mix makes them: (rows, T, H*N), S (rows, H, N, N)."""
    g = torch.Generator().manual_seed(seed)
    C = H * N

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    kk = torch.nn.functional.normalize(rnd(rows, T, H, N), dim=-1).view(rows, T, C)
    logw = -0.606531 * torch.sigmoid(3 * rnd(rows, T, C))
    return (rnd(rows, H, N, N), rnd(rows, T, C), logw, rnd(rows, T, C), rnd(rows, T, C), kk,
            torch.sigmoid(rnd(rows, T, C)))


@pytest.mark.parametrize("T", [1, 2, 17])
@pytest.mark.parametrize("N", [16, 24, 64], ids=["N16", "N24-no-vector-multiple", "N64"])
@pytest.mark.parametrize("threads", [1, 3])
def test_native_wkv_equals_the_torch_form(T, N, threads):
    H, rows = 2, 3
    S, r, logw, k, v, kk, a_lr = projections(rows, T, H, N, seed=T * N)
    out_t, out_n = torch.empty_like(S), torch.empty_like(S)
    y_t = wkv.wkv_torch(S, r, logw, k, v, -kk, kk * a_lr, H, N, out_t)
    y_n = native_ops.wkv(S, r, logw, k, v, kk, a_lr, out_n, H, N, threads)
    assert_close(y_n, y_t, atol=1e-4, rtol=1e-4)
    assert_close(out_n, out_t, atol=1e-4, rtol=1e-4)


def test_native_wkv_may_write_the_state_in_place():
    S, r, logw, k, v, kk, a_lr = projections(2, 5, 2, 32)
    expected = torch.empty_like(S)
    y_ref = native_ops.wkv(S, r, logw, k, v, kk, a_lr, expected, 2, 32, 1)
    y = native_ops.wkv(S, r, logw, k, v, kk, a_lr, S, 2, 32, 2)
    assert torch.equal(S, expected) and torch.equal(y, y_ref)


def test_native_wkv_refuses_disagreeing_shapes():
    S, r, logw, k, v, kk, a_lr = projections(2, 3, 2, 16)
    with pytest.raises(ValueError, match="WKV shapes disagree"):
        native_ops.wkv(S[:1], r, logw, k, v, kk, a_lr, S[:1], 2, 16, 1)


@pytest.mark.parametrize("rank", [1, 3, 6])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_low_rank_equals_the_torch_form(rank, threads):
    g = torch.Generator().manual_seed(rank)
    pairs, rows, n_in, n_out, sigma = 5, 6, 37, 20, 0.3
    x, y = torch.randn(pairs, rows, n_in, generator=g), torch.randn(pairs, rows, n_out, generator=g)
    left, right = torch.randn(pairs, n_in, rank, generator=g), torch.randn(pairs, n_out, rank,
                                                                            generator=g)
    expected = y.clone()
    low_rank_torch(expected, x, left, right, torch.tensor([sigma, -sigma]).view(1, 2, 1, 1))
    native_ops.low_rank(y, x, left.transpose(1, 2).contiguous(),
                        right.transpose(1, 2).contiguous(), sigma, threads)
    assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [CONTROL, TOKEN], ids=["control", "token"])
def test_forward_with_native_kernels_equals_the_torch_forward(cfg):
    native_model, torch_model = nontrivial(cfg), nontrivial(cfg)
    torch_model.use_native = False
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, cfg.vocab_size, (4, 21), generator=g) if cfg.token_mode \
        else torch.randn(4, 21, cfg.input_dim, generator=g)
    for T in (1, 21):  # the step form and the chunked form on the torch side
        out, state = native_model(x[:, :T])
        expected, expected_state = torch_model(x[:, :T])
        assert_close(out, expected, atol=1e-4, rtol=1e-4)
        for a, b in zip(state.tensors(), expected_state.tensors(), strict=True):
            assert_close(a, b, atol=1e-4, rtol=1e-4)


class Ran(Exception):
    pass


def test_the_forward_runs_the_wkv_path_measured_fastest(tmp_path, monkeypatch):
    def stub(*args):
        raise Ran(args[-1])  # the team size it was given

    monkeypatch.setattr(native_ops, "wkv", stub)
    model = nontrivial(CONTROL)
    paths.set_default(paths.PathChooser(tmp_path / "a", measure=Timings(other=2.0, torch=1.0)))
    model(torch.randn(2, 3, 6))  # torch measured faster: the stub never runs
    paths.set_default(paths.PathChooser(tmp_path / "b", measure=Timings(other=1.0, torch=2.0)))
    with pytest.raises(Ran, match="1"):  # native measured faster, one thread first among ties
        model(torch.randn(2, 3, 6))
