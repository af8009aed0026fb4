"""`Swarm`: launch a swarm on Ray, run it, change its world, read its trace.

    with Swarm.launch(SwarmConfig.from_toml("configs/signal.toml")) as swarm:  # local Ray
        swarm.start()                       # background; or swarm.run(generations=50)
        swarm.inject(Signal("freq_shift", {"freq": [0.021, 0.047, 0.25]}))
        swarm.wait()
    table = load_trace(swarm.run_dir)

`Swarm.attach(run_id)` reaches a running swarm from another process (through the run's
`run.json`: the Ray address and namespace its coordinator is named in).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..cluster import connect, gcs_address, namespace, release, spawn_nodes
from ..node import node_name
from .actor import CoordinatorActor
from .config import SwarmConfig
from .signals import Signal, validate

START_TIMEOUT_S = 600.0


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def coordinator_name(run_id: str) -> str:
    return f"rwkv-swarm/{run_id}"


class Swarm:
    """A launched (or attached) swarm. Use it as a context manager, or call `shutdown()`."""

    def __init__(self, config: SwarmConfig, run_id: str, run_dir: Path, coordinator: Any,
                 actors: list[Any] | None = None, group: Any = None, owns_ray: bool = False):
        self.config, self.run_id, self.run_dir = config, run_id, run_dir
        self.coordinator, self._actors, self._group = coordinator, actors, group
        self._owns_ray = owns_ray
        self._running: Any = None
        self._namespace: str | None = None

    # -- starting and reaching ---------------------------------------------------------------------

    @classmethod
    def launch(cls, config: SwarmConfig, address: str | None = None,
               run_id: str | None = None) -> Swarm:
        """Start the swarm's actors: address None starts an embedded local Ray (or uses the
        one this process already runs); "auto" or "host:port" joins an existing cluster."""
        if not isinstance(config, SwarmConfig):
            raise TypeError(f"config must be a SwarmConfig, got {type(config).__name__}")
        node_configs = config.node_configs()  # every check before anything starts
        run_id = run_id or new_run_id()
        run_dir = Path(config.run_dir).resolve() / run_id  # actors do not share our cwd
        run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / "config.toml").write_text(config.to_toml())
        cpus = config.nodes * config.resources.cpus
        owns = connect(address, cpus_needed=cpus)
        local = address is None
        try:
            actors, group, respawn = spawn_nodes(node_configs, run_id, local=local,
                                        cpus=config.resources.cpus, gpus=config.resources.gpus,
                                        placement=config.resources.placement,
                                        secure=config.secure, prefix=f"{run_id}/")
            names = [node_name(c.node_id) for c in node_configs]
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                  soft=False)  # it writes the run directory
            coordinator = CoordinatorActor.options(name=coordinator_name(run_id),
                                                   scheduling_strategy=here).remote(
                config, run_id, str(run_dir), actors, names, respawn)
            ray.get(coordinator.status.remote(), timeout=START_TIMEOUT_S)
        except BaseException:
            if owns:
                ray.shutdown()
            raise
        (run_dir / "run.json").write_text(json.dumps({
            "run_id": run_id, "address": gcs_address(), "namespace": namespace(),
            "coordinator": coordinator_name(run_id), "pid": os.getpid(),
            "started": time.time()}))
        return cls(config, run_id, run_dir, coordinator, actors, group, owns)

    @classmethod
    def attach(cls, run_id: str, runs_dir: str | Path = "runs") -> Swarm:
        """The swarm of run `run_id`, launched by another process (which keeps owning it)."""
        run_dir = Path(runs_dir) / run_id
        try:
            info = json.loads((run_dir / "run.json").read_text())
        except FileNotFoundError:
            raise ValueError(f"no run {run_id!r} in {runs_dir}: no {run_dir / 'run.json'}") \
                from None
        connect(info["address"])
        try:
            coordinator = ray.get_actor(info["coordinator"], namespace=info["namespace"])
        except ValueError:
            raise ValueError(f"run {run_id!r} is not running (its coordinator is gone)") from None
        config = SwarmConfig.from_toml(run_dir / "config.toml")
        swarm = cls(config, run_id, run_dir, coordinator)
        swarm._namespace = info["namespace"]
        return swarm

    # -- running ---------------------------------------------------------------------------------

    def run(self, generations: int | None = None) -> dict[str, Any]:
        """Run `generations` generations (default: the config's) and return the status."""
        self.start(generations)
        return self.wait()

    def start(self, generations: int | None = None) -> None:
        """Start running in the background."""
        if self._running is not None and not self.done():
            raise RuntimeError("the swarm is already running; wait() for it first")
        self._running = self.coordinator.run.remote(generations)

    def done(self) -> bool:
        if self._running is None:
            return True
        ready, _ = ray.wait([self._running], timeout=0)
        return bool(ready)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the background run; returns the status."""
        if self._running is None:
            return self.status()
        out = ray.get(self._running, timeout=timeout)
        self._running = None
        return out

    def inject(self, signal: Signal) -> dict[str, Any]:
        """Change the world of the running swarm; refused (ValueError, nothing sent) unless it
        fits the environment's signal schema. Returns the acknowledgement: which generation
        each target applied it from."""
        validate(signal, self.config.env, self.config.nodes)
        return ray.get(self.coordinator.inject.remote(signal))

    def status(self) -> dict[str, Any]:
        return ray.get(self.coordinator.status.remote())

    def lineage(self) -> list[dict[str, Any]]:
        return ray.get(self.coordinator.lineage.remote())

    def evaluate(self, episodes: int = 20, seed: int = 0) -> list[float]:
        """Each node's current weights, scored over `episodes` fresh episodes (not training
        episodes; the node's world is not disturbed). Between generations only."""
        actors = ray.get(self.coordinator.actors.remote())  # restarted nodes have new ones
        return ray.get([a.evaluate_centre.remote(episodes, seed) for a in actors])

    def set_topology(self, kind: str, k: int = 2, rewire: float = 0.1) -> list[list[int]]:
        """New neighbours for every node, from the next generation boundary on."""
        return ray.get(self.coordinator.set_topology.remote(kind, k, rewire))

    def shutdown(self) -> None:
        """Stop the run and end the actors (an attached swarm only lets go of it)."""
        if self._actors is None:
            return
        try:
            ray.get(self.coordinator.stop.remote(), timeout=30)
            if self._running is not None:
                ray.wait([self._running], timeout=60)
        except Exception:  # noqa: BLE001 - tearing down whatever is left
            pass
        with contextlib.suppress(Exception):  # restarted nodes run in new actors
            self._actors = ray.get(self.coordinator.actors.remote(), timeout=30)
        release(self._actors, self._group)
        ray.kill(self.coordinator)
        self._actors = None
        if self._owns_ray:
            ray.shutdown()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
