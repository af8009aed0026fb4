"""Which implementation runs a kernel: measured once per CPU and problem size, cached on disk.

A fast path tuned on one CPU can lose on another (a native step that beats PyTorch while the
model sits in cache loses once the weights must stream from memory; a second thread pays off
on one memory system and not on another). So each choice is a measurement: the candidates run
interleaved, round by round, and the one with the fastest round wins. The result is stored in
`<cache>/paths/<cpu>.json`, keyed by the problem's sizes; the file names the CPU it was
measured on, and a file that is unreadable, malformed or from another CPU is ignored and
measured again, never trusted.

Tests inject the measurement (`PathChooser(measure=...)`, `set_default`), so none of them times
anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

VERSION = 1
Candidates = Mapping[str, Callable[[], object]]
Measure = Callable[[Candidates], dict[str, float]]


def cache_root() -> Path:
    """$RWKV_SWARM_CACHE, else $XDG_CACHE_HOME/rwkv-swarm, else ~/.cache/rwkv-swarm."""
    if os.environ.get("RWKV_SWARM_CACHE"):
        return Path(os.environ["RWKV_SWARM_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rwkv-swarm"


def cpu_identity() -> str:
    """The CPU as measurements see it: model name, SIMD flags and usable CPUs."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = " ".join(sorted(value.split()))
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{model}|cpus={usable_cpus()}|{flags}"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure_interleaved(candidates: Candidates, rounds: int = 7, sample_s: float = 2e-3,
                        batches: int = 3) -> dict[str, float]:
    """Seconds per call of each candidate in its best round.

    Each is warmed up once, then the candidates alternate round by round, so background load
    falls on all of them alike. A sample repeats a call until it lasts about `sample_s`. The
    best round, not the median: a choice is stored for good, so it should reflect what the
    CPU can do, not a burst of load from other programs during one measurement (a two-thread
    team measured while another program held a core ran 14x slower than one thread). While a
    candidate's median round is over 1.5x its best, up to `batches` sets of rounds run, to
    outlast such a burst.
    """
    reps, failed = {}, {}
    for name, fn in candidates.items():
        t = time.perf_counter()
        try:
            fn()
        except (RuntimeError, MemoryError, OSError) as exc:  # e.g. scratch memory refused
            log.warning("kernel path %s failed in its measurement: %s", name, exc)
            failed[name] = float("inf")
            continue
        reps[name] = max(1, min(1000, int(sample_s / max(time.perf_counter() - t, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in reps}
    for _ in range(batches):
        _rounds(candidates, reps, samples, rounds)
        if all(statistics.median(s) <= 1.5 * min(s) for s in samples.values()):
            break
    return {**failed, **{name: min(s) for name, s in samples.items()}}


def _rounds(candidates: Candidates, reps: dict[str, int], samples: dict[str, list[float]],
            rounds: int) -> None:
    for _ in range(rounds):
        for name, n in reps.items():
            fn = candidates[name]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t) / n)


class PathChooser:
    """Chooses among candidates by measurement, remembering choices in memory and on disk."""

    def __init__(self, directory: Path | None = None, measure: Measure | None = None,
                 identity: str | None = None):
        self.directory = directory
        self.measure = measure or measure_interleaved
        self.identity = identity or cpu_identity()
        self._memory: dict[str, str] = {}
        self.memo: dict[tuple, str] = {}  # callers' choices by a cheap key, for hot paths

    @property
    def file(self) -> Path:
        directory = self.directory or cache_root() / "paths"
        return directory / (hashlib.sha256(self.identity.encode()).hexdigest()[:16] + ".json")

    def choose(self, kind: str, sizes: Mapping[str, object], candidates: Candidates) -> str:
        """The fastest candidate's name for this kind of kernel at these sizes."""
        if len(candidates) == 1:
            return next(iter(candidates))
        key = kind + "|" + json.dumps(dict(sizes), sort_keys=True)
        name = self._memory.get(key) or self._load().get(key, {}).get("choice")
        if name not in candidates:  # never measured, or measured among other candidates
            seconds = self.measure(candidates)
            name = min(candidates, key=lambda n: seconds[n])
            self._store(key, name, seconds)
        self._memory[key] = name
        return name

    def _load(self) -> dict[str, dict]:
        """The stored choices, or {} if the file is missing, unreadable or not ours."""
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        if not (isinstance(data, dict) and data.get("version") == VERSION
                and data.get("cpu") == self.identity and isinstance(data.get("choices"), dict)):
            return {}
        return {k: v for k, v in data["choices"].items() if isinstance(v, dict)}

    def _store(self, key: str, name: str, seconds: Mapping[str, float]) -> None:
        choices = self._load()
        choices[key] = {"choice": name, "seconds": {n: float(s) for n, s in seconds.items()}}
        data = {"version": VERSION, "cpu": self.identity, "choices": choices}
        try:  # write then rename: a reader never sees half a file
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.file.parent, delete=False,
                                             suffix=".tmp") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(f.name, self.file)
        except OSError as exc:  # a read-only cache costs a measurement per process, no more
            log.warning("could not store a kernel path choice in %s: %s", self.file, exc)


_default: PathChooser | None = None


def default_chooser() -> PathChooser:
    global _default
    if _default is None:
        _default = PathChooser()
    return _default


def set_default(chooser: PathChooser | None) -> None:
    """Replace the process-wide chooser (tests inject measurements); None resets it."""
    global _default
    _default = chooser
