"""`NodeActor`: k nodes (k >= 1) in one Ray actor, a thin wrapper that delegates to `NodePack`.

Threaded (`max_concurrency`), so that in the async mode a control call (a signal, a status
query, an adoption) reaches the nodes while `run_async` runs; each node applies it at its next
generation boundary. `tell` (`peer_gone`) reaches them in the middle of a generation, too.
Torch gets as many threads as the CPUs Ray assigned to the actor.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
import torch

from ..node import SwarmKeyring, TransportConfig
from .pack import NodePack, NodeSpec
from .runtime import bind_host


def _process_start() -> float | None:
    """When this process started (epoch seconds, to 10 ms), read from /proc; None elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        up = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - up + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


@ray.remote(max_concurrency=4)
class NodeActor:
    def __init__(self, swarm: str, local: bool, keyring: SwarmKeyring | None,
                 transport: TransportConfig | None, slots: list[int], specs: list[NodeSpec]):
        # the process gets as many torch threads as Ray gave it CPUs (at least one): more
        # would spin against the other actors on the same cores
        began = time.time()
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        self.pack = NodePack(swarm, host=bind_host(local), keyring=keyring, transport=transport)
        self.first = self.pack.start(slots, specs)  # endpoints, or why a node did not start
        self.times = {"process": _process_start(), "init": began, "nodes_up": time.time()}

    def startup(self) -> dict[str, float | None]:
        """When (epoch seconds) its process started, its constructor began (Ray's worker up,
        torch and the node's code imported) and its nodes were up (built, sockets bound)."""
        return self.times

    def endpoints(self) -> list[Any]:
        """What the nodes started with the actor gave: an endpoint or an exception each."""
        return self.first

    def start(self, slots: list[int], specs: list[NodeSpec]) -> list[Any]:
        return self.pack.start(slots, specs)

    def call(self, method: str, slots: list[int], args: list[tuple]) -> list[Any]:
        return self.pack.call(method, slots, args)

    def generations(self, slots: list[int], args: list[tuple], count: int) -> Any:
        # a generator: Ray streams each batch of generations' results to the caller
        yield from self.pack.generations(slots, args, count)

    def tell(self, method: str, slots: list[int] | None, args: tuple) -> None:
        self.pack.tell(method, slots, args)

    def export(self, slot: int) -> dict[str, Any]:
        return self.pack.one(slot, "export")

    def adopt(self, slot: int, export: dict[str, Any], source: str,
              belief: tuple[float, float], with_state: bool = True) -> dict[str, Any]:
        # `export` arrives as the source's ObjectRef, resolved by Ray from its object store
        return self.pack.one(slot, "adopt", export, source, belief, with_state)

    def run_async(self, slots: list[int], generations: int, coordinator: Any,
                  wait_s: float = 0.0) -> list[Any]:
        # each row is handed over before the next generation: none is in flight at the end
        return self.pack.run_async(slots, generations,
                                   lambda row: ray.get(coordinator.ingest.remote(row)), wait_s)

    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        self.pack.tell("stop", None, ())

    def close(self) -> None:
        self.pack.close()
