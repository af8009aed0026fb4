"""A run's record: `trace.parquet` (one row per generation x node) and `events.jsonl`.

`trace.parquet` is a directory of Parquet parts, each written to a temporary name, then
renamed: a part on disk is always complete. `TraceWriter.write` holds rows until a part is due
(`flush_s` after the last one, or `flush()`: the coordinator flushes before every checkpoint
and at the end of a run), so a crash loses at most the rows since the last part, all of them
after the newest checkpoint: a resumed run runs them again. `TraceWriter.compact` (at every
checkpoint and at the end of a run) merges the newest small parts into one named by the range
of part numbers it covers, `part-<first>-<last>.parquet`, then removes the parts it covers: a
crash in between leaves both, and `load_trace` reads a covered part's rows once, from the
widest part that covers them. The schema and its version are in docs/trace.md; `load_trace`
returns a pyarrow Table sorted by (generation, node).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TRACE_VERSION = 1
F, I, B, S = pa.float64(), pa.int64(), pa.bool_(), pa.string()
COLUMNS: dict[str, pa.DataType] = {
    "generation": I, "node": I, "name": S, "fingerprint": S,
    "fitness_mean": F, "fitness_std": F, "fitness_max": F, "fitness_min": F, "nonfinite": I,
    "belief_mean": F, "belief_var": F, "gain": F, "innovation": F, "nis": F, "surprised": B,
    "sigma": F, "lr": F, "grad_norm": F, "step_norm": F, "direction_gain": F,
    "expected_change": F, "tied": B, "centre_return": F, "episodes": I, "env_steps": I,
    "rows_useful": I, "rows_computed": I,
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
PART_NAME = re.compile(r"part-(\d{6,})(?:-(\d{6,}))?\.parquet$")
COMPACT_ROWS = 100_000  # parts this big are left alone: a long run is not rewritten again and again
COMPACT_PARTS = 8  # small parts merge once there are this many: a run() call's end (tens of
# milliseconds for a few parts) does not rewrite the newest rows every time
_READ_TRIES = 5  # a reader racing a compaction lists the parts again


def trace_parts(path: Path) -> list[tuple[int, int, Path]]:
    """(first, last, file) of every part in the trace directory `path` that no wider part
    covers, sorted: each row once, whatever a crash during a compaction left behind."""
    found = []
    for p in path.glob("part-*.parquet"):
        if m := PART_NAME.match(p.name):
            first = int(m.group(1))
            found.append((first, int(m.group(2) or first), p))
    found.sort(key=lambda e: (e[0], -e[1]))  # the widest first among those that start together
    out: list[tuple[int, int, Path]] = []
    for first, last, p in found:
        if out and first <= out[-1][1]:  # inside the one before (merges never overlap partly)
            continue
        out.append((first, last, p))
    return out


def _covered(path: Path) -> list[Path]:
    """Parts a wider part covers: left by a compaction that crashed before removing them."""
    keep = {p for _, _, p in trace_parts(path)}
    return [p for p in path.glob("part-*.parquet") if PART_NAME.match(p.name) and p not in keep]


def _write_part(table: pa.Table, final: Path) -> None:
    """`table` as `final`, through a temporary file synced before the rename."""
    tmp = final.with_name(f".{final.name}.tmp")
    with tmp.open("wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)  # atomic: a reader never sees half a part


_FIELDS = [(k, _MISSING[t], {F: float, I: int, B: bool, S: str}[t]) for k, t in COLUMNS.items()]


def trace_row(row: dict[str, Any]) -> dict[str, Any]:
    """A node's row (node.Node / Member / NodeHost) in the trace's columns; absent values get
    their column's "does not apply" value (NaN, -1, False, "")."""
    r = dict(row)
    r.setdefault("update_s", r.get("tell_s", 0.0) + r.get("centre_s", 0.0))
    r.setdefault("communicate_s", r.get("wait_s", math.nan))
    out = {}
    for k, missing, cast in _FIELDS:
        v = r.get(k)
        out[k] = missing if v is None else cast(v)
    return out


class TraceWriter:
    """Appends rows to runs/<id>/trace.parquet/ as complete Parquet parts, a part at most every
    `flush_s` seconds (0: one per `write`), the first write's at once (a run has a trace from
    its first generation); `compact` merges them."""

    def __init__(self, run_dir: str | Path, flush_s: float = 0.0):
        self.dir = Path(run_dir) / "trace.parquet"
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in _covered(self.dir):  # finish a compaction a crash interrupted
            p.unlink(missing_ok=True)
        # after the last part there: a truncation may have removed some before it
        self.parts = 1 + max((last for _, last, _ in trace_parts(self.dir)), default=-1)
        self.rows = 0  # rows written, held ones included
        self.flush_s = flush_s
        self._held: list[dict[str, Any]] = []
        self._flushed = -math.inf

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Take `rows`; they are on disk once a part is due (see the class docstring)."""
        rows = [trace_row(r) for r in rows]
        self._held += rows
        self.rows += len(rows)
        if time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Every row held, on disk now as one part."""
        if not self._held:
            return
        self._flushed = time.monotonic()
        table = pa.Table.from_pylist(self._held, schema=SCHEMA)
        final = self.dir / f"part-{self.parts:06d}.parquet"
        tmp = self.dir / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # atomic: a reader never sees half a part
        self.parts += 1
        self._held = []

    def compact(self, max_rows: int = COMPACT_ROWS, min_parts: int = COMPACT_PARTS
                ) -> Path | None:
        """Merge the newest parts smaller than `max_rows` rows into one part named by the range
        they cover, once there are `min_parts` of them, then remove them; returns the merged
        part (None: nothing to merge). An older part joins only while it holds no more rows
        than the newer ones together, so a row is rewritten about log2(rows) times over a run,
        not at every compaction. The merged
        part is on disk before any part it covers goes, so a crash loses nothing, and
        `trace_parts` never reads a row twice meanwhile."""
        small: list[tuple[int, int, Path]] = []
        newer = 0
        for entry in reversed(trace_parts(self.dir)):
            rows = pq.ParquetFile(entry[2]).metadata.num_rows
            if rows >= max_rows or (small and rows > newer):
                break
            small.insert(0, entry)
            newer += rows
        if len(small) < max(2, min_parts):
            return None
        table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for _, _, p in small])
        merged = self.dir / f"part-{small[0][0]:06d}-{small[-1][1]:06d}.parquet"
        _write_part(table, merged)
        for _, _, p in small:  # oldest first: what a crash leaves is the newest rows' part
            p.unlink(missing_ok=True)
        return merged


