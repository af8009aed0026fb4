"""RWKV7State: constant size, exact byte round trip, clear errors, row selection."""

from __future__ import annotations

import struct

import pytest
import torch

from rwkv_swarm.kernels import RWKV7, RWKV7Config, RWKV7State
from rwkv_swarm.kernels.state import HEADER_SIZE

CFG = RWKV7Config(n_embd=128, n_layer=2, vocab_size=30)


def random_state(batch=3, dtype=torch.float32, seed=0) -> RWKV7State:
    g = torch.Generator().manual_seed(seed)
    s = RWKV7State.zeros(CFG, batch, dtype=dtype)
    return RWKV7State(torch.randn(s.att_x_prev.shape, generator=g).to(dtype),
                      torch.randn(s.wkv.shape, generator=g),
                      torch.randn(s.ffn_x_prev.shape, generator=g).to(dtype))


def test_size_is_independent_of_sequence_length():
    model = RWKV7(CFG)
    _, short = model(torch.zeros(2, 1, dtype=torch.long))
    _, long = model(torch.zeros(2, 300, dtype=torch.long))
    assert short.nbytes == long.nbytes == 2 * 2 * (2 * 128 + 2 * 64 * 64) * 4
    assert len(short.to_bytes()) == len(long.to_bytes())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bytes_round_trip_is_exact(dtype):
    state = random_state(dtype=dtype)
    blob = state.to_bytes()
    assert len(blob) == HEADER_SIZE + state.nbytes
    back = RWKV7State.from_bytes(blob, CFG)
    assert back.equal(state)
    assert back.att_x_prev.dtype == dtype and back.wkv.dtype == torch.float32


def test_from_bytes_accepts_memoryview_and_bytearray():
    blob = random_state().to_bytes()
    assert RWKV7State.from_bytes(memoryview(blob)).equal(RWKV7State.from_bytes(bytearray(blob)))


def corrupt(blob: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:-4], "bytes, expected"),
    (lambda b: b + b"\0", "bytes, expected"),
    (lambda b: b[:10], "shorter than its header"),
    (lambda b: b"XXXXXXX" + b[7:], "magic"),
    (lambda b: corrupt(b, 7, "<B", 9), "version 9"),
    (lambda b: corrupt(b, 8, "<B", 7), "dtype code 7"),
    (lambda b: corrupt(b, 13, "<I", 4), "bytes, expected"),  # batch 4 declared, 3 sent
])
def test_bad_blobs_raise_value_error_with_reason(mutate, reason):
    with pytest.raises(ValueError, match=reason):
        RWKV7State.from_bytes(mutate(random_state().to_bytes()))


def test_blob_of_another_model_shape_is_rejected():
    other = RWKV7Config(n_embd=192, n_layer=2, vocab_size=30)
    with pytest.raises(ValueError, match="does not match the model"):
        RWKV7State.from_bytes(random_state().to_bytes(), other)


def test_rows_can_be_selected_and_stacked_into_another_batch():
    a, b = random_state(batch=3, seed=1), random_state(batch=2, seed=2)
    mixed = RWKV7State.cat([a.select(2), b.select([1, 0])])
    assert mixed.batch == 3
    assert torch.equal(mixed.wkv[:, 0], a.wkv[:, 2])
    assert torch.equal(mixed.att_x_prev[:, 1], b.att_x_prev[:, 1])
    assert torch.equal(mixed.ffn_x_prev[:, 2], b.ffn_x_prev[:, 0])
    assert torch.equal(a.repeat(2).wkv[:, 3], a.wkv[:, 1])


def test_a_handed_over_row_continues_exactly_like_the_original():
    model = RWKV7(CFG, seed=4)
    tokens = torch.randint(0, 30, (3, 9), generator=torch.Generator().manual_seed(0))
    _, state = model(tokens[:, :5])
    out_all, _ = model(tokens[:, 5:], state)
    moved = RWKV7State.from_bytes(state.select(1).to_bytes(), CFG)
    out_one, _ = model(tokens[1:2, 5:], moved)
    torch.testing.assert_close(out_one[0], out_all[1], atol=1e-5, rtol=1e-5)


def test_inconsistent_tensors_are_rejected():
    s = random_state()
    with pytest.raises(ValueError, match="float32"):
        RWKV7State(s.att_x_prev, s.wkv.double(), s.ffn_x_prev)
    with pytest.raises(ValueError, match="ffn_x_prev shape"):
        RWKV7State(s.att_x_prev, s.wkv, s.ffn_x_prev[:, :2])
