"""`rwkv-swarm`: the one entry point; it only registers the subcommands."""

from __future__ import annotations

import argparse
import sys

from ...util.configio import ConfigError
from .demo import demo_command_parser
from .export import export_command_parser
from .inject import inject_command_parser
from .play import play_command_parser
from .resume import resume_command_parser
from .run import run_command_parser
from .status import status_command_parser
from .trace import trace_command_parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("rwkv-swarm", description="Evolve swarms of RWKV-7 models on "
                                "Ray: run, inject, status, trace, export, play.")
    sub = p.add_subparsers(dest="command", required=True)
    for make in (run_command_parser, demo_command_parser, inject_command_parser,
                 status_command_parser, trace_command_parser, resume_command_parser,
                 export_command_parser, play_command_parser):
        make(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"rwkv-swarm {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
