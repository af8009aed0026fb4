"""A live node under hostile input: whatever a swarm member sends, the node keeps running,
counts every input under its reason and still delivers every valid message, in order."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
import zmq
from hostile_inputs import AFTER, hostile_kinds, run_hostile

from rwkv_swarm.node import transport
from rwkv_swarm.node.transport import DROP_REASONS, Transport
from rwkv_swarm.node.wire import REASONS, encode, message

HOSTILE = 12_000
CHUNK = 200  # hostile inputs between two rounds of valid messages


def test_twelve_thousand_hostile_inputs_are_counted_by_reason_and_valid_messages_arrive() -> None:
    report = run_hostile(HOSTILE, chunk=CHUNK)
    assert report.crashes == []
    assert report.tried == HOSTILE
    assert report.dropped == dict(report.expected)
    rounds = list(range(math.ceil(HOSTILE / CHUNK)))
    assert [g for n, g in report.delivered if n == "mallory"] == rounds
    assert [g for n, g in report.delivered if n == "alice"] == [*rounds, AFTER]
    assert len(report.delivered) == report.valid_sent + 1


def test_the_mix_holds_every_reason_decode_and_the_transport_give_for_input() -> None:
    reasons = {kind.reason for kind in hostile_kinds(np.random.default_rng(0))}
    not_for_input = {"mismatch", "send_blocked", "internal"}  # a state check, sending, bugs
    assert reasons == set(DROP_REASONS) - not_for_input
    assert set(REASONS) <= set(DROP_REASONS)


@pytest.fixture
def buggy_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode as if it had a bug: RecursionError on a header that starts with a list."""
    real = transport.decode_received

    def decode(frames, limits):
        if bytes(frames[0])[:1] == b"\x91":
            raise RecursionError("maximum recursion depth exceeded")
        return real(frames, limits)

    monkeypatch.setattr(transport, "decode_received", decode)


@pytest.mark.usefixtures("buggy_decode")
def test_decode_raising_other_than_protocol_error_is_counted_as_internal_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bob = Transport("bob", insecure=True)
    ctx = zmq.Context()
    sender = ctx.socket(zmq.DEALER)
    try:
        sender.linger = 0
        sender.connect(bob.endpoint)
        for gen in range(50):
            sender.send_multipart([b"\x91\xc0"])
            sender.send_multipart(encode(message("control", swarm="s", node="eve", gen=gen,
                                                 command="valid", args={})))
        got = []
        deadline = time.monotonic() + 30
        with caplog.at_level(logging.ERROR, logger=transport.__name__):
            while len(got) < 50 and time.monotonic() < deadline:
                got += bob.poll(20)
        assert [m.gen for m in got] == list(range(50))
        assert bob.stats()["dropped"] == {"internal": 50}
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        assert "RecursionError" in caplog.text
    finally:
        sender.close(linger=0)
        ctx.term()
        bob.close()
