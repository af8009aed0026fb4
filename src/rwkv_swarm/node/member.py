"""`Member`: a node on the swarm's data plane. Its `Node`, its `Transport`, its neighbours.

A generation in two phases, so that a swarm (or a test with several members in one process)
can interleave them:

    share()        begin, evaluate (servicing the transport every `service_s` so that peers
                   keep hearing heartbeats however long the evaluation), then send this
                   generation's report to every peer it reports to
    absorb(wait)   wait up to `wait` seconds for the reports it expects (its consensus group's
                   or its neighbours'), then finish the generation with what arrived

A peer the swarm reported gone (`gone`) is neither waited for nor sent to until it is `back`.
A gossip member also stops waiting for a neighbour that its transport hears nothing from
(heartbeats) for the dead-peer interval while it waits; a consensus member never does: a
slow member dropped by some of its group and not others would split the group, so only the
swarm's word (the same for the whole group) takes a member out of the union.

Reports are filed by generation. One of an earlier generation is stale: counted and dropped,
never applied; one already filed is a duplicate: counted and dropped; one of a later
generation waits for its turn. A plain class: `cluster/` wraps it as a Ray actor.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from .exchange import Report
from .node import Node
from .transport import Transport
from .wire import Message, ProtocolError

SERVICE_S = 0.05  # longest gap between two transport polls during an evaluation


class Member:
    """A node with a transport: shares its reports with its peers and absorbs theirs."""

    def __init__(self, node: Node, transport: Transport, swarm: str, *,
                 service_s: float = SERVICE_S):
        if transport.node_id != node.node_name:
            raise ValueError(f"the transport speaks for {transport.node_id!r}, the node is "
                             f"{node.node_name!r}: peers would drop its reports")
        self.node, self.transport, self.swarm = node, transport, swarm
        self.service_s = service_s
        self.neighbours: list[str] = []  # whose reports this member absorbs (gossip)
        self.group: list[str] = []  # the other members of its consensus group
        self.inbox: dict[int, dict[str, Report]] = defaultdict(dict)
        self.other: list[Message] = []  # non-fitness messages, for the caller (signals, ...)
        self.dropped: Counter[str] = Counter()  # reports dropped by the member, by reason
        # peers reported gone: not waited for, not sent to. Rebound, never changed in place: it
        # is set from another thread while absorb() waits
        self.absent: frozenset[str] = frozenset()
        self._last_service = 0.0
        self.send_s = 0.0  # the last share's report building and sending

    @property
    def name(self) -> str:
        return self.node.node_name

    @property
    def generation(self) -> int:
        return self.node.generation_count

    def expected(self) -> list[str]:
        """Peers whose reports this member waits for."""
        mode = self.node.config.exchange.mode
        return self.group if mode == "consensus" else self.neighbours if mode == "gossip" else []

    def reached(self) -> list[str]:
        """Expected peers that are not reported gone: whom the reports go to."""
        return [p for p in self.expected() if p not in self.absent]

    def gone(self, peer: str) -> None:
        """`peer` is dead: stop waiting for its reports (at once, even in a running absorb)."""
        self.absent = self.absent | {peer}

    def back(self, peer: str) -> None:
        """`peer` is there again (restarted)."""
        self.absent = self.absent - {peer}

    def set_peers(self, neighbours: Iterable[str] = (), group: Iterable[str] = ()) -> None:
        """Whom to absorb from (and report to): neighbours (gossip), the group (consensus)."""
        self.neighbours = [p for p in neighbours if p != self.name]
        self.group = [p for p in group if p != self.name]

    # -- the transport ---------------------------------------------------------------------------

    def service(self, timeout_ms: int = 0) -> int:
        """Poll the transport once: heartbeats go out, reports are filed. Returns messages."""
        self._last_service = time.monotonic()
        msgs = self.transport.poll(timeout_ms)
        for msg in msgs:
            if msg.type == "fitness":
                self._file(msg)
            else:
                self.other.append(msg)
        return len(msgs)

    def _on_step(self, _t: int) -> None:
        if time.monotonic() - self._last_service >= self.service_s:
            self.service()

    def _file(self, msg: Message) -> None:
        try:
            report = Report.from_message(msg)
        except ProtocolError as e:
            self.dropped[e.reason] += 1
            return
        if report.generation < self.generation:
            self.dropped["stale"] += 1
        elif report.node in self.inbox[report.generation]:
            self.dropped["duplicate"] += 1
        else:
            self.inbox[report.generation][report.node] = report

    # -- one generation ----------------------------------------------------------------------------

    def share(self) -> Report:
        """Evaluate this generation and send its report to the peers that absorb it."""
        self.node.begin()
        self.service()
        self.node.evaluate(on_step=self._on_step)
        t0 = time.perf_counter()
        report = self.node.report()
        # the relation is symmetric in every topology used here
        self.transport.broadcast(report.to_message(self.swarm), self.reached())
        self.send_s = time.perf_counter() - t0
        return report

    def absorb(self, wait_s: float = 0.0) -> dict[str, Any]:
        """Wait up to `wait_s` for the expected peers' reports of this generation, finish it
        with those that came, and return the trace row (with exchange counters)."""
        gen, expected = self.generation, set(self.expected())
        start = time.monotonic()
        deadline = start + wait_s
        t0 = time.perf_counter()
        # first file the reports that came while this member evaluated: the member the others
        # wait for sets the group's pace, and work ahead would only lengthen its generation
        # (its step builds its own products, its next ask draws its own noise). Then work
        # ahead a piece at a time, looking for the reports between pieces
        self.service()
        while self._missing(gen, expected, start) and self._work_ahead():
            self.service()
        while self._missing(gen, expected, start):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.service(timeout_ms=max(1, min(50, round(left * 1000))))
        if (expected & self.absent) - set(self.inbox.get(gen, {})):
            # a peer reported gone may have sent its report before it died: one that is here
            # already is filed, as its other peers may have filed it (else the group splits)
            self.service()
        waited = time.perf_counter() - t0
        reports = [r for p, r in sorted(self.inbox.pop(gen, {}).items()) if p in expected]
        row = self.node.finish(reports)
        stats = self.transport.stats()
        row.update(wait_s=waited, send_s=self.send_s, absorbed_from=len(reports),
                   sent=stats["sent"],
                   received=stats["received"], bytes_sent=stats["bytes_sent"],
                   bytes_received=stats["bytes_received"],
                   dropped=sum(stats["dropped"].values()) + sum(self.dropped.values()))
        for old in [g for g in self.inbox if g < self.generation]:
            self.dropped["stale"] += len(self.inbox.pop(old))
        return row

    def _work_ahead(self) -> bool:
        """One piece of work this step or the next generations need anyway (this step's
        products, then the next generations' noise); False when none is left."""
        strategy = self.node.strategy
        return strategy.prepare_step() or strategy.draw_ahead()

    def _missing(self, gen: int, expected: set[str], since: float) -> set[str]:
        """Expected peers whose report of `gen` has not come and that may still send it."""
        missing = expected - set(self.inbox.get(gen, {})) - self.absent
        if missing and self.node.config.exchange.mode == "gossip":
            c = self.transport.config
            # silent for the whole dead-peer interval while this member listened: not a peer
            # that merely had no reason to speak before
            if time.monotonic() - since >= c.heartbeat_interval * c.heartbeat_liveness:
                missing -= set(self.transport.dead_peers())
        return missing

    def close(self) -> None:
        self.transport.close()
