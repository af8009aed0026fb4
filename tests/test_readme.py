"""Every code block in README.md runs as written: python blocks are executed (in a scratch
directory holding a copy of configs/, on the session's Ray), and every bash command is checked
without its long run: `make` targets with a dry run, `rwkv-swarm` command lines by the CLI's own
parser, scripts with --help (their imports and argument parsing run)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from rwkv_swarm.swarm.commands.cli import parser

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [line.split("  #")[0].strip() for lang, code in BLOCKS if lang == "bash"
        for line in code.splitlines() if line.split("  #")[0].strip()]


def test_the_readme_has_python_and_bash_blocks():
    assert len(PYTHON) >= 3 and any(cmd.startswith("make demo") for cmd in BASH)


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_block_runs_as_written(ray_session, code, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def help_of(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def helps():
    """`SCRIPT --help` of every script the bash blocks run, each in a process of its own, as
    many at once as there are CPUs: script -> its future result."""
    scripts = {argv[1] for line in BASH for part in line.split("&&")
               if len(argv := shlex.split(part)) > 1 and argv[0].endswith("python")}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        yield {s: pool.submit(help_of, s) for s in sorted(scripts)}


def check(argv: list[str], helps: dict[str, Future]) -> None:
    if argv[0] == "make":
        done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
    elif argv[0] == "source":
        assert argv[1] == ".venv/bin/activate"
    elif argv[0] == "rwkv-swarm":
        args = [a.replace("<run-id>", "20261128-000000-abcdef") for a in argv[1:]]
        parser().parse_args(args)  # exits (SystemExit) on a command line it does not take
        if args[0] == "run":
            assert (ROOT / args[1]).exists(), f"{args[1]} does not exist"
    elif argv[0].endswith("pip"):
        assert argv[1:3] == ["install", "-e"] and (ROOT / "pyproject.toml").exists()
    else:
        assert argv[0].endswith("python"), f"unexpected command {argv[0]!r}"
        assert (ROOT / argv[1]).exists(), f"{argv[1]} does not exist"
        done = helps[argv[1]].result()
        assert done.returncode == 0, done.stderr[-500:]


@pytest.mark.parametrize("line", BASH)
def test_bash_command_is_valid(line, helps):
    for part in line.split("&&"):
        check(shlex.split(part), helps)
