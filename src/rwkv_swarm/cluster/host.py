"""`NodeHost`: everything a node actor does, as a plain class (the Ray actor only delegates).

It owns a `Member` (a `Node` plus its ZeroMQ `Transport`), and adds what the swarm asks of a
node between generations: peers, signals (applied once each, however often repeated), the
export of its weights and live state and the adoption of another node's, checkpoints, status,
and a loop for the swarm's async mode. Control calls that arrive while the async loop runs wait
for the next generation boundary and are applied there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import torch

from ..kernels import RWKV7Config, RWKV7State
from ..node import Node, NodeConfig, NodeKeys, SwarmKeyring, Transport, TransportConfig
from ..node.exchange import fingerprint
from ..node.member import Member
from ..node.policy import node_policy_file
from ..node.wire import ProtocolError, message, state_from_message, state_message

SNAPSHOT_VERSION = 1
CONTROL_WAIT_S = 120.0  # longest a control call waits for the async loop's next boundary


class PhaseError(RuntimeError):
    """A node's failure in one phase of a generation ("share" or "absorb"), raised by the calls
    that run both (`NodeHost.generation`): the swarm reports the fault with its phase."""

    def __init__(self, phase: str, message: str):
        super().__init__(phase, message)
        self.phase, self.message = phase, message

    def __str__(self) -> str:
        return f"in {self.phase}: {self.message}"


def in_phase(phase: str, op: Callable[..., Any], *args: Any) -> Any:
    """op(*args), a failure raised as a `PhaseError` of `phase`."""
    try:
        return op(*args)
    except Exception as e:  # noqa: BLE001 - handed on with the phase it happened in
        raise PhaseError(phase, f"{type(e).__name__}: {e}") from e


def each_generation(keys: list[Any], phase: Callable[[str, list[Any], list[tuple]], list[Any]],
                    args: list[tuple]) -> list[Any]:
    """`NodeHost.generation` on several hosts of one process: `share` on every one, then
    `absorb(*args[j])` on those that shared (run one after another, a host's absorb would wait
    for a report not sent yet). `phase(method, keys, args)` runs one phase on some of them,
    each failure as its result."""
    out = phase("share", keys, [()] * len(keys))
    ok = [j for j, r in enumerate(out) if not isinstance(r, BaseException)]
    absorbed = phase("absorb", [keys[j] for j in ok], [args[j] for j in ok])
    for j, r in zip(ok, absorbed, strict=True):
        out[j] = r
    return out


def stretch(keys: list[Any], phase: Callable[[str, list[Any], list[tuple]], list[Any]],
            args: list[tuple], count: int) -> Iterator[list[Any]]:
    """`count` generations of `each_generation` back to back: yields, per generation, one
    result per key. A host that failed sits the rest out, its failure given again in every
    later generation; `args[j]` are `NodeHost.generation`'s (wait_s, snapshot), the snapshot
    asked for only with the last generation."""
    failed: dict[Any, BaseException] = {}
    for g in range(count):
        live = [j for j, k in enumerate(keys) if k not in failed]
        last = g == count - 1
        out = each_generation([keys[j] for j in live], phase,
                              [args[j] if last else (args[j][0], False) for j in live])
        now = dict(zip(live, out, strict=True))
        for j, r in now.items():
            if isinstance(r, BaseException):
                failed[keys[j]] = r
        yield [now[j] if j in now else failed[k] for j, k in enumerate(keys)]


def in_batches(results: Iterator[list[Any]], every_s: float) -> Iterator[list[list[Any]]]:
    """`stretch`'s generations in batches: those ended since the last batch, handed on once
    `every_s` has passed, as soon as a host fails (its peers must hear of it at once), and
    at the end. Fewer, larger messages: each costs the sender and the coordinator CPU that
    the nodes' generations would otherwise have."""
    batch: list[list[Any]] = []
    since, failures = time.monotonic(), 0
    for generation in results:
        batch.append(generation)
        now = sum(isinstance(r, BaseException) for r in generation)
        if now > failures or time.monotonic() - since >= every_s:
            yield batch
            batch, since, failures = [], time.monotonic(), now
    if batch:
        yield batch


