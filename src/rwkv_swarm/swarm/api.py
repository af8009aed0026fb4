"""`Swarm`: launch a swarm on Ray, run it, change its world, read its trace.

    with Swarm.launch(SwarmConfig.from_toml("configs/signal.toml")) as swarm:  # local Ray
        swarm.start()                       # background; or swarm.run(generations=50)
        swarm.inject(Signal("freq_shift", {"freq": [0.021, 0.047, 0.25]}))
        swarm.wait()
    table = load_trace(swarm.run_dir)

`Swarm.attach(run_id)` reaches a running swarm from another process, through the run's
`run.json` (see `runinfo`): the Ray address, namespace and auth mode its coordinator lives
under, and who launched it, so that an ended run or a dead launcher is told without Ray.
`Swarm.resume(run_id)` continues a run whose launcher died, from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..cluster import connect, gcs_address, namespace, release, spawn_nodes
from ..cluster.runtime import auth_mode, embedded, token_fingerprint
from ..cluster.worlds import runtime_env_for
from ..node import node_name
from ..node.policy import Policy
from . import runinfo
from .actor import CoordinatorActor
from .config import SwarmConfig
from .resume import cut_back, plan_resume
from .signals import Signal, validate
from .trace import EventLog

START_TIMEOUT_S = 600.0
POLL_S = 0.2  # how often run(on_generation=...) asks the coordinator for its status


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def coordinator_name(run_id: str) -> str:
    return f"rwkv-swarm/{run_id}"


def _refuse_if_coordinated(run_id: str, info: dict[str, Any]) -> None:
    """ValueError when run `run_id`'s coordinator is still alive in the Ray joined (a launcher
    in this process or on another machine, which `launcher_alive` cannot see)."""
    try:
        ray.get_actor(coordinator_name(run_id), namespace=info.get("namespace"))
    except ValueError:
        return
    raise ValueError(f"run {run_id!r} is still running: its coordinator is alive; "
                     f"`rwkv-swarm status {run_id}` reaches it")


def _record_launch(run_dir: Path, run_id: str, **more: Any) -> None:
    """run.json for the run this process has just brought up (launched or resumed)."""
    runinfo.record_launch(
        run_dir, run_id, coordinator=coordinator_name(run_id), address=gcs_address(),
        namespace=namespace(), embedded=embedded(), auth=auth_mode(),
        token_sha256=token_fingerprint(), **more)


def _coordinator(config: SwarmConfig, run_id: str, run_dir: Path, actors: list[Any],
                 respawn: Any) -> Any:
    """The run's coordinator actor, on this machine (it writes the run directory); `respawn`
    restarts a node that dies."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    names = [node_name(c.node_id) for c in config.node_configs()]
    return CoordinatorActor.options(
        name=coordinator_name(run_id), scheduling_strategy=here,
        runtime_env=runtime_env_for(config, Path.cwd())).remote(config, run_id, str(run_dir),
                                                                actors, names, respawn)


