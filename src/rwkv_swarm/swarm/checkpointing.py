"""`Checkpointing`: when a coordinator checkpoints, what goes in, and the best policy out.

Owned by the `Coordinator` as `Recovery` and `Decisions` are. A checkpoint is due before every
`checkpoint_every`-th generation: each live node's snapshot (sent with the generation before
it, `hold`; asked for where none stands) and the coordinator's `state_dict()` go to
`runs/<id>/checkpoints/` (`CheckpointStore`) while the next generation runs, one write at a
time and in order; `settle` waits for the one in flight. At the end of every `run()` the best
node's policy is exported to `runs/<id>/best/` (`result.save_best`), at every checkpoint too:
the best node sends its policy file's bytes (`NodeHost.policy`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .checkpoints import CheckpointStore
from .result import save_best

if TYPE_CHECKING:
    from .coordinator import Coordinator


class Checkpointing:
    """The coordinator's checkpoints and best-policy exports (see the module docstring)."""

    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
        self.store = CheckpointStore(coordinator.run_dir)
        # snapshots the nodes sent with the generation before a due checkpoint (node -> it)
        self._fresh: dict[int, dict[str, Any]] = {}
        # checkpoints go to disk beside the next generation, one at a time, in order
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._writing: Future | None = None

    def due(self, generation: int) -> bool:
        """Whether a checkpoint is due before `generation`."""
        every = self.c.config.checkpoint_every
        return bool(every) and generation % every == 0

    def hold(self, snapshots: dict[int, dict[str, Any]]) -> None:
        """The snapshots the nodes sent with the generation just ended (the next checkpoint's)."""
        self._fresh = snapshots

    def touched(self, node: int) -> None:
        """Node `node` changed after its generation (it adopted a migrant, or re-synced to its
        group): the snapshot it sent with that generation no longer stands."""
        self._fresh.pop(node, None)

    def checkpoint(self, force: bool = False) -> None:
        """Between generations, when due (or `force`d): each live node's snapshot and the
        coordinator's state, written while the next generation runs. The trace's rows are on
        disk before, so that a checkpoint never runs ahead of the trace it is resumed with."""
        c = self.c
        fresh, self._fresh = self._fresh, {}
        if not (force or self.due(c.generation)):
            return
        c.trace.flush()
        live = sorted(c.alive)
        snaps = {i: fresh[i] for i in live if i in fresh}
        ask = [i for i in live if i not in snaps]
        for i, r in zip(ask, c.nodes.call("snapshot", only=ask) if ask else [], strict=True):
            if not c.fault(i, r, "snapshot"):
                snaps[i] = r
        best = c.best()
        exported = self._export(best)
        self.settle()
        self._writing = self._disk.submit(self._store, c.generation, snaps, c.state_dict(),
                                          best, exported)

    def _store(self, generation: int, snaps: dict[int, dict[str, Any]], state: dict[str, Any],
               best: dict[str, Any] | None, exported: dict[str, Any] | None) -> None:
        for i, r in snaps.items():  # the coordinator's state last: it completes the checkpoint
            self.store.save_node(i, r["generation"], r["snapshot"])
        self.store.save_coordinator(generation, state)
        self._save_best(best, exported)
        self.c.trace.compact()

    def settle(self) -> None:
        """Wait until the checkpoint being written is on disk (raising what writing it
        raised)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def wrap_up(self) -> None:
        """At the end of a run() call: the best node's policy from its current weights, and
        the trace's small parts merged."""
        c = self.c
        self.settle()
        best = c.best()
        self._save_best(best, self._export(best))
        c.trace.flush()
        c.trace.compact()

    def _export(self, best: dict[str, Any] | None) -> dict[str, Any] | None:
        """The best node's policy now (`NodeHost.policy()`), None without a live best node."""
        c = self.c
        if best is None or best["node"] not in c.alive:
            return None
        (r,) = c.nodes.call("policy", only=[best["node"]], on_fault=c.on_fault("policy"))
        return None if isinstance(r, BaseException) else r  # on_fault has handled it

    def _save_best(self, best: dict[str, Any] | None, exported: dict[str, Any] | None) -> None:
        """runs/<id>/best/ from the best node's `exported` policy (see `result.save_best`);
        one that cannot be written is a `warning` event: the run goes on."""
        if best is None or exported is None:
            return
        try:
            if exported["policy"] is None:
                raise ValueError(exported["error"])
            save_best(self.c.run_dir, best, exported)
        except Exception as e:  # noqa: BLE001 - the run matters more than its export
            self.c.events.write("warning", message=f"best policy not written: "
                                                   f"{type(e).__name__}: {e}"[:500])
