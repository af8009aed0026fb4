"""Property-based fuzzing of `decode`: whatever the frames, only ProtocolError comes out."""

from __future__ import annotations

import gc
import math
import struct
import sys
import tracemalloc

import msgpack
import numpy as np
import pytest
from hostile_inputs import HEADER_LIMIT, MSGPACK_MAX_DEPTH, nested, packed_map, with_raw
from hypothesis import given, settings
from hypothesis import strategies as st
from messages import fitness_message

from rwkv_swarm.kernels import RWKV7Config, RWKV7State
from rwkv_swarm.node.wire import (
    DEFAULT_LIMITS,
    DTYPES,
    REASONS,
    SCHEMAS,
    Message,
    ProtocolError,
    WireLimits,
    decode,
    encode,
    message,
    state_message,
)

# derandomized: the same examples every run, no example database written
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def _valid_messages() -> dict[str, Message]:
    rng = np.random.default_rng(1)
    common = {"swarm": "s", "node": "n", "gen": 3, "ts": 1.0}
    config = RWKV7Config(n_embd=64, n_layer=1, head_size=32, vocab_size=4)
    msgs = [
        state_message(RWKV7State.zeros(config, 2), b"\x07" * 8, **common),
        fitness_message(**common, seed=5),
        message("belief", **common, name="b", arrays={"mean": rng.standard_normal(3),
                                                      "var": np.ones(3)}),
        message("signal", **common, name="x", params={"a": 1}, targets=["m"]),
        message("control", **common, command="go", args={}),
        message("heartbeat", **common),
    ]
    return {m.type: m for m in msgs}


MESSAGES = _valid_messages()
# one frame per array: what the tests that take frames apart need (decode takes both layouts)
VALID = {t: [bytes(f) for f in encode(m, pack_bytes=0)] for t, m in MESSAGES.items()}
PACKED = {t: [bytes(f) for f in encode(m)] for t, m in MESSAGES.items()}  # as encode sends
LAYOUTS = {"one frame per array": VALID, "packed": PACKED}
assert PACKED["state"] != VALID["state"] and len(PACKED["fitness"]) == 2
MAX_DETAIL_CHARS = 200  # an error message is a line of a log, whatever the input
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=15,
)
header_keys = st.sampled_from(["v", "type", "swarm", "node", "gen", "ts", "arrays", "seed",
                               "sigma", "shaped", "fingerprint", "params", "args", "name"])


def refusal(frames: list, limits: WireLimits = DEFAULT_LIMITS) -> Message | ProtocolError:
    """The decoded message or the ProtocolError (anything else fails the test); a refusal's
    message must be short."""
    try:
        msg = decode(frames, limits)
    except ProtocolError as e:
        assert e.reason in REASONS
        assert len(str(e)) <= MAX_DETAIL_CHARS, str(e)[:1000]
        return e
    assert_consistent(msg, frames)
    return msg


def decode_or_reason(frames: list, limits: WireLimits = DEFAULT_LIMITS) -> Message | str:
    """The decoded message, or the reason of the ProtocolError (anything else fails the test)."""
    result = refusal(frames, limits)
    return result.reason if isinstance(result, ProtocolError) else result


def assert_consistent(msg: Message, frames: list) -> None:
    """What a successful decode promises: typed header, arrays that match their frames."""
    assert msg.type in SCHEMAS
    assert isinstance(msg.node, str) and isinstance(msg.gen, int) and math.isfinite(msg.ts)
    assert len(msg.arrays) >= len(frames) - 1
    assert sum(arr.nbytes for arr in msg.arrays.values()) <= sum(map(len, frames[1:]))
    views = [np.frombuffer(f, np.uint8) for f in frames[1:]]
    for arr in msg.arrays.values():
        # inside one received frame (an empty array holds no memory)
        assert sum(np.shares_memory(arr, v) for v in views) == (arr.nbytes > 0)
        assert arr.dtype in DTYPES.values()
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all()
    for value in msg.fields.values():  # no NaN or inf anywhere: params hold lists of scalars
        for x in value.values() if type(value) is dict else [value]:
            for y in x if type(x) is list else [x]:
                assert type(y) is not float or math.isfinite(y)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    decode_or_reason(frames)


