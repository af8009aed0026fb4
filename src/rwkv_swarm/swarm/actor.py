"""`CoordinatorActor`: a run's coordinator on Ray, named by its run id so that another process
(`Swarm.attach`, `rwkv-swarm inject`) finds it; a thin wrapper over `Coordinator`.

Threaded: `inject`, `status` and the nodes' `ingest` (async mode) are served while `run` runs.
It takes no CPU from the nodes (num_cpus=0): it is idle between generations.
"""

from __future__ import annotations

from typing import Any

import ray

from ..cluster.nodes import RayNodes
from ..cluster.placement import Respawn
from .config import SwarmConfig
from .coordinator import Coordinator
from .signals import Signal


@ray.remote(num_cpus=0, max_concurrency=32)
class CoordinatorActor:
    def __init__(self, config: SwarmConfig, run_id: str, run_dir: str, actors: list[Any],
                 names: list[str], respawn: Respawn | None = None):
        self.nodes = RayNodes(actors, names, respawn=respawn)  # respawn: dead nodes restart
        self.coordinator = Coordinator(config, run_id, run_dir, self.nodes)

    def run(self, generations: int | None = None) -> dict[str, Any]:
        c = self.coordinator
        if c.config.sync:
            return c.run(generations)
        me = ray.get_runtime_context().current_actor
        return c.run_async(lambda n, on_fault: self.nodes.start_async(n, me, on_fault=on_fault),
                           generations)

    def resume(self, state: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        return self.coordinator.resume(state, **record)

    def inject(self, signal: Signal) -> dict[str, Any]:
        return self.coordinator.inject(signal)

    def status(self) -> dict[str, Any]:
        return self.coordinator.status()

    def ingest(self, row: dict[str, Any]) -> None:
        self.coordinator.ingest(row)

    def set_topology(self, kind: str, k: int = 2, rewire: float = 0.1) -> list[list[int]]:
        return self.coordinator.set_topology(kind, k, rewire)

    def actors(self) -> list[Any]:
        """Each node's actor now (a restarted node's may be a new one; pack-mates share
        one)."""
        return self.nodes.node_actors()

    def call_nodes(self, method: str, args: tuple = (), only: list[int] | None = None
                   ) -> list[Any]:
        """method(*args) on each node (all when `only` is None): a result or an exception
        each. Not a fault when one fails: the run finds out by itself."""
        return self.nodes.call(method, args, only=only)

    def best(self) -> dict[str, Any] | None:
        return self.coordinator.best()

    def lineage(self) -> list[dict[str, Any]]:
        return list(self.coordinator.lineage)

    def stop(self) -> None:
        self.coordinator.stop()
        for a in self.nodes.actors:
            a.stop.remote()  # every node of the actor ends at its next boundary
