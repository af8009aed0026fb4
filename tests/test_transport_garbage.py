"""A live transport flooded with 10,000 malformed messages keeps running, counts each by reason,
and still delivers every valid message, in order per sender."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import msgpack
import numpy as np
import zmq
from messages import fitness_message

from rwkv_swarm.node.keys import SwarmKeyring
from rwkv_swarm.node.transport import Transport
from rwkv_swarm.node.wire import PACK_BYTES, encode, message

GARBAGE = 10_000
VALID_EVERY = 100  # garbage messages between two valid ones from each sender
WAIT_S = 60.0  # bound on the whole drain; never reached when all is well


def garbage_kinds(rng: np.random.Generator) -> list[tuple[str, Callable[[], list[bytes]]]]:
    """(expected drop reason, maker of one malformed message) for each kind of garbage."""

    def valid(node: str = "mallory", pack_bytes: int = 0, shaped: np.ndarray | None = None
              ) -> list[bytes]:
        """One frame per array unless pack_bytes (then all arrays share frame 1)."""
        if shaped is None:
            shaped = rng.standard_normal(8).astype(np.float32)
        msg = fitness_message(node=node, arrays={"shaped": shaped})
        return [bytes(f) for f in encode(msg, pack_bytes=pack_bytes)]

    def packed_cut() -> list[bytes]:
        header, frame = valid(pack_bytes=PACK_BYTES)
        return [header, frame[:-int(rng.integers(1, 8))]]

    def with_header(**changes) -> list[bytes]:
        frames = valid()
        header = {**msgpack.unpackb(frames[0]), **changes}
        return [msgpack.packb(header), *frames[1:]]

    def shaped_frame(frames: list[bytes]) -> int:
        names = [n for n, _, _ in msgpack.unpackb(msgpack.unpackb(frames[0])["arrays"])]
        return 1 + names.index("shaped")

    def with_shaped(payload: bytes) -> list[bytes]:
        frames = valid()
        i = shaped_frame(frames)
        return [*frames[:i], payload, *frames[i + 1:]]

    def with_shaped_declared(dtype: str, shape: list[int]) -> list[bytes]:
        decls = msgpack.unpackb(msgpack.unpackb(valid()[0])["arrays"])
        return with_header(arrays=msgpack.packb([[n, dtype, shape] if n == "shaped" else
                                                 [n, d, sh] for n, d, sh in decls]))

    def nan_payload() -> list[bytes]:
        return with_shaped(np.full(8, np.nan, np.float32).tobytes())

    return [
        # 0xc1 is never used by msgpack: random bytes after it can never decode
        ("header", lambda: [b"\xc1" + rng.bytes(int(rng.integers(0, 200)))]),
        ("header", lambda: [b""]),
        ("size_mismatch", lambda: with_shaped(rng.bytes(int(rng.integers(1, 31))))),
        ("non_finite", nan_payload),
        ("size_mismatch", packed_cut),
        ("non_finite", lambda: valid(pack_bytes=PACK_BYTES,
                                     shaped=np.full(8, np.inf, np.float32))),
        ("version", lambda: with_header(v=99)),
        ("type", lambda: with_header(type="gossip")),
        ("field", lambda: with_header(sigma="high")),
        ("array_spec", lambda: with_shaped_declared("float64", [4])),
        ("too_large", lambda: with_shaped_declared("float32", [2**40])),
        ("frames", lambda: valid() + [b"extra"] * 20),
        ("impersonation", lambda: valid(node="alice")),
    ]


def flood(mallory: zmq.Socket, alice: Transport, bob: Transport) -> tuple[Counter, list]:
    """Send the garbage from mallory, with a valid message from mallory and from alice every
    VALID_EVERY; returns the expected drops by reason and what bob delivered meanwhile."""
    kinds = garbage_kinds(np.random.default_rng(0))
    expected: Counter[str] = Counter()
    got = []
    for i in range(GARBAGE):
        reason, make = kinds[i % len(kinds)]
        mallory.send_multipart(make())
        expected[reason] += 1
        if i % VALID_EVERY == 0:
            seq = i // VALID_EVERY
            mallory.send_multipart(encode(message("heartbeat", swarm="s", node="mallory",
                                                  gen=seq)))
            mallory.send_multipart(encode(message("control", swarm="s", node="mallory",
                                                  gen=seq, command="valid", args={})))
            assert alice.send("bob", message("control", swarm="s", node="alice", gen=seq,
                                             command="valid", args={}))
            got += bob.poll(0)
    return expected, got


def test_ten_thousand_garbage_messages_are_counted_and_valid_ones_still_arrive_in_order():
    keyring, keys = SwarmKeyring.generate(["alice", "bob", "mallory"])
    bob = Transport("bob", keys=keys["bob"], keyring=keyring, swarm="s")
    alice = Transport("alice", keys=keys["alice"], keyring=keyring, swarm="s")
    ctx = zmq.Context()
    mallory = ctx.socket(zmq.DEALER)  # a member's keys: its garbage gets past CURVE
    try:
        mallory.linger, mallory.sndhwm = 0, 0
        mallory.curve_publickey = keys["mallory"].public
        mallory.curve_secretkey = keys["mallory"].secret
        mallory.curve_serverkey = bob.public_key
        mallory.connect(bob.endpoint)
        alice.connect("bob", bob.endpoint)
        expected, got = flood(mallory, alice, bob)
        n_valid = 2 * GARBAGE // VALID_EVERY
        deadline = time.monotonic() + WAIT_S
        while (len(got) < n_valid or sum(bob.stats()["dropped"].values()) < GARBAGE) \
                and time.monotonic() < deadline:
            got += bob.poll(20)
            alice.poll(0)
        stats = bob.stats()
        assert sum(expected.values()) == GARBAGE
        assert stats["dropped"] == dict(expected)
        seqs = list(range(GARBAGE // VALID_EVERY))
        assert [m.gen for m in got if m.node == "mallory"] == seqs
        assert [m.gen for m in got if m.node == "alice"] == seqs
        assert stats["received"] == n_valid
        assert stats["heartbeats_received"] == len(seqs)
        alice.send("bob", message("control", swarm="s", node="alice", command="after", args={}))
        after = []
        while not after and time.monotonic() < deadline:
            after = bob.poll(20)
        assert [m.fields["command"] for m in after] == ["after"]
    finally:
        mallory.close(linger=0)
        ctx.term()
        alice.close()
        bob.close()