@FUZZ
@given(msgpack_values, st.lists(st.binary(max_size=64), max_size=4))
def test_random_msgpack_headers_raise_only_protocol_error(header, payloads) -> None:
    decode_or_reason([msgpack.packb(header), *payloads])


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.dictionaries(header_keys, msgpack_values, max_size=3),
       st.sampled_from(sorted(LAYOUTS)))
def test_valid_header_with_random_field_values_raises_only_protocol_error(msg_type, changes,
                                                                          layout):
    frames = LAYOUTS[layout][msg_type]
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    decode_or_reason([msgpack.packb(header), *frames[1:]])


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data(), st.sampled_from(sorted(LAYOUTS)))
def test_truncated_extended_dropped_or_extra_frames_raise_only_protocol_error(msg_type, data,
                                                                              layout):
    frames = list(LAYOUTS[layout][msg_type])
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
    decls = msgpack.unpackb(header["arrays"])
    decls[0][1:] = [dtype, shape]
    header["arrays"] = msgpack.packb(decls)
    result = decode_or_reason([msgpack.packb(header), *frames[1:]])
    if [dtype, shape] != ["float64", [3]]:
        assert isinstance(result, str)


@FUZZ
@given(st.sampled_from(["state", "fitness", "belief"]), st.data(), st.sampled_from([0, 1 << 16]))
def test_non_finite_payload_is_always_refused(msg_type, data, pack_bytes) -> None:
    frames = [bytearray(f) for f in encode(MESSAGES[msg_type], pack_bytes=pack_bytes)]
    arrays = decode(frames).arrays  # views on the frames: where to write the bad value
    name = data.draw(st.sampled_from([n for n, a in arrays.items() if a.dtype.kind == "f"]))
    arr = arrays[name]
    k = next(k for k, f in enumerate(frames) if np.shares_memory(arr, np.frombuffer(f, "u1")))
    at = arr.ctypes.data - np.frombuffer(frames[k], "u1").ctypes.data
    at += arr.itemsize * data.draw(st.integers(0, arr.size - 1))
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    frames[k][at:at + arr.itemsize] = np.array(bad, arr.dtype).tobytes()
    with pytest.raises(ProtocolError, match=f"array {name} holds NaN or inf") as info:
        decode(frames)
    assert info.value.reason == "non_finite"


# -- inputs at Python's limits: depth, size, 64-bit edges, every msgpack type in every field -----

ROOMY = WireLimits(max_header_bytes=2**20)  # room for nesting deeper than msgpack allows
# header fields of each valid message, and one field no schema has
FIELDS = {t: [*msgpack.unpackb(frames[0]), "unknown"] for t, frames in VALID.items()}
# the reason a bad value of each field gives (a field's own kind of error otherwise)
FIELD_REASONS = {"v": {"version"}, "type": {"type"}, "arrays": {"array_spec", "frames"},
                 # a fitness report's members must lie within its population
                 "size": {"field", "inconsistent"}, "first": {"field", "inconsistent"}}


def with_field(msg_type: str, field: str, raw: bytes) -> list[bytes]:
    """Frames of VALID[msg_type] whose header holds the packed value `raw` as `field`."""
    return with_raw(VALID[msg_type], field, raw)


def assert_names_field(result: Message | ProtocolError, field: str) -> None:
    """A refusal of a bad `field` value has the field's reason and names it."""
    if isinstance(result, ProtocolError) and result.reason != "header":
        assert result.reason in FIELD_REASONS.get(field, {"field"}), result
        assert field in result.detail, result


DEPTHS = [100, 1000, MSGPACK_MAX_DEPTH - 1, MSGPACK_MAX_DEPTH, 100_000]
CONTAINERS = ["list", "map", "mixed"]


