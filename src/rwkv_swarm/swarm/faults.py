"""A swarm's dead nodes (sync mode): seen as soon as a call to one fails, their peers told at
once (so the generation in flight finishes without them), restarted from their newest snapshot
in a new actor in the background, and rejoined at the first generation boundary after the new
actor is up. The coordinator (single writer of the event log) owns one `Recovery`.

A restarted node keeps what its snapshot held (weights, live RWKV state, strategy and beliefs,
world, applied signals) and loses the generations since; it rejoins at the swarm's current
generation with its generation counters moved on. A consensus member takes a live group
member's current state instead, so that the group stays one node.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .signals import Signal

if TYPE_CHECKING:
    from .coordinator import Coordinator

MAX_RESTARTS = 3  # restarts of one node in one run; after them it is left dead
START_WAIT_S = 300.0  # longest a boundary waits for a restarting node when none is alive


@dataclass
class _Restart:
    detected: float  # monotonic time the fault was seen
    generation: int  # the generation it was lost in
    snapshot: int | None  # the generation its snapshot was taken before (None: a fresh node)


class Recovery:
    """Faults and restarts of one coordinator's nodes."""

    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
        self.restarting: dict[int, _Restart] = {}
        self.restarts: Counter[int] = Counter()
        self.delivered: list[Signal] = []  # every signal sent: a restarted node gets them again
        self.phase: tuple[str, float] = ("", time.monotonic())  # the call running, its start

    def lost(self, i: int, error: BaseException, phase: str, restart: bool = True,
             call: str | None = None) -> None:
        """Node i failed (died, or raised in `phase` of `call`, by default the call named
        `phase`): out of the swarm, its peers stop waiting for it now, and (when `restart`) a
        new node i starts from its newest snapshot."""
        c = self.c
        if i not in c.alive:
            return
        now = time.monotonic()
        c.alive.discard(i)
        c.nodes.tell("peer_gone", (c.nodes.names[i],), only=sorted(c.alive))
        gen = c.generation if c.in_flight is None else c.in_flight
        into = round(now - self.phase[1], 4) if self.phase[0] == (call or phase) else None
        c.events.write("fault", generation=gen, node=i, phase=phase, detected_s=into,
                       error=f"{type(error).__name__}: {error}"[:500],
                       restart=restart and self._restart(i, gen, now))

    def _restart(self, i: int, gen: int, detected: float) -> bool:
        c = self.c
        if self.restarts[i] >= MAX_RESTARTS:
            return False
        c.checkpoints.settle()  # its newest snapshot may be on its way to disk
        got = c.checkpoints.store.load_node(i)
        snapshot, blob = got if got is not None else (None, None)
        try:
            if not c.nodes.respawn(i, blob):
                return False
        except Exception as e:  # noqa: BLE001 - the node stays dead, and the log says why
            c.events.write("fault", generation=gen, node=i, phase="restart",
                           error=f"{type(e).__name__}: {e}"[:500], restart=False)
            return False
        self.restarts[i] += 1
        self.restarting[i] = _Restart(detected, gen, snapshot)
        return True

    def rejoin(self) -> None:
        """At a boundary: every restarted node whose actor is up rejoins (waiting for one only
        when no node is left alive)."""
        for i in sorted(self.restarting):
            wait = START_WAIT_S if not self.c.alive else 0.0
            try:
                endpoint = self.c.nodes.started(i, wait)
            except Exception as e:  # noqa: BLE001 - its start failed: try again, or give up
                del self.restarting[i]
                self.c.alive.add(i)
                self.lost(i, e, "restart")
                continue
            if endpoint is not None:
                self._join(i, endpoint, self.restarting.pop(i))

    def _join(self, i: int, endpoint: dict[str, Any], r: _Restart) -> None:
        c = self.c
        others = sorted(c.alive)
        c.alive.add(i)
        fault = lambda j, e: self.lost(j, e, "rejoin")  # noqa: E731
        ends = c.nodes.call("endpoint", only=others, on_fault=fault)
        peers = [e for e in ends if not isinstance(e, BaseException)]
        c.nodes.call("connect", ([endpoint],), only=sorted(c.alive - {i}), on_fault=fault)
        for j in sorted(set(range(c.config.nodes)) - c.alive):  # still dead: not waited for
            c.nodes.tell("peer_gone", (c.nodes.names[j],), only=[i])
        source, source_name = self._group_state(i)
        steps = [("connect", (peers,)), ("set_peers", c.peer_args(c.neighbour_lists)[i]),
                 ("rejoin", (c.generation, source))]
        for method, args in steps:
            (out,) = c.nodes.call(method, args, only=[i], on_fault=fault)
            if isinstance(out, BaseException):
                return
        reapplied = self._signals_again(i)
        if i not in c.alive:
            return
        c.events.write("restart", node=i, generation=c.generation, lost_at=r.generation,
                       snapshot_generation=r.snapshot, source=source_name or
                       ("snapshot" if r.snapshot is not None else "fresh"),
                       fingerprint=out["fingerprint"], signals=reapplied,
                       restart_s=round(time.monotonic() - r.detected, 3))

    def heal(self, rows: list[dict[str, Any]]) -> None:
        """Consensus: a member whose weights left its group's in the generation just ended
        (a dead member's report that reached some of the group and not others) takes the
        majority's state, so that the group is one node again from the next generation."""
        c = self.c
        if c.config.mode != "consensus":
            return
        prints = {r["node"]: r["fingerprint"] for r in rows}
        for group in c.config.groups():
            have = [i for i in group if i in prints]
            count = Counter(prints[i] for i in have)
            if len(count) < 2:
                continue
            major = max(count, key=lambda f: (count[f], -min(i for i in have if prints[i] == f)))
            src = min(i for i in have if prints[i] == major)
            fault = lambda j, e: self.lost(j, e, "resync")  # noqa: E731
            (snap,) = c.nodes.call("snapshot", only=[src], on_fault=fault)
            if isinstance(snap, BaseException):
                continue
            for i in (i for i in have if prints[i] != major):
                c.checkpoints.touched(i)
                (out,) = c.nodes.call("rejoin", (c.generation, snap["snapshot"]), only=[i],
                                      on_fault=fault)
                if not isinstance(out, BaseException):
                    c.events.write("resync", node=i, generation=c.generation,
                                   source=c.nodes.names[src], was=prints[i],
                                   fingerprint=out["fingerprint"])

    def _group_state(self, i: int) -> tuple[bytes | None, str | None]:
        """A live member of node i's consensus group, snapshot now: what i re-syncs to."""
        c = self.c
        if c.config.mode != "consensus":
            return None, None
        group = next(g for g in c.config.groups() if i in g)
        for j in group:
            if j != i and j in c.alive:
                (snap,) = c.nodes.call("snapshot", only=[j],
                                       on_fault=lambda k, e: self.lost(k, e, "rejoin"))
                if not isinstance(snap, BaseException):
                    return snap["snapshot"], c.nodes.names[j]
        return None, None

    def _signals_again(self, i: int) -> list[str]:
        """Deliver every signal node i was a target of again: those its snapshot already
        holds are acknowledged, not applied twice; the others apply from now."""
        c, out = self.c, []
        for s in self.delivered:
            if i not in s.target_ids(c.config.nodes):
                continue
            (r,) = c.nodes.call("apply_signal", (s.id, s.name, dict(s.params), s.announce),
                                only=[i], on_fault=lambda j, e: self.lost(j, e, "rejoin"))
            if isinstance(r, BaseException):
                return out
            if r["new"]:
                out.append(s.id)
        return out
