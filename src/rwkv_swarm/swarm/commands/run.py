"""`rwkv-swarm run CONFIG`: launch a swarm from a TOML config, run it with a live progress bar,
leave runs/<run-id>/ (config.toml, trace.parquet, events.jsonl, and run.json: how other shells
reach the run, and, once it is over, how it ended)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..report import format_table, summary

if TYPE_CHECKING:
    from ..api import Swarm

POLL_S = 0.5


def run_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help="launch a swarm from a config and run it")
    p.add_argument("config", help="a swarm TOML file (see configs/)")
    p.add_argument("--nodes", type=int, help="override the config's node count")
    p.add_argument("--generations", type=int, help="override the config's generations")
    p.add_argument("--mode", choices=["isolated", "consensus", "gossip"])
    p.add_argument("--seed", type=int)
    p.add_argument("--run-dir", help="where runs/<run-id>/ goes (default: the config's)")
    p.add_argument("--address", default=None,
                   help='Ray to join: "auto" or host:port (default: an embedded local Ray)')
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_command)
    return p


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {"nodes": args.nodes, "generations": args.generations, "mode": args.mode,
             "seed": args.seed, "run_dir": getattr(args, "run_dir", None)}
    return {k: v for k, v in pairs.items() if v is not None}


def received(status: dict[str, Any]) -> int:
    return sum(n["received"] or 0 for n in status["nodes"].values())


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def runs_dir_option(swarm: Swarm) -> str:
    """What another shell adds to find the run: nothing for ./runs."""
    parent = swarm.run_dir.parent
    return "" if parent == (Path.cwd() / "runs").resolve() else f" --runs-dir {shown(parent)}"


def run_command(args: argparse.Namespace) -> int:
    from ..api import Swarm  # torch and Ray: only for the verbs that need them
    from ..config import SwarmConfig

    config = SwarmConfig.from_toml(args.config)
    config = SwarmConfig.from_dict({**config.to_dict(), **overrides(args)})
    with Swarm.launch(config, address=args.address) as swarm:
        print(f"run {swarm.run_id}: {config.nodes} nodes, {config.mode}, "
              f"{'sync' if config.sync else 'async'}; trace in {shown(swarm.run_dir)}; from "
              f"another shell: rwkv-swarm status {swarm.run_id}{runs_dir_option(swarm)}",
              flush=True)
        watch(swarm, config.generations, quiet=args.quiet)
    print(format_table(summary(swarm.run_dir)))
    print(f"trace: {shown(swarm.run_dir / 'trace.parquet')}  "
          f"events: {shown(swarm.run_dir / 'events.jsonl')}")
    return 0


def watch(swarm: Swarm, generations: int, *, quiet: bool = False,
          on_status: Any = None) -> dict[str, Any]:
    """Start the run and show a progress bar (generation, best/mean fitness, messages/s, ETA)
    until it ends; `on_status(status)` runs at every poll."""
    from tqdm import tqdm

    first = swarm.status()
    start = first["generation"]
    swarm.start(generations)
    bar = tqdm(total=generations, unit="gen", disable=quiet, dynamic_ncols=True)
    last_msgs, last_t = received(first), time.monotonic()
    while not swarm.done():
        status = swarm.status()
        bar.update(status["generation"] - start - bar.n)
        msgs = received(status)
        now = time.monotonic()
        rate = (msgs - last_msgs) / max(now - last_t, 1e-9)
        last_msgs, last_t = msgs, now
        bar.set_postfix(best=f"{status['best_fitness']:.4g}", mean=f"{status['mean_fitness']:.4g}",
                        msgs_s=f"{rate:.0f}")
        if on_status is not None:
            on_status(status)
        time.sleep(POLL_S)
    status = swarm.wait()
    bar.update(status["generation"] - start - bar.n)
    bar.close()
    return status
