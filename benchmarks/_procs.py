"""This process's descendants by Ray process title (`ray::NodeActor`), and their memory, read
from /proc (Linux): what a chaos run kills and a soak run watches."""

from __future__ import annotations

import os
from pathlib import Path


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the command may contain spaces


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int | None = None) -> list[int]:
    """Every live process below `root` (default: this one)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def actor_pids(title: str = "ray::NodeActor", root: int | None = None) -> list[int]:
    """Descendants whose process title starts with `title` (Ray names an actor's worker
    `ray::<Class>` and `ray::<Class>.<method>` while it runs one)."""
    return sorted(p for p in descendants(root) if _title(p).startswith(title))


def rss_mib(pid: int) -> float | None:
    """Resident memory of `pid` in MiB (None when it is gone)."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS:")


def pss_mib(pid: int) -> float | None:
    """Proportional set size (shared pages split among their users) of `pid`, in MiB."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def _kib_field(path: str, key: str) -> float | None:
    """The kB figure after `key` in a /proc file, in MiB (None when the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
