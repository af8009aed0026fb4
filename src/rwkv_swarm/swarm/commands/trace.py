"""`rwkv-swarm trace summary RUN` (a table) and `rwkv-swarm trace plot RUN` (a PNG), where RUN
is a run directory or a run id in --runs-dir. Only files are read: it works from any shell,
while the run goes on or after it has ended."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..report import format_table, plot, summary


def trace_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("trace", help="read a run's trace")
    sub = p.add_subparsers(dest="trace_command", required=True)
    s = sub.add_parser("summary", help="a table per node")
    g = sub.add_parser("plot", help="a PNG of per-node fitness, belief bands, signals, "
                                    "migrations")
    for q in (s, g):
        q.add_argument("run", metavar="RUN", help="a run directory, or a run id in --runs-dir")
        q.add_argument("--runs-dir", default="runs")
    g.add_argument("--out", help="PNG path (default RUN_DIR/trace.png)")
    s.set_defaults(func=summary_command)
    g.set_defaults(func=plot_command)
    return p


def run_dir(args: argparse.Namespace) -> Path:
    """RUN as a directory if it is one, else the run id's directory under --runs-dir."""
    path = Path(args.run)
    if path.is_dir() or not (Path(args.runs_dir) / args.run).is_dir():
        return path  # a missing path is named as given by the error that follows
    return Path(args.runs_dir) / args.run


def summary_command(args: argparse.Namespace) -> int:
    print(format_table(summary(run_dir(args))))
    return 0


def plot_command(args: argparse.Namespace) -> int:
    print(f"wrote {plot(run_dir(args), args.out)}")
    return 0
