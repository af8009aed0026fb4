"""`rwkv-swarm play RUN_ID [--node N] [--episodes 3] [--render]`: a few episodes of a run's
best (or one node's) policy in its gymnasium world, each episode's return printed. Reads the
run's files only (best/policy.pt, or with --node that node's newest checkpoint): no Ray, while
the run goes on or after it has ended."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .export import add_node_options, describe, stored_policy

if TYPE_CHECKING:
    from ...node.policy import Policy


def play_command_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("play", help="play a few episodes of a run's best policy")
    p.add_argument("run_id")
    add_node_options(p)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="episode k is reset with seed + k")
    p.add_argument("--render", action="store_true",
                   help='show the episodes (gymnasium render_mode="human") where the world can')
    p.set_defaults(func=play_command)
    return p


def play_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    policy, where = stored_policy(args)
    if policy.kind != "gym":
        raise ValueError(f"play runs gym worlds; this policy's world is a {policy.kind} "
                         "stream: `rwkv-swarm export` it and feed Policy.act [y_t, y_t-1, ...]")
    env = policy.env
    from ...node.envs._gym_backends import resolve_env_id

    resolve_env_id(env["id"], env.get("module"))  # the user's module registers the id
    print(f"{describe(policy)} ({where}) in {env['id']}")
    game = _env(policy, args.render)
    try:
        returns = policy.play(args.episodes, seed=args.seed, env=game)
    finally:
        game.close()
    for k, r in enumerate(returns):
        print(f"episode {k}: return {r:.4g}")
    print(f"mean return {sum(returns) / len(returns):.4g} over {len(returns)} episodes")
    return 0


def _env(policy: Policy, render: bool) -> Any:
    """The policy's world, shown when `render` and its env can render for a person."""
    if not render:
        return policy.make_gym_env()
    probe = policy.make_gym_env()
    modes = list(probe.metadata.get("render_modes") or [])
    probe.close()
    if "human" not in modes:
        print(f"cannot render {policy.env['id']}: its render modes are {modes}, not 'human'; "
              "playing without rendering")
        return policy.make_gym_env()
    try:
        return policy.make_gym_env(render_mode="human")
    except Exception as e:  # noqa: BLE001 - no display, no pygame: play on without it
        print(f"cannot render {policy.env['id']} ({type(e).__name__}: {e}); playing without "
              "rendering")
        return policy.make_gym_env()
