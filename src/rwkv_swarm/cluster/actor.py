"""`NodeActor`: a node on Ray, a thin wrapper that delegates to `NodeHost`.

Threaded (`max_concurrency`), so that in the async mode a control call (a signal, a status
query, an adoption) reaches the host while `run_async` runs; the host applies it at the next
generation boundary. `peer_gone` reaches it in the middle of a generation, too. Torch gets
as many threads as the CPUs Ray assigned to the actor.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from ..node import NodeConfig, NodeKeys, SwarmKeyring, TransportConfig
from .host import NodeHost
from .runtime import bind_host


@ray.remote(max_concurrency=4)
class NodeActor:
    def __init__(self, config: NodeConfig, swarm: str, local: bool, keys: NodeKeys | None,
                 keyring: SwarmKeyring | None, transport: TransportConfig | None = None,
                 snapshot: bytes | None = None):
        # the node's process gets as many torch threads as Ray gave it CPUs (at least one): more
        # would spin against the other actors on the same cores
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        self.host = NodeHost(config, swarm, host=bind_host(local), keys=keys, keyring=keyring,
                             transport=transport, snapshot=snapshot)

    def endpoint(self) -> dict[str, Any]:
        return self.host.endpoint()

    def connect(self, peers: list[dict[str, Any]]) -> None:
        self.host.connect(peers)

    def set_peers(self, neighbours: list[str], group: list[str]) -> None:
        self.host.set_peers(neighbours, group)

    def peer_gone(self, name: str) -> None:
        self.host.peer_gone(name)

    def rejoin(self, generation: int, source: bytes | None = None) -> dict[str, Any]:
        return self.host.rejoin(generation, source)

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> str:
        return self.host.ping()

    def share(self) -> dict[str, Any]:
        return self.host.share()

    def absorb(self, wait_s: float) -> dict[str, Any]:
        return self.host.absorb(wait_s)

    def generation(self, wait_s: float) -> dict[str, Any]:
        return self.host.generation(wait_s)

    def apply_signal(self, signal_id: str, name: str, params: dict[str, Any],
                     announce: bool = True) -> dict[str, Any]:
        return self.host.apply_signal(signal_id, name, params, announce)

    def export(self) -> dict[str, Any]:
        return self.host.export()

    def adopt(self, export: dict[str, Any], source: str, belief: tuple[float, float],
              with_state: bool = True) -> dict[str, Any]:
        # `export` arrives as the source's ObjectRef, resolved by Ray from its object store
        return self.host.adopt(export, source, belief, with_state)

    def checkpoint(self) -> bytes:
        return self.host.checkpoint()

    def snapshot(self) -> dict[str, Any]:
        return self.host.snapshot()

    def evaluate_centre(self, episodes: int, seed: int) -> float:
        return self.host.evaluate_centre(episodes, seed)

    def status(self) -> dict[str, Any]:
        return self.host.status()

    def run_async(self, generations: int, coordinator: Any, wait_s: float = 0.0) -> int:
        # each row is handed over before the next generation: none is in flight at the end
        return self.host.run_async(generations, lambda row: ray.get(coordinator.ingest.remote(row)),
                                   wait_s)

    def stop(self) -> None:
        self.host.stop()

    def close(self) -> None:
        self.host.close()
