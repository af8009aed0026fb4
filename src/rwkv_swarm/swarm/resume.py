"""What `Swarm.resume` continues a run from, and what it cuts back first.

A run whose launching process died lost its coordinator and its nodes (they live in the
launcher's Ray), not its record: runs/<id>/ holds its config, its trace and, every
`checkpoint_every` generations, a snapshot of every live node and of the coordinator
(`checkpoints.py`). `plan_resume` reads them and refuses a run that is still running, has
ended, or has no complete checkpoint; `cut_back` removes what the run wrote after the checkpoint
(those generations run again).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runinfo
from .checkpoints import CHECKPOINT_NAME, CheckpointStore
from .config import SwarmConfig
from .trace import truncate_events, truncate_trace

_STALE_S = 1.0  # /proc's boot time is whole seconds: a start time this close is the launcher's


@dataclass
class ResumePlan:
    """Run `run_id` continues from checkpoint `generation` to `total` generations."""

    run_id: str
    run_dir: Path
    config: SwarmConfig
    info: dict[str, Any]  # run.json as the dead launcher left it
    generation: int  # the checkpoint's: the first generation run again
    total: int
    state: dict[str, Any]  # the coordinator's
    snapshots: list[bytes | None]  # per node; None for a node that was dead by then

    @property
    def left(self) -> int:
        return self.total - self.generation


def plan_resume(run_id: str, runs_dir: str | Path, generations: int | None = None
                ) -> ResumePlan:
    """Where run `run_id` goes on from (`generations`: the run's total, default the config's,
    or the total of its last resume); ValueError when it cannot be resumed, saying why."""
    run_dir, info = runinfo.read(run_id, runs_dir)
    run_dir = run_dir.resolve()
    config = SwarmConfig.from_toml(run_dir / "config.toml")
    total = generations if generations is not None else info.get("generations",
                                                                 config.generations)
    if type(total) is not int or total < 1:
        raise ValueError(f"generations must be an integer >= 1, got {total!r}")
    ended = info.get("ended") or {}
    if ended.get("reason") == "finished" and generations is None:
        raise ValueError(f"run {run_id!r} has ended (finished at generation "
                         f"{ended.get('generation')}); --generations N runs it on to a total "
                         "of N")
    if _launcher_alive(info):
        raise ValueError(f"run {run_id!r} is still running: its launcher (pid {info['pid']}) "
                         f"is alive; `rwkv-swarm status {run_id}` reaches it")
    last = runinfo.last_generation(run_dir)
    if last is not None and last >= total - 1:
        raise ValueError(f"run {run_id!r} has ended: its trace holds all {total} generations "
                         "(--generations N runs it on to a total of N)")
    point = resume_point(CheckpointStore(run_dir))
    if point is None:
        why = "async runs are not checkpointed" if not config.sync else \
            "checkpoint_every = 0" if not config.checkpoint_every else "it died before one"
        raise ValueError(f"run {run_id!r} has no complete checkpoint to resume from ({why})")
    g, state = point
    if g >= total:
        raise ValueError(f"run {run_id!r} has nothing left to run: its checkpoint is at "
                         f"generation {g} of {total} (--generations N runs it on)")
    store = CheckpointStore(run_dir)
    snapshots = [store.load_node(i, g)[1] if i in state["alive"] else None
                 for i in range(config.nodes)]
    return ResumePlan(run_id, run_dir, config, info, g, total, state, snapshots)


def _launcher_alive(info: dict[str, Any]) -> bool:
    """Whether run.json's launcher still runs on this machine: not when it is this very process
    (a swarm launched and resumed here), nor on another machine (`Swarm.resume` then asks that
    Ray for the run's coordinator)."""
    return info.get("pid") != os.getpid() and runinfo.launcher_alive(info) is True


def resume_point(store: CheckpointStore) -> tuple[int, dict[str, Any]] | None:
    """(generation, coordinator state) of the newest checkpoint at which the coordinator and
    every node it counted alive have a snapshot, or None."""
    for g in sorted(store.generations("coordinator"), reverse=True):
        _, state = store.load_coordinator(g)
        if all(g in store.node_generations(i) for i in state["alive"]):
            return g, state
    return None


def cut_back(run_dir: Path, generation: int) -> dict[str, int]:
    """Remove what the run wrote after its checkpoint at `generation`: trace rows and events of
    that generation or later, and newer (incomplete) checkpoints. Each step is atomic and can
    be run again; returns what was removed."""
    rows = truncate_trace(run_dir, generation)
    events = truncate_events(run_dir, generation)
    checkpoints = 0
    for folder in (run_dir / "checkpoints").glob("*"):
        for p in folder.glob("*"):
            m = CHECKPOINT_NAME.match(p.name)
            if (m and int(m.group(1)) > generation) or p.name.endswith(".tmp"):
                p.unlink()
                checkpoints += bool(m)
    return {"rows_dropped": rows, "events_dropped": events,
            "checkpoints_dropped": checkpoints}