class Swarm:
    """A launched (or attached) swarm. Use it as a context manager, or call `shutdown()`."""

    def __init__(self, config: SwarmConfig, run_id: str, run_dir: Path, coordinator: Any,
                 actors: list[Any] | None = None, group: Any = None, owns_ray: bool = False):
        self.config, self.run_id, self.run_dir = config, run_id, run_dir
        self.coordinator, self._actors, self._group = coordinator, actors, group
        self._owns_ray = owns_ray
        self._running: Any = None
        self._namespace: str | None = None
        self._info: dict[str, Any] | None = None  # an attached swarm's run.json

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
            actors, group, respawn = spawn_nodes(
                node_configs, run_id, local=local, cpus=config.resources.cpus,
                gpus=config.resources.gpus, placement=config.resources.placement,
                secure=config.secure, prefix=f"{run_id}/", per_actor=config.per_actor())
            coordinator = _coordinator(config, run_id, run_dir, actors, respawn)
            ray.get(coordinator.status.remote(), timeout=START_TIMEOUT_S)
        except BaseException:
            if owns:
                ray.shutdown()
            raise
        _record_launch(run_dir, run_id)
        return cls(config, run_id, run_dir, coordinator, actors, group, owns)

    @classmethod
    def attach(cls, run_id: str, runs_dir: str | Path = "runs") -> Swarm:
        """The swarm of run `run_id`, launched by another process (which keeps owning it).
        ValueError, before any connection is tried, for a run that has ended
        (`runinfo.RunEnded`) or whose launcher on this host is dead (`runinfo.RunGone`)."""
        run_dir, info = runinfo.read(run_id, runs_dir)
        runinfo.check_running(run_dir, info)
        config = SwarmConfig.from_toml(run_dir / "config.toml")
        address = info["address"]
        if ray.is_initialized():
            if gcs_address() != address:
                raise ValueError(f"this process is joined to the Ray at {gcs_address()}; run "
                                 f"{run_id} lives in the one at {address}")
        else:
            runinfo.prepare_join(info)
            connect(address, namespace=info["namespace"],
                    advice=f"run {run_id} cannot be reached (see its {runinfo.RUN_FILE})")
        try:
            coordinator = ray.get_actor(info["coordinator"], namespace=info["namespace"])
        except ValueError:
            raise runinfo.gone(run_dir, info, "its coordinator is gone") from None
        swarm = cls(config, run_id, run_dir, coordinator)
        swarm._namespace = info["namespace"]
        swarm._info = info
        return swarm

    @classmethod
    def resume(cls, run_id: str, runs_dir: str | Path = "runs", address: str | None = None,
               generations: int | None = None) -> Swarm:
        """Continue run `run_id`, whose launching process died, from its newest complete
        checkpoint: its nodes from their snapshots, its coordinator from its state, its trace
        and events cut back to it (those generations run again). `address` as in `launch`;
        `generations`: the run's total (default its config's). The returned swarm's
        `config.generations` is what is left, so `run()` ends the run. ValueError when the run
        is still running, has ended or has no complete checkpoint."""
        plan = plan_resume(run_id, runs_dir, generations)
        config = plan.config
        owns = connect(address, cpus_needed=config.nodes * config.resources.cpus)
        actors, group, coordinator = [], None, None
        try:
            _refuse_if_coordinated(run_id, plan.info)
            actors, group, respawn = spawn_nodes(
                config.node_configs(), run_id, local=address is None, cpus=config.resources.cpus,
                gpus=config.resources.gpus, placement=config.resources.placement,
                secure=config.secure, prefix=f"{run_id}/", snapshots=plan.snapshots,
                per_actor=config.per_actor())
            record = cut_back(plan.run_dir, plan.generation)
            left = config.replace(generations=plan.left)
            coordinator = _coordinator(left, run_id, plan.run_dir, actors, respawn)
            event = ray.get(coordinator.resume.remote(plan.state, record),
                            timeout=START_TIMEOUT_S)
        except BaseException:
            if coordinator is not None:
                ray.kill(coordinator)
            release(actors, group)
            if owns:
                ray.shutdown()
            raise
        resumes = [*plan.info.get("resumed", []),
                   {k: event[k] for k in ("time", "from_generation", "rows_dropped")}]
        _record_launch(plan.run_dir, run_id, generations=plan.total, resumed=resumes)
        return cls(left, run_id, plan.run_dir, coordinator, actors, group, owns)

    # -- running ---------------------------------------------------------------------------------

    def run(self, generations: int | None = None,
            on_generation: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
        """Run `generations` generations (default: the config's; fewer when the config's
        `target` is reached) and return the status. `on_generation(status)` runs here, in this
        process, each time a poll of the status (every POLL_S) finds a new generation
        finished: a slow callback sees fewer of them, never holds the swarm up."""
        self.start(generations)
        if on_generation is None:
            return self.wait()
        seen = self.status()["generation"]
        while not self.done():
            status = self.status()
            if status["generation"] != seen:
                seen = status["generation"]
                on_generation(status)
            time.sleep(POLL_S)
        status = self.wait()
        if status["generation"] != seen:
            on_generation(status)
        return status

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
        return self._get(self.coordinator.inject.remote(signal))

    def status(self) -> dict[str, Any]:
        return self._get(self.coordinator.status.remote())

    def _get(self, ref: Any) -> Any:
        """ray.get; for an attached swarm whose coordinator went away meanwhile, why."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError:
            if self._info is None:
                raise
            raise runinfo.gone(self.run_dir, self._info, "its coordinator died") from None

    # -- the result ------------------------------------------------------------------------------

    def best(self) -> dict[str, Any] | None:
        """The best lineage by belief: {"node", "p_best", "belief_mean", "belief_var",
        "generation"} (node: its lowest live node; generation: that node's last row), from the
        coordinator; None before the first generation has ended."""
        return self._get(self.coordinator.best.remote())

    def checkpoint(self, node: int) -> bytes:
        """Node `node`'s snapshot now (`NodeHost.snapshot()` bytes; taken at its next
        generation boundary), from its current actor (a restarted node's new one)."""
        if type(node) is not int or not 0 <= node < self.config.nodes:
            raise ValueError(f"node must be a node id in 0..{self.config.nodes - 1}, got "
                             f"{node!r}")
        return self._on_nodes("snapshot", (), [node])[0]["snapshot"]

    def policy(self, node: int | str = "best") -> Policy:
        """Node `node`'s (or, for "best", the best lineage's node's) current weights as a
        `Policy`, usable without Ray: `.save(path)`, `.act(obs)`, `.play()`."""
        if node == "best":
            best = self.best()
            if best is None:
                raise ValueError(f"run {self.run_id} has no best node yet: no generation has "
                                 "ended")
            node = best["node"]
        elif type(node) is not int:
            raise ValueError(f"node must be a node id or 'best', got {node!r}")
        elif not 0 <= node < self.config.nodes:
            raise ValueError(f"node must be a node id in 0..{self.config.nodes - 1} or 'best', "
                             f"got {node!r}")
        (out,) = self._on_nodes("policy", (), [node])
        if out["policy"] is None:
            raise ValueError(f"node-{node} has no policy: {out['error']}")
        return Policy.from_bytes(out["policy"], f"node-{node}'s policy")

    def lineage(self) -> list[dict[str, Any]]:
        return ray.get(self.coordinator.lineage.remote())

    def evaluate(self, episodes: int = 20, seed: int = 0) -> list[float]:
        """Each node's current weights, scored over `episodes` fresh episodes (not training
        episodes; the node's world is not disturbed). Between generations only."""
        return self._on_nodes("evaluate_centre", (episodes, seed))

    def _on_nodes(self, method: str, args: tuple, only: list[int] | None = None) -> list[Any]:
        """method(*args) on the nodes (through the coordinator, which knows their actors now),
        raising the first node's failure."""
        out = self._get(self.coordinator.call_nodes.remote(method, args, only))
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return out

    def set_topology(self, kind: str, k: int = 2, rewire: float = 0.1) -> list[list[int]]:
        """New neighbours for every node, from the next generation boundary on."""
        return ray.get(self.coordinator.set_topology.remote(kind, k, rewire))

    def shutdown(self, reason: str = "finished") -> None:
        """Stop the run, record its end (`reason`) in events.jsonl and run.json, and end the
        actors (an attached swarm only lets go of it)."""
        if self._actors is None:
            return
        generation = None
        try:
            ray.get(self.coordinator.stop.remote(), timeout=30)
            if self._running is not None:
                ray.wait([self._running], timeout=60)
            generation = ray.get(self.coordinator.status.remote(), timeout=30)["generation"]
        except Exception:  # noqa: BLE001 - tearing down whatever is left
            pass
        with contextlib.suppress(Exception):  # restarted nodes run in new actors
            self._actors = ray.get(self.coordinator.actors.remote(), timeout=30)
        try:  # the coordinator has stopped: its event log takes one more line
            EventLog(self.run_dir).write("end", generation=generation, reason=reason)
            runinfo.record_end(self.run_dir, generation, reason)
        finally:
            release(self._actors, self._group)
            ray.kill(self.coordinator)
            self._actors = None
            if self._owns_ray:
                ray.shutdown()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.shutdown()
        elif issubclass(kind, (KeyboardInterrupt, SystemExit)):
            self.shutdown("interrupted")  # Ctrl-C, or SIGTERM (Ray's handler exits)
        else:
            self.shutdown(f"failed: {kind.__name__}")