# Exhaustive rather than drawn by hypothesis, which raises the recursion limit while it runs
# (a repr of 1000 nested lists passes under it and fails in a node).
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("container", CONTAINERS)
def test_deeply_nested_value_in_any_header_field_is_refused_naming_the_field(
    depth: int, container: str
) -> None:
    for msg_type, fields in FIELDS.items():
        for field in fields:
            frames = with_field(msg_type, field, nested(depth, container))
            for limits in (DEFAULT_LIMITS, ROOMY):
                result = refusal(frames, limits)
                assert isinstance(result, ProtocolError), (msg_type, field)
                if len(frames[0]) > limits.max_header_bytes:
                    assert result.reason == "too_large"
                elif depth + 1 > MSGPACK_MAX_DEPTH:  # + 1: the header map
                    assert result.reason == "header"
                else:
                    assert_names_field(result, field)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("container", CONTAINERS)
def test_deeply_nested_header_is_refused(depth: int, container: str) -> None:
    frames = [nested(depth, container)]
    for limits in (DEFAULT_LIMITS, ROOMY):
        result = refusal(frames, limits)
        assert isinstance(result, ProtocolError)
        if len(frames[0]) > limits.max_header_bytes:
            assert result.reason == "too_large"
        elif depth > MSGPACK_MAX_DEPTH or container != "map":
            assert result.reason == "header"
        else:  # a map, but without the version field
            assert result.reason == "version"


@pytest.mark.parametrize("declared", [64, 1024, 4096, 65535])
def test_nested_lists_declaring_more_items_than_they_hold_are_refused_in_bounded_memory(
    declared: int,
) -> None:
    # msgpack allocates each list as declared before reading its items: 1023 levels of
    # 65535-item lists in 3 KiB took 78 MiB and 30 ms to refuse
    header = (b"\xdc" + declared.to_bytes(2, "big")) * (MSGPACK_MAX_DEPTH - 1)
    header += b"\xc0" * (HEADER_LIMIT - len(header))
    tracemalloc.start()
    try:
        assert decode_or_reason([header]) == "header"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 256 * HEADER_LIMIT  # 16 MiB


def inside_decode() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "decode_received" and code.co_filename.endswith("wire.py"):
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("enabled", [True, False])
def test_decoding_a_header_of_many_containers_sets_off_no_garbage_collection(enabled) -> None:
    # a collection while 61,000 received lists live traverses them all and promotes them:
    # every such header then made the process collect its whole heap
    args = b"\xdc" + (1000).to_bytes(2, "big") + (b"\xdc\x00\x3c" + b"\x90" * 60) * 1000
    frames = with_field("control", "args", args)
    starts: list[int] = []

    def count(phase: str, info: dict) -> None:
        # only collections that start while decode holds the received objects: one right after
        # it (the allocation count is high then) finds them freed already, and another thread's
        # explicit gc.collect() (Ray's, when a session runs) is not decode's doing
        if phase == "start" and inside_decode():
            starts.append(info["generation"])

    was = gc.isenabled()
    gc.enable() if enabled else gc.disable()
    gc.callbacks.append(count)
    try:
        assert decode_or_reason(frames) == "field"
        assert gc.isenabled() == enabled
    finally:
        gc.callbacks.remove(count)
        gc.enable() if was else gc.disable()
    assert starts == []


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_header_repeating_a_key_is_refused(msg_type, data) -> None:
    frames = VALID[msg_type]
    header = msgpack.unpackb(frames[0])
    pairs = [(k, msgpack.packb(v)) for k, v in header.items()]
    key = data.draw(st.sampled_from(sorted(header)))
    again = data.draw(st.sampled_from([header[key], None]))  # the same value or another
    pairs.insert(data.draw(st.integers(0, len(pairs))), (key, msgpack.packb(again)))
    result = refusal([packed_map(pairs), *frames[1:]])
    assert isinstance(result, ProtocolError) and result.reason == "header"
    assert repr(key) in result.detail


def test_map_inside_a_field_repeating_a_key_is_refused() -> None:
    args = packed_map([("after", msgpack.packb(1)), ("after", msgpack.packb(2))])
    result = refusal(with_field("control", "args", args))
    assert isinstance(result, ProtocolError) and result.reason == "header"
    assert "'after'" in result.detail