class NodeHost:
    """One swarm node: its member, its peers' latest beliefs, its control queue."""

    def __init__(self, config: NodeConfig, swarm: str, *, host: str = "127.0.0.1",
                 keys: NodeKeys | None = None, keyring: SwarmKeyring | None = None,
                 transport: TransportConfig | None = None, snapshot: bytes | None = None):
        node, signals = (Node(config), {}) if snapshot is None else _restore(snapshot, config)
        secure = keys is not None
        t = Transport(node.node_name, host, keys=keys, keyring=keyring, swarm=swarm,
                      config=transport or TransportConfig(), insecure=not secure)
        self.member = Member(node, t, swarm)
        self.applied_signals: dict[str, int] = signals  # signal id -> generation applied from
        self._marks: list[str] = []  # signals applied since the last row: its `signals`
        self.peer_beliefs: dict[str, tuple[int, float, float]] = {}  # (gen, mean, var)
        self._queue: list[tuple[Callable[[], Any], threading.Event, list]] = []
        self._lock = threading.Lock()
        self._looping = False
        self._stop = threading.Event()
        self._directory: dict[str, tuple[str, bytes | None]] = {}  # peer -> (endpoint, key)

    @property
    def node(self) -> Node:
        return self.member.node

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def looping(self) -> bool:
        """Whether the async loop runs (control calls then wait for its boundaries)."""
        return self._looping

    def endpoint(self) -> dict[str, Any]:
        t = self.member.transport
        return {"name": self.name, "endpoint": t.endpoint, "public_key": t.public_key}

    # -- peers -----------------------------------------------------------------------------------

    def connect(self, peers: list[dict[str, Any]]) -> None:
        """Learn where every other node is; a channel is opened only to the peers this node
        reports to and hears from (`set_peers`), so that a swarm of hundreds is not a full mesh
        of sockets. A peer already known at another endpoint is a restarted one: its old
        channel is closed and a new one opened. Every peer named is taken as there (not gone)."""
        for p in peers:
            name = p["name"]
            if name == self.name:
                continue
            self._directory[name] = (p["endpoint"], p["public_key"])
            self.member.back(name)
        self._open_channels()

    def _open_channels(self) -> None:
        """A channel to each peer of `set_peers` whose endpoint is known (a restarted one's
        anew)."""
        t = self.member.transport
        at = {name: v["endpoint"] for name, v in t.stats()["peers"].items()}
        for name in sorted(set(self.member.neighbours) | set(self.member.group)):
            if name not in self._directory:
                continue
            endpoint, key = self._directory[name]
            if name in at and at[name] != endpoint:
                t.disconnect(name)
                self.peer_beliefs.pop(name, None)
            if at.get(name) != endpoint:
                t.connect(name, endpoint, key)

    def peer_gone(self, name: str) -> None:
        """Peer `name` is dead: stop waiting for it now (safe while a generation runs)."""
        self.member.gone(name)

    def set_peers(self, neighbours: list[str], group: list[str]) -> None:
        def op() -> None:
            self.member.set_peers(neighbours, group)
            self._open_channels()

        self._control(op)

    # -- one generation --------------------------------------------------------------------------

    def share(self) -> dict[str, Any]:
        """Phase 1: evaluate this generation and send its report."""
        with self._lock:
            self._drain_other()
            self.member.share()
            return {"generation": self.member.generation}

    def absorb(self, wait_s: float, snapshot: bool = False) -> dict[str, Any]:
        """Phase 2: absorb the peers' reports, step; then send the live state and belief.
        Returns the trace row; with `snapshot`, the row also carries the node's `snapshot()`
        at this boundary (a checkpoint due now then costs no round trip of its own)."""
        with self._lock:
            row = self.member.absorb(wait_s)
            t0 = time.perf_counter()
            self._drain_other()
            weights = fingerprint(self.node.model)
            self._broadcast_state(weights)
            row["communicate_s"] = row["send_s"] + row["wait_s"] + time.perf_counter() - t0
            row["fingerprint"] = weights.hex()
            row["name"] = self.name
            row["dropped_by"] = ",".join(f"{k}:{v}" for k, v in sorted(self._dropped().items()))
            # marked by the node itself: in async mode its row can reach the coordinator
            # before the signal's acknowledgement does
            row["signals"], self._marks = ",".join(self._marks), []
            if snapshot:
                row["snapshot"] = self._snapshot_now()
            return row

    def generation(self, wait_s: float, snapshot: bool = False) -> dict[str, Any]:
        """Both phases in one call: `share()`, then `absorb(wait_s)` (the sync swarm's one round
        trip a generation; `wait_s` counts from this node's own report, so it covers a slower
        peer's evaluation too). A failure is a `PhaseError` naming its phase."""
        in_phase("share", self.share)
        return in_phase("absorb", self.absorb, wait_s, snapshot)

    def _broadcast_state(self, weights: bytes) -> None:
        """Send the live state (of the weights hashed as `weights`) and the fitness belief to
        the neighbours. Not to the consensus group: its members computed the same weights,
        state and belief from the same reports, and sending them cost each member a send and
        a receive every generation."""
        m, t = self.member, self.member.transport
        peers = set(m.neighbours) - set(m.group) - m.absent
        if not peers:
            return
        gen = self.node.generation_count
        belief = self.node.strategy.fitness_belief
        msgs = [state_message(self.node.live_state, weights, swarm=m.swarm, node=self.name,
                              gen=gen)]
        if np.isfinite(belief.var):
            msgs.append(message("belief", swarm=m.swarm, node=self.name, gen=gen, name="fitness",
                                arrays={"mean": np.array([belief.mean]),
                                        "var": np.array([belief.var])}))
        for msg in msgs:
            t.broadcast(msg, peers)

    def _drain_other(self) -> None:
        """File the peers' beliefs (the newest of each peer is kept); their states are checked
        (one of another model is counted as dropped) and let go: nothing here uses them, a
        migrant gets its source's state from the source itself (`export`)."""
        msgs, self.member.other = self.member.other, []
        for msg in msgs:
            if msg.type == "state":
                try:
                    state_from_message(msg, self.node.config.model)
                except ProtocolError as e:
                    self.member.dropped[e.reason] += 1
            elif msg.type == "belief" and msg.fields["name"] == "fitness":
                self.peer_beliefs[msg.node] = (msg.gen, float(msg.arrays["mean"][0]),
                                               float(msg.arrays["var"][0]))

    # -- control: signals, adoption, checkpoints ------------------------------------------------

    def _control(self, op: Callable[[], Any]) -> Any:
        """Run `op` now, or at the async loop's next generation boundary (waiting for it)."""
        with self._lock:
            if not self._looping:
                return op()
            done, out = threading.Event(), []
            self._queue.append((op, done, out))
        if not done.wait(CONTROL_WAIT_S):
            raise TimeoutError(f"{self.name}: no generation boundary within {CONTROL_WAIT_S} s")
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def _run_queue(self) -> None:
        ops, self._queue = self._queue, []
        for op, done, out in ops:
            try:
                out.append(op())
            except Exception as e:  # noqa: BLE001 - handed back to the waiting caller
                out.append(e)
            done.set()

    def apply_signal(self, signal_id: str, name: str, params: dict[str, Any],
                     announce: bool = True) -> dict[str, Any]:
        """Change this node's world from its next generation on; a repeated id is not applied
        again. Returns {"node", "generation" (the first one in the changed world), "new"}."""
        def op() -> dict[str, Any]:
            new = signal_id not in self.applied_signals
            if new:
                if announce:
                    self.node.apply_signal(name, params)
                else:  # the world changes, the node is not told
                    self.node.env.apply_signal(name, params)
                self.applied_signals[signal_id] = self.node.generation_count
                self._marks.append(name)
            return {"node": self.name, "generation": self.applied_signals[signal_id], "new": new}

        return self._control(op)

    def export(self) -> dict[str, Any]:
        """{"weights" (numpy, for Ray's object store), "state" (the live state's
        `RWKV7State.to_bytes`), "fingerprint" (of the weights)}, taken together at a generation
        boundary (in async mode the next one), so that the state belongs to the weights."""
        def op() -> dict[str, Any]:
            node = self.node
            return {"weights": {k: v.detach().cpu().numpy().copy()
                                for k, v in node.model.state_dict().items()},
                    "state": node.live_state.to_bytes(), "fingerprint": fingerprint(node.model)}

        return self._control(op)

    def adopt(self, export: dict[str, Any], source: str, belief: tuple[float, float],
              with_state: bool = True) -> dict[str, Any]:
        """Take another node's `export()`: its weights and (`with_state`) its live RWKV state,
        else a zero state; the fitness belief becomes the source's, the direction belief starts
        over. Refused (ValueError, nothing changed) when the weights or the state do not fit this
        node's model, or the weights are not the ones the state belongs to. Returns what was
        taken: {"node", "source", "state", "fingerprint"}."""
        def op() -> dict[str, Any]:
            node = self.node
            weights = _weights_for(node.model.state_dict(), export["weights"], source)
            state = _state_for(node.live_state, export["state"], node.config.model, source) \
                if with_state else node.model.zero_state(1)
            old = {k: v.clone() for k, v in node.model.state_dict().items()}
            node.model.load_state_dict(weights)
            now = fingerprint(node.model)
            if now != export["fingerprint"]:
                node.model.load_state_dict(old)
                raise ValueError(f"{source}'s weights hash to {now.hex()}, not to the "
                                 f"{bytes(export['fingerprint']).hex()} their export names: "
                                 f"refused")
            node.live_state = state
            node.strategy.adopted(*belief)
            return {"node": self.name, "source": source, "state": with_state,
                    "fingerprint": now.hex()}

        return self._control(op)

    def checkpoint(self) -> bytes:
        """The node's own checkpoint (`Node.restore` reads it)."""
        return self._control(self.node.checkpoint)

    def snapshot(self) -> dict[str, Any]:
        """{"generation", "snapshot"}: the node's checkpoint and the signals it applied, at a
        generation boundary; `NodeHost(..., snapshot=...)` continues from it."""
        return self._control(self._snapshot_now)

    def policy(self) -> dict[str, Any]:
        """{"generation", "policy"}: the node's policy file's bytes (`node_policy_file`) at a
        generation boundary; "policy" None and "error" why, in a world no policy describes
        (the node is fine: its run goes on without a policy file)."""
        def op() -> dict[str, Any]:
            out: dict[str, Any] = {"generation": self.node.generation_count}
            try:
                out["policy"] = node_policy_file(self.node)
            except ValueError as e:
                out.update(policy=None, error=str(e))
            return out

        return self._control(op)

    def _snapshot_now(self) -> dict[str, Any]:
        blob = msgpack.packb({"version": SNAPSHOT_VERSION, "node": self.node.checkpoint(),
                              "signals": self.applied_signals}, use_bin_type=True)
        return {"generation": self.node.generation_count, "snapshot": blob}

    def rejoin(self, generation: int, source: bytes | None = None) -> dict[str, Any]:
        """Rejoin a swarm that is at `generation` after a restart. A consensus member given
        `source` (a live group member's snapshot) takes its weights, live state, strategy,
        world and signals and keeps its own config (member index); any other node goes on
        from its own snapshot with its generation counters moved on to `generation`, so that
        its reports are not stale to its peers. Returns {"generation", "from", "fingerprint"}."""
        def op() -> dict[str, Any]:
            before = self.node.generation_count
            if source is not None:
                self.member.node, self.applied_signals = _resync(source, self.node.config)
            node = self.node
            if generation > node.generation_count:  # the mutants' seeds move on with it
                node.generation_count = node.strategy.generation = generation
            self.member.inbox.clear()
            return {"generation": node.generation_count, "from": before,
                    "fingerprint": fingerprint(node.model).hex()}

        return self._control(op)

    def evaluate_centre(self, episodes: int, seed: int) -> float:
        """Mean return of the current weights over fresh episodes (`Node.score`)."""
        return self._control(lambda: self.node.score(episodes, seed))

    def ping(self) -> str:
        """The node's name, if it can still take part (its transport is open)."""
        if self.member.transport.closed:
            raise RuntimeError(f"{self.name} is closed")
        return self.name

    def status(self) -> dict[str, Any]:
        b = self.node.strategy.fitness_belief
        stats = self.member.transport.stats()
        return {"name": self.name, "generation": self.node.generation_count,
                "belief_mean": b.mean, "belief_var": b.var, "episodes": self.node.episodes_used,
                "peers": {p: {"alive": v["alive"], "belief": self.peer_beliefs.get(p)}
                          for p, v in stats["peers"].items()},
                "absorbs_from": self.member.expected(),
                "sent": stats["sent"], "received": stats["received"],
                "dropped": self._dropped(),
                "signals": dict(self.applied_signals)}

    def _dropped(self) -> dict[str, int]:
        """Messages dropped so far, by reason: by the transport (malformed, impersonation, ...),
        by the member (stale, repeated, a state of another model) and refused reports."""
        return {**self.member.transport.stats()["dropped"], **self.member.dropped,
                **{f"refused_{k}": v for k, v in self.node.refused.items()}}

    # -- async mode --------------------------------------------------------------------------------

    def run_async(self, generations: int, report: Callable[[dict[str, Any]], None],
                  wait_s: float = 0.0) -> int:
        """Run `generations` generations without a barrier, handing each row to `report`;
        control calls are applied between generations. Returns the generations run."""
        with self._lock:
            self._looping = True
            self._stop.clear()
        done = 0
        try:
            while done < generations and not self._stop.is_set():
                with self._lock:
                    self._run_queue()
                self.share()
                report(self.absorb(wait_s))
                done += 1
        finally:
            with self._lock:
                self._looping = False
                self._run_queue()
        return done

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self.member.close()



