"""Transport: delivery, CURVE admission, heartbeats and liveness, bounded queues, clean close."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import zmq
from test_wire import assert_same, sample_messages

from rwkv_swarm.kernels import RWKV7Config, RWKV7State
from rwkv_swarm.node.keys import NodeKeys, SwarmKeyring
from rwkv_swarm.node.transport import Transport, TransportConfig
from rwkv_swarm.node.wire import (
    Message,
    ProtocolError,
    WireLimits,
    encode,
    message,
    state_message,
)

WAIT_S = 10.0  # upper bound for anything expected to arrive; never reached when all is well
QUIET_MS = 300  # how long "nothing arrives" is watched for


def collect(t: Transport, n: int, *others: Transport, wait_s: float = WAIT_S) -> list[Message]:
    """Poll `t` (and keep `others` polled, for their heartbeats) until n messages or timeout."""
    got: list[Message] = []
    deadline = time.monotonic() + wait_s
    while len(got) < n and time.monotonic() < deadline:
        got += t.poll(20)
        for o in others:
            o.poll(0)
    return got


def poll_until(cond: Callable[[], bool], *ts: Transport, wait_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + wait_s
    while not cond() and time.monotonic() < deadline:
        for t in ts:
            t.poll(10)
    return cond()


def as_node(msg: Message, node: str, **changes: object) -> Message:
    return dataclasses.replace(msg, node=node, **changes)


@pytest.fixture
def ring() -> tuple[SwarmKeyring, dict[str, NodeKeys]]:
    return SwarmKeyring.generate(["alice", "bob", "mallory"])


@pytest.fixture
def make() -> Iterator[Callable[..., Transport]]:
    made: list[Transport] = []

    def make_transport(node_id: str, **kw: object) -> Transport:
        made.append(Transport(node_id, **kw))
        return made[-1]

    yield make_transport
    for t in made:
        t.close()


class RawSockets:
    """Raw attacker sockets in one context; all closed (linger 0) whatever the test did."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []

    def socket(self, kind: int) -> zmq.Socket:
        self.sockets.append(self.context.socket(kind))
        self.sockets[-1].linger = 0
        return self.sockets[-1]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()


@pytest.fixture
def ctx() -> Iterator[RawSockets]:
    raw = RawSockets()
    yield raw
    raw.close()


