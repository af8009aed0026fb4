"""The `rwkv-swarm` command line: one entry point (cli.py), a parser and a command function per
subcommand (run, demo, inject, status, trace, resume, export, play)."""
