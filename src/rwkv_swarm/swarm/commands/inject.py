"""`rwkv-swarm inject RUN_ID NAME k=v ...`: change the world of a running swarm, from any
shell. Before any connection is tried, the run's run.json says whether it still runs and the
signal is checked against the run's config.toml (its environment's schema)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import runinfo


def inject_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inject", help="inject a signal into a running swarm")
    p.add_argument("run_id")
    p.add_argument("name", help="the signal, e.g. freq_shift")
    p.add_argument("params", nargs="*", help="key=value (lists: comma separated)")
    p.add_argument("--targets", help="node ids, comma separated (default: all)")
    p.add_argument("--unannounced", action="store_true",
                   help="change the world without telling the nodes' beliefs")
    p.add_argument("--runs-dir", default="runs")
    p.set_defaults(func=inject_command)
    return p


def inject_command(args: argparse.Namespace) -> int:
    targets = "all" if not args.targets else [_node_id(t) for t in args.targets.split(",")]
    run_dir, info = runinfo.read(args.run_id, args.runs_dir)
    runinfo.check_running(run_dir, info)  # from files: an ended run is told without torch or Ray
    from ..api import Swarm
    from ..config import SwarmConfig
    from ..signals import Signal, parse_params, validate

    signal = Signal(args.name, parse_params(args.params), targets, not args.unannounced)
    config = SwarmConfig.from_toml(run_dir / "config.toml")
    validate(signal, config.env, config.nodes)
    ack = Swarm.attach(args.run_id, args.runs_dir).inject(signal)
    applied = ", ".join(f"node {n}: generation {g}" for n, g in sorted(ack["applied"].items()))
    print(f"signal {ack['id']} {ack['name']} applied from the next generation of each target "
          f"({applied})")
    return 0


def _node_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--targets takes node ids (integers, comma separated), got "
                         f"{text!r}") from None
