"""`rwkv-swarm status RUN_ID`: a running swarm's generation, per-node fitness and belief,
peers, messages and drops."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..api import Swarm
from ..report import format_table


def status_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("status", help="show a running swarm's state")
    p.add_argument("run_id")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--json", action="store_true", help="the raw status as JSON")
    p.set_defaults(func=status_command)
    return p


def status_command(args: argparse.Namespace) -> int:
    status = Swarm.attach(args.run_id, args.runs_dir).status()
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
