"""`rwkv-swarm resume RUN_ID`: continue a run whose launching process died, from its newest
checkpoint (on a new embedded Ray, or on --address), with the progress bar of `run`."""

from __future__ import annotations

import argparse
from typing import Any

from ..report import format_table, summary
from ..trace import read_events
from .run import shown, watch


def resume_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("resume", help="continue a run whose launcher died")
    p.add_argument("run_id")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--address", default=None,
                   help='Ray to join: "auto" or host:port (default: an embedded local Ray)')
    p.add_argument("--generations", type=int,
                   help="the run's total generations (default: its config's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=resume_command)
    return p


def resume_command(args: argparse.Namespace) -> int:
    from ..api import Swarm

    with Swarm.resume(args.run_id, args.runs_dir, address=args.address,
                      generations=args.generations) as swarm:
        resumed = [e for e in read_events(swarm.run_dir) if e["kind"] == "resume"][-1]
        left = swarm.config.generations
        print(f"run {swarm.run_id}: resumed from generation {resumed['from_generation']} "
              f"({resumed['rows_dropped']} trace rows after it dropped), {left} generations "
              f"left; trace in {shown(swarm.run_dir)}", flush=True)
        watch(swarm, left, quiet=args.quiet)
    print(format_table(summary(swarm.run_dir)))
    print(f"trace: {shown(swarm.run_dir / 'trace.parquet')}  "
          f"events: {shown(swarm.run_dir / 'events.jsonl')}")
    return 0
