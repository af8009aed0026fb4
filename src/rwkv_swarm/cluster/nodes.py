"""The coordinator's handle on a swarm's nodes: Ray actors (`RayNodes`), or plain `NodeHost`s
in this process (`LocalNodes`, for tests and small runs without Ray). Both answer `call` with
one result per node, an exception object standing for a node that failed, so that the
coordinator can go on without it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

from .host import NodeHost

NODE_TIMEOUT_S = 3600.0  # a node that answers nothing for this long is given up


def _per_node(args: list[tuple] | tuple, n: int) -> list[tuple]:
    return list(args) if isinstance(args, list) else [args] * n


class RayNodes:
    def __init__(self, actors: list[Any], names: list[str], timeout_s: float = NODE_TIMEOUT_S):
        self.actors, self.names, self.timeout_s = actors, names, timeout_s

    def call(self, method: str, args: list[tuple] | tuple = (), only: list[int] | None = None
             ) -> list[Any]:
        idx = list(range(len(self.actors))) if only is None else list(only)
        per = _per_node(args, len(self.actors))
        refs = [getattr(self.actors[i], method).remote(*per[i]) for i in idx]
        ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref, timeout=0))
            except Exception as e:  # noqa: BLE001 - a dead or late node, reported as a fault
                out.append(e)
        return out

    def transfer(self, src: int, dst: int, belief: tuple[float, float], with_state: bool
                 ) -> dict[str, Any]:
        """dst adopts src's export (weights, live state, fingerprint), handed over as an
        ObjectRef: it goes from src's actor to dst's through the object store, never through
        this process. Raises when either fails, dies or does not answer in time."""
        export = self.actors[src].export.remote()
        return ray.get(self.actors[dst].adopt.remote(export, self.names[src], belief,
                                                     with_state), timeout=self.timeout_s)

    def start_async(self, generations: int, coordinator: Any, wait_s: float = 0.0
                    ) -> Callable[[float], bool]:
        refs = [a.run_async.remote(generations, coordinator, wait_s) for a in self.actors]

        def finished(timeout_s: float) -> bool:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            return len(ready) == len(refs)

        return finished


class LocalNodes:
    def __init__(self, hosts: list[NodeHost]):
        self.hosts = hosts
        self.names = [h.name for h in hosts]

    def call(self, method: str, args: list[tuple] | tuple = (), only: list[int] | None = None
             ) -> list[Any]:
        idx = list(range(len(self.hosts))) if only is None else list(only)
        out = []
        per = _per_node(args, len(self.hosts))
        for i in idx:
            try:
                out.append(getattr(self.hosts[i], method)(*per[i]))
            except Exception as e:  # noqa: BLE001 - reported as this node's fault
                out.append(e)
        return out

    def transfer(self, src: int, dst: int, belief: tuple[float, float], with_state: bool
                 ) -> dict[str, Any]:
        return self.hosts[dst].adopt(self.hosts[src].export(), self.names[src], belief,
                                     with_state)
