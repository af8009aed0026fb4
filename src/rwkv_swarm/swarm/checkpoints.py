"""`runs/<id>/checkpoints/`: the coordinator's copy of every node's recent snapshots and of its
own state, from which a dead node is restarted and a run whose launcher died is resumed.

    checkpoints/node-<i>/gen-<G>.snap        NodeHost.snapshot(): node i as it stands before
                                             generation G (weights, beliefs, strategy and RNG
                                             counters, live RWKV state, world, applied signals)
    checkpoints/coordinator/gen-<G>.json     the coordinator's state at the boundary before G

G is zero-padded to 8 digits so that names sort as numbers. Every file is written to a
temporary name and renamed: a file that exists is complete, whatever died while it was being
written. The newest `keep` files of each kind are kept.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

KEEP = 3  # snapshots kept per node: the newest complete set survives a crash while writing one
CHECKPOINT_NAME = re.compile(r"gen-(\d{8})\.(snap|json)$")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointStore:
    """Snapshots under `run_dir/checkpoints/`, written atomically, the newest `keep` kept."""

    def __init__(self, run_dir: str | Path, keep: int = KEEP):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def _folder(self, who: str) -> Path:
        d = self.dir / who
        d.mkdir(parents=True, exist_ok=True)
        return d

    def generations(self, who: str) -> list[int]:
        """The generations `who` ("node-<i>" or "coordinator") has a checkpoint of, sorted."""
        d = self.dir / who
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))

    def _save(self, who: str, generation: int, data: bytes, ext: str) -> Path:
        if type(generation) is not int or generation < 0:
            raise ValueError(f"generation must be an int >= 0, got {generation!r}")
        path = self._folder(who) / f"gen-{generation:08d}.{ext}"
        _atomic_write(path, data)
        for old in self.generations(who)[:-self.keep]:
            (self.dir / who / f"gen-{old:08d}.{ext}").unlink(missing_ok=True)
        return path

    # -- nodes -------------------------------------------------------------------------------------

    def save_node(self, node: int, generation: int, blob: bytes) -> Path:
        """Node `node`'s snapshot taken before `generation`."""
        return self._save(f"node-{node}", generation, bytes(blob), "snap")

    def node_generations(self, node: int) -> list[int]:
        return self.generations(f"node-{node}")

    def load_node(self, node: int, generation: int | None = None) -> tuple[int, bytes] | None:
        """(generation, snapshot) of node `node`: the newest, or the one before `generation`;
        None when there is none."""
        gens = self.node_generations(node)
        if generation is not None:
            gens = [g for g in gens if g == generation]
        if not gens:
            return None
        g = gens[-1]
        return g, (self.dir / f"node-{node}" / f"gen-{g:08d}.snap").read_bytes()

    # -- the coordinator ---------------------------------------------------------------------------

    def save_coordinator(self, generation: int, state: dict[str, Any]) -> Path:
        """The coordinator's state at the boundary before `generation` (JSON; NaN allowed)."""
        return self._save("coordinator", generation,
                          json.dumps(state, default=_plain).encode(), "json")

    def load_coordinator(self, generation: int | None = None) -> tuple[int, dict[str, Any]] | None:
        gens = self.generations("coordinator")
        if generation is not None:
            gens = [g for g in gens if g == generation]
        if not gens:
            return None
        g = gens[-1]
        path = self.dir / "coordinator" / f"gen-{g:08d}.json"
        return g, json.loads(path.read_text())

    def latest_complete(self, nodes: int) -> int | None:
        """The newest generation at which the coordinator and all `nodes` nodes have a snapshot
        (what a run is resumed from), or None."""
        common = set(self.generations("coordinator"))
        for i in range(nodes):
            common &= set(self.node_generations(i))
        return max(common) if common else None


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")
