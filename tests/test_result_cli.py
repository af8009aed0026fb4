"""The result of a run the way a user meets it: `rwkv-swarm run` of a world of one's own (a
gymnasium task in tests/worlds/reach1d.py) in its own process with its own embedded Ray, then
`rwkv-swarm export` and `rwkv-swarm play` in others, then a plain script that loads the policy
and plays it in gymnasium without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 300.0
CONFIG = """
nodes = 2
mode = "gossip"
generations = 4
checkpoint_every = 2
max_steps = 10
env = {kind = "gym", id = "Reach1D-v0", module = "tests.worlds.reach1d"}
es = {population = 16}
resources = {cpus = 0.5}
"""
SCRIPT = """
import sys
from rwkv_swarm.node.policy import Policy
for path in sys.argv[1:]:
    policy = Policy.load(path)
    returns = policy.play(episodes=2)
    print(policy.origin["node"], policy.origin["generation"], *returns)
assert "ray" not in sys.modules, "the policy needs no Ray"
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    """A verb in its own process, from the folder that holds the user's module (tests/)."""
    out = subprocess.run([sys.executable, "-m", "rwkv_swarm.swarm.commands.cli", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=WAIT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_run_export_then_a_plain_script_plays_the_policy_without_ray(tmp_path):
    (tmp_path / "reach.toml").write_text(CONFIG)
    runs = tmp_path / "runs"
    cli("run", str(tmp_path / "reach.toml"), "--run-dir", str(runs), "--quiet")
    (run_dir,) = runs.iterdir()
    best = json.loads((run_dir / "best" / "best.json").read_text())
    assert best["node"] in (0, 1) and best["generation"] == 4 and 0 < best["p_best"] <= 1

    out = cli("export", run_dir.name, str(tmp_path / "best.pt"), "--runs-dir", str(runs))
    assert f"node-{best['node']} after 4 generations" in out.stdout
    cli("export", run_dir.name, str(tmp_path), "--node", "1", "--runs-dir", str(runs))
    played = cli("play", run_dir.name, "--episodes", "2", "--render", "--runs-dir", str(runs))
    assert "cannot render Reach1D-v0" in played.stdout
    returns = [line for line in played.stdout.splitlines() if line.startswith("episode")]
    assert len(returns) == 2

    first = [line.split("return ")[1] for line in returns]
    files = {tmp_path / "best.pt": best["node"], tmp_path / "policy.pt": 1}
    script = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, files)], cwd=ROOT,
                            capture_output=True, text=True, timeout=WAIT_S)
    assert script.returncode == 0, script.stderr[-3000:]
    lines = script.stdout.splitlines()
    assert len(lines) == len(files)
    for line, node in zip(lines, files.values(), strict=True):
        name, generation, *values = line.split()
        assert name == f"node-{node}" and int(generation) == 4
        assert len(values) == 2 and all(float(v) <= 0 for v in values)  # -(x - target)^2
        if node == best["node"]:  # play: the same policy and episodes (seeds 0 and 1)
            assert [f"{float(v):.4g}" for v in values] == first
