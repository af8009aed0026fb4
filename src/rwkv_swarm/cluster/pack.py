"""`NodePack`: the k nodes one process hosts (k >= 1), as a plain class (`NodeActor` wraps it).

Each node is a whole `NodeHost`: its own weights, beliefs, noise streams, checkpoints, faults,
trace rows, name, CURVE keys and sockets. A peer cannot tell a packed node from an unpacked
one: messages between two nodes of one pack cross the loopback like any others, and are
counted alike. What a pack shares is the process: the interpreter, torch, the environment's
modules, Ray's worker.

A call names the slots it is for and returns one result per slot, in order; a node that raises
gives its exception as its result, so that one failing node does not fail its pack-mates.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..node import NodeConfig, NodeKeys, SwarmKeyring, TransportConfig
from .host import NodeHost, each_generation, in_batches, in_phase, stretch

BATCH_S = 0.05  # longest a generation's rows wait in the actor before they stream out


@dataclass(repr=False)
class NodeSpec:
    """What starting one node takes: its config, its CURVE keys (None: insecure) and the
    snapshot it continues from (None: a fresh node)."""

    config: NodeConfig
    keys: NodeKeys | None
    snapshot: bytes | None = None


class NodePack:
    """Nodes by slot, in one process; `call` runs a method on some of them."""

    def __init__(self, swarm: str, *, host: str, keyring: SwarmKeyring | None,
                 transport: TransportConfig | None = None):
        self.swarm, self.host, self.keyring, self.transport = swarm, host, keyring, transport
        self.hosts: dict[int, NodeHost] = {}
        self._lock = threading.Lock()

    def start(self, slots: list[int], specs: list[NodeSpec]) -> list[Any]:
        """Start a node in each slot (closing the node there before, if any): its endpoint,
        or the exception its start raised."""
        out = []
        for slot, spec in zip(slots, specs, strict=True):
            try:
                with self._lock:
                    old = self.hosts.pop(slot, None)
                if old is not None:
                    old.close()
                h = NodeHost(spec.config, self.swarm, host=self.host, keys=spec.keys,
                             keyring=self.keyring, transport=self.transport,
                             snapshot=spec.snapshot)
                with self._lock:
                    self.hosts[slot] = h
                out.append(h.endpoint())
            except Exception as e:  # noqa: BLE001 - this node's failure, not its pack's
                out.append(portable(e))
        return out

    def call(self, method: str, slots: list[int], args: list[tuple]) -> list[Any]:
        """method(*args[j]) on the node in slots[j], for every j. "generation" is `share` on
        every slot, then `absorb` on every slot (a node's absorb waits for its pack-mates'
        reports). While the async loop runs, each slot's call waits for its own node's
        boundary in a thread of its own, so that k nodes take one boundary, not k."""
        if method == "generation":  # a failure names its phase, as NodeHost.generation's
            return each_generation(slots, lambda m, s, a: self._each(m, s, a, phased=True), args)
        return self._each(method, slots, args)

    def generations(self, slots: list[int], args: list[tuple], count: int
                    ) -> Iterator[list[list[Any]]]:
        """`count` generations of the nodes in `slots` back to back (`host.stretch`), in
        batches (`host.in_batches`, every BATCH_S): a list of results per generation."""
        return in_batches(stretch(slots, lambda m, s, a: self._each(m, s, a, phased=True),
                                  args, count), BATCH_S)

    def _each(self, method: str, slots: list[int], args: list[tuple], phased: bool = False
              ) -> list[Any]:
        if len(slots) > 1 and any(h.looping for h in self.hosts.values()):
            with ThreadPoolExecutor(len(slots)) as pool:
                return list(pool.map(lambda s, a: self._one(method, s, a, phased), slots, args))
        return [self._one(method, s, a, phased) for s, a in zip(slots, args, strict=True)]

    def _one(self, method: str, slot: int, args: tuple, phased: bool = False) -> Any:
        try:
            op = getattr(self._host(slot), method)
            return in_phase(method, op, *args) if phased else op(*args)
        except Exception as e:  # noqa: BLE001 - this node's failure, not its pack's
            return portable(e)

    def _host(self, slot: int) -> NodeHost:
        host = self.hosts.get(slot)
        if host is None:
            raise RuntimeError(f"no node in slot {slot} of this actor")
        return host

    def one(self, slot: int, method: str, *args: Any) -> Any:
        """method(*args) on one node, raising what it raises (a transfer's two ends)."""
        return getattr(self._host(slot), method)(*args)

    def tell(self, method: str, slots: list[int] | None, args: tuple) -> None:
        """method(*args) on each node named (all when None) that is there; nothing raised."""
        for slot in list(self.hosts) if slots is None else slots:
            host = self.hosts.get(slot)
            if host is not None:
                with contextlib.suppress(Exception):  # a dead node hears nothing
                    getattr(host, method)(*args)

    def run_async(self, slots: list[int], generations: int,
                  report: Callable[[dict[str, Any]], None], wait_s: float) -> list[Any]:
        """Each node's async loop in a thread of its own; per slot, the generations it ran
        or its exception."""
        out: list[Any] = [None] * len(slots)

        def loop(j: int) -> None:
            out[j] = self._one("run_async", slots[j], (generations, report, wait_s))

        threads = [threading.Thread(target=loop, args=(j,), daemon=True)
                   for j in range(len(slots))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def close(self) -> None:
        with self._lock:
            hosts, self.hosts = list(self.hosts.values()), {}
        for h in hosts:
            h.close()


def portable(e: BaseException) -> BaseException:
    """`e`, or a RuntimeError that names it when `e` cannot be pickled (it travels back to
    the coordinator as a node's result)."""
    try:
        pickle.dumps(e)
        return e
    except Exception:  # noqa: BLE001 - whatever pickling raises
        return RuntimeError(f"{type(e).__name__}: {e}")
