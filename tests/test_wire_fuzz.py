"""Property-based fuzzing of `decode`: whatever the frames, only ProtocolError comes out."""

from __future__ import annotations

import math

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_swarm.kernels import RWKV7Config, RWKV7State
from rwkv_swarm.node.wire import (
    DTYPES,
    FLOAT_DTYPES,
    REASONS,
    SCHEMAS,
    Message,
    ProtocolError,
    decode,
    encode,
    message,
    state_message,
)

# derandomized: the same examples every run, no example database written
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def _valid_frames() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(1)
    common = {"swarm": "s", "node": "n", "gen": 3, "ts": 1.0}
    config = RWKV7Config(n_embd=64, n_layer=1, head_size=32, vocab_size=4)
    msgs = [
        state_message(RWKV7State.zeros(config, 2), b"\x07" * 8, **common),
        message("fitness", **common, seed=5, sigma=0.1, belief_mean=0.0, belief_var=1.0,
                arrays={"shaped": rng.standard_normal(8).astype(np.float32)}),
        message("belief", **common, name="b", arrays={"mean": rng.standard_normal(3),
                                                      "var": np.ones(3)}),
        message("signal", **common, name="x", params={"a": 1}, targets=["m"]),
        message("control", **common, command="go", args={}),
        message("heartbeat", **common),
    ]
    return {m.type: [bytes(f) for f in encode(m)] for m in msgs}


VALID = _valid_frames()
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=15,
)
header_keys = st.sampled_from(["v", "type", "swarm", "node", "gen", "ts", "arrays", "seed",
                               "sigma", "shaped", "fingerprint", "params", "args", "name"])


def decode_or_reason(frames: list) -> Message | str:
    """The decoded message, or the reason of the ProtocolError (anything else fails the test)."""
    try:
        msg = decode(frames)
    except ProtocolError as e:
        assert e.reason in REASONS
        return e.reason
    assert_consistent(msg, frames)
    return msg


def assert_consistent(msg: Message, frames: list) -> None:
    """What a successful decode promises: typed header, arrays that match their frames."""
    assert msg.type in SCHEMAS
    assert isinstance(msg.node, str) and isinstance(msg.gen, int) and math.isfinite(msg.ts)
    assert len(msg.arrays) == len(frames) - 1
    for arr, frame in zip(msg.arrays.values(), frames[1:], strict=True):
        assert arr.nbytes == len(frame)
        assert arr.dtype in DTYPES.values()
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all()


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    decode_or_reason(frames)


@FUZZ
@given(msgpack_values, st.lists(st.binary(max_size=64), max_size=4))
def test_random_msgpack_headers_raise_only_protocol_error(header, payloads) -> None:
    decode_or_reason([msgpack.packb(header), *payloads])


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.dictionaries(header_keys, msgpack_values, max_size=3))
def test_valid_header_with_random_field_values_raises_only_protocol_error(msg_type, changes):
    frames = VALID[msg_type]
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    decode_or_reason([msgpack.packb(header), *frames[1:]])


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_truncated_extended_dropped_or_extra_frames_raise_only_protocol_error(msg_type, data):
    frames = list(VALID[msg_type])
    op = data.draw(st.sampled_from(["truncate", "extend", "drop", "insert", "flip"]))
    i = data.draw(st.integers(0, len(frames) - 1))
    if op == "truncate":
        frames[i] = frames[i][: data.draw(st.integers(0, max(0, len(frames[i]) - 1)))]
    elif op == "extend":
        frames[i] += data.draw(st.binary(min_size=1, max_size=16))
    elif op == "drop":
        del frames[i]
    elif op == "insert":
        frames.insert(i, data.draw(st.binary(max_size=64)))
    else:
        pos = data.draw(st.integers(0, len(frames[0]) - 1))
        frames[0] = frames[0][:pos] + bytes([frames[0][pos] ^ 0xFF]) + frames[0][pos + 1:]
    result = decode_or_reason(frames)
    if op in ("truncate", "extend") and i > 0 or op in ("drop", "insert"):
        assert isinstance(result, str), f"{op} of frame {i} was accepted"


@FUZZ
@given(
    st.lists(st.integers(-(2**63), 2**64 - 1), max_size=10),  # what msgpack can carry
    st.sampled_from([*DTYPES, "float128", "complex64", "object", "<f4", ""]),
)
def test_huge_or_odd_declared_shapes_and_dtypes_raise_only_protocol_error(shape, dtype) -> None:
    frames = VALID["belief"]
    header = msgpack.unpackb(frames[0])
    header["arrays"][0][1:] = [dtype, shape]
    result = decode_or_reason([msgpack.packb(header), *frames[1:]])
    if [dtype, shape] != ["float64", [3]]:
        assert isinstance(result, str)


@FUZZ
@given(st.sampled_from(["state", "fitness", "belief"]), st.data())
def test_non_finite_payload_is_always_refused(msg_type, data) -> None:
    frames = list(VALID[msg_type])
    header = msgpack.unpackb(frames[0])
    floats = [i for i, (_, dtype, _) in enumerate(header["arrays"]) if dtype in FLOAT_DTYPES]
    i = data.draw(st.sampled_from(floats))
    dtype = DTYPES[header["arrays"][i][1]]
    arr = np.frombuffer(frames[i + 1], dtype).copy()
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    arr.reshape(-1)[data.draw(st.integers(0, arr.size - 1))] = bad
    frames[i + 1] = arr.tobytes()
    assert decode_or_reason(frames) == "non_finite"
