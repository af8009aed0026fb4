"""The coordinator's handle on a swarm's nodes: Ray actors (`RayNodes`), or plain `NodeHost`s
in this process (`LocalNodes`, for tests and small runs without Ray). Both answer `call` with
one result per node, an exception object standing for a node that failed, so that the
coordinator can go on without it; `on_fault` hears of each failure as soon as it is seen (not
when the slowest node answers), so the dead node's peers can be told at once (`tell`). A dead
node is started again from a snapshot by `respawn` and is back once `started` says so."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from .host import NodeHost, each_generation, in_phase, stretch
from .placement import Respawn

NODE_TIMEOUT_S = 3600.0  # a node that answers nothing for this long is given up
TELL_WAIT_S = 10.0  # longest the next call waits for earlier `tell`s to be delivered

OnFault = Callable[[int, BaseException], None]


def _per_node(args: list[tuple] | tuple, n: int) -> list[tuple]:
    return list(args) if isinstance(args, list) else [args] * n


class RayNodes:
    """Node actors, `per_actor` nodes each: node i is slot i % per_actor of actor
    i // per_actor, and a call is one remote call per actor, whose nodes answer one after
    another. `respawn` (from `spawn_nodes`) lets dead nodes be started again: a node that
    failed alone in its slot of a live actor, a dead actor's nodes in one new actor."""

    def __init__(self, actors: list[Any], names: list[str], timeout_s: float = NODE_TIMEOUT_S,
                 respawn: Respawn | None = None):
        self.actors, self.names, self.timeout_s = list(actors), names, timeout_s
        self.per_actor = respawn.per_actor if respawn is not None else 1
        self._respawn = respawn
        self._told: list[Any] = []
        self._broken: set[int] = set()  # actors a call failed in as a whole (dead, or hung)
        self._fresh: dict[int, Any] = {}  # actor -> its replacement, until a node of it is up
        self._starting: dict[int, tuple[int, Any]] = {}  # node -> (its actor, its endpoint)

    def node_actors(self) -> list[Any]:
        """Each node's actor (pack-mates share one)."""
        return [self.actors[i // self.per_actor] for i in range(len(self.names))]

    def _by_actor(self, idx: list[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in idx:
            out.setdefault(i // self.per_actor, []).append(i)
        return out

    def call(self, method: str, args: list[tuple] | tuple = (), only: list[int] | None = None,
             on_fault: OnFault | None = None) -> list[Any]:
        self._settle()
        idx = list(range(len(self.names))) if only is None else list(only)
        per = _per_node(args, len(self.names))
        k = self.per_actor
        groups = self._by_actor(idx)
        refs = {self.actors[a].call.remote(method, [i % k for i in nodes], [per[i] for i in nodes]):
                (a, nodes) for a, nodes in groups.items()}
        got = _collect(refs, self.timeout_s, self._broken, on_fault)
        return [got[i] for i in idx]

    def generations(self, count: int, args: list[tuple] | tuple,
                    only: list[int] | None = None, on_fault: OnFault | None = None
                    ) -> Iterator[list[Any]]:
        """`count` generations of each node (`NodeHost.generation(*args[i])`, the snapshot
        asked for with the last one only) in one streaming call per actor, whose results come
        in batches of generations: yields, as each generation has ended on every node, one
        result per node. A node that failed gives its exception in every later generation;
        `on_fault` hears of it as soon as it is seen."""
        self._settle()
        idx = list(range(len(self.names))) if only is None else list(only)
        per = _per_node(args, len(self.names))
        k = self.per_actor
        streams = {self.actors[a].generations.remote([i % k for i in nodes],
                                                     [per[i] for i in nodes], count): (a, nodes)
                   for a, nodes in self._by_actor(idx).items()}
        held: dict[Any, deque[list[Any]]] = {s: deque() for s in streams}  # a batch's later ones

        drained: set[Any] = set()  # streams read to their end

        def stash(stream: Any) -> None:
            try:
                held[stream].extend(ray.get(next(stream)))
            except StopIteration:
                drained.add(stream)

        def take(stream: Any) -> list[Any]:
            stash(stream)
            return held[stream].popleft()  # an ended stream has none: its nodes' fault

        failed: dict[int, BaseException] = {}
        for _ in range(count):
            got: dict[int, Any] = {}
            waiting = {}  # streams with no generation held: read the next batch
            # streams with generations held are watched too: an actor that died after its
            # batch came must be seen now, or its peers wait for its report until wait_s
            # while their own batch waits for their next generation
            watching = {}
            for s, (a, nodes) in streams.items():
                if held[s]:
                    _file(nodes, held[s].popleft(), got, on_fault)
                    if s not in drained:
                        watching[s] = (a, nodes)
                else:
                    waiting[s] = (a, nodes)
            ended: set[Any] = set()  # streams that failed as a whole: never read again
            got.update(_collect(waiting, self.timeout_s, self._broken, on_fault, take=take,
                                ended=ended, watch=watching, stash=stash))
            for s in ended:  # a dead actor's held generations go with it
                held[s].clear()
            streams = {s: an for s, an in streams.items() if s not in ended}
            for i in idx:
                if isinstance(got.get(i), BaseException):
                    failed.setdefault(i, got[i])
            yield [failed[i] if i in failed else got[i] for i in idx]

    def tell(self, method: str, args: tuple = (), only: list[int] | None = None) -> None:
        """method(*args) on each node without waiting: it reaches a node in the middle of a
        call (its actor is threaded). Delivered before the next `call` starts."""
        idx = list(range(len(self.names))) if only is None else list(only)
        self._told += [self.actors[a].tell.remote(method, [i % self.per_actor for i in nodes],
                                                  args)
                       for a, nodes in self._by_actor(idx).items()]

    def _settle(self) -> None:
        if self._told:
            ray.wait(self._told, num_returns=len(self._told), timeout=TELL_WAIT_S)
            self._told = []

    def respawn(self, i: int, snapshot: bytes | None) -> bool:
        """Start node i again from `snapshot` in the background; False when this swarm cannot
        restart nodes. In a live actor it takes its slot again; a broken actor is ended and
        a new one started, which its pack-mates join as they are restarted."""
        if self._respawn is None:
            return False
        a, slot = divmod(i, self.per_actor)
        if a in self._fresh:
            ref = self._fresh[a].start.remote([slot], [self._respawn.spec(i, snapshot)])
        elif a in self._broken:
            with contextlib.suppress(Exception):  # also releases the dead actor's name
                ray.kill(self.actors[a])
            self._fresh[a] = self._respawn.start(a, [i], [snapshot])
            self._broken.discard(a)
            ref = self._fresh[a].endpoints.remote()
        else:
            ref = self.actors[a].start.remote([slot], [self._respawn.spec(i, snapshot)])
        self._starting[i] = (a, ref)
        return True

    def started(self, i: int, timeout_s: float = 0.0) -> dict[str, Any] | None:
        """The endpoint of the restarted node i once it is up (a new actor then stands for
        its pack), None while it starts; raises what its start raised."""
        a, ref = self._starting[i]
        ready, _ = ray.wait([ref], timeout=timeout_s)
        if not ready:
            return None
        del self._starting[i]
        try:
            (endpoint,) = ray.get(ref)
        except Exception:
            if self._fresh.pop(a, None) is not None:
                self._broken.add(a)  # the replacement died: the next restart makes another
            raise
        if isinstance(endpoint, BaseException):
            raise endpoint
        if a in self._fresh:
            self.actors[a] = self._fresh.pop(a)
        return endpoint

    def transfer(self, src: int, dst: int, belief: tuple[float, float], with_state: bool
                 ) -> dict[str, Any]:
        """dst adopts src's export (weights, live state, fingerprint), handed over as an
        ObjectRef: it goes from src's actor to dst's through the object store, never through
        this process. Raises when either fails, dies or does not answer in time."""
        (sa, ss), (da, ds) = divmod(src, self.per_actor), divmod(dst, self.per_actor)
        export = self.actors[sa].export.remote(ss)
        return ray.get(self.actors[da].adopt.remote(ds, export, self.names[src], belief,
                                                    with_state), timeout=self.timeout_s)

    def start_async(self, generations: int, coordinator: Any, wait_s: float = 0.0,
                    on_fault: OnFault | None = None) -> Callable[[float], bool]:
        """Every node's async loop (each in a thread of its actor); the function returned
        tells whether all have ended, handing each failed node to `on_fault` as it is seen."""
        k = self.per_actor
        groups = self._by_actor(list(range(len(self.names))))
        refs = {self.actors[a].run_async.remote([i % k for i in nodes], generations,
                                                coordinator, wait_s): (a, nodes)
                for a, nodes in groups.items()}
        pending = dict(refs)

        def finished(timeout_s: float) -> bool:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
            _collect({r: pending.pop(r) for r in ready}, self.timeout_s, self._broken, on_fault)
            return not pending

        return finished


def _collect(refs: dict[Any, tuple[int, list[int]]], timeout_s: float, broken: set[int],
             on_fault: OnFault | None, take: Callable[[Any], Any] = ray.get,
             ended: set[Any] | None = None, watch: dict[Any, tuple[int, list[int]]] | None = None,
             stash: Callable[[Any], None] | None = None) -> dict[int, Any]:
    """Each node's result from its actor's call in `refs` (ref or streaming generator ->
    (actor, nodes); `take` gets an actor's results from a ready one), a failed node's
    exception handed to `on_fault` as soon as it is seen; an actor whose call fails as a whole
    (died, or no answer in time) goes into `broken` (until its nodes are started again:
    `respawn`) and its ref into `ended`, every node of it failed. Streams in `watch` are not
    waited for, only read (`stash`) when ready meanwhile: a failure of theirs counts too."""
    out: dict[int, Any] = {}
    pending, watching = dict(refs), dict(watch or {})
    deadline = time.monotonic() + timeout_s

    def fail(ref: Any, a: int, nodes: list[int], e: BaseException) -> None:
        """Actor a's call `ref` failed as a whole: every node of it failed."""
        broken.add(a)
        if ended is not None:
            ended.add(ref)
        for i in nodes:
            out[i] = e
            if on_fault is not None:
                on_fault(i, e)

    while pending:
        ready, _ = ray.wait([*pending, *watching], num_returns=1,
                            timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        for ref in ready:
            watched = ref in watching
            a, nodes = watching.pop(ref) if watched else pending.pop(ref)
            read = stash if watched else take
            assert read is not None, "a watched stream needs a stash to read it into"
            try:
                results = read(ref)
            except Exception as e:  # noqa: BLE001 - a dead or hung actor: its nodes' fault
                fail(ref, a, nodes, e)
                continue
            if not watched:
                _file(nodes, results, out, on_fault)
    for ref, (a, nodes) in pending.items():
        fail(ref, a, nodes,
             GetTimeoutError(f"nodes {nodes} answered nothing within {timeout_s} s"))
    return out


def _file(nodes: list[int], results: list[Any], out: dict[int, Any],
          on_fault: OnFault | None) -> None:
    """Each node's result into `out`, a failure handed to `on_fault`."""
    for i, r in zip(nodes, results, strict=True):
        out[i] = r
        if isinstance(r, BaseException) and on_fault is not None:
            on_fault(i, r)


class LocalNodes:
    """NodeHosts in this process, called one after another. `factory(i, snapshot)` makes
    node i's host again (from a snapshot) when a dead one is to be restarted."""

    def __init__(self, hosts: list[NodeHost],
                 factory: Callable[[int, bytes | None], NodeHost] | None = None):
        self.hosts = hosts
        self.names = [h.name for h in hosts]
        self._factory = factory

    def call(self, method: str, args: list[tuple] | tuple = (), only: list[int] | None = None,
             on_fault: OnFault | None = None) -> list[Any]:
        idx = list(range(len(self.hosts))) if only is None else list(only)
        per = _per_node(args, len(self.hosts))
        if method == "generation":  # one after another, each would wait for the next's report
            return self._generation(idx, per, on_fault)
        return self._each(idx, lambda i: getattr(self.hosts[i], method)(*per[i]), on_fault)

    def _generation(self, idx: list[int], per: list[tuple], on_fault: OnFault | None
                    ) -> list[Any]:
        return each_generation(idx, self._phase(on_fault), [per[i] for i in idx])

    def _phase(self, on_fault: OnFault | None) -> Callable[[str, list[int], list[tuple]],
                                                          list[Any]]:
        """One phase of a generation ("share" or "absorb") on some hosts, one after another."""
        def phase(method: str, ids: list[int], args: list[tuple]) -> list[Any]:
            by = dict(zip(ids, args, strict=True))
            return self._each(ids, lambda i: in_phase(method, getattr(self.hosts[i], method),
                                                      *by[i]), on_fault)

        return phase

    def _each(self, idx: list[int], op: Callable[[int], Any], on_fault: OnFault | None
              ) -> list[Any]:
        out = []
        for i in idx:
            try:
                out.append(op(i))
            except Exception as e:  # noqa: BLE001 - reported as this node's fault
                out.append(e)
                if on_fault is not None:
                    on_fault(i, e)
        return out

    def generations(self, count: int, args: list[tuple] | tuple,
                    only: list[int] | None = None, on_fault: OnFault | None = None
                    ) -> Iterator[list[Any]]:
        idx = list(range(len(self.hosts))) if only is None else list(only)
        per = _per_node(args, len(self.hosts))
        return stretch(idx, self._phase(on_fault), [per[i] for i in idx], count)

    def tell(self, method: str, args: tuple = (), only: list[int] | None = None) -> None:
        idx = list(range(len(self.hosts))) if only is None else list(only)
        for i in idx:
            with contextlib.suppress(Exception):  # a dead host hears nothing
                getattr(self.hosts[i], method)(*args)

    def respawn(self, i: int, snapshot: bytes | None) -> bool:
        if self._factory is None:
            return False
        self.hosts[i].close()
        self.hosts[i] = self._factory(i, snapshot)
        return True

    def started(self, i: int, timeout_s: float = 0.0) -> dict[str, Any] | None:
        return self.hosts[i].endpoint()  # made at once by respawn

    def transfer(self, src: int, dst: int, belief: tuple[float, float], with_state: bool
                 ) -> dict[str, Any]:
        return self.hosts[dst].adopt(self.hosts[src].export(), self.names[src], belief,
                                     with_state)
