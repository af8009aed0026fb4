"""Starting a swarm's node actors: resources, placement, keys, and the peer-to-peer wiring;
starting one of them again after it died (`Respawn`)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..node import NodeConfig, NodeKeys, SwarmKeyring, TransportConfig, node_name
from ..util.configio import ConfigError
from .actor import NodeActor
from .worlds import runtime_env_for

PLACEMENTS = ("none", "pack", "spread")
START_TIMEOUT_S = 300.0  # actors that cannot be placed (too few CPUs/GPUs) fail after this
NAME_WAIT_S = 5.0  # longest a new actor waits for its dead predecessor's name to be released


@dataclass(repr=False)
class Respawn:
    """What starting node i again takes: its config, its CURVE keys, the swarm's keyring and
    the actor options (name, resources, placement bundle) it was first started with. Held in
    memory only (the launcher's and the coordinator's): never written anywhere."""

    configs: list[NodeConfig]
    swarm: str
    local: bool
    keys: dict[str, NodeKeys]
    keyring: SwarmKeyring | None
    transport: TransportConfig | None
    options: list[dict[str, Any]]

    def start(self, i: int, snapshot: bytes | None = None) -> Any:
        """A new actor for node i, continuing from `snapshot` (a fresh node when None). Its
        peers know its keys already: only its endpoint is new."""
        config = self.configs[i]
        args = (config, self.swarm, self.local, self.keys.get(node_name(config.node_id)),
                self.keyring, self.transport, snapshot)
        deadline = time.monotonic() + NAME_WAIT_S
        while True:
            try:
                return NodeActor.options(**self.options[i]).remote(*args)
            except ValueError:  # the name is released once Ray has the old actor dead
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)


class Spawned(NamedTuple):
    actors: list[Any]
    group: Any  # the placement group, or None
    respawn: Respawn


def spawn_nodes(configs: list[NodeConfig], swarm: str, *, local: bool, cpus: float = 1.0,
                gpus: float = 0.0, placement: str = "none", secure: bool = True,
                prefix: str = "", max_restarts: int = 0,
                transport: TransportConfig | None = None,
                snapshots: list[bytes | None] | None = None) -> Spawned:
    """One actor per config, each with `cpus` CPUs and `gpus` GPUs (fractions allowed), its
    transport bound and connected to every other. CURVE keys are made here and handed out, so
    a peer without the swarm's keys is refused. `snapshots` (one per config, None for a fresh
    node): each node continues from its `NodeHost.snapshot()`. Returns (actors, placement
    group or None, what a restart of one of them needs)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if snapshots is not None and len(snapshots) != len(configs):
        raise ValueError(f"snapshots must give one per node ({len(configs)}), got "
                         f"{len(snapshots)}")
    snapshots = snapshots or [None] * len(configs)
    mismatched = [c.node_id for c in configs if (c.device == "cuda") != (gpus > 0)]
    if mismatched:
        raise ValueError(f"nodes {mismatched} run on a device that gpus={gpus} does not give "
                         f"them: device 'cuda' needs gpus > 0 and 'cpu' gpus = 0 "
                         f"(SwarmConfig.node_configs sets both from resources.gpus)")
    check_gpus(len(configs), gpus, local)
    names = [node_name(c.node_id) for c in configs]
    keyring, keys = SwarmKeyring.generate(names) if secure else (None, {})
    group = None
    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus,
                               "runtime_env": runtime_env_for(configs, os.getcwd()),
                               "max_restarts": max_restarts}
    if placement != "none":
        group = placement_group([{"CPU": cpus, **({"GPU": gpus} if gpus else {})}] * len(configs),
                                strategy=placement.upper())
        ray.get(group.ready(), timeout=START_TIMEOUT_S)
    per_node = []
    for i, name in enumerate(names):
        opts = dict(options, name=f"{prefix}{name}")
        if group is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=i)
        per_node.append(opts)
    respawn = Respawn(list(configs), swarm, local, keys, keyring, transport, per_node)
    actors = [respawn.start(i, snapshots[i]) for i in range(len(configs))]
    endpoints = ray.get([a.endpoint.remote() for a in actors], timeout=START_TIMEOUT_S)
    ray.get([a.connect.remote(endpoints) for a in actors])
    return Spawned(actors, group, respawn)


def gpu_slots(machines: list[float], gpus: float) -> int:
    """How many actors asking for `gpus` each the machines' GPU counts hold: a share of one
    GPU must fit within one GPU (0.4 fits twice, not 2.5 times), a whole number of GPUs within
    one machine."""
    if gpus <= 0:
        raise ValueError(f"gpus must be > 0, got {gpus}")
    if gpus <= 1:
        per_gpu = int(1 / gpus + 1e-9)
        return sum(int(g + 1e-9) * per_gpu for g in machines)
    return sum(int(g // gpus + 1e-9) for g in machines)


def check_gpus(nodes: int, gpus: float, local: bool) -> None:
    """Refuse, before any actor starts, `nodes` node actors asking for `gpus` GPUs each that
    could not run: a local run on a machine where PyTorch sees no CUDA device, or a cluster
    whose GPUs cannot hold them all (they would wait START_TIMEOUT_S, then fail)."""
    if gpus <= 0:
        return
    if local and not torch.cuda.is_available():
        raise ConfigError("resources.gpus", f"got {gpus}, but PyTorch sees no CUDA device on "
                                            f"this machine (torch {torch.__version__}, CUDA "
                                            f"build: {torch.version.cuda or 'none'}): expected 0 "
                                            "(nodes on CPUs) here")
    machines = [float(n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    slots = gpu_slots(machines, gpus)
    if slots < nodes:
        raise ConfigError("resources.gpus", f"got {gpus} per node for {nodes} nodes, but the "
                                            f"Ray cluster's GPUs per machine {machines} hold "
                                            f"{slots} such nodes: expected a share that fits "
                                            "(at most the GPUs / nodes), or 0 (nodes on CPUs)")


def release(actors: list[Any], group: Any = None) -> None:
    """Close every node's sockets, then end the actors and their placement group."""
    with contextlib.suppress(Exception):  # a dead actor has nothing left to close
        ray.get([a.close.remote() for a in actors], timeout=30)
    for a in actors:
        ray.kill(a)
    if group is not None:
        remove_placement_group(group)
