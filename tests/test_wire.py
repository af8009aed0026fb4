"""Wire protocol: round trips, zero-copy decoding, and the reason each bad message is refused."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import numpy as np
import pytest
import torch
from messages import fitness_message

from rwkv_swarm.kernels import RWKV7Config, RWKV7State
from rwkv_swarm.node import wire
from rwkv_swarm.node.wire import (
    BFLOAT16,
    DEFAULT_LIMITS,
    PACK_BYTES,
    PROTOCOL_VERSION,
    REASONS,
    SCHEMAS,
    Message,
    ProtocolError,
    WireLimits,
    decode,
    encode,
    message,
    state_from_message,
    state_message,
)

CONFIG = RWKV7Config(n_embd=128, n_layer=2, head_size=64, vocab_size=16)
FINGERPRINT = bytes(range(32))


def random_state(dtype: torch.dtype = torch.float32, batch: int = 1, seed: int = 0) -> RWKV7State:
    state = RWKV7State.zeros(CONFIG, batch, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    for t in state.tensors():
        t.copy_(torch.randn(t.shape, generator=gen))
    return state


def sample_messages() -> dict[str, Message]:
    """One valid message of every type."""
    rng = np.random.default_rng(0)
    common = {"swarm": "swarm-1", "node": "node-a", "gen": 7, "ts": 1234.5}
    return {
        "state": state_message(random_state(), FINGERPRINT, **common),
        "fitness": fitness_message(**common, n=16, seed=2**40 + 3, sigma=0.02, belief_mean=-1.5,
                                   belief_var=0.25),
        "belief": message("belief", **common, name="fitness",
                          arrays={"mean": rng.standard_normal((4, 3)),
                                  "var": rng.random((4, 3)).astype(np.float64)}),
        "signal": message("signal", **common, name="curriculum",
                          params={"level": 3, "rate": 0.5, "tag": "x", "on": True,
                                  "steps": [1, 2.5, "three"]},
                          targets=["node-b", "node-c"]),
        "control": message("control", **common, command="stop", args={"after_gen": 9}),
        "heartbeat": message("heartbeat", **common),
    }


def assert_same(got: Message, sent: Message) -> None:
    assert (got.type, got.swarm, got.node, got.gen, got.ts) == (
        sent.type, sent.swarm, sent.node, sent.gen, sent.ts)
    assert got.fields == sent.fields
    assert got.arrays.keys() == sent.arrays.keys()
    for name, arr in sent.arrays.items():
        assert got.arrays[name].dtype == arr.dtype, name
        assert got.arrays[name].shape == arr.shape, name
        assert got.arrays[name].tobytes() == arr.tobytes(), name


def frames_of(msg: Message) -> list[bytes]:
    """One frame per array: the layout the tests below take apart (decode takes both)."""
    return [bytes(f) for f in encode(msg, pack_bytes=0)]


def packed_frames_of(msg: Message) -> list[bytes]:
    """The frames as encode sends them: small arrays packed into frame 1."""
    return [bytes(f) for f in encode(msg)]


def repack(frames: list[bytes], **changes: object) -> list[bytes]:
    """Frames with header fields replaced (a value of ... deletes the field); a list given for
    `arrays` is packed into the bin that carries the declarations."""
    header = msgpack.unpackb(frames[0])
    for key, value in changes.items():
        if value is ...:
            del header[key]
        else:
            header[key] = msgpack.packb(value) if key == "arrays" and type(value) is list \
                else value
    return [msgpack.packb(header), *frames[1:]]


def reason_of(frames: list, limits: WireLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(frames, limits)
    assert info.value.reason in REASONS
    return info.value.reason


# -- round trips -------------------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert sample_messages().keys() == SCHEMAS.keys()


@pytest.mark.parametrize("msg_type", sorted(SCHEMAS))
def test_round_trip_preserves_every_field_and_array(msg_type: str) -> None:
    sent = sample_messages()[msg_type]
    assert_same(decode(frames_of(sent)), sent)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_state_round_trip_reproduces_to_bytes_exactly(dtype: torch.dtype) -> None:
    original = random_state(dtype, batch=3, seed=1)
    blob = original.to_bytes()
    state = RWKV7State.from_bytes(blob, CONFIG)
    msg = state_message(state, FINGERPRINT, swarm="s", node="n", gen=1)
    got = state_from_message(decode(frames_of(msg)), CONFIG, fingerprint=FINGERPRINT)
    assert got.to_bytes() == blob
    assert got.equal(original)
    got.wkv.add_(1.0)  # the received state owns writable memory
    assert not got.equal(original)


def test_bfloat16_travels_as_its_own_wire_dtype() -> None:
    msg = state_message(random_state(torch.bfloat16), FINGERPRINT, swarm="s", node="n", gen=0)
    header = msgpack.unpackb(encode(msg)[0])
    assert [a[1] for a in msgpack.unpackb(header["arrays"])] == ["bfloat16", "bfloat16",
                                                                   "float32"]
    assert decode(frames_of(msg)).arrays["att_x_prev"].dtype == BFLOAT16


def test_state_message_snapshots_the_state_unless_told_not_to() -> None:
    state = random_state()
    snap = state_message(state, FINGERPRINT, swarm="s", node="n", gen=0)
    alias = state_message(state, FINGERPRINT, swarm="s", node="n", gen=0, copy=False)
    before = snap.arrays["wkv"].copy()
    state.wkv.mul_(2.0)
    assert np.array_equal(snap.arrays["wkv"], before)
    assert np.array_equal(alias.arrays["wkv"], state.wkv.numpy())


@pytest.mark.parametrize("pack_bytes", [0, PACK_BYTES])
def test_decoded_arrays_are_read_only_views_on_the_received_frames(pack_bytes: int) -> None:
    frames = [bytearray(f) for f in encode(sample_messages()["state"], pack_bytes=pack_bytes)]
    msg = decode(frames)
    for name, arr in msg.arrays.items():
        assert any(np.shares_memory(arr, np.frombuffer(f, np.uint8)) for f in frames[1:]), name
        assert not arr.flags.writeable
    frames[-1][-4:] = np.float32(42.0).tobytes()  # the frame, not a copy, is what was decoded
    assert msg.arrays["wkv"].reshape(-1)[-1] == 42.0


def test_encode_packs_small_arrays_into_frame_1_and_lends_large_ones() -> None:
    config = RWKV7Config(n_embd=256, n_layer=4, head_size=64, vocab_size=16)
    state = RWKV7State.zeros(config, batch=1)
    msg = state_message(state, FINGERPRINT, swarm="s", node="n", gen=0)
    frames = encode(msg)
    att, ffn, wkv = (msg.arrays[k] for k in ("att_x_prev", "ffn_x_prev", "wkv"))
    assert wkv.nbytes > PACK_BYTES >= att.nbytes + ffn.nbytes
    assert [len(memoryview(f).cast("B")) for f in frames[1:]] == [att.nbytes + ffn.nbytes,
                                                                   wkv.nbytes]
    assert np.shares_memory(np.frombuffer(frames[2], np.uint8), wkv)  # lent, not copied
    assert not np.shares_memory(np.frombuffer(frames[1], np.uint8), att)
    assert_same(decode(frames), msg)
    assert len(encode(msg, pack_bytes=0)) == 4


def test_packed_arrays_start_at_multiples_of_8_with_zeros_between() -> None:
    msg = fitness_message(n=6)  # float64, uint8 (6 bytes: 2 of padding follow), float32
    frames = packed_frames_of(msg)
    assert len(frames) == 2
    got = decode(frames)
    base = np.frombuffer(frames[1], np.uint8).ctypes.data
    ends = []
    for name, arr in got.arrays.items():
        offset = arr.ctypes.data - base
        assert offset % 8 == 0, name
        assert frames[1][sum(ends[-1:]):offset] == bytes(offset - sum(ends[-1:])), name
        ends = [offset + arr.nbytes]
    assert ends == [len(frames[1])]
    assert_same(got, msg)


def small_state_message() -> Message:
    """A state whose arrays all fit in frame 1 (16 KiB)."""
    config = RWKV7Config(n_embd=64, n_layer=1, head_size=64, vocab_size=16)
    state = RWKV7State.zeros(config, batch=1)
    for i, t in enumerate(state.tensors()):
        t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(i)))
    return state_message(state, FINGERPRINT, swarm="s", node="n", gen=0)


def first_padding(msg: Message) -> int:
    """Offset in frame 1 of the first byte between two packed arrays."""
    arrays = list(msg.arrays.values())
    end = arrays[0].nbytes
    for arr in arrays[1:]:
        if end % 8:
            return end
        end += arr.nbytes
    raise AssertionError("no padding")


def test_decode_refuses_a_packed_frame_with_bytes_between_arrays_set() -> None:
    msg = fitness_message(n=6)
    frames = packed_frames_of(msg)
    pad = first_padding(msg)
    bad = bytearray(frames[1])
    bad[pad] = 1
    with pytest.raises(ProtocolError, match="bytes before array .* must be zero") as info:
        decode([frames[0], bytes(bad)])
    assert info.value.reason == "size_mismatch"


@pytest.mark.parametrize("cut", [-4, 4])
def test_decode_refuses_a_packed_frame_of_another_length(cut: int) -> None:
    frames = packed_frames_of(small_state_message())
    assert len(frames) == 2
    frame = frames[1][:cut] if cut < 0 else frames[1] + bytes(cut)
    with pytest.raises(ProtocolError, match="arrays att_x_prev, ffn_x_prev, wkv") as info:
        decode([frames[0], frame])
    assert info.value.reason == "size_mismatch"


@pytest.mark.parametrize("name", ["att_x_prev", "ffn_x_prev", "wkv"])
def test_a_nan_in_a_packed_frame_is_named_by_its_array(name: str) -> None:
    msg = small_state_message()
    arrays = {k: v.copy() for k, v in msg.arrays.items()}
    arrays[name].reshape(-1)[-1] = np.nan
    frames = packed_frames_of(replace(msg, arrays=arrays))
    assert len(frames) == 2
    with pytest.raises(ProtocolError, match=f"array {name} holds NaN") as info:
        decode(frames)
    assert info.value.reason == "non_finite"


def test_finite_spans_join_only_neighbours_of_one_dtype_in_frame_1() -> None:
    decls = [("a", "float32", (2,), 1, 0), ("b", "float32", (3,), 1, 8),  # joined: 0..20
             ("c", "uint8", (8,), 1, 24),  # not a float: it ends the span
             ("d", "float32", (2,), 1, 32), ("e", "float64", (1,), 1, 40),  # another dtype
             ("f", "float32", (4,), 2, 0)]  # a frame of its own
    assert wire._finite_spans(decls) == [
        ("float32", 1, 0, 5, ("a", "b")), ("float32", 1, 32, 2, ("d",)),
        ("float64", 1, 40, 1, ("e",)), ("float32", 2, 0, 4, ("f",))]


def test_encode_lends_arrays_too_large_to_pack_without_copying_them() -> None:
    msg = message("belief", swarm="s", node="n", name="b",
                  arrays={"mean": np.zeros(PACK_BYTES // 8), "var": np.zeros(PACK_BYTES // 8)})
    frames = encode(msg)
    assert len(frames) == 3
    for frame, arr in zip(frames[1:], msg.arrays.values(), strict=True):
        assert np.shares_memory(np.frombuffer(frame, np.uint8), arr)


def test_encode_makes_non_contiguous_and_big_endian_arrays_little_endian_c_order() -> None:
    mean = np.arange(12, dtype=">f8").reshape(3, 4).T
    msg = message("belief", swarm="s", node="n", name="b",
                  arrays={"mean": mean, "var": np.ones((4, 3))})
    got = decode(frames_of(msg))
    assert np.array_equal(got.arrays["mean"], mean)
    assert got.arrays["mean"].dtype == np.dtype("<f8")


def test_float_fields_given_as_ints_decode_as_floats() -> None:
    msg = fitness_message(sigma=1, belief_mean=0, belief_var=2)
    fields = decode(frames_of(msg)).fields
    assert [type(fields[k]) for k in ("sigma", "belief_mean", "belief_var")] == [float] * 3


# -- state helpers -----------------------------------------------------------------------------


def test_state_from_message_rejects_a_state_of_another_model_shape() -> None:
    msg = decode(frames_of(sample_messages()["state"]))
    other = RWKV7Config(n_embd=128, n_layer=3, head_size=64, vocab_size=16)
    with pytest.raises(ProtocolError, match=r"mismatch: .*\(2, 128, 64\).*\(3, 128, 64\)"):
        state_from_message(msg, other)


def test_state_from_message_rejects_a_state_of_other_weights() -> None:
    msg = decode(frames_of(sample_messages()["state"]))
    with pytest.raises(ProtocolError, match="mismatch: state of weights"):
        state_from_message(msg, CONFIG, fingerprint=b"\xff" * 32)


def test_state_from_message_rejects_other_message_types() -> None:
    with pytest.raises(ProtocolError, match="type: expected a state message"):
        state_from_message(sample_messages()["belief"], CONFIG)


# -- encode refuses what decode would ----------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (message("gossip", swarm="s", node="n"), "type"),
        (message("heartbeat", swarm="s", node="n", extra=1), "field"),
        (message("control", swarm="s", node="n", command="go"), "field"),  # args missing
        (message("heartbeat", swarm="", node="n"), "field"),
        (message("heartbeat", swarm="s", node="n", gen=-1), "field"),
        (message("heartbeat", swarm="s", node="n", gen=True), "field"),
        (message("heartbeat", swarm="s", node="n", ts=float("nan")), "field"),
        (message("control", swarm="s", node="n", command="go", args={"x": {"nested": 1}}),
         "field"),
        (message("control", swarm="s", node="n", command="go", args={"x": object()}), "field"),
        (fitness_message(arrays={"shaped": np.zeros(8, np.float64)}), "array_spec"),
        (fitness_message(arrays={"shaped": np.zeros((8, 1), np.float32)}), "array_spec"),
        (fitness_message(sigma=-0.1), "field"),
        (fitness_message(sigma=0.0), "field"),
        (fitness_message(include=[]), "field"),
        (fitness_message(arrays={"shaped": np.zeros(6, np.float32)}), "inconsistent"),
        (fitness_message(first=2), "inconsistent"),  # members 2..10 of a population of 8
        (fitness_message(arrays={"valid": np.full(8, 2, np.uint8)}), "inconsistent"),
        (fitness_message(arrays={"obs_count": np.ones(1)}), "inconsistent"),
        (message("belief", swarm="s", node="n", name="b",
                 arrays={"mean": np.zeros(2), "var": np.zeros(3)}), "inconsistent"),
        (message("belief", swarm="s", node="n", name="b",
                 arrays={"mean": np.zeros(2), "var": -np.ones(2)}), "inconsistent"),
        (message("belief", swarm="s", node="n", name="b",
                 arrays={"mean": np.zeros(2, np.complex64), "var": np.zeros(2)}), "array_spec"),
    ],
)
def test_encode_rejects_invalid_message_with_its_reason(msg: Message, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        encode(msg)
    assert info.value.reason == reason


def test_encode_checks_finiteness_only_when_asked() -> None:
    shaped = np.array([0.0, np.nan] * 4, np.float32)
    msg = fitness_message(arrays={"shaped": shaped})
    frames = encode(msg)  # the receiver's check: one pass over every float
    assert reason_of([bytes(f) for f in frames]) == "non_finite"
    with pytest.raises(ProtocolError, match="non_finite: array shaped"):
        encode(msg, check_finite=True)


def test_encode_enforces_the_size_limits() -> None:
    with pytest.raises(ProtocolError, match="too_large: message of"):
        encode(sample_messages()["state"], WireLimits(max_total_bytes=1024))


# -- decode: each bad input has its reason -----------------------------------------------------


def with_shaped_declared(frames: list[bytes], shape: list[int]) -> list[bytes]:
    """A fitness message's frames with the `shaped` array's declared shape replaced."""
    decls = msgpack.unpackb(msgpack.unpackb(frames[0])["arrays"])
    return repack(frames, arrays=msgpack.packb([[n, d, shape if n == "shaped" else s]
                                                for n, d, s in decls]))


def shaped_frame(frames: list[bytes]) -> int:
    names = [n for n, _, _ in msgpack.unpackb(msgpack.unpackb(frames[0])["arrays"])]
    return 1 + names.index("shaped")


def test_decode_rejects_declared_shape_larger_than_frame() -> None:
    frames = with_shaped_declared(frames_of(sample_messages()["fitness"]), [17])
    assert reason_of(frames) == "size_mismatch"


def test_decode_checks_declared_sizes_before_reading_a_nan_payload() -> None:
    nan = np.full(16, np.nan, np.float32).tobytes()
    frames = frames_of(sample_messages()["fitness"])
    i = shaped_frame(frames)
    assert reason_of([*frames[:i], nan, *frames[i + 1:]]) == "non_finite"
    assert reason_of([*frames[:i], nan + b"\0" * 4, *frames[i + 1:]]) == "size_mismatch"


def test_decode_rejects_huge_declared_shape_without_allocating() -> None:
    frames = with_shaped_declared(frames_of(sample_messages()["fitness"]), [2**62])
    assert reason_of(frames) == "too_large"


@pytest.mark.parametrize(
    ("limits", "frames_for", "reason"),
    [
        (WireLimits(max_frames=3), lambda f: f, "frames"),
        (WireLimits(max_header_bytes=64), lambda f: f, "too_large"),
        (WireLimits(max_total_bytes=2000), lambda f: f, "too_large"),
        (WireLimits(max_array_elements=1000), lambda f: f, "too_large"),
        (WireLimits(), lambda f: [], "frames"),
        (WireLimits(), lambda f: f[:1], "frames"),
        (WireLimits(), lambda f: f[:-1], "size_mismatch"),  # read as two arrays in frame 1
        (WireLimits(), lambda f: [*f, b""], "frames"),
        (WireLimits(), lambda f: [f[0][:-3], *f[1:]], "header"),
        (WireLimits(), lambda f: [f[0] + b"\x00", *f[1:]], "header"),
        (WireLimits(), lambda f: [msgpack.packb([1, 2]), *f[1:]], "header"),
        (WireLimits(), lambda f: [f[0], f[1], f[2], f[3][:-4]], "size_mismatch"),
        (WireLimits(), lambda f: [f[0], f[2], f[1], f[3] + b"\0" * 4], "size_mismatch"),
        (WireLimits(), lambda f: [*f[:3], np.full(len(f[3]) // 4, np.inf, "<f4").tobytes()],
         "non_finite"),
        (WireLimits(), lambda f: [f[0], "not a buffer", f[2], f[3]], "frames"),
    ],
)
def test_decode_rejects_bad_frames_with_their_reason(limits, frames_for, reason) -> None:
    frames = frames_of(sample_messages()["state"])
    assert reason_of(frames_for(frames), limits) == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"v": PROTOCOL_VERSION + 1}, "version"),
        ({"v": True}, "version"),
        ({"v": ...}, "version"),
        ({"type": "gossip"}, "type"),
        ({"type": b"state"}, "type"),
        ({"type": "heartbeat"}, "field"),  # state fields on a heartbeat
        ({"node": ...}, "field"),
        ({"node": 5}, "field"),
        ({"node": "n" * 129}, "field"),
        ({"gen": 2**64 - 1 + 0.5}, "field"),
        ({"ts": float("inf")}, "field"),
        ({"fingerprint": "text, not bytes"}, "field"),
        ({"fingerprint": b""}, "field"),
        ({"extra": 1}, "field"),
        ({"arrays": ...}, "field"),
        ({"arrays": "wkv"}, "array_spec"),
        ({"arrays": b"\xc1"}, "array_spec"),  # not msgpack
        ({"arrays": msgpack.packb({"wkv": 1})}, "array_spec"),
        ({"arrays": [["att_x_prev", "float32", [2, 1, 128]]] * 3}, "array_spec"),
        ({"arrays": [["att_x_prev", "float32"], 1, 2]}, "array_spec"),
        ({"arrays": [["att_x_prev", "int32", [2, 1, 128]], ["ffn_x_prev", "float32", [2, 1, 128]],
                     ["wkv", "float32", [2, 1, 2, 64, 64]]]}, "array_spec"),
        ({"arrays": [["att_x_prev", "float32", [2, 1, 128]], ["ffn_x_prev", "float32", [2, 128]],
                     ["wkv", "float32", [2, 1, 2, 64, 64]]]}, "array_spec"),
        ({"arrays": [["att_x_prev", "float32", [2, 1, 128]],
                     ["ffn_x_prev", "float32", [2, 1, -128]],
                     ["wkv", "float32", [2, 1, 2, 64, 64]]]}, "array_spec"),
        ({"arrays": [["att_x_prev", "float32", [2, 1, 128]],
                     ["ffn_x_prev", "float32", [2, 1, 128.0]],
                     ["wkv", "float32", [2, 1, 2, 64, 64]]]}, "array_spec"),
        ({"arrays": [["att_x_prev", "float32", [1, 2, 128]], ["ffn_x_prev", "float32", [2, 1, 128]],
                     ["wkv", "float32", [2, 1, 2, 64, 64]]]}, "inconsistent"),
        ({"arrays": [["att_x_prev", "float32", [2, 1, 128]], ["ffn_x_prev", "float32", [2, 1, 128]],
                     ["wkv", "float32", [2, 1, 8, 32, 32]]]}, "inconsistent"),
    ],
)
def test_decode_rejects_bad_header_with_its_reason(changes: dict, reason: str) -> None:
    frames = frames_of(sample_messages()["state"])
    assert reason_of(repack(frames, **changes)) == reason


def test_declarations_as_a_list_instead_of_a_bin_are_refused() -> None:
    frames = frames_of(sample_messages()["state"])
    header = msgpack.unpackb(frames[0])
    header["arrays"] = msgpack.unpackb(header["arrays"])
    with pytest.raises(ProtocolError, match="arrays must be bin") as info:
        decode([msgpack.packb(header), *frames[1:]])
    assert info.value.reason == "array_spec"


@pytest.mark.parametrize("inner", [b"\x91" * 5000 + b"\xc0", b"\xdc\xff\xff" * 1000])
def test_declarations_nested_too_deep_or_too_long_are_refused_as_array_spec(inner) -> None:
    frames = repack(frames_of(sample_messages()["state"]), arrays=inner)
    with pytest.raises(ProtocolError, match="the arrays bin (nests deeper|must be msgpack)") \
            as info:
        decode(frames)
    assert info.value.reason == "array_spec"


@pytest.mark.parametrize("odd", [1.0, True])
def test_a_checked_layout_is_not_reused_for_declarations_only_equal_in_value(odd) -> None:
    # decoded, [1.0, 3] and [True, 3] equal [1, 3]; as declared bytes they differ
    msg = message("belief", swarm="s", node="n", name="b",
                  arrays={"mean": np.zeros((1, 3)), "var": np.ones((1, 3))})
    frames = frames_of(msg)
    assert_same(decode(frames), msg)  # the layout is now known
    decls = msgpack.unpackb(msgpack.unpackb(frames[0])["arrays"])
    assert decls[0] == ["mean", "float64", [1, 3]]
    decls[0][2] = [odd, 3]
    assert reason_of(repack(frames, arrays=decls)) == "array_spec"


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("size", [7, 70_000])  # below and above the sum fast path
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_finds_every_non_finite_value(dtype: str, size: int, bad: float) -> None:
    rng = np.random.default_rng(size)
    for where in (0, size // 2, size - 1):
        mean = rng.standard_normal(size).astype(dtype)
        mean[where] = bad
        msg = message("belief", swarm="s", node="n", name="b",
                      arrays={"mean": mean, "var": np.ones(size, dtype)})
        assert reason_of(frames_of(msg)) == "non_finite", where


@pytest.mark.parametrize("bits", [0x7F80, 0xFF80, 0x7FC0, 0x7F81])  # inf, -inf, NaNs
def test_decode_finds_non_finite_bfloat16(bits: int) -> None:
    msg = state_message(random_state(torch.bfloat16), FINGERPRINT, swarm="s", node="n", gen=0)
    frames = frames_of(msg)
    att = bytearray(frames[1])
    att[10:12] = bits.to_bytes(2, "little")
    assert reason_of([frames[0], bytes(att), *frames[2:]]) == "non_finite"


@pytest.mark.parametrize("size", [3, 70_000])  # the isfinite path and the sum path
def test_a_signalling_nan_is_refused_without_a_float_warning(size: int) -> None:
    # warnings are errors in the tests: neither path may set off numpy's float warnings
    mean = np.zeros(size, np.float32)
    mean.view(np.uint32)[-1] = 0x7FA00000  # a signalling NaN
    msg = message("belief", swarm="s", node="n", name="b",
                  arrays={"mean": mean, "var": np.ones(size, np.float32)})
    assert reason_of(frames_of(msg)) == "non_finite"
    assert reason_of(packed_frames_of(msg)) == "non_finite"


def test_decode_accepts_finite_arrays_whose_sum_overflows() -> None:
    big = np.full(70_000, 3e38, np.float32)  # the fast path's sum is inf; every value is finite
    msg = message("belief", swarm="s", node="n", name="b", arrays={"mean": big, "var": big})
    assert np.array_equal(decode(frames_of(msg)).arrays["mean"], big)


def test_protocol_error_names_reason_and_detail() -> None:
    frames = repack(frames_of(sample_messages()["heartbeat"]), v=9)
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.reason == "version"
    assert str(info.value) == f"version: v must be {PROTOCOL_VERSION}, got int 9"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ([[[[1]]]], "list [[[...]]]"),
        ({"a": 1, "b": [1, 2, 3, 4]}, "dict {'a': 1, 'b': [1, 2, 3, ...]}"),
        ("x" * 200, "str '" + "x" * 39 + "..."),
        (b"\xff" * 3, r"bytes b'\xff\xff\xff'"),
        (msgpack.ExtType(5, b"abc"), "ExtType ExtType(code=5, 3 bytes)"),
    ],
)
def test_protocol_error_previews_the_bad_value_briefly(value: object, shown: str) -> None:
    frames = repack(frames_of(sample_messages()["heartbeat"]), node=value)
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert str(info.value) == f"field: node must be a str of 1..128 chars, got {shown}"


def test_encode_refuses_a_header_list_longer_than_decode_accepts() -> None:
    longest = DEFAULT_LIMITS.max_header_bytes // 64
    ok = message("control", swarm="s", node="n", command="go", args={"x": [1] * longest})
    assert decode(frames_of(ok)).fields["args"]["x"] == [1] * longest
    too_long = message("control", swarm="s", node="n", command="go",
                       args={"x": [1] * (longest + 1)})
    with pytest.raises(ProtocolError, match=f"header: .*lists of <= {longest} items"):
        encode(too_long)
