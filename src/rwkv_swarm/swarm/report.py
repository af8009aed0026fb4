"""A run, read back: a summary table per node and a PNG of the swarm's evolution."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .trace import load_trace, read_events


def summary(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per node: generations, best and last fitness, the last belief, surprises, migrations
    in, signals applied, messages received and dropped."""
    t = load_trace(run_dir).to_pydict()
    out = []
    for node in sorted(set(t["node"])):
        idx = [i for i, n in enumerate(t["node"]) if n == node]
        last = idx[-1]
        sd = math.sqrt(max(t["belief_var"][last], 0))
        out.append({
            "node": node, "generations": len(idx),
            "best_fitness": max(t["fitness_mean"][i] for i in idx),
            "last_fitness": t["fitness_mean"][last],
            "belief": f"{t['belief_mean'][last]:.3g} ± {sd:.2g}",
            "surprises": sum(t["surprised"][i] for i in idx),
            "migrations_in": sum(t["migrated_from"][i] >= 0 for i in idx),
            "signals": sum(bool(t["signals"][i]) for i in idx),
            "received": t["received"][last], "dropped": t["dropped"][last],
        })
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts as a fixed-width text table."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Per-node population fitness, with the belief's mean ± one standard deviation as a band;
    vertical lines at signals, markers at migrations. Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    t = load_trace(run_dir).to_pydict()
    out = Path(out) if out else run_dir / "trace.png"
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for node in sorted(set(t["node"])):
        idx = [i for i, n in enumerate(t["node"]) if n == node]
        g = np.array([t["generation"][i] for i in idx])
        f = np.array([t["fitness_mean"][i] for i in idx])
        m = np.array([t["belief_mean"][i] for i in idx])
        sd = np.sqrt(np.maximum([t["belief_var"][i] for i in idx], 0))
        line, = ax.plot(g, f, lw=1.2, label=f"node {node}")
        ax.fill_between(g, m - sd, m + sd, color=line.get_color(), alpha=0.2, lw=0)
        moved = [j for j, i in enumerate(idx) if t["migrated_from"][i] >= 0]
        ax.scatter(g[moved], f[moved], marker="^", s=40, color=line.get_color(), zorder=3)
    _mark_signals(ax, run_dir)
    ax.set_xlabel("generation")
    ax.set_ylabel("population fitness (band: belief mean ± sd)")
    ax.set_title(f"run {run_dir.name}: ^ migration in, | signal")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _mark_signals(ax: Any, run_dir: Path) -> None:
    for e in read_events(run_dir):
        if e["kind"] == "signal" and e.get("applied"):
            gen = min(e["applied"].values())
            ax.axvline(gen - 0.5, color="k", ls="--", lw=0.8)
            ax.annotate(e["name"], (gen - 0.5, 1.0), xycoords=("data", "axes fraction"),
                        ha="right", va="top", fontsize=8, rotation=90)
