"""Members over the real ZeroMQ transport, several in one process: a consensus group stays one
node, a long generation keeps its peers' heartbeats, stale and repeated reports are counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from test_exchange import CARTPOLE, TINY, consensus_group

from rwkv_swarm.kernels import RWKV7Config
from rwkv_swarm.node import (
    ExchangeConfig,
    KalmanESConfig,
    Node,
    NodeConfig,
    SwarmKeyring,
    Transport,
    TransportConfig,
    fingerprint,
)
from rwkv_swarm.node.member import Member

WAIT_S = 10.0  # bound on waiting for peers' reports; never reached when all is well


def members_of(nodes: list[Node], config: TransportConfig | None = None) -> list[Member]:
    config = config or TransportConfig()
    names = [n.node_name for n in nodes]
    ring, keys = SwarmKeyring.generate(names)
    members = [Member(n, Transport(n.node_name, keys=keys[n.node_name], keyring=ring,
                                   swarm="s", config=config), "s") for n in nodes]
    for m in members:
        for other in members:
            if other is not m:
                m.transport.connect(other.name, other.transport.endpoint)
    return members


@pytest.fixture
def closing() -> Iterator[list[Member]]:
    made: list[Member] = []
    yield made
    for m in made:
        m.close()


def group_of_two(closing: list[Member]) -> tuple[Member, Member]:
    """A consensus group of two members (8 mutants each, CartPole), peers of each other."""
    closing += members_of(consensus_group(2, 8, seed=3, env=CARTPOLE))
    a, b = closing
    a.set_peers(group=[b.name])
    b.set_peers(group=[a.name])
    return a, b


def readable(member: Member) -> None:
    """Until something waits in `member`'s socket (then a little longer: what made it readable
    may have been a heartbeat, with the report right behind it)."""
    deadline = time.monotonic() + WAIT_S
    while member.transport._poller.poll(0) == [] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)


def test_a_consensus_group_over_zeromq_stays_one_node_and_equals_the_big_one(closing):
    group = consensus_group(3, 8, seed=7, env={"kind": "gym", "id": "CartPole-v1"})
    closing += members_of(group)
    names = [m.name for m in closing]
    for m in closing:
        m.set_peers(group=names)
    single = Node(NodeConfig(model=TINY, es=KalmanESConfig(population=24), seed=7, node_id=2))
    for _ in range(3):
        for m in closing:
            m.share()
        rows = [m.absorb(wait_s=WAIT_S) for m in closing]
        single.generation()
        assert all(r["absorbed_from"] == 2 and r["missing"] == 0 for r in rows)
        assert {fingerprint(m.node.model) for m in closing} == {fingerprint(single.model)}
    assert all(r["received"] >= 6 and r["dropped"] == 0 for r in rows)


def test_a_report_that_came_before_its_sender_was_reported_gone_is_absorbed(closing):
    """The coordinator tells a member its peer is dead after the peer's report came in: the
    member absorbs the report, as a peer that read it earlier did, so the group stays one."""
    a, b = group_of_two(closing)
    a.share()
    b.share()
    readable(a)  # b's report in a's socket, not yet read by a
    a.gone(b.name)
    rows = [a.absorb(wait_s=WAIT_S), b.absorb(wait_s=WAIT_S)]
    assert [r["absorbed_from"] for r in rows] == [1, 1]
    assert fingerprint(a.node.model) == fingerprint(b.node.model)


def test_only_a_member_still_waiting_for_a_report_works_ahead(closing):
    """The member whose peers have all reported steps at once: the next generation's noise it
    would draw while waiting is drawn by its next ask instead, so the member the group waited
    for does not make it wait longer. One still waiting draws it meanwhile."""
    a, b = group_of_two(closing)
    b.share()
    a.share()  # after b's evaluation: a's report can only be waiting in b's socket, unfiled
    readable(b)
    assert b.absorb(wait_s=WAIT_S)["absorbed_from"] == 1
    assert b.node.strategy._drawn == {}  # nothing drawn ahead
    assert a.absorb(wait_s=WAIT_S)["absorbed_from"] == 1
    a.share()
    row = a.absorb(wait_s=0.3)  # b has not shared this generation: a waits, and draws ahead
    s = a.node.strategy
    assert row["missing"] == 1
    assert set(s._drawn) == {s._mutants(g, 1.0).key for g in (a.generation, a.generation + 1)}


class SlowEnv:
    """CartPole-sized observations, one step per `delay` seconds, `length` steps an episode."""

    observation_dim, action_dim, persistent = 4, 2, False

    def __init__(self, length: int = 100, delay: float = 0.01):
        self.length, self.delay, self.t = length, delay, 0

    def reset(self, n, seed, keys=None):
        import numpy as np

        self.n, self.t = n, 0
        return np.zeros((n, 4), np.float32)

    def step(self, outputs):
        import numpy as np

        time.sleep(self.delay)
        self.t += 1
        return (np.zeros((self.n, 4), np.float32), outputs[:, 0].astype(float),
                np.full(self.n, self.t >= self.length))

    def end_generation(self):
        pass

    def apply_signal(self, name, params):
        raise ValueError(f"unknown signal {name!r}")

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def watch_liveness(watcher: Transport, peer: str, stop: threading.Event, dead: list) -> None:
    while not stop.is_set():
        watcher.poll(10)
        if peer in watcher.dead_peers():
            dead.append(time.monotonic())


@pytest.mark.parametrize("service", [True, False])
def test_a_generation_three_times_the_dead_peer_timeout_keeps_the_node_alive(closing, service):
    config = TransportConfig(heartbeat_interval=0.1, heartbeat_liveness=3)  # dead after 0.3 s
    model = RWKV7Config(**{**TINY.to_dict(), "input_dim": 4, "output_dim": 2})
    slow = Node(NodeConfig(model=model, es=KalmanESConfig(population=4), node_id=0),
                SlowEnv(length=100, delay=0.01))  # about 1 s: over three timeouts
    other = Node(NodeConfig(model=model, es=KalmanESConfig(population=4), node_id=1),
                 SlowEnv(length=1, delay=0.0))
    closing += members_of([slow, other], config)
    a, b = closing
    a.service_s = 0.05 if service else 1e9  # never serviced during the evaluation
    a.service()
    b.service(timeout_ms=200)  # heartbeats exchanged: both alive
    stop, dead = threading.Event(), []
    watcher = threading.Thread(target=watch_liveness, args=(b.transport, a.name, stop, dead))
    watcher.start()
    t0 = time.monotonic()
    try:
        a.share()
    finally:
        stop.set()
        watcher.join()
    assert time.monotonic() - t0 >= 0.9
    assert (dead == []) is service, f"declared dead {len(dead)} times while evaluating"


def test_stale_and_repeated_reports_are_counted_and_never_applied(closing):
    nodes = [Node(NodeConfig(model=RWKV7Config(**{**TINY.to_dict(), "output_dim": 1}),
                             env={"kind": "signal", "lags": 3},
                             es=KalmanESConfig(population=8), node_id=k,
                             exchange=ExchangeConfig(mode="gossip"))) for k in range(2)]
    closing += members_of(nodes)
    a, b = closing
    a.set_peers(neighbours=[b.name])
    b.set_peers(neighbours=[a.name])
    old = b.share().to_message("s")
    a.share()
    a.absorb(wait_s=WAIT_S)
    b.absorb(wait_s=WAIT_S)
    b.transport.send(a.name, old)  # generation 0's report again, at generation 1: stale
    b.transport.send(a.name, old)
    b.transport.send(a.name, b.share().to_message("s"))  # generation 1's, a second time
    received = a.transport.stats()["received"]
    deadline = time.monotonic() + WAIT_S
    while a.transport.stats()["received"] < received + 4 and time.monotonic() < deadline:
        a.service(timeout_ms=20)
    a.share()
    row = a.absorb(wait_s=WAIT_S)
    assert (a.dropped["stale"], a.dropped["duplicate"]) == (2, 1)
    assert row["absorbed"] == 1 and row["absorbed_from"] == 1 and row["dropped"] == 3