def _unpack(snapshot: bytes) -> dict[str, Any]:
    try:
        d = msgpack.unpackb(snapshot, raw=False)
    except Exception as e:  # noqa: BLE001 - any failure here means malformed bytes
        raise ValueError(f"not a node snapshot: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict) or d.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"not a node snapshot of version {SNAPSHOT_VERSION}")
    return d


def _signals(d: dict[str, Any]) -> dict[str, int]:
    signals = d.get("signals")
    if not isinstance(signals, dict) or not all(isinstance(v, int) for v in signals.values()):
        raise ValueError(f"not a node snapshot: signals must map ids to generations, got "
                         f"{signals!r}")
    return dict(signals)


def _restore(snapshot: bytes, config: NodeConfig) -> tuple[Node, dict[str, int]]:
    """The node and applied signals of a `NodeHost.snapshot()`, refused (ValueError) unless it
    is one of node `config.node_id`."""
    d = _unpack(snapshot)
    node = Node.restore(d["node"], device=config.device)  # the device this run gives it
    if node.config.node_id != config.node_id:
        raise ValueError(f"snapshot of node {node.config.node_id}, refused for node "
                         f"{config.node_id}")
    return node, _signals(d)


def _resync(source: bytes, config: NodeConfig) -> tuple[Node, dict[str, int]]:
    """A group member's snapshot as this member's: its node with `config` (this member's
    index and id) in place of the source's; refused unless both are of one consensus group."""
    d = _unpack(source)
    node = Node.restore(d["node"], device=config.device)  # the device this run gives it
    theirs, ours = node.config.exchange, config.exchange
    if ours.mode != "consensus" or (theirs.mode, theirs.group) != ("consensus", ours.group):
        raise ValueError(f"node {config.node_id} re-syncs from a member of its consensus group "
                         f"only, got a snapshot of node {node.config.node_id} "
                         f"({theirs.mode}, group {theirs.group})")
    node.config = config
    return node, _signals(d)


def _weights_for(own: dict[str, torch.Tensor], weights: dict[str, Any], source: str
                 ) -> dict[str, torch.Tensor]:
    """`weights` as tensors, refused (ValueError) unless they have this model's names and
    shapes."""
    if set(weights) != set(own):
        odd = sorted(set(weights) ^ set(own))[:3]
        raise ValueError(f"{source}'s weights are not of this model: names differ ({odd})")
    out = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    for k, v in out.items():
        if v.shape != own[k].shape or v.dtype != own[k].dtype:
            raise ValueError(f"{source}'s weights are not of this model: {k} is "
                             f"{tuple(v.shape)} {v.dtype}, this model's {tuple(own[k].shape)} "
                             f"{own[k].dtype}")
    return out


def _state_for(live: RWKV7State, blob: bytes, config: RWKV7Config, source: str) -> RWKV7State:
    """The state in `blob`, refused (ValueError) unless it fits a model of `config` and has
    the shape and dtypes of this node's live state."""
    try:
        state = RWKV7State.from_bytes(blob, config)
    except ValueError as e:
        raise ValueError(f"{source}'s live state does not fit this model: {e}") from None
    for mine, theirs in zip(live.tensors(), state.tensors(), strict=True):
        if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
            raise ValueError(f"{source}'s live state is {tuple(theirs.shape)} {theirs.dtype}, "
                             f"this node's {tuple(mine.shape)} {mine.dtype}")
    return state.to(live.wkv.device)
