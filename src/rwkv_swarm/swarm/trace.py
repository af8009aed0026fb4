"""A run's record: `trace.parquet` (one row per generation x node) and `events.jsonl`.

`trace.parquet` is a directory of Parquet parts, one written (to a temporary name, then renamed)
per generation or batch of rows: a part on disk is always complete, so a crash loses at most
the rows in flight, and any Parquet reader loads the directory as one table. The schema and
its version are in docs/trace.md; `load_trace` returns a pyarrow Table sorted by
(generation, node).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TRACE_VERSION = 1
F, I, B, S = pa.float64(), pa.int64(), pa.bool_(), pa.string()
COLUMNS: dict[str, pa.DataType] = {
    "generation": I, "node": I, "name": S, "fingerprint": S,
    "fitness_mean": F, "fitness_std": F, "fitness_max": F, "fitness_min": F, "nonfinite": I,
    "belief_mean": F, "belief_var": F, "gain": F, "innovation": F, "nis": F, "surprised": B,
    "sigma": F, "lr": F, "grad_norm": F, "step_norm": F, "direction_gain": F,
    "expected_change": F, "tied": B, "centre_return": F, "episodes": I, "env_steps": I,
    "absorbed": I, "absorbed_from": I, "refused": I, "missing": I, "bad_obs": I, "diverged": I,
    "migrated_from": I, "p_best": F, "signals": S,
    "evaluate_s": F, "update_s": F, "communicate_s": F, "generation_s": F,
    "sent": I, "received": I, "dropped": I, "dropped_by": S, "bytes_sent": I,
    "bytes_received": I,
    "time": F,
}
SCHEMA = pa.schema([pa.field(k, v) for k, v in COLUMNS.items()],
                   metadata={"rwkv_swarm.trace_version": str(TRACE_VERSION)})
_MISSING = {F: math.nan, I: -1, B: False, S: ""}


def trace_row(row: dict[str, Any]) -> dict[str, Any]:
    """A node's row (node.Node / Member / NodeHost) in the trace's columns; absent values get
    their column's "does not apply" value (NaN, -1, False, "")."""
    r = dict(row)
    r.setdefault("update_s", r.get("tell_s", 0.0) + r.get("centre_s", 0.0))
    r.setdefault("communicate_s", r.get("wait_s", math.nan))
    out = {}
    for k, t in COLUMNS.items():
        v = r.get(k, _MISSING[t])
        if t == I:
            v = int(v) if v is not None else -1
        elif t == F:
            v = float(v) if v is not None else math.nan
        elif t == B:
            v = bool(v)
        else:
            v = "" if v is None else str(v)
        out[k] = v
    return out


class TraceWriter:
    """Appends rows to runs/<id>/trace.parquet/ as complete Parquet parts."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / "trace.parquet"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.parts = len(list(self.dir.glob("part-*.parquet")))
        self.rows = 0

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = [trace_row(r) for r in rows]
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        final = self.dir / f"part-{self.parts:06d}.parquet"
        tmp = self.dir / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # atomic: a reader never sees half a part
        self.parts += 1
        self.rows += len(rows)


def load_trace(run_dir: str | Path) -> pa.Table:
    """The run's trace as a pyarrow Table (one row per generation x node), sorted; call
    `.to_pandas()` or `polars.from_arrow(...)` for a data frame."""
    path = Path(run_dir) / "trace.parquet"
    parts = sorted(path.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no trace in {path} (is {run_dir} a run directory?)")
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])
    return table.sort_by([("generation", "ascending"), ("node", "ascending")])


class EventLog:
    """runs/<id>/events.jsonl: one JSON object per line (signals, migrations, faults, topology
    changes), flushed as each is written."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "events.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"time": time.time(), "kind": kind, **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(event, default=_plain) + "\n")
            f.flush()
        return event


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)
