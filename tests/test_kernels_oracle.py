"""RWKV7 against the official `rwkv` package (RWKV_V7_ON=1, cpu fp32) on random checkpoints."""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
from official import official_model, random_official_checkpoint
from torch.testing import assert_close

from rwkv_swarm.kernels import RWKV7, RWKV7State

TOL = {"atol": 1e-4, "rtol": 1e-4}
CONFIGS = {  # two shapes, head size 64, n_layer >= 2
    "C128_L2": {"C": 128, "L": 2, "V": 256, "dims": (32, 32, 32, 64)},
    "C256_L3": {"C": 256, "L": 3, "V": 300, "dims": (64, 32, 48, 96), "F": 768},
}
TOKENS = [3, 17, 200, 5, 5, 99, 1, 0, 255, 42, 7, 8, 120, 64, 33, 2, 19, 250, 77, 11]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(ours, official) loaded from the same random official-layout checkpoint."""
    spec = CONFIGS[request.param]
    path = random_official_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth",
                                      spec["C"], spec["L"], spec["V"], dims=spec["dims"],
                                      F=spec.get("F"), seed=len(request.param))
    with contextlib.redirect_stdout(io.StringIO()):
        ref = official_model(path)
    return RWKV7.from_checkpoint(path), ref


def official_run(ref, tokens, state=None):
    """Token-by-token official logits (T, V) and the final state list."""
    logits = []
    for t in tokens:
        out, state = ref.forward(t, state)
        logits.append(out)
    return torch.stack(logits), state


def assert_state_matches(ours: RWKV7State, theirs: list[torch.Tensor], row: int = 0) -> None:
    for i in range(ours.n_layer):
        assert_close(ours.att_x_prev[i, row], theirs[3 * i], **TOL)
        assert_close(ours.wkv[i, row], theirs[3 * i + 1], **TOL)
        assert_close(ours.ffn_x_prev[i, row], theirs[3 * i + 2], **TOL)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_step_matches_official_token_by_token(pair, native):
    ours, ref = pair
    ours.use_native = native
    expected, ref_state = None, None
    state = ours.zero_state(1)
    for t in TOKENS:
        expected, ref_state = ref.forward(t, ref_state)
        out, state = ours.step(torch.tensor([t]), state)
        assert_close(out[0], expected, **TOL)
        assert_state_matches(state, ref_state)
    ours.use_native = True


def test_sequence_forward_matches_official_full_output(pair):
    ours, ref = pair
    expected_all, _ = ref.forward(TOKENS, None, full_output=True)
    _, ref_state = official_run(ref, TOKENS)
    out, state = ours(torch.tensor([TOKENS]))
    assert_close(out[0], expected_all, **TOL)
    assert_state_matches(state, ref_state)


def test_prefix_then_continue_from_carried_state_matches_official(pair):
    ours, ref = pair
    _, ref_prefix_state = ref.forward(TOKENS[:7], None)
    expected, ref_state = official_run(ref, TOKENS[7:], copy.deepcopy(ref_prefix_state))
    _, prefix_state = ours(torch.tensor([TOKENS[:7]]))
    assert_state_matches(prefix_state, ref_prefix_state)
    out, state = ours(torch.tensor([TOKENS[7:]]), prefix_state)
    assert_close(out[0], expected, **TOL)
    assert_state_matches(state, ref_state)


def test_batched_rows_each_match_the_official_single_sequence(pair):
    ours, ref = pair
    seqs = [TOKENS[:10], TOKENS[5:15], TOKENS[10:]]
    out, state = ours(torch.tensor(seqs))
    for row, seq in enumerate(seqs):
        expected, ref_state = official_run(ref, seq)
        assert_close(out[row], expected, **TOL)
        assert_state_matches(state, ref_state, row)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_checkpoint_stored_in_any_float_dtype_loads_like_the_official(tmp_path, dtype):
    path = random_official_checkpoint(tmp_path / "m.pth", 128, 2, 256, dtype=dtype, seed=5)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = official_model(path)
    ours = RWKV7.from_checkpoint(path)
    assert next(ours.parameters()).dtype == torch.float32
    expected, ref_state = official_run(ref, TOKENS[:6])
    out, state = ours(torch.tensor([TOKENS[:6]]))
    assert_close(out[0], expected, **TOL)
    assert_state_matches(state, ref_state)


def test_checkpoint_without_layer0_value_lora_loads(tmp_path):
    path = random_official_checkpoint(tmp_path / "m.pth", 128, 2, 256, with_layer0_v=False)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = official_model(path)
    ours = RWKV7.from_checkpoint(path)
    assert ours.config.dim_v == 32
    expected, _ = official_run(ref, TOKENS[:4])
    assert_close(ours(torch.tensor([TOKENS[:4]]))[0][0], expected, **TOL)
