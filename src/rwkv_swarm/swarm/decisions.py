"""`Decisions`: what a coordinator concludes from its nodes' latest rows, and the migrations it
makes of them: each live node's belief, the lineages' fused beliefs, each node's P(best), the
best lineage, and, every `migration.every` generations, the belief-gated migrations (weights
moved from the source's actor to the destination's, a `migration` event each). The coordinator
owns one, as it owns a `Recovery`: it keeps the rows (`last`), the live nodes and the record
of migrations (`lineage`) that its checkpoints carry, with `decided`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .beliefs import Summary, fuse_lineages, lineage_p_best, migrations

if TYPE_CHECKING:
    from .coordinator import Coordinator


class Decisions:
    """P(best) and migrations of one coordinator's swarm."""

    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
        self._group_of = {i: g[0] for g in coordinator.config.groups() for i in g}
        self._of: tuple[Any, ...] = ()  # (rows seen, alive) -> summaries, fused, P(best), top
        self.decided = -1  # the last generation migrations were decided at

    def summaries(self) -> list[Summary]:
        """Each live node's latest belief (a dead node's last row takes no part)."""
        c, out = self.c, []
        consensus = c.config.mode == "consensus"
        for i, row in sorted(c.last.items()):
            if i not in c.alive:  # a dead node's weights cannot be migrated from or to
                continue
            lineage = f"group-{self._group_of[i]}" if consensus \
                else row.get("fingerprint", str(i))
            out.append(Summary(i, lineage, row["belief_mean"], row["belief_var"]))
        return out

    def beliefs(self) -> tuple[list[Summary], dict[str, Any], dict[int, float], str | None]:
        """(summaries, fused lineages, each node's P(best), the best lineage), computed once
        per change of the rows or of the live nodes (a generation asks several times)."""
        key = (self.c.rows_seen, frozenset(self.c.alive))
        if self._of[:1] != (key,):
            summaries = self.summaries()
            fused = fuse_lineages(summaries)
            p_of: dict[int, float] = {}
            top = None
            if fused:
                keys, p = lineage_p_best(fused)
                p_of = {n: float(pk) for k, pk in zip(keys, p, strict=True) for n in fused[k][2]}
                top = keys[int(np.argmax(p))]
            self._of = (key, summaries, fused, p_of, top)
        return self._of[1:]

    def best(self) -> dict[str, Any] | None:
        """The best live lineage by belief: {"node" (its lowest live node), "p_best",
        "belief_mean", "belief_var" (its fused belief), "generation" (of that node's last row)};
        None before any row."""
        _, fused, p_of, top = self.beliefs()
        if top is None:
            return None
        mean, var, members = fused[top]
        node = min(members)
        return {"node": node, "p_best": p_of[node], "belief_mean": float(mean),
                "belief_var": float(var), "generation": self.c.last[node].get("generation")}

    def due(self, generation: int) -> bool:
        """Whether migrations are decided at the boundary before `generation` (once the
        generation before it has ended)."""
        c = self.c.config
        return c.migration.enabled and c.mode != "consensus" and generation % c.migration.every == 0

    def decide(self, gen: int, rows: list[dict[str, Any]]) -> None:
        """P(best) into every row; at the due generations, the gated migrations."""
        c = self.c
        summaries, fused, p_of, _ = self.beliefs()
        if fused:
            for row in rows:
                row["p_best"] = p_of.get(row["node"], math.nan)
        # decided once a generation: in async mode several batches can end at one
        if not self.due(gen + 1) or gen <= self.decided:
            return
        m = c.config.migration
        self.decided = gen
        by_node = {r["node"]: r for r in rows}
        for mig in migrations(summaries, m.gate, m.fraction, fused):
            c.checkpoints.touched(mig.dst)
            src_row = c.last[mig.src]
            try:
                ack = c.nodes.transfer(mig.src, mig.dst, (src_row["belief_mean"],
                                                          src_row["belief_var"]), m.with_state)
            except Exception as e:  # noqa: BLE001 - either end dead or refusing: the run goes on
                self._failed(gen, mig.src, mig.dst, e)
                continue
            if mig.dst in by_node:
                by_node[mig.dst]["migrated_from"] = mig.src
            record = {"generation": gen, "dst": mig.dst, "src": mig.src, "p_best": mig.p_best,
                      "p_better": mig.p_better, "src_var": mig.src_var, "dst_var": mig.dst_var,
                      "state": ack.get("state"), "fingerprint": ack.get("fingerprint")}
            c.lineage.append(record)
            c.events.write("migration", **record)

    def _failed(self, gen: int, src: int, dst: int, error: BaseException) -> None:
        """No migration: a `fault` event of phase "transfer" says why; which of the two died
        (if one did) is found by asking both, and a dead one is handled as any other fault."""
        c = self.c
        c.events.write("fault", generation=gen, phase="transfer", src=src, dst=dst,
                       error=f"{type(error).__name__}: {error}"[:500])
        c.nodes.call("ping", only=[src, dst], on_fault=c.on_fault("migration"))