def load_trace(run_dir: str | Path) -> pa.Table:
    """The run's trace as a pyarrow Table (one row per generation x node), sorted; call
    `.to_pandas()` or `polars.from_arrow(...)` for a data frame. Safe while the run writes
    and compacts it: each row is read once."""
    path = Path(run_dir) / "trace.parquet"
    for attempt in range(_READ_TRIES):
        parts = trace_parts(path)
        if not parts:
            if (Path(run_dir) / "run.json").exists():
                raise FileNotFoundError(f"run {run_dir} has recorded no generation yet (its "
                                        f"trace starts with its first generation)")
            raise FileNotFoundError(f"no trace in {path} (is {run_dir} a run directory?)")
        try:
            table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for _, _, p in parts])
            break
        except FileNotFoundError:  # a compaction removed a part just listed: list again
            if attempt == _READ_TRIES - 1:
                raise
    return table.sort_by([("generation", "ascending"), ("node", "ascending")])


def last_generation(run_dir: str | Path) -> int | None:
    """The last generation in the run's trace (its newest part), None when it has none. Safe
    while the run writes and compacts it."""
    path = Path(run_dir) / "trace.parquet"
    for attempt in range(_READ_TRIES):
        parts = trace_parts(path)
        if not parts:
            return None
        try:
            gens = pq.read_table(parts[-1][2], columns=["generation"])["generation"]
            return max(gens.to_pylist(), default=None)
        except FileNotFoundError:  # a compaction removed it just after the listing
            if attempt == _READ_TRIES - 1:
                raise
    return None


def truncate_trace(run_dir: str | Path, generation: int) -> int:
    """Remove every row of `generation` or later from runs/<id>/trace.parquet/ (a resumed run
    runs them again) and return how many went. Each part that holds such rows is rewritten
    to a temporary name and renamed over the old one (or removed when nothing of it is left):
    every step leaves whole parts and every earlier row in place, so a crash during it loses
    nothing else, and running it again finishes it."""
    path = Path(run_dir) / "trace.parquet"
    for p in _covered(path):  # a compaction's leftovers first: their rows are in a wider part
        p.unlink(missing_ok=True)
    dropped = 0
    for _, _, part in trace_parts(path):
        table = pq.read_table(part, schema=SCHEMA)
        kept = table.filter(pc.less(table["generation"], generation))
        if kept.num_rows == table.num_rows:
            continue
        dropped += table.num_rows - kept.num_rows
        if kept.num_rows:
            _write_part(kept, part)  # on disk before it replaces the rows it keeps
        else:
            part.unlink()
    for tmp in path.glob(".part-*.tmp"):  # a part being written when its writer died
        tmp.unlink()
    return dropped


class EventLog:
    """runs/<id>/events.jsonl: one JSON object per line (signals, migrations, faults, topology
    changes, ...), flushed as each is written. The file exists from the start (empty for an
    uneventful run)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "events.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"time": time.time(), "kind": kind, **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(event, default=_plain) + "\n")
            f.flush()
        return event


def truncate_events(run_dir: str | Path, generation: int) -> int:
    """Remove the events of `generation` or later from runs/<id>/events.jsonl (faults,
    migrations, topology changes at those generations; signals that every target applied from
    one of them) and return how many went. The file is rewritten to a temporary name and
    renamed over the old one."""
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if not _past(line, generation)]
    if len(kept) < len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return len(lines) - len(kept)


def _past(line: str, generation: int) -> bool:
    try:
        event = json.loads(line)
    except ValueError:  # the line being written when its writer died
        return True
    if isinstance(event.get("generation"), int):
        return event["generation"] >= generation
    applied = event.get("applied") if event.get("kind") == "signal" else None
    return bool(applied) and min(applied.values()) >= generation


def read_events(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The run's events (runs/<id>/events.jsonl), oldest first, as dicts with at least "time"
    and "kind" (docs/trace.md lists every kind and its fields); only those of `kind` when
    given. [] when the run has none. A last line cut short by a crash is skipped; safe to call
    while the run writes."""
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line) if line.strip() else None
        except ValueError:  # the line being written when its writer died
            continue
        if event is not None and (kind is None or event.get("kind") == kind):
            out.append(event)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)
