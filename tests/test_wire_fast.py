"""The compiled header checks against the Python ones: never more lenient, equal when both
accept. Whatever msgspec lets through, the reference path must accept with the same values."""

from __future__ import annotations

import math
import tracemalloc

import msgpack
import pytest
from hostile_inputs import packed_map
from hypothesis import given, settings
from hypothesis import strategies as st
from test_wire_fuzz import MESSAGES, header_keys, msgpack_values

from rwkv_swarm.node import wire
from rwkv_swarm.node.wire import DEFAULT_LIMITS, ProtocolError, encode

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None)
HEADERS = {t: msgpack.unpackb(encode(m)[0]) for t, m in MESSAGES.items()}
COVERED = {"state", "fitness", "belief", "heartbeat"}  # no dict-valued fields


def reference(buf: bytes):
    """What the Python path makes of frame 0: (schema, values, arrays bin), or None."""
    try:
        return wire._parse_fields(wire._unpack_header(memoryview(buf), DEFAULT_LIMITS))
    except ProtocolError:
        return None


def fast(buf: bytes):
    return wire._FAST.fields(memoryview(buf))


def assert_no_more_lenient(buf: bytes) -> None:
    got = fast(buf)
    if got is not None:
        expected = reference(buf)
        assert expected is not None, "compiled checks accepted what Python refuses"
        assert got[0] is expected[0] and got[2] == expected[2]
        assert got[1] == expected[1]
        assert [type(v) for v in got[1].values()] == [type(v) for v in expected[1].values()]


@pytest.mark.parametrize("msg_type", sorted(MESSAGES))
def test_valid_headers_of_covered_types_take_the_compiled_path_with_equal_values(msg_type):
    buf = msgpack.packb(HEADERS[msg_type])
    assert (fast(buf) is not None) == (msg_type in COVERED)
    assert_no_more_lenient(buf)


@FUZZ
@given(st.sampled_from(sorted(COVERED)), st.dictionaries(header_keys, msgpack_values, max_size=3))
def test_random_field_values_are_never_accepted_by_the_compiled_path_alone(msg_type, changes):
    assert_no_more_lenient(msgpack.packb({**HEADERS[msg_type], **changes}))


ODD = [0, 1, -1, 2**63, 2**64 - 1, 2**31, 0.0, -0.0, 1.5, -1.5, float("nan"), float("inf"),
       -float("inf"), 1e308, True, False, None, "", "x" * 128, "x" * 129, b"", b"x" * 64,
       b"x" * 65, [], ["a"], [""], ["a"] * 2000, {}, {"a": 1}, msgpack.ExtType(1, b"")]


@FUZZ
@given(st.sampled_from(sorted(COVERED)), st.data())
def test_edge_values_in_each_field_agree_with_the_python_checks(msg_type, data):
    header = dict(HEADERS[msg_type])
    key = data.draw(st.sampled_from(sorted(header)))
    header[key] = data.draw(st.sampled_from(ODD))
    assert_no_more_lenient(msgpack.packb(header))


@pytest.mark.parametrize("msg_type", sorted(COVERED))
def test_a_repeated_key_leaves_the_verdict_to_python(msg_type):
    pairs = [(k, msgpack.packb(v)) for k, v in HEADERS[msg_type].items()]
    buf = packed_map([*pairs, ("gen", msgpack.packb(3))])
    assert fast(buf) is None
    assert reference(buf) is None  # refused: a map repeats the key


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_leave_the_verdict_to_python(value):
    for msg_type in COVERED:
        buf = msgpack.packb({**HEADERS[msg_type], "ts": value})
        assert fast(buf) is None and reference(buf) is None
    buf = msgpack.packb({**HEADERS["fitness"], "sigma": value})
    assert fast(buf) is None and reference(buf) is None


def test_a_negative_or_zero_sigma_is_refused_on_both_paths():
    for sigma in (0.0, -0.5, -0):
        buf = msgpack.packb({**HEADERS["fitness"], "sigma": sigma})
        assert fast(buf) is None and reference(buf) is None


def test_messages_decoded_under_other_limits_take_the_python_path(monkeypatch):
    calls = []
    monkeypatch.setattr(wire._FAST, "fields", lambda buf: calls.append(buf))
    frames = encode(MESSAGES["state"])
    wire.decode(frames, wire.WireLimits(max_header_bytes=4096))
    assert calls == []
    got = wire.decode(frames)
    assert len(calls) == 1 and math.isfinite(got.ts)


@pytest.mark.parametrize("declared", [b"\xdd\xff\xff\xff\xff", b"\xdc\xff\xff",
                                      b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"])
def test_huge_declared_lengths_are_refused_without_allocating(declared):
    # a list, a str and a bin declared 4 Gi long in a 1 KB header: refused at once
    pairs = [(k, msgpack.packb(v)) for k, v in HEADERS["fitness"].items() if k != "include"]
    buf = packed_map([*pairs, ("include", declared + b"\xa1a" * 100)])
    tracemalloc.start()
    try:
        assert fast(buf) is None
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()
    assert reference(buf) is None
