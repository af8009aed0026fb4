"""`rwkv-swarm trace summary RUN_DIR` (a table) and `rwkv-swarm trace plot RUN_DIR` (a PNG)."""

from __future__ import annotations

import argparse
from typing import Any

from ..report import format_table, plot, summary


def trace_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("trace", help="read a run's trace")
    sub = p.add_subparsers(dest="trace_command", required=True)
    s = sub.add_parser("summary", help="a table per node")
    s.add_argument("run_dir")
    s.set_defaults(func=summary_command)
    g = sub.add_parser("plot", help="a PNG of per-node fitness, belief bands, signals, "
                                    "migrations")
    g.add_argument("run_dir")
    g.add_argument("--out", help="PNG path (default RUN_DIR/trace.png)")
    g.set_defaults(func=plot_command)
    return p


def summary_command(args: argparse.Namespace) -> int:
    print(format_table(summary(args.run_dir)))
    return 0


def plot_command(args: argparse.Namespace) -> int:
    print(f"wrote {plot(args.run_dir, args.out)}")
    return 0
