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
from .pack import NodeSpec
from .worlds import runtime_env_for

PLACEMENTS = ("none", "pack", "spread")
START_TIMEOUT_S = 300.0  # actors that cannot be placed (too few CPUs/GPUs) fail after this
NAME_WAIT_S = 5.0  # longest a new actor waits for its dead predecessor's name to be released


@dataclass(repr=False)
class Respawn:
    """What starting nodes again takes: their configs, CURVE keys, the swarm's keyring, how
    nodes are packed into actors (node i is slot i % per_actor of actor i // per_actor) and
    each actor's options (name, resources, placement bundle). Held in memory only (the
    launcher's and the coordinator's): never written anywhere."""

    configs: list[NodeConfig]
    swarm: str
    local: bool
    keys: dict[str, NodeKeys]
    keyring: SwarmKeyring | None
    transport: TransportConfig | None
    options: list[dict[str, Any]]  # one per actor
    per_actor: int = 1

    def spec(self, i: int, snapshot: bytes | None = None) -> NodeSpec:
        """Node i, continuing from `snapshot` (a fresh node when None). Its peers know its
        keys already: only its endpoint is new."""
        config = self.configs[i]
        return NodeSpec(config, self.keys.get(node_name(config.node_id)), snapshot)

    def start(self, a: int, nodes: list[int], snapshots: list[bytes | None]) -> Any:
        """A new actor `a` hosting `nodes` (each in its slot), from `snapshots`."""
        args = (self.swarm, self.local, self.keyring, self.transport,
                [i % self.per_actor for i in nodes],
                [self.spec(i, s) for i, s in zip(nodes, snapshots, strict=True)])
        deadline = time.monotonic() + NAME_WAIT_S
        while True:
            try:
                return NodeActor.options(**self.options[a]).remote(*args)
            except ValueError:  # the name is released once Ray has the old actor dead
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)


class Spawned(NamedTuple):
    actors: list[Any]  # one per actor; node i is in actor i // respawn.per_actor
    group: Any  # the placement group, or None
    respawn: Respawn


def actor_name(nodes: list[int]) -> str:
    """An actor's name: its node's (node-3), or its first and last nodes' (nodes-0-7)."""
    return f"node-{nodes[0]}" if len(nodes) == 1 else f"nodes-{nodes[0]}-{nodes[-1]}"


