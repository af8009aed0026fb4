"""`rwkv-swarm export RUN_ID [--node N] OUT`: a run's policy as one file (`Policy.load` reads
it, no Ray needed). A running swarm is reached through `Swarm.attach` and gives its node's
current weights; an ended run, or one whose launcher died, gives them from its files without
Ray: runs/<id>/best/policy.pt (the best node's, kept by the coordinator at every checkpoint
and at the end) or, with --node, that node's newest checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import runinfo

if TYPE_CHECKING:
    from ...node.policy import Policy


def export_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="write a run's best (or one node's) policy")
    p.add_argument("run_id")
    p.add_argument("out", help="the policy file to write (or a directory: OUT/policy.pt)")
    add_node_options(p)
    p.set_defaults(func=export_command)
    return p


def add_node_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", type=int, help="this node's policy (default: the best node's)")
    p.add_argument("--runs-dir", default="runs")


def export_command(args: argparse.Namespace) -> int:
    policy, where = live_policy(args) or stored_policy(args)
    out = policy.save(args.out)
    print(f"wrote {out}: {describe(policy)} ({where})")
    return 0


def live_policy(args: argparse.Namespace) -> tuple[Policy, str] | None:
    """The policy from the running swarm, or None when the run is not running (ended, or its
    launcher is dead): told from run.json without Ray."""
    run_dir, info = runinfo.read(args.run_id, args.runs_dir)
    try:
        runinfo.check_running(run_dir, info)
    except (runinfo.RunEnded, runinfo.RunGone):
        return None
    from ..api import Swarm  # Ray only for a live run

    try:
        swarm = Swarm.attach(args.run_id, args.runs_dir)
    except (runinfo.RunEnded, runinfo.RunGone):  # it ended, or died, meanwhile: its files
        return None
    node = "best" if args.node is None else args.node
    return swarm.policy(node), "from the running swarm"


def stored_policy(args: argparse.Namespace) -> tuple[Policy, str]:
    """The policy from the run's files: best/policy.pt, or node --node's newest checkpoint."""
    from ...node.policy import Policy  # torch: only once a policy is read
    from ..checkpoints import CheckpointStore

    run_dir, _ = runinfo.read(args.run_id, args.runs_dir)
    if args.node is None:
        file = run_dir / "best" / "policy.pt"
        if not file.is_file():
            raise ValueError(f"run {args.run_id} has no best policy yet ({file} is written at "
                             "its first checkpoint and at its end); --node N takes a node's "
                             "newest checkpoint")
        return Policy.load(file), f"from {file}{_best_note(run_dir)}"
    nodes = _nodes(run_dir)
    if not 0 <= args.node < nodes:
        raise ValueError(f"--node must be a node id in 0..{nodes - 1}, got {args.node}")
    got = CheckpointStore(run_dir).load_node(args.node)
    if got is None:
        raise ValueError(f"run {args.run_id} has no checkpoint of node {args.node} (a run "
                         "with checkpoint_every = 0, or one that died before its first)")
    generation, blob = got
    return Policy.from_snapshot(blob), f"from its checkpoint before generation {generation}"


def _nodes(run_dir: Path) -> int:
    from ..config import SwarmConfig

    return SwarmConfig.from_toml(run_dir / "config.toml").nodes


def _best_note(run_dir: Path) -> str:
    try:
        best = json.loads((run_dir / "best" / "best.json").read_text())
    except (OSError, ValueError):
        return ""
    return f", P(best) {best['p_best']:.3g}, belief {best['belief_mean']:.4g}"


def describe(policy: Policy) -> str:
    o = policy.origin
    return f"{o.get('node', 'a node')} after {o.get('generation', '?')} generations"
