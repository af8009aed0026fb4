"""Every code block in README.md runs as written: python blocks are executed (in a scratch
directory), and every bash command is checked without its long run: `make` targets with a dry
run, scripts with --help (their imports and argument parsing run)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [line.split("#")[0].strip() for lang, code in BLOCKS if lang == "bash"
        for line in code.splitlines() if line.split("#")[0].strip()]


def test_the_readme_has_python_and_bash_blocks():
    assert len(PYTHON) >= 2 and any(cmd.startswith("make demo") for cmd in BASH)


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_block_runs_as_written(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def commands(line: str) -> list[list[str]]:
    return [shlex.split(part) for part in line.split("&&")]


@pytest.mark.parametrize("line", BASH)
def test_bash_command_is_valid(line):
    for argv in commands(line):
        if argv[0] == "make":
            done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True,
                                  text=True)
        elif argv[0].endswith("pip"):
            assert argv[1:3] == ["install", "-e"] and (ROOT / "pyproject.toml").exists()
            continue
        else:
            assert argv[0].endswith("python"), f"unexpected command {argv[0]!r}"
            script = ROOT / argv[1]
            assert script.exists(), f"{argv[1]} does not exist"
            done = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr[-500:]}"
