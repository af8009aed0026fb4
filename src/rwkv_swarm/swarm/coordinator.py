"""`Coordinator`: a swarm's control plane, as a plain class over a set of node handles.

It drives generations (sync: in stretches of generations, one round trip to the nodes each,
their rows streamed back as each generation ends, the nodes' reports the barrier between a
generation's two phases; async: each node at its own pace, its rows streamed in), applies
signals at generation boundaries (each once per target, acknowledged to the caller), decides
belief-gated migrations, and is the single writer of the trace and the event log. It never
carries fitness reports, states or weights: nodes exchange those over ZeroMQ, and a migrant's
new weights go from the source's actor to the migrant's through Ray's object store.
Tested with in-process nodes (`tests/test_coordinator.py`) and on Ray actors
(`tests/test_swarm.py`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .beliefs import Summary
from .board import open_board, write_board
from .checkpointing import Checkpointing
from .config import SwarmConfig
from .decisions import Decisions
from .faults import Recovery
from .signals import Signal, validate
from .topology import neighbours as make_neighbours
from .trace import EventLog, TraceWriter

SIGNAL_WAIT_S = 600.0  # longest inject() waits for its signal to be applied


class Nodes(Protocol):
    """How the coordinator reaches its nodes (Ray actors, or plain hosts in tests)."""

    names: list[str]

    def call(self, method: str, args: list[tuple] | tuple = (), only: list[int] | None = None,
             on_fault: Any = None) -> list[Any]:
        """method(*args) on each node (args: one tuple for all, or one per node), results in
        node order; a node that failed gives its exception instead of a result, and
        on_fault(node, exception) is called as soon as the failure is seen."""

    def generations(self, count: int, args: list[tuple] | tuple, only: list[int] | None = None,
                    on_fault: Any = None) -> Iterator[list[Any]]:
        """`count` generations of each node (`NodeHost.generation(*args)`, the snapshot with
        the last only) in one round trip: yields, per generation, what `call` returns; a node
        that failed gives its exception in every later generation."""

    def tell(self, method: str, args: tuple = (), only: list[int] | None = None) -> None:
        """method(*args) on each node, reaching it even in the middle of a call."""

    def respawn(self, i: int, snapshot: bytes | None) -> bool:
        """Start node i again from `snapshot` in the background (False: cannot)."""

    def started(self, i: int, timeout_s: float = 0.0) -> dict[str, Any] | None:
        """The restarted node i's endpoint once it is up, else None."""

    def transfer(self, src: int, dst: int, belief: tuple[float, float], with_state: bool
                 ) -> dict[str, Any]:
        """dst adopts src's weights (and live state)."""


