"""Hostile inputs for a live node, and a run that fires them at one.

Each kind of input makes the frames of one message and names the reason the receiving
`Transport` must drop it under. `run_hostile` fires a mix of them from a swarm member's raw
ZeroMQ socket (its keys get it past CURVE, so every input reaches `decode`) at a live node,
with valid messages interleaved, on 127.0.0.1 only. Used by tests/test_transport_hostile.py
(thousands of inputs) and benchmarks/hostile.py (100,000 and more).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any

import msgpack
import numpy as np
import zmq

from rwkv_swarm.node.keys import SwarmKeyring
from rwkv_swarm.node.transport import Transport
from rwkv_swarm.node.wire import DEFAULT_LIMITS, Message, encode, message

SWARM = "s"
HEADER_LIMIT = DEFAULT_LIMITS.max_header_bytes
MSGPACK_MAX_DEPTH = 1024  # containers msgpack nests before it raises StackError


def packed_map(pairs: list[tuple[Any, bytes]]) -> bytes:
    """A msgpack map of keys and already packed values, built by hand: keys may repeat."""
    parts = [b"\xdf", len(pairs).to_bytes(4, "big")]
    for key, raw in pairs:
        parts += [msgpack.packb(key), raw]
    return b"".join(parts)


def nested(depth: int, container: str) -> bytes:
    """A nil inside `depth` one-item lists, maps, or both alternating, as msgpack."""
    units = {"list": [b"\x91"], "map": [b"\x81\xa1k"], "mixed": [b"\x91", b"\x81\xa1k"]}
    return b"".join(islice(cycle(units[container]), depth)) + b"\xc0"


def frames_of(msg: Message) -> list[bytes]:
    return [bytes(f) for f in encode(msg)]


def with_raw(frames: list[bytes], field_name: str, raw: bytes) -> list[bytes]:
    """`frames` with the header value of `field_name` replaced (or added) as packed `raw`."""
    header = msgpack.unpackb(frames[0])
    header.setdefault(field_name, None)
    pairs = [(k, raw if k == field_name else msgpack.packb(v)) for k, v in header.items()]
    return [packed_map(pairs), *frames[1:]]


def with_fields(frames: list[bytes], **changes: Any) -> list[bytes]:
    return [msgpack.packb({**msgpack.unpackb(frames[0]), **changes}), *frames[1:]]


# values no header field accepts: each kind of field refuses each of them
REFUSED_EVERYWHERE = [
    msgpack.packb(v) for v in (
        None, True, False, float("nan"), float("inf"), -float("inf"), msgpack.ExtType(7, b"x"),
        msgpack.Timestamp(1, 2), [[["x"]]], {"a": {"b": 1}})
] + [b"\xca\x7f\xc0\x00\x00", b"\xca\xff\x80\x00\x00"]  # float32 NaN, -inf
CONTROL_FIELDS = ["swarm", "node", "gen", "ts", "command", "args"]


@dataclass(frozen=True)
class Kind:
    """One kind of hostile input: its name, expected drop reason, weight in the mix, maker."""

    name: str
    reason: str
    weight: int
    make: Callable[[], list[bytes]]


class _Maker:
    """Makes the frames of messages from `node`, varied by `rng`."""

    def __init__(self, rng: np.random.Generator, node: str) -> None:
        self.rng, self.node = rng, node

    def pick(self, values: list) -> Any:
        return values[int(self.rng.integers(0, len(values)))]

    def between(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi))

    def control(self, **kw: Any) -> list[bytes]:
        """A valid control message (unless `kw` makes it otherwise)."""
        args = {"step": self.between(0, 9), "rate": float(self.rng.random())}
        fields = {"swarm": SWARM, "node": self.node, "gen": 1, "command": "go", "args": args}
        return frames_of(message("control", **{**fields, **kw}))

    def belief(self) -> list[bytes]:
        """A valid belief message: two float64 arrays of 1..7 elements."""
        n = self.between(1, 8)
        arrays = {"mean": self.rng.standard_normal(n), "var": self.rng.random(n) + 0.1}
        return frames_of(message("belief", swarm=SWARM, node=self.node, name="b", arrays=arrays))

    def belief_arrays(self, mean: list, var: list) -> list[bytes]:
        """A belief whose header declares `mean` and `var` as [dtype, shape]."""
        return with_fields(self.belief(),
                           arrays=msgpack.packb([["mean", *mean], ["var", *var]]))

    def nan_belief(self) -> list[bytes]:  # as sent: mean, then var, packed in frame 1
        header, packed = self.belief()
        values = np.frombuffer(packed, np.float64).copy()
        values[self.between(0, values.size // 2)] = self.pick([np.nan, np.inf, -np.inf])
        return [header, values.tobytes()]

    def negative_var(self) -> list[bytes]:  # encode refuses it: patch the payload
        header, packed = self.belief()
        values = np.frombuffer(packed, np.float64).copy()
        values[values.size // 2:] *= -1
        return [header, values.tobytes()]

    def too_deep(self) -> list[bytes]:  # within the header limit: 1 byte a list, 3 a map
        container = self.pick(["list", "map"])
        deepest = 60_000 // len(nested(1, container))
        return [nested(self.between(MSGPACK_MAX_DEPTH + 1, deepest), container)]

    def truncated(self) -> list[bytes]:
        header = self.control()[0]
        return [header[: self.between(1, len(header))]]

    def repeated_key(self) -> list[bytes]:
        pairs = [(k, msgpack.packb(v)) for k, v in msgpack.unpackb(self.control()[0]).items()]
        return [packed_map([*pairs, ("gen", msgpack.packb(self.between(0, 9)))])]

    def missing_args(self) -> list[bytes]:
        header = msgpack.unpackb(self.control()[0])
        del header["args"]
        return [msgpack.packb(header)]


def wide_nested_lists() -> list[bytes]:
    """Every level declares 1024 items and holds one: msgpack allocates them all."""
    header = b"\xdc\x04\x00" * (MSGPACK_MAX_DEPTH - 1)
    return [header + b"\xc0" * (HEADER_LIMIT - len(header))]


def hostile_kinds(rng: np.random.Generator, node: str = "mallory") -> list[Kind]:
    """Every kind of hostile input, from `node`; costly ones (near 64 KiB) weigh less."""
    m = _Maker(rng, node)
    return [*_header_kinds(m), *_size_kinds(m), *_field_kinds(m), *_array_kinds(m)]


def _header_kinds(m: _Maker) -> list[Kind]:
    """Frame 0 not one msgpack map of str keys within the unpacking bounds."""
    return [
        Kind("random_bytes", "header", 4, lambda: [b"\xc1" + m.rng.bytes(m.between(0, 300))]),
        Kind("empty_frame", "header", 2, lambda: [b""]),
        Kind("truncated_header", "header", 4, m.truncated),
        Kind("extra_bytes", "header", 2, lambda: [m.control()[0] + b"\xc0"]),
        Kind("nested_header", "header", 4, lambda: [nested(m.between(2, 1024), "list")]),
        Kind("too_deep", "header", 4, m.too_deep),
        Kind("wide_nested_lists", "header", 1, wide_nested_lists),
        Kind("long_list", "header", 2, lambda: with_fields(m.control(), args={"x": [1] * 1025})),
        Kind("repeated_key", "header", 4, m.repeated_key),
        Kind("int_map_key", "header", 2, lambda: with_raw(m.control(), "args", b"\x81\x01\x01")),
        Kind("bad_utf8", "header", 2, lambda: with_raw(m.control(), "node", b"\xa2\xed\xa0")),
        Kind("bad_timestamp", "header", 2, lambda: with_raw(m.control(), "ts", b"\xd5\xff\0\0")),
    ]


def _size_kinds(m: _Maker) -> list[Kind]:
    huge, empty_huge = ["float64", [2**40]], ["float64", [0, 2**64 - 1]]
    return [
        Kind("header_over_limit", "too_large", 1, lambda: [m.control()[0] + b"\0" * HEADER_LIMIT]),
        Kind("huge_shape", "too_large", 2, lambda: m.belief_arrays(huge, huge)),
        Kind("empty_huge_dims", "too_large", 2,
             lambda: m.belief_arrays(empty_huge, empty_huge)[:1] + [b"", b""]),
        Kind("too_many_frames", "frames", 2, lambda: m.control() + [b"x"] * 20),
        Kind("frame_without_array", "frames", 2, lambda: m.control() + [b"x"]),
    ]


def _field_kinds(m: _Maker) -> list[Kind]:
    """Header fields: version, type, and the fields of a control message."""
    return [
        Kind("bad_version", "version", 2,
             lambda: with_fields(m.control(), v=m.pick([99, "1", 1.0]))),
        Kind("unknown_type", "type", 2, lambda: with_fields(m.control(), type=m.pick(["x", b"x"]))),
        Kind("nested_field", "field", 4, lambda: with_raw(
            m.control(), m.pick(CONTROL_FIELDS),
            nested(m.between(1, MSGPACK_MAX_DEPTH - 1), m.pick(["list", "map"])))),
        Kind("odd_value", "field", 4,
             lambda: with_raw(m.control(), m.pick(CONTROL_FIELDS), m.pick(REFUSED_EVERYWHERE))),
        Kind("negative_gen", "field", 2, lambda: with_fields(m.control(), gen=-1)),
        Kind("missing_field", "field", 2, m.missing_args),
        Kind("unknown_fields", "field", 2, lambda: with_fields(
            m.control(), **{f"x{i}": i for i in range(m.between(1, 2000))})),
        Kind("long_id", "field", 1,
             lambda: with_fields(m.control(), node="n" * (HEADER_LIMIT - 200))),
    ]


def _array_kinds(m: _Maker) -> list[Kind]:
    """Arrays, then valid messages this sender may not send."""
    return [
        Kind("refused_dtype", "array_spec", 2,
             lambda: m.belief_arrays(["complex64", [1]], ["float64", [1]])),
        Kind("short_payload", "size_mismatch", 2, lambda: m.belief()[:2] + [b"\0" * 3]),
        Kind("nan_payload", "non_finite", 2, m.nan_belief),
        Kind("negative_var", "inconsistent", 2, m.negative_var),
        Kind("impersonation", "impersonation", 2, lambda: m.control(node="alice")),
        Kind("wrong_swarm", "wrong_swarm", 2, lambda: m.control(swarm="other")),
    ]


@dataclass
class Report:
    """What a hostile run did and what the node counted."""

    tried: int = 0
    expected: Counter[str] = field(default_factory=Counter)  # drop reason -> inputs sent
    kinds: Counter[str] = field(default_factory=Counter)  # kind of input -> inputs sent
    dropped: dict[str, int] = field(default_factory=dict)  # the node's stats()["dropped"]
    valid_sent: int = 0
    delivered: list[tuple[str, int]] = field(default_factory=list)  # (node, gen) in order
    crashes: list[str] = field(default_factory=list)  # exceptions out of poll()
    seconds: float = 0.0  # sending and draining the hostile inputs

    def counted(self) -> int:
        return sum(self.dropped.values())


AFTER = 2**63  # gen of the valid message sent once the run is over


def run_hostile(count: int, *, seed: int = 0, chunk: int = 200, wait_s: float = 60.0) -> Report:
    """Fire `count` hostile inputs at a live node on 127.0.0.1, a chunk at a time, each chunk
    followed by one valid message from the hostile member and one from an honest peer; then
    one more valid message from the peer (gen AFTER)."""
    keyring, keys = SwarmKeyring.generate(["alice", "bob", "mallory"])
    bob = Transport("bob", keys=keys["bob"], keyring=keyring, swarm=SWARM)
    alice = Transport("alice", keys=keys["alice"], keyring=keyring, swarm=SWARM)
    ctx = zmq.Context()
    mallory = ctx.socket(zmq.DEALER)  # a member's keys: its inputs get past CURVE
    report = Report()
    try:
        mallory.linger, mallory.sndhwm = 0, 0
        mallory.curve_publickey = keys["mallory"].public
        mallory.curve_secretkey = keys["mallory"].secret
        mallory.curve_serverkey = bob.public_key
        mallory.connect(bob.endpoint)
        alice.connect("bob", bob.endpoint)
        start = time.perf_counter()
        _fire(report, count, chunk, wait_s, np.random.default_rng(seed), mallory, alice, bob)
        report.seconds = time.perf_counter() - start
        alice.send("bob", _valid("alice", AFTER))
        _drain(bob, alice, report, lambda: ("alice", AFTER) in report.delivered, wait_s)
    finally:
        mallory.close(linger=0)
        ctx.term()
        alice.close()
        bob.close()
    return report


def _valid(node: str, gen: int) -> Message:
    return message("control", swarm=SWARM, node=node, gen=gen, command="valid", args={})


def _fire(report: Report, count: int, chunk: int, wait_s: float, rng: np.random.Generator,
          mallory: zmq.Socket, alice: Transport, bob: Transport) -> None:
    """Send the inputs a chunk at a time (bounding what queues in memory), each chunk followed
    by valid messages, and let bob take all of them before the next chunk."""
    kinds = hostile_kinds(rng)
    schedule = [k for k in kinds for _ in range(k.weight)]
    for seq, first in enumerate(range(0, count, chunk)):
        for i in range(first, min(first + chunk, count)):
            kind = schedule[i % len(schedule)]
            mallory.send_multipart(kind.make())
            report.expected[kind.reason] += 1
            report.kinds[kind.name] += 1
            report.tried += 1
        mallory.send_multipart(encode(_valid("mallory", seq)))
        assert alice.send("bob", _valid("alice", seq))
        report.valid_sent += 2
        tried, valid = report.tried, report.valid_sent

        def caught_up(tried: int = tried, valid: int = valid) -> bool:
            return report.counted() >= tried and len(report.delivered) >= valid

        if not _drain(bob, alice, report, caught_up, wait_s):
            return  # the node stalled: the report shows how far it got


def _drain(bob: Transport, alice: Transport, report: Report, done: Callable[[], bool],
           wait_s: float) -> bool:
    """Poll bob until `done()` (True) or `wait_s` passes (False), recording what it delivers,
    what it counts, and any exception out of poll (a crash of its receive path)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            report.delivered += [(m.node, m.gen) for m in bob.poll(5)]
        except Exception as e:  # counted as a crash; the run goes on to count the rest
            report.crashes.append(f"{type(e).__name__}: {str(e)[:200]}")
        alice.poll(0)
        report.dropped = bob.stats()["dropped"]
        if done():
            return True
    return False