def _f32(x: float) -> bytes:
    return b"\xca" + struct.pack(">f", x)


ODD_VALUES = [
    None, True, False, 0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 0.0, -0.0, 5e-324,
    sys.float_info.max, math.nan, math.inf, -math.inf, "", "x", "n" * 129, "\x00", "\ud7ff",
    b"", b"x", b"\x07" * 65, [], [1], [[[[]]]], {}, {"a": 1}, {"a": [1, "b"]}, {"a": {"b": 1}},
    {"": None}, ["x"] * 3, msgpack.ExtType(1, b"x"), msgpack.ExtType(127, b"\0" * 300),
    msgpack.Timestamp(0, 0), msgpack.Timestamp(2**34, 999_999_999), msgpack.Timestamp(-1, 5),
]
ODD_RAW = [
    _f32(math.nan), _f32(math.inf), _f32(-0.0), _f32(1e-45), b"\xca\x7f\x80\x00\x01",  # sNaN
    b"\xd4\x05\x00", b"\xc7\x00\x05", b"\xd6\xff\x00\x00\x00\x00",  # ext, empty ext, timestamp
    b"\xd5\xff\x00\x00",  # a timestamp of a length msgpack refuses
    b"\x81\x01\x01", b"\x81\xc0\x01", b"\x81\xc4\x01k\x01",  # map keys: int, nil, bytes
    b"\xa2\xed\xa0", b"\xa1\xff",  # invalid UTF-8: a surrogate, a stray byte
    b"\xc1",  # the one byte msgpack never uses
    b"\xcf" + (5).to_bytes(8, "big"), b"\xd3" + (5).to_bytes(8, "big"),  # 5, 8 bytes wide
]
packed_values = (st.sampled_from([msgpack.packb(v) for v in ODD_VALUES]) | st.sampled_from(ODD_RAW)
                 | msgpack_values.map(msgpack.packb))


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data(), packed_values)
def test_any_msgpack_value_in_any_header_field_is_accepted_or_refused_naming_the_field(
    msg_type, data, raw
) -> None:
    field = data.draw(st.sampled_from(FIELDS[msg_type]))
    result = refusal(with_field(msg_type, field, raw))
    if field != "type":  # another valid type fails on that type's fields
        assert_names_field(result, field)


EDGE_INTS = [-(2**63), -(2**63) + 1, -(2**32), -1, 0, 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data(),
       st.sampled_from(EDGE_INTS) | st.integers(-(2**63), 2**64 - 1), st.booleans())
def test_integers_at_the_64_bit_edges_are_accepted_exactly_where_the_field_allows(
    msg_type, data, x, wide
) -> None:
    field = data.draw(st.sampled_from(FIELDS[msg_type]))
    raw = msgpack.packb(x)
    if wide:  # the same value in msgpack's 8-byte encodings, as other packers may send it
        raw = b"\xd3" + x.to_bytes(8, "big", signed=True) if x < 2**63 else raw
    result = refusal(with_field(msg_type, field, raw))
    if field == "gen":
        assert isinstance(result, Message) == (x >= 0)
        assert not isinstance(result, Message) or result.gen == x
    elif field == "ts":
        assert isinstance(result, Message) and result.ts == float(x)
    assert_names_field(result, field)


@pytest.mark.parametrize("changes", [{"gen": 2**64}, {"gen": -(2**63) - 1}, {"ts": 10**400},
                                     {"args": {"x": 10**5000}}, {"args": {"x": [2**64]}}])
def test_integers_beyond_64_bits_are_refused_by_the_sender(changes: dict) -> None:
    fields = {"swarm": "s", "node": "n", "command": "go", "args": {}, **changes}
    with pytest.raises(ProtocolError) as info:
        encode(message("control", **fields))
    assert info.value.reason == "field"
    assert len(str(info.value)) <= MAX_DETAIL_CHARS


EDGE_FLOATS = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, sys.float_info.max,
               -sys.float_info.max, math.nan, -math.nan, math.inf, -math.inf]


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data(), st.sampled_from(EDGE_FLOATS) | st.floats(),
       st.booleans())