def spawn_nodes(configs: list[NodeConfig], swarm: str, *, local: bool, cpus: float = 1.0,
                gpus: float = 0.0, placement: str = "none", secure: bool = True,
                prefix: str = "", max_restarts: int = 0,
                transport: TransportConfig | None = None,
                snapshots: list[bytes | None] | None = None, per_actor: int = 1) -> Spawned:
    """The nodes of `configs`, `per_actor` to an actor (the last may hold fewer), each node
    with `cpus` CPUs and `gpus` GPUs (an actor asks for its nodes' sum; fractions allowed),
    its transport bound and told where every other node is. The actors start together (as
    many at once as Ray starts processes). CURVE keys are made here and handed out, so a peer
    without the swarm's keys is refused. `snapshots` (one per config, None for a fresh
    node): each node continues from its `NodeHost.snapshot()`. Returns (actors, placement
    group or None, what a restart of nodes needs)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if type(per_actor) is not int or per_actor < 1:
        raise ValueError(f"per_actor must be an integer >= 1, got {per_actor!r}")
    if snapshots is not None and len(snapshots) != len(configs):
        raise ValueError(f"snapshots must give one per node ({len(configs)}), got "
                         f"{len(snapshots)}")
    snapshots = snapshots or [None] * len(configs)
    mismatched = [c.node_id for c in configs if (c.device == "cuda") != (gpus > 0)]
    if mismatched:
        raise ValueError(f"nodes {mismatched} run on a device that gpus={gpus} does not give "
                         f"them: device 'cuda' needs gpus > 0 and 'cpu' gpus = 0 "
                         f"(SwarmConfig.node_configs sets both from resources.gpus)")
    check_gpus(len(configs), gpus, local, per_actor)
    names = [node_name(c.node_id) for c in configs]
    keyring, keys = SwarmKeyring.generate(names) if secure else (None, {})
    packs = [list(range(a, min(a + per_actor, len(configs))))
             for a in range(0, len(configs), per_actor)]
    group = None
    options: dict[str, Any] = {"runtime_env": runtime_env_for(configs, os.getcwd()),
                               "max_restarts": max_restarts}
    bundles = [{"CPU": cpus * len(p), **({"GPU": gpus * len(p)} if gpus else {})}
               for p in packs]
    if placement != "none":
        group = placement_group(bundles, strategy=placement.upper())
        ray.get(group.ready(), timeout=START_TIMEOUT_S)
    per: list[dict[str, Any]] = []
    for a, nodes in enumerate(packs):
        opts = dict(options, name=f"{prefix}{actor_name(nodes)}", num_cpus=bundles[a]["CPU"],
                    num_gpus=bundles[a].get("GPU", 0.0))
        if group is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=a)
        per.append(opts)
    respawn = Respawn(list(configs), swarm, local, keys, keyring, transport, per, per_actor)
    actors = [respawn.start(a, nodes, [snapshots[i] for i in nodes])
              for a, nodes in enumerate(packs)]
    endpoints = [e for got in ray.get([a.endpoints.remote() for a in actors],
                                      timeout=START_TIMEOUT_S) for e in got]
    for e in endpoints:
        if isinstance(e, BaseException):
            release(actors, group)
            raise e
    ray.get([a.tell.remote("connect", None, (endpoints,)) for a in actors],
            timeout=START_TIMEOUT_S)
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


def check_gpus(nodes: int, gpus: float, local: bool, per_actor: int = 1) -> None:
    """Refuse, before any actor starts, `nodes` nodes asking for `gpus` GPUs each, `per_actor`
    to an actor, that could not run: a local run on a machine where PyTorch sees no CUDA
    device, an actor's sum that Ray cannot place (a share above one GPU that is not whole),
    or a cluster whose GPUs cannot hold every actor (they would wait START_TIMEOUT_S, then
    fail)."""
    if gpus <= 0:
        return
    if local and not torch.cuda.is_available():
        raise ConfigError("resources.gpus", f"got {gpus}, but PyTorch sees no CUDA device on "
                                            f"this machine (torch {torch.__version__}, CUDA "
                                            f"build: {torch.version.cuda or 'none'}): expected 0 "
                                            "(nodes on CPUs) here")
    ask = gpus * per_actor
    if ask > 1 and abs(ask - round(ask)) > 1e-9:
        raise ConfigError("resources.gpus", f"got {gpus} per node x {per_actor} nodes per actor "
                                            f"= {ask:g} GPUs per actor, which Ray cannot place: "
                                            "expected an actor's sum of at most 1 or a whole "
                                            "number")
    actors = -(-nodes // per_actor)
    machines = [float(n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    slots = gpu_slots(machines, ask)
    if slots < actors:
        raise ConfigError("resources.gpus", f"got {gpus} per node for {nodes} nodes "
                                            f"({actors} actors of {ask:g} GPUs), but the Ray "
                                            f"cluster's GPUs per machine {machines} hold {slots} "
                                            "such actors: expected a share that fits (at most "
                                            "the GPUs / nodes), or 0 (nodes on CPUs)")


def release(actors: list[Any], group: Any = None) -> None:
    """Close every node's sockets, then end the actors and their placement group."""
    actors = list({a._actor_id: a for a in actors}.values())  # a pack's nodes share one
    with contextlib.suppress(Exception):  # a dead actor has nothing left to close
        ray.get([a.close.remote() for a in actors], timeout=30)
    for a in actors:
        ray.kill(a)
    if group is not None:
        remove_placement_group(group)