def raw_dealer(ctx: RawSockets, endpoint: str, keys: NodeKeys | None = None,
               server_key: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 0  # the test decides how much to queue
    sock.rcvtimeo = sock.sndtimeo = QUIET_MS
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys.public, keys.secret
        sock.curve_serverkey = server_key
    sock.connect(endpoint)
    return sock


def pair(make, ring, **kw) -> tuple[Transport, Transport]:
    keyring, keys = ring
    a = make("alice", keys=keys["alice"], keyring=keyring, **kw)
    b = make("bob", keys=keys["bob"], keyring=keyring, **kw)
    a.connect("bob", b.endpoint)
    b.connect("alice", a.endpoint)
    return a, b


# -- set-up --------------------------------------------------------------------------------------


def test_no_keys_means_curve_with_fresh_keys(make) -> None:
    a, b = make("a"), make("b")
    assert a.secure and b.secure
    assert len(a.public_key) == 40 and a.public_key != b.public_key


def test_plain_tcp_only_when_asked_and_then_without_keys(make) -> None:
    assert make("a", insecure=True).public_key is None
    with pytest.raises(ValueError, match="insecure=True takes no keys"):
        Transport("b", insecure=True, keys=NodeKeys.generate())


@pytest.mark.parametrize("node_id", ["", "n" * 129, 7])
def test_refuses_a_node_id_the_wire_cannot_carry(node_id: object) -> None:
    with pytest.raises(ValueError, match="node_id must be a str of 1..128 chars"):
        Transport(node_id, insecure=True)  # type: ignore[arg-type]


def test_binds_the_given_port(make) -> None:
    probe = make("probe", insecure=True)
    port = int(probe.endpoint.rsplit(":", 1)[1])
    probe.close()
    assert make("a", port=port, insecure=True).endpoint == f"tcp://127.0.0.1:{port}"


# -- delivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("secure", [True, False])
def test_every_message_type_arrives_intact_and_in_order(make, ring, secure: bool) -> None:
    if secure:
        a, b = pair(make, ring)
    else:
        a, b = make("alice", insecure=True), make("bob", insecure=True)
        a.connect("bob", b.endpoint)
    sent = [as_node(m, "alice") for m in sample_messages().values() if m.type != "heartbeat"]
    for m in sent:
        assert a.send("bob", m)
    got = collect(b, len(sent))
    assert [m.type for m in got] == [m.type for m in sent]
    for g, s in zip(got, sent, strict=True):
        assert_same(g, s)
    stats = b.stats()
    assert stats["received"] == len(sent) and stats["dropped"] == {}
    assert stats["bytes_received"] == a.stats()["bytes_sent"] > 0


def test_broadcast_reaches_every_connected_peer(make, ring) -> None:
    keyring, keys = ring
    a = make("alice", keys=keys["alice"], keyring=keyring)
    peers = [make(n, keys=keys[n], keyring=keyring) for n in ("bob", "mallory")]
    for p in peers:
        a.connect(p.node_id, p.endpoint)
    msg = message("control", swarm="s", node="alice", command="sync", args={})
    assert a.broadcast(msg) == 2
    for p in peers:
        assert [m.fields["command"] for m in collect(p, 1)] == ["sync"]


def test_broadcast_to_listed_peers_reaches_the_connected_ones_only(make, ring) -> None:
    keyring, keys = ring
    a = make("alice", keys=keys["alice"], keyring=keyring)
    bob, mallory = (make(n, keys=keys[n], keyring=keyring) for n in ("bob", "mallory"))
    for p in (bob, mallory):
        a.connect(p.node_id, p.endpoint)
    msg = message("control", swarm="s", node="alice", command="sync", args={})
    assert a.broadcast(msg, ["bob", "carol"]) == 1  # carol: not connected, skipped
    assert [m.fields["command"] for m in collect(bob, 1)] == ["sync"]
    assert collect(mallory, 1, wait_s=QUIET_MS / 1000) == []
    assert a.broadcast(msg, ["carol"]) == 0 and a.stats()["sent"] == 1


def test_messages_of_another_swarm_are_dropped(make, ring) -> None:
    keyring, keys = ring
    a = make("alice", keys=keys["alice"], keyring=keyring, swarm="s1")
    b = make("bob", keys=keys["bob"], keyring=keyring, swarm="s1")
    a.connect("bob", b.endpoint)
    a.send("bob", message("control", swarm="s2", node="alice", command="x", args={}))
    a.send("bob", message("control", swarm="s1", node="alice", command="y", args={}))
    assert [m.fields["command"] for m in collect(b, 1)] == ["y"]
    assert b.stats()["dropped"] == {"wrong_swarm": 1}


def test_send_refuses_unknown_peer_foreign_node_and_invalid_message(make, ring) -> None:
    a, _ = pair(make, ring)
    with pytest.raises(KeyError, match="not connected to 'carol'"):
        a.send("carol", message("heartbeat", swarm="s", node="alice"))
    with pytest.raises(ValueError, match="impersonation"):
        a.send("bob", message("heartbeat", swarm="s", node="bob"))
    with pytest.raises(ProtocolError, match="field"):
        a.send("bob", message("control", swarm="s", node="alice", command="x"))
    assert a.stats()["sent"] == 0


def test_connect_refuses_a_second_channel_or_a_key_of_another_node(make, ring) -> None:
    keyring, keys = ring
    a, _ = pair(make, ring)
    with pytest.raises(ValueError, match="already connected to 'bob'"):
        a.connect("bob", "tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="belongs to 'mallory'"):
        a.connect("carol", "tcp://127.0.0.1:1", keys["mallory"].public)
    with pytest.raises(ValueError, match="Z85"):
        a.connect("carol", "tcp://127.0.0.1:1", b" " * 40)


def test_poll_returns_nothing_when_nothing_arrives(make) -> None:
    t = make("a")
    assert t.poll(0) == [] and t.poll(20) == []


def test_send_never_blocks_on_an_unreachable_peer_and_counts_what_it_drops(make) -> None:
    probe = make("probe", insecure=True)
    dead_endpoint = probe.endpoint
    probe.close()  # nothing listens there now
    a = make("a", insecure=True, config=TransportConfig(sndhwm=4))
    a.connect("ghost", dead_endpoint)
    results = [a.send("ghost", message("control", swarm="s", node="a", command="c", args={}))
               for _ in range(20)]
    stats = a.stats()
    assert results.count(False) == stats["dropped"]["send_blocked"] > 0
    assert results.count(True) == stats["sent"] >= 1


def test_a_queue_the_peer_has_drained_takes_a_full_queue_again(make, ring) -> None:
    # a sender learns what its peer read from commands that libzmq processes at most once a
    # millisecond while sends do not block: a drained queue could still refuse (and drop)
    config = TransportConfig(sndhwm=8, rcvhwm=8, heartbeat_interval=3600.0)
    a, b = pair(make, ring, config=config)
    msg = message("control", swarm="s", node="alice", command="c", args={})
    for burst in range(30):
        assert [a.send("bob", msg) for _ in range(8)] == [True] * 8, burst
        assert len(collect(b, 8)) == 8
    assert a.stats()["dropped"] == {}


def test_a_timeout_below_a_millisecond_is_waited_out_not_spun(make, monkeypatch) -> None:
    t = make("a", insecure=True)
    waits: list[int] = []
    wait = t._poller.poll
    monkeypatch.setattr(t._poller, "poll", lambda ms: waits.append(ms) or wait(ms))
    start = time.monotonic()
    assert t.poll(0.4) == []
    assert time.monotonic() - start >= 0.0004  # honoured: not cut to a poll(0)
    assert 1 <= len(waits) <= 2 and min(waits) >= 1  # whole milliseconds (ZeroMQ's unit)


def test_a_message_arriving_while_poll_waits_for_the_next_heartbeat_is_returned_at_once(
    make, ring
) -> None:
    config = TransportConfig(heartbeat_interval=5.0)
    a, b = pair(make, ring, config=config)
    msg = message("control", swarm="s", node="alice", command="late", args={})
    sender = threading.Timer(0.05, a.send, ("bob", msg))  # a is used by that thread only
    start = time.monotonic()
    sender.start()
    got = b.poll(30_000)  # the wait ends at b's next heartbeat unless a message comes first
    returned = time.monotonic() - start
    sender.join()
    assert [m.fields["command"] for m in got] == ["late"]
    assert returned < config.heartbeat_interval


# -- authentication ------------------------------------------------------------------------------


def test_unauthenticated_senders_get_nothing_accepted_and_read_nothing(make, ring, ctx) -> None:
    keyring, keys = ring
    bob = make("bob", keys=keys["bob"], keyring=keyring)
    alice = make("alice", keys=keys["alice"], keyring=keyring)
    no_keys = raw_dealer(ctx, bob.endpoint)
    stranger = raw_dealer(ctx, bob.endpoint, NodeKeys.generate(), bob.public_key)
    member = raw_dealer(ctx, bob.endpoint, keys["mallory"], bob.public_key)  # control
    for i, sock in enumerate([no_keys, stranger, member]):
        for node in ("mallory", "alice"):
            sock.send_multipart(encode(message("control", swarm="s", node=node, gen=i,
                                               command="attack", args={})))
        sock.send_multipart(encode(message("heartbeat", swarm="s", node="mallory")))
    alice.connect("bob", bob.endpoint)
    alice.send("bob", message("control", swarm="s", node="alice", command="hello", args={}))
    got = collect(bob, 2)
    got += bob.poll(QUIET_MS)
    assert sorted((m.node, m.fields["command"]) for m in got) == [
        ("alice", "hello"), ("mallory", "attack")]  # the member's own message only
    assert [m.gen for m in got if m.node == "mallory"] == [2]
    assert bob.stats()["dropped"] == {"impersonation": 1}  # the member claiming to be alice
    assert member.poll(WAIT_S * 1000) and member.recv_multipart()  # a member hears the pong
    assert not no_keys.poll(QUIET_MS) and not stranger.poll(QUIET_MS)


def test_impostor_without_the_peers_secret_key_reads_nothing(make, ring, ctx) -> None:
    keyring, keys = ring
    alice = make("alice", keys=keys["alice"], keyring=keyring)
    impostors = []
    for curve in (True, False):
        sock = ctx.socket(zmq.ROUTER)
        if curve:
            fake = NodeKeys.generate()
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = fake.public, fake.secret
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        impostors.append((sock, f"tcp://127.0.0.1:{port}"))
    alice.connect("bob", impostors[0][1])  # bob's real key, from the keyring
    alice.connect("mallory", impostors[1][1])
    msg = message("control", swarm="s", node="alice", command="secret", args={})
    alice.send("bob", msg)
    alice.send("mallory", msg)
    alice.poll(QUIET_MS)
    assert [sock.poll(QUIET_MS) for sock, _ in impostors] == [0, 0]


def test_a_member_cannot_pass_itself_off_as_another_node(make, ring, ctx) -> None:
    keyring, keys = ring
    bob = make("bob", keys=keys["bob"], keyring=keyring)
    mallory = raw_dealer(ctx, bob.endpoint, keys["mallory"], bob.public_key)
    for node in ("alice", "mallory"):
        mallory.send_multipart(encode(message("control", swarm="s", node=node, command="c",
                                              args={})))
    assert [m.node for m in collect(bob, 1)] == ["mallory"]
    assert bob.stats()["dropped"] == {"impersonation": 1}


def test_disconnect_closes_the_channel_and_stops_admitting_the_peer(make, ctx) -> None:
    alice_keys = NodeKeys.generate()
    bob = make("bob")  # no keyring: only peers it connects to are admitted
    bob.connect("alice", "tcp://127.0.0.1:1", alice_keys.public)
    before = raw_dealer(ctx, bob.endpoint, alice_keys, bob.public_key)
    before.send_multipart(encode(message("heartbeat", swarm="s", node="alice")))
    assert poll_until(lambda: bob.stats()["heartbeats_received"] == 1, bob)
    bob.disconnect("alice")
    assert bob.peers() == []
    with pytest.raises(KeyError):
        bob.send("alice", message("heartbeat", swarm="s", node="bob"))
    after = raw_dealer(ctx, bob.endpoint, alice_keys, bob.public_key)
    after.send_multipart(encode(message("heartbeat", swarm="s", node="alice")))
    bob.poll(QUIET_MS)
    assert bob.stats()["heartbeats_received"] == 1


def test_plain_tcp_copies_an_array_below_512_kib_as_it_is_sent(make) -> None:
    # a 256 KiB wkv has a frame of its own; plain TCP copies it in send(), so the state may
    # change at once (CURVE lends it from 64 KiB: there it must not change)
    a, b = make("alice", insecure=True), make("bob", insecure=True)
    a.connect("bob", b.endpoint)
    config = RWKV7Config(n_embd=256, n_layer=4, head_size=64, vocab_size=16)
    state = RWKV7State.zeros(config, batch=1)
    state.wkv.fill_(1.0)
    assert state.wkv.numel() * 4 == 256 * 1024
    msg = state_message(state, b"\x01" * 32, swarm="s", node="alice", gen=0, copy=False)
    assert a.send("bob", msg)
    state.wkv.fill_(2.0)  # the message's array aliases it (copy=False)
    (got,) = collect(b, 1)
    assert np.all(got.arrays["wkv"] == 1.0)


# -- hostile sizes ---------------------------------------------------------------------------------


def test_frame_over_the_size_limit_never_reaches_the_node(make, ring, ctx) -> None:
    keyring, keys = ring
    limits = WireLimits(max_total_bytes=64 * 1024)
    bob = make("bob", keys=keys["bob"], keyring=keyring, config=TransportConfig(limits=limits))
    mallory = raw_dealer(ctx, bob.endpoint, keys["mallory"], bob.public_key)
    big = message("belief", swarm="s", node="mallory", name="big",
                  arrays={"mean": np.zeros(16_384), "var": np.zeros(16_384)})  # 128 KiB each
    small = message("control", swarm="s", node="mallory", command="ok", args={})
    mallory.send_multipart(encode(big, WireLimits()))
    got: list[Message] = []
    deadline = time.monotonic() + WAIT_S
    while not got and time.monotonic() < deadline:  # ZeroMQ drops the connection; it comes back
        mallory.send_multipart(encode(small))
        got = bob.poll(50)
    assert got and {m.type for m in got} == {"control"}


# -- heartbeats and liveness -----------------------------------------------------------------------


def test_heartbeats_keep_a_one_way_peer_alive_and_silence_marks_it_dead(make, ring) -> None:
    keyring, keys = ring
    config = TransportConfig(heartbeat_interval=0.05, heartbeat_liveness=3)
    alice = make("alice", keys=keys["alice"], keyring=keyring, config=config)
    bob = make("bob", keys=keys["bob"], keyring=keyring, config=config)
    alice.connect("bob", bob.endpoint)  # bob never connects back: it answers through alice's
    assert poll_until(lambda: alice.stats()["heartbeats_received"] >= 3, alice, bob)
    assert bob.stats()["heartbeats_received"] >= 3
    assert alice.dead_peers() == [] and alice.stats()["peers"]["bob"]["alive"]
    bob.close()
    assert poll_until(lambda: alice.dead_peers() == ["bob"], alice)
    assert not alice.stats()["peers"]["bob"]["alive"]


# -- shut-down -------------------------------------------------------------------------------------


def test_close_leaves_no_thread_or_socket_behind(ring) -> None:
    threads_before = set(threading.enumerate())
    keyring, keys = ring
    a = Transport("alice", keys=keys["alice"], keyring=keyring)
    b = Transport("bob", keys=keys["bob"], keyring=keyring)
    a.connect("bob", b.endpoint)
    b.connect("alice", a.endpoint)
    a.send("bob", message("heartbeat", swarm="s", node="alice"))
    assert poll_until(lambda: a.stats()["heartbeats_received"] >= 1, a, b)
    assert set(threading.enumerate()) > threads_before  # the authenticators run
    sockets = [*a._sockets, *b._sockets]
    closer = threading.Thread(target=lambda: (a.close(), b.close()))
    closer.start()
    closer.join(WAIT_S)
    assert not closer.is_alive(), "close() hung: a socket was left open"
    assert set(threading.enumerate()) == threads_before
    assert all(s.closed for s in sockets) and a._ctx.closed and b._ctx.closed
    a.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        a.poll(0)
