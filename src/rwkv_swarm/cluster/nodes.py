"""The coordinator's handle on a swarm's nodes: Ray actors (`RayNodes`), or plain `NodeHost`s
in this process (`LocalNodes`, for tests and small runs without Ray). Both answer `call` with
one result per node, an exception object standing for a node that failed, so that the
coordinator can go on without it; `on_fault` hears of each failure as soon as it is seen (not
when the slowest node answers), so the dead node's peers can be told at once (`tell`). A dead
node is started again from a snapshot by `respawn` and is back once `started` says so."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from .host import NodeHost, in_phase
from .placement import Respawn

NODE_TIMEOUT_S = 3600.0  # a node that answers nothing for this long is given up
TELL_WAIT_S = 10.0  # longest the next call waits for earlier `tell`s to be delivered

OnFault = Callable[[int, BaseException], None]


def _per_node(args: list[tuple] | tuple, n: int) -> list[tuple]:
    return list(args) if isinstance(args, list) else [args] * n


class RayNodes:
    """Node actors. `respawn` (from `spawn_nodes`) lets a dead one be started again."""

    def __init__(self, actors: list[Any], names: list[str], timeout_s: float = NODE_TIMEOUT_S,
                 respawn: Respawn | None = None):
        self.actors, self.names, self.timeout_s = list(actors), names, timeout_s
        self._respawn = respawn
        self._told: list[Any] = []
        self._starting: dict[int, tuple[Any, Any]] = {}  # node -> (new actor, its endpoint)

    def call(self, method: str, args: list[tuple] | tuple = (), only: list[int] | None = None,
             on_fault: OnFault | None = None) -> list[Any]:
        self._settle()
        idx = list(range(len(self.actors))) if only is None else list(only)
        per = _per_node(args, len(self.actors))
        refs = [getattr(self.actors[i], method).remote(*per[i]) for i in idx]
        return _collect(refs, idx, self.timeout_s, on_fault)

    def tell(self, method: str, args: tuple = (), only: list[int] | None = None) -> None:
        """method(*args) on each node without waiting: it reaches a node in the middle of a
        call (its actor is threaded). Delivered before the next `call` starts."""
        idx = list(range(len(self.actors))) if only is None else list(only)
        self._told += [getattr(self.actors[i], method).remote(*args) for i in idx]

    def _settle(self) -> None:
        if self._told:
            ray.wait(self._told, num_returns=len(self._told), timeout=TELL_WAIT_S)
            self._told = []

    def respawn(self, i: int, snapshot: bytes | None) -> bool:
        """End node i's actor (dead, or alive in an unknown state) and start a new one from
        `snapshot` in the background; False when this swarm cannot restart nodes."""
        if self._respawn is None:
            return False
        with contextlib.suppress(Exception):  # also releases the dead actor's name
            ray.kill(self.actors[i])
        actor = self._respawn.start(i, snapshot)
        self._starting[i] = (actor, actor.endpoint.remote())
        return True

    def started(self, i: int, timeout_s: float = 0.0) -> dict[str, Any] | None:
        """The endpoint of node i's new actor once it is up (it then stands for node i), None
        while it starts; raises what its start raised."""
        actor, ref = self._starting[i]
        ready, _ = ray.wait([ref], timeout=timeout_s)
        if not ready:
            return None
        del self._starting[i]
        endpoint = ray.get(ref)
        self.actors[i] = actor
        return endpoint

    def transfer(self, src: int, dst: int, belief: tuple[float, float], with_state: bool
                 ) -> dict[str, Any]:
        """dst adopts src's export (weights, live state, fingerprint), handed over as an
        ObjectRef: it goes from src's actor to dst's through the object store, never through
        this process. Raises when either fails, dies or does not answer in time."""
        export = self.actors[src].export.remote()
        return ray.get(self.actors[dst].adopt.remote(export, self.names[src], belief,
                                                     with_state), timeout=self.timeout_s)

    def start_async(self, generations: int, coordinator: Any, wait_s: float = 0.0,
                    on_fault: OnFault | None = None) -> Callable[[float], bool]:
        idx = list(range(len(self.actors)))
        refs = [a.run_async.remote(generations, coordinator, wait_s) for a in self.actors]
        pending = dict(zip(refs, idx, strict=True))

        def finished(timeout_s: float) -> bool:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a dead node, reported as a fault
                    if on_fault is not None:
                        on_fault(i, e)
            return not pending

        return finished


def _collect(refs: list[Any], idx: list[int], timeout_s: float, on_fault: OnFault | None
             ) -> list[Any]:
    """The results of `refs` in order, each failure handed to `on_fault` as it is seen."""
    out: list[Any] = [None] * len(refs)
    pending = {ref: k for k, ref in enumerate(refs)}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1,
                            timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        for ref in ready:
            k = pending.pop(ref)
            try:
                out[k] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a dead or failed node, reported as a fault
                out[k] = e
                if on_fault is not None:
                    on_fault(idx[k], e)
    for k in pending.values():
        out[k] = GetTimeoutError(f"node {idx[k]} answered nothing within {timeout_s} s")
        if on_fault is not None:
            on_fault(idx[k], out[k])
    return out


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
        """`NodeHost.generation` on hosts in one thread: every share, then every absorb."""
        shared = self._each(idx, lambda i: in_phase("share", self.hosts[i].share), on_fault)
        out: dict[int, Any] = {i: r for i, r in zip(idx, shared, strict=True)
                               if isinstance(r, BaseException)}
        ok = [i for i in idx if i not in out]
        absorbed = self._each(ok, lambda i: in_phase("absorb", self.hosts[i].absorb, *per[i]),
                              on_fault)
        out.update(zip(ok, absorbed, strict=True))
        return [out[i] for i in idx]

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
