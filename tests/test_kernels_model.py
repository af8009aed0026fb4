"""RWKV7 internals: chunked WKV = token loop, step = forward, native = torch, config errors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rwkv_swarm.kernels import RWKV7, RWKV7Config, native, wkv
from rwkv_swarm.kernels.wkv import wkv_chunked, wkv_loop

needs_native = pytest.mark.skipif(native.load() is None,
                                  reason="no C compiler for the native step")


def wkv_inputs(B, H, T, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    kk = torch.nn.functional.normalize(rnd(B, H, T, N), dim=-1)
    a_lr = torch.sigmoid(rnd(B, H, T, N))
    logw = -0.606531 * torch.sigmoid(3 * rnd(B, H, T, N))  # the full decay range
    return rnd(B, H, N, N), rnd(B, H, T, N), logw, rnd(B, H, T, N), rnd(B, H, T, N), -kk, kk * a_lr


@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 40, 161])
def test_chunked_wkv_equals_token_loop_in_float64(T):
    args = wkv_inputs(2, 3, T, 16, torch.float64, seed=T)
    y_loop, S_loop = wkv_loop(*args)
    y_chunk, S_chunk = wkv_chunked(*args)
    assert_close(y_chunk, y_loop, atol=1e-11, rtol=1e-11)
    assert_close(S_chunk, S_loop, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_wkv_agrees_in_float32_for_any_chunk_length(chunk):
    args = wkv_inputs(1, 2, 200, 64, torch.float32, seed=1)
    y_ref, S_ref = wkv_loop(*(t.double() for t in args))
    y, S = wkv_chunked(*args, chunk=chunk)
    scale = y_ref.abs().max().item()
    assert (y.double() - y_ref).abs().max().item() < 2e-6 * scale
    assert (S.double() - S_ref).abs().max().item() < 1e-4


def test_sequence_forward_only_ever_sees_chunk_sized_blocks(monkeypatch):
    """Memory is O(T * N + chunk^2) per head: no T x T tensor is ever formed."""
    seen = []
    original = wkv._chunk

    def spy(S, r, *rest, **kwargs):
        seen.append(r.shape[1])
        return original(S, r, *rest, **kwargs)

    monkeypatch.setattr(wkv, "_chunk", spy)
    model = RWKV7(RWKV7Config(n_embd=64, n_layer=1, head_size=32, vocab_size=10))
    model.use_native = False  # the PyTorch form: native kernels keep one state per head
    model(torch.zeros(1, 1000, dtype=torch.long))
    assert max(seen) == wkv.CHUNK and sum(seen) == 1000


def nontrivial(cfg: RWKV7Config, seed: int = 0) -> RWKV7:
    """A model whose every block path matters (the trainer init zeroes several)."""
    return RWKV7(cfg, seed=seed, init="live")


CONTROL = RWKV7Config(n_embd=128, n_layer=2, input_dim=6, output_dim=3)
TOKEN = RWKV7Config(n_embd=64, n_layer=3, head_size=32, vocab_size=40)


@pytest.mark.parametrize("cfg", [CONTROL, TOKEN], ids=["control", "token"])
@pytest.mark.parametrize("use_native", [True, False], ids=["native", "torch"])
def test_stepping_equals_sequence_forward(cfg, use_native):
    model = nontrivial(cfg)
    model.use_native = use_native
    g = torch.Generator().manual_seed(7)
    B, T = 3, 25
    if cfg.token_mode:
        x = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    else:
        x = torch.randn(B, T, cfg.input_dim, generator=g)
    out_seq, state_seq = model(x)
    state, outs = model.zero_state(B), []
    for t in range(T):
        out, state = model.step(x[:, t], state)
        outs.append(out)
    assert_close(torch.stack(outs, 1), out_seq, atol=1e-5, rtol=1e-5)
    for a, b in zip(state.tensors(), state_seq.tensors(), strict=True):
        assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_native
def test_native_step_sees_in_place_weight_updates():
    model = nontrivial(CONTROL)
    x, state = torch.randn(1, 6), model.zero_state(1)
    before, _ = model.step(x, state)
    with torch.no_grad():
        model.blocks[1].att.key.weight.mul_(1.5)
        model.head.weight.add_(0.1)
    after, _ = model.step(x, state)
    model.use_native = False
    expected, _ = model.step(x, state)
    assert not torch.allclose(before, after)
    assert_close(after, expected, atol=1e-5, rtol=1e-5)


def test_step_does_not_modify_the_given_state():
    model = nontrivial(CONTROL)
    state = model.zero_state(2)
    state.wkv.normal_()
    snapshot = state.clone()
    for use_native in (True, False):
        model.use_native = use_native
        model.step(torch.randn(2, 6), state)
        assert state.equal(snapshot)


def test_bad_inputs_are_rejected_with_the_expected_shape():
    model = RWKV7(CONTROL)
    with pytest.raises(ValueError, match=r"observations \(B, T, 6\)"):
        model(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="state has batch 2, input has batch 3"):
        model(torch.randn(3, 5, 6), model.zero_state(2))
    with pytest.raises(ValueError, match="int tokens"):
        RWKV7(TOKEN)(torch.randn(2, 5))


@pytest.mark.parametrize("kwargs, message", [
    ({"n_embd": 100, "head_size": 64, "vocab_size": 5}, "multiple of head_size"),
    ({"n_embd": 64, "head_size": 32}, "either vocab_size"),
    ({"n_embd": 64, "head_size": 32, "vocab_size": 5, "input_dim": 3, "output_dim": 2},
     "either vocab_size"),
    ({"n_embd": 64, "head_size": 32, "input_dim": 3}, "both input_dim and output_dim"),
    ({"n_embd": 64, "head_size": 32, "vocab_size": 0}, "vocab_size must be >= 1"),
])
def test_config_errors_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RWKV7Config(**kwargs)


def test_initial_weights_are_deterministic_per_seed():
    a, b, c = (RWKV7(CONTROL, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_live_init_makes_every_block_path_act_and_trainer_init_starts_at_identity():
    trainer, live = RWKV7(CONTROL, seed=1), RWKV7(CONTROL, seed=1, init="live")
    for i in range(CONTROL.n_layer):
        fan_in = {"att.output.weight": CONTROL.n_embd, "ffn.value.weight": CONTROL.ffn_dim,
                  "att.w1": CONTROL.n_embd, "att.a1": CONTROL.n_embd, "att.g1": CONTROL.n_embd}
        for name, n in fan_in.items():
            t = trainer.get_parameter(f"blocks.{i}.{name}")
            lv = live.get_parameter(f"blocks.{i}.{name}")
            assert torch.count_nonzero(t) == 0, name
            assert 0.8 * n ** -0.5 < lv.std() < 1.2 * n ** -0.5, name
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a key-weight change is invisible only while output is zero
        for m in (trainer, live):
            before, _ = m(x)
            m.blocks[0].att.key.weight.mul_(2.0)
            m.use_native = False
            after, _ = m(x)
            m.changed = not torch.allclose(before, after)
    assert live.changed and not trainer.changed
    with pytest.raises(ValueError, match="init scheme"):
        RWKV7(CONTROL, init="xavier")


def test_numpy_input_runs_like_the_same_tensor_and_other_types_are_refused():
    import numpy as np

    model = RWKV7(RWKV7Config(n_embd=32, n_layer=1, head_size=16, input_dim=3, output_dim=2),
                  init="live")
    obs = np.random.default_rng(0).normal(size=(4, 3))  # float64, as environments return
    out, state = model.step(obs)
    ref, ref_state = model.step(torch.from_numpy(obs).float())
    assert torch.equal(out, ref) and state.equal(ref_state)
    seq, _ = model(obs[None].repeat(2, axis=0))
    assert seq.shape == (2, 4, 2)
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray, got list"):
        model.step([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="real observations, got numpy <U1"):
        model.step(np.array([["a", "b", "c"]]))
    tokens = RWKV7(RWKV7Config(n_embd=32, n_layer=1, head_size=16, vocab_size=8))
    with pytest.raises(ValueError, match="integer token ids, got numpy float64"):
        tokens.step(np.zeros(2))
    assert tokens.step(np.array([1, 2], dtype=np.int32))[0].shape == (2, 8)


def test_parameter_groups_have_one_definition_shared_by_matrices_and_targets():
    from rwkv_swarm.kernels.model import parameter_group
    from rwkv_swarm.kernels.population import targets_for

    model = RWKV7(RWKV7Config(n_embd=32, n_layer=2, head_size=16, input_dim=3, output_dim=2))
    params = dict(model.named_parameters())
    in_matrices = {n for n, p in params.items() if parameter_group(n, p) == "matrices"}
    assert {n for n, _ in model.matrices()} == in_matrices
    assert {t.name for t in targets_for(model, 1, ["matrices"])} == in_matrices
    assert parameter_group("blocks.0.att.r_k", params["blocks.0.att.r_k"]) == "vectors"
    assert {t.kind for t in targets_for(model, 1, ["matrices"])} == {"rows", "cols"}