def test_float_edge_cases_are_accepted_bit_exact_when_finite_and_never_when_not(
    msg_type, data, x, single
) -> None:
    field = data.draw(st.sampled_from(FIELDS[msg_type]))
    if single:
        x = float(np.float32(x)) if abs(x) <= 3.4e38 or not math.isfinite(x) else math.inf
        raw = _f32(x)
    else:
        raw = b"\xcb" + struct.pack(">d", x)
    result = refusal(with_field(msg_type, field, raw))
    if field == "ts":
        assert isinstance(result, Message) == math.isfinite(x)
        assert not isinstance(result, Message) or struct.pack(">d", result.ts) == struct.pack(
            ">d", x)
    assert_names_field(result, field)


def big_value(kind: str, size: int) -> bytes:
    """A packed value of `kind` taking about `size` bytes."""
    n = max(0, size - 6)
    head = {"str": b"\xdb", "bin": b"\xc6", "ext": b"\xc9"}
    if kind in head:
        return head[kind] + n.to_bytes(4, "big") + (b"\x05" if kind == "ext" else b"") + b"a" * n
    if kind == "list":  # small ints, as a params list of scalars would hold
        return b"\xdd" + n.to_bytes(4, "big") + b"\x01" * n
    # a map of distinct keys of small ints, as a params map would be
    keys = [f"{i:05x}".encode() for i in range(n // 7)]
    return b"\xdf" + len(keys).to_bytes(4, "big") + b"".join(b"\xa5" + k + b"\x01" for k in keys)


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data(),
       st.sampled_from(["str", "bin", "ext", "list", "map"]), st.integers(-64, 64))
def test_values_filling_the_header_limit_raise_only_protocol_error(
    msg_type, data, kind, slack
) -> None:
    field = data.draw(st.sampled_from(FIELDS[msg_type]))
    room = HEADER_LIMIT - len(with_field(msg_type, field, b"")[0]) + slack
    frames = with_field(msg_type, field, big_value(kind, room))
    result = refusal(frames)
    if len(frames[0]) > HEADER_LIMIT:
        assert isinstance(result, ProtocolError) and result.reason == "too_large"
    else:
        assert_names_field(result, field)


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.integers(1, HEADER_LIMIT // 8))
def test_header_of_many_unknown_fields_is_refused_with_a_short_message(msg_type, n) -> None:
    frames = VALID[msg_type]
    pairs = [(k, msgpack.packb(v)) for k, v in msgpack.unpackb(frames[0]).items()]
    pairs += [(f"x{i:06}", b"\xc0") for i in range(n)]
    header = packed_map(pairs)
    result = refusal([header, *frames[1:]])
    expected = "too_large" if len(header) > HEADER_LIMIT else "field"
    assert isinstance(result, ProtocolError) and result.reason == expected


@FUZZ
@given(st.lists(st.integers(0, 2**64 - 1), max_size=7), st.data())
def test_empty_array_of_huge_dimensions_is_refused_as_too_large(dims, data) -> None:
    shape = list(dims)
    shape.insert(data.draw(st.integers(0, len(shape))), 0)
    frames = VALID["belief"]
    header = msgpack.unpackb(frames[0])
    decls = msgpack.unpackb(header["arrays"])
    for entry in decls:
        entry[2] = shape
    header["arrays"] = msgpack.packb(decls)
    result = decode_or_reason([msgpack.packb(header), b"", b""])
    if math.prod(d for d in shape if d) > DEFAULT_LIMITS.max_array_elements:
        assert result == "too_large"


@pytest.mark.parametrize("i", [0, 1, 2])
def test_non_contiguous_buffer_frame_is_refused(i: int) -> None:
    frames: list = list(VALID["belief"])
    strided = np.zeros(2 * len(frames[i]), np.uint8)
    strided[::2] = np.frombuffer(frames[i], np.uint8)
    frames[i] = memoryview(strided[::2])
    assert decode_or_reason(frames) == "frames"
