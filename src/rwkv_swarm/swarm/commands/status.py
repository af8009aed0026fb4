"""`rwkv-swarm status RUN_ID`: a running swarm's generation, per-node fitness and belief,
peers, messages and drops; from any shell (see `Swarm.attach`). A run that has ended is told
from its run.json, with its final summary from the trace (exit 0); a run whose launcher died
is told too, with exit 2, as is any run that cannot be reached."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .. import runinfo
from ..report import format_table, summary


def status_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("status", help="show a running swarm's state")
    p.add_argument("run_id")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--json", action="store_true", help="the raw status as JSON")
    p.set_defaults(func=status_command)
    return p


def status_command(args: argparse.Namespace) -> int:
    run_dir, info = runinfo.read(args.run_id, args.runs_dir)
    try:
        runinfo.check_running(run_dir, info)  # from files: no Ray for an ended run
        from ..api import Swarm

        status = Swarm.attach(args.run_id, args.runs_dir).status()
    except runinfo.RunEnded as e:
        return ended(args, str(e))
    if args.json:
        print(json.dumps(status, default=str))
        return 0
    print(f"run {status['run_id']}: generation {status['generation']}, "
          f"{'running' if status['in_flight'] is not None else 'idle'}, "
          f"{status['migrations']} migrations, {status['rows']} trace rows")
    rows = []
    for i, n in status["nodes"].items():
        sd = math.sqrt(n["belief_var"]) if n["belief_var"] is not None else math.nan
        rows.append({"node": i, "alive": n["alive"], "generation": n["generation"],
                     "fitness": n["fitness_mean"], "belief": n["belief_mean"], "sd": sd,
                     "p_best": n["p_best"], "peers": ",".join(map(str, n["neighbours"])),
                     "received": n["received"], "dropped": n["dropped"]})
    print(format_table(rows))
    return 0


def ended(args: argparse.Namespace, message: str) -> int:
    """An ended run: the message and the trace's summary (--json: run.json's end record)."""
    run_dir, info = runinfo.read(args.run_id, args.runs_dir)
    if args.json:
        print(json.dumps({"run_id": info["run_id"], "ended": info["ended"]}))
        return 0
    print(message)
    try:
        print(format_table(summary(run_dir)))
    except FileNotFoundError:
        print("(no trace rows)", file=sys.stderr)
    return 0