@dataclass
class _Pending:
    signal: Signal
    injected_during: int | None
    boundary: int | None  # where the stretch in flight ends (None: none in flight, or async)
    done: threading.Event = field(default_factory=threading.Event)
    acks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Coordinator:
    """See the module docstring. `run()` may be called again to go on from where it stopped."""

    def __init__(self, config: SwarmConfig, run_id: str, run_dir: str | Path, nodes: Nodes):
        self.config, self.run_id, self.nodes = config, run_id, nodes
        self.run_dir = Path(run_dir)
        self.trace = TraceWriter(self.run_dir, config.trace_flush_s)
        self.events = EventLog(self.run_dir)
        self.generation = 0  # the next generation to run
        self.in_flight: int | None = None  # the generation running now
        self.alive = set(range(config.nodes))
        self.last: dict[int, dict[str, Any]] = {}  # each node's latest row
        self.lineage: list[dict[str, Any]] = []  # migrations: who adopted whom, when
        self.neighbour_lists = config.neighbours()
        self._pending: list[_Pending] = []
        self._topology: list[list[int]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._buffer: list[dict[str, Any]] = []
        self._started = time.time()
        self._board = open_board(self.run_dir, self.events) if config.tensorboard else None
        self.rows_seen = 0  # changes to `last` so far: `Decisions` recomputes P(best) on each
        self._target_hit = False
        self._pace: float | None = None  # seconds a generation took in the last stretch
        self._until: int | None = None  # the generation the stretch in flight ends before
        self.recovery = Recovery(self)  # dead nodes: their peers told, restarted, rejoined
        self.decisions = Decisions(self)  # P(best) and the gated migrations, from the rows
        self.checkpoints = Checkpointing(self)  # snapshots to disk, the best policy out
        self._wire(self.neighbour_lists, strict=True)

    # -- peers -----------------------------------------------------------------------------------

    def peer_args(self, lists: list[list[int]]) -> list[tuple[list[str], list[str]]]:
        """Each node's `set_peers` arguments: its neighbours' names, its group's names."""
        names = self.nodes.names
        groups = {i: [names[j] for j in g] for g in self.config.groups() for i in g}
        return [([names[j] for j in lists[i]], groups[i]) for i in range(self.config.nodes)]

    def _wire(self, lists: list[list[int]], strict: bool = False) -> None:
        """Tell the live nodes their peers (a dead one is told when it rejoins)."""
        if strict:  # at start: a node that cannot take its peers is an error, not a fault
            self._check(self.nodes.call("set_peers", self.peer_args(lists)), "set_peers")
            return
        self.nodes.call("set_peers", self.peer_args(lists), only=sorted(self.alive),
                        on_fault=self.on_fault("set_peers"))

    def set_topology(self, kind: str, k: int = 2, rewire: float = 0.1) -> list[list[int]]:
        """New neighbour lists, applied at the next generation boundary."""
        lists = make_neighbours(kind, self.config.nodes, k=k, rewire=rewire,
                                seed=self.config.seed + self.generation)
        with self._lock:
            self._topology = lists
            if self.in_flight is None:
                self._apply_topology()
        return lists

    def _apply_topology(self) -> None:
        if self._topology is not None:
            self.neighbour_lists, self._topology = self._topology, None
            self._wire(self.neighbour_lists)
            self.events.write("topology", generation=self.generation,
                              neighbours=self.neighbour_lists)

    # -- signals ---------------------------------------------------------------------------------

    def inject(self, signal: Signal, wait_s: float = SIGNAL_WAIT_S) -> dict[str, Any]:
        """Validate `signal` against the environment's schema (nothing is sent if it fails),
        have every target apply it at its next generation boundary, and return the
        acknowledgement: {"id", "name", "injected_during" (the generation running, or None),
        "boundary" (the generation the stretch of generations in flight ends before, where the
        signal applies; None when none was in flight, or in async mode), "applied": {node:
        generation}}."""
        validate(signal, self.config.env, self.config.nodes)
        with self._lock:
            pending = _Pending(signal, self.in_flight, self._until)
            self._pending.append(pending)
            idle = self.in_flight is None
        if idle:  # no generation running: the boundary is now
            self._apply_signals()
        if not pending.done.wait(wait_s):
            raise TimeoutError(f"signal {signal.id} not applied within {wait_s} s")
        if pending.error:
            raise RuntimeError(pending.error)
        return {"id": signal.id, "name": signal.name, "injected_during": pending.injected_during,
                "boundary": pending.boundary,
                "applied": pending.acks}

    def _scheduled(self) -> None:
        for s in self.config.signals:
            if s.generation == self.generation:
                self._pending.append(_Pending(s.signal(), None, None))

    def _apply_signals(self) -> None:
        """Deliver every pending signal to its targets (each applies an id once). The nodes
        are called outside the lock: in async mode each answers at its own boundary."""
        with self._lock:
            pending, self._pending = self._pending, []
        for p in pending:
            s = p.signal
            targets = [t for t in s.target_ids(self.config.nodes) if t in self.alive]
            results = self.nodes.call("apply_signal", (s.id, s.name, dict(s.params), s.announce),
                                      only=targets)
            self.recovery.delivered.append(s)
            for t, r in zip(targets, results, strict=True):
                if isinstance(r, BaseException):
                    p.error = f"node {t}: {r}"
                    continue
                p.acks[t] = r["generation"]
            self.events.write("signal", id=s.id, name=s.name, params=s.params,
                              targets=targets, announce=s.announce,
                              injected_during=p.injected_during, boundary=p.boundary,
                              applied=p.acks)
            p.done.set()

    def _boundary(self) -> None:
        self.recovery.rejoin()  # restarted nodes first: this boundary's signals reach them
        with self._lock:
            self._scheduled()
        self._apply_signals()
        with self._lock:
            self._apply_topology()

    # -- sync generations --------------------------------------------------------------------------

    def run(self, generations: int | None = None, on_generation: Any = None) -> dict[str, Any]:
        """Run `generations` more generations (default: the config's); returns `status()`.
        `on_generation(status)` runs at every generation boundary, so a run given one goes a
        generation a round trip; without it, generations go in stretches (`_stretch`)."""
        n = self.config.generations if generations is None else generations
        self._stop.clear()
        if self.generation == 0 and self.checkpoints.store.load_coordinator() is None:
            self.checkpoints.checkpoint()  # a dead node restarts from here until the first due one
        done = 0
        while done < n:
            if self._stop.is_set() or not (self.alive or self.recovery.restarting):
                break
            self._boundary()
            count = 1 if on_generation is not None else self._stretch(n - done)
            self._generations(count)
            done += count
            self.checkpoints.checkpoint()
            if on_generation is not None:
                on_generation(self.status())
            if self._target_reached():
                break
        self.checkpoints.wrap_up()
        return self.status()

    def _stretch(self, left: int) -> int:
        """How many generations the next round trip runs: as many as `config.stretch_s` holds
        at the last stretch's pace (at most `left`), ending before the first boundary with
        work for the coordinator (a checkpoint, a scheduled signal, a migration decision);
        one while a node is restarting (it rejoins at the next boundary), and one before any
        pace is known."""
        if self._pace is None or self.recovery.restarting:
            return 1
        count = min(left, max(1, int(self.config.stretch_s / max(self._pace, 1e-9))))
        for k in range(1, count):
            if self._boundary_work(self.generation + k):
                return k
        return count

    def _boundary_work(self, generation: int) -> bool:
        """Whether the boundary before `generation` has work that needs the nodes idle."""
        return (self.checkpoints.due(generation) or self.decisions.due(generation)
                or any(s.generation == generation for s in self.config.signals))

    def _generations(self, count: int) -> None:
        """`count` generations in one round trip to the live nodes (a snapshot with the last
        when a checkpoint follows); each generation's rows are taken as they stream in."""
        live = sorted(self.alive)
        if not live:  # every node dead, none rejoined: no generation to run
            return
        with self._lock:
            self.in_flight, self._until = self.generation, self.generation + count
        start = t0 = time.perf_counter()
        snap = self.checkpoints.due(self.generation + count)
        out: list[dict[str, Any]] = []
        stream = self.nodes.generations(count, (self.config.wait_s, snap), only=live,
                                        on_fault=self.on_fault("generation"))
        for k, rows in enumerate(stream):
            gen, now, last = self.generation, time.perf_counter(), k == count - 1
            done = {i: r for i, r in zip(live, rows, strict=True)
                    if not self.fault(i, r, "generation")}
            if snap and last:
                self.checkpoints.hold({i: row.pop("snapshot") for i, row in done.items()})
            for i, row in done.items():
                row.update(generation=gen, node=i, generation_s=now - t0, time=time.time())
            out, t0 = list(done.values()), now
            self._finish(gen, out, last=last)
            self.recovery.phase = ("generation", time.monotonic())  # the next one's start
            self._target_reached()
        self._pace = (time.perf_counter() - start) / count
        self.recovery.heal(out)

    def _finish(self, gen: int, rows: list[dict[str, Any]], last: bool) -> None:
        """Generation `gen`'s rows in: beliefs, migrations, the trace; the next generation is
        in flight unless `gen` was the last of its round trip."""
        for row in rows:
            self.last[row["node"]] = row
        self.rows_seen += 1
        self.decisions.decide(gen, rows)
        self._write(rows)
        with self._lock:
            self.generation, self.in_flight = gen + 1, None if last else gen + 1
            if last:
                self._until = None

    def fault(self, i: int, result: Any, call: str) -> bool:
        """Whether `result` is node i's failure in `call` (then handled: see `Recovery.lost`;
        the phase is the one a `PhaseError` names, else the call's)."""
        if not isinstance(result, BaseException):
            return False
        cause = getattr(result, "cause", None)  # Ray's wrapper of what the actor raised
        phase = getattr(result, "phase", None) or getattr(cause, "phase", None) or call
        self.recovery.lost(i, result, phase, restart=self.config.sync, call=call)
        return True

    def on_fault(self, phase: str) -> Any:
        """The `on_fault` of a call in `phase` (the time a fault is seen is measured from
        the phase's start)."""
        self.recovery.phase = (phase, time.monotonic())
        return lambda i, e: self.fault(i, e, phase)

    # -- the result --------------------------------------------------------------------------------

    def settle(self) -> None:
        """Wait until the checkpoint being written is on disk (`Checkpointing.settle`)."""
        self.checkpoints.settle()

    def _target_reached(self) -> bool:
        """Whether the best lineage's belief mean has reached `config.target` (then a `target`
        event, once)."""
        target = self.config.target
        if target is None or self._target_hit:
            return self._target_hit
        best = self.best()
        if best is None or not best["belief_mean"] >= target:
            return False
        self._target_hit = True
        self.events.write("target", target=target, **best)  # generation: the best node's row
        return True

    def state_dict(self) -> dict[str, Any]:
        """What the coordinator knows that its nodes' snapshots do not (JSON-able)."""
        return {"generation": self.generation, "alive": sorted(self.alive),
                "neighbours": self.neighbour_lists, "lineage": list(self.lineage),
                "decided": self.decisions.decided, "rows": self.trace.rows,
                "last": {str(i): r for i, r in self.last.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from a `state_dict()`: the next generation, the live nodes, the neighbour lists
        (the nodes rewired to them), lineage, decisions, each node's last row, the trace's row
        count. Refused (ValueError) when it is not one of this swarm's."""
        try:
            lists = [[int(j) for j in g] for g in state["neighbours"]]
            alive = {int(i) for i in state["alive"]}
            last = {int(i): dict(r) for i, r in state["last"].items()}
            generation, decided, rows = (int(state[k]) for k in ("generation", "decided", "rows"))
            lineage = [dict(r) for r in state["lineage"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a coordinator state: {type(e).__name__}: {e}") from None
        n = self.config.nodes
        if len(lists) != n or not alive <= set(range(n)) or not set(last) <= set(range(n)):
            raise ValueError(f"a coordinator state of another swarm: {len(lists)} neighbour "
                             f"lists, alive {sorted(alive)}, for {n} nodes")
        with self._lock:
            self.generation, self.decisions.decided, self.trace.rows = generation, decided, rows
            self.alive, self.last, self.lineage = alive, last, lineage
            self.rows_seen += 1
        if lists != self.neighbour_lists:
            self.neighbour_lists = lists
            self._wire(lists)

    def resume(self, state: dict[str, Any], **record: Any) -> dict[str, Any]:
        """Continue a run whose coordinator died, from its checkpoint's `state` (the trace and
        events already cut back to it); writes and returns the `resume` event (with
        `record`'s fields)."""
        self.load_state_dict(state)
        if self._board is not None:  # TensorBoard drops what it holds from here on
            self._board.close()
            self._board = type(self._board)(str(self.run_dir / "tb"), purge_step=self.generation)
        return self.events.write("resume", from_generation=self.generation,
                                 alive=sorted(self.alive), **record)

    # -- beliefs and migration -------------------------------------------------------------------

    def summaries(self) -> list[Summary]:
        """Each live node's latest belief (a dead node's last row takes no part)."""
        return self.decisions.summaries()

    def best(self) -> dict[str, Any] | None:
        """The best live lineage by belief (`Decisions.best`); None before any row."""
        return self.decisions.best()

    # -- async generations -------------------------------------------------------------------------

    def run_async(self, start: Any, generations: int | None = None) -> dict[str, Any]:
        """Async mode: `start(generations, on_fault)` sets every node running at its own pace
        and returns a function that tells whether all are done; rows come in through `ingest`.
        A node that dies is reported and its peers stop waiting for it; it is not restarted."""
        n = self.config.generations if generations is None else generations
        with self._lock:
            self._scheduled()
            self.in_flight = self.generation
        finished = start(n, self.on_fault("run_async"))
        while not finished(0.2):
            self._apply_signals()
            self._flush()
            if not self._target_hit and self._target_reached():
                self.nodes.tell("stop")  # each node ends at its next boundary
        self._apply_signals()
        with self._lock:
            self.in_flight = None
        self._flush(final=True)
        self.checkpoints.wrap_up()
        return self.status()

    def ingest(self, row: dict[str, Any]) -> None:
        """A node's row, in async mode (stale reports were already counted by the node)."""
        row.setdefault("time", time.time())
        with self._lock:
            self._buffer.append(row)
            self.last[row["node"]] = row
            self.rows_seen += 1
            self.generation = max(self.generation, row["generation"] + 1)

    def _flush(self, final: bool = False) -> None:
        with self._lock:
            rows = self._buffer if (final or len(self._buffer) >= len(self.alive)) else []
            if rows:
                self._buffer = []
        if rows:
            self.decisions.decide(max(r["generation"] for r in rows), rows)
            self._write(rows)

    # -- output ----------------------------------------------------------------------------------

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.trace.write(rows)
        if self._board is not None:
            write_board(self._board, rows)

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """generation, per-node fitness and belief, peers, messages and drops."""
        nodes = {}
        for i in range(self.config.nodes):
            r = self.last.get(i, {})
            nodes[i] = {"alive": i in self.alive, "restarts": self.recovery.restarts[i],
                        "restarting": i in self.recovery.restarting,
                        "generation": r.get("generation"),
                        "fitness_mean": r.get("fitness_mean"), "belief_mean": r.get("belief_mean"),
                        "belief_var": r.get("belief_var"), "p_best": r.get("p_best"),
                        "neighbours": self.neighbour_lists[i], "sent": r.get("sent"),
                        "received": r.get("received"), "dropped": r.get("dropped"),
                        "episodes": r.get("episodes")}
        best = max((r.get("fitness_mean", -math.inf) for r in self.last.values()),
                   default=math.nan)
        return {"run_id": self.run_id, "generation": self.generation, "in_flight": self.in_flight,
                "nodes": nodes, "best_fitness": best, "best": self.best(),
                "target_reached": self._target_hit, "migrations": len(self.lineage),
                "rows": self.trace.rows, "elapsed_s": time.time() - self._started,
                "mean_fitness": float(np.mean([r["fitness_mean"] for r in self.last.values()]))
                if self.last else math.nan}

    def stop(self) -> None:
        self._stop.set()

    def _check(self, results: list[Any], what: str) -> None:
        bad = [r for r in results if isinstance(r, BaseException)]
        if bad:
            raise RuntimeError(f"{what} failed on {len(bad)} node(s): {bad[0]}")
