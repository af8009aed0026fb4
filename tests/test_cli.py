"""The `rwkv-swarm` command line end to end: `run` in one process (joining the session's Ray, as
`--address` does), `status` and `inject` from another, `trace summary` and `trace plot` after,
bad configs and bad signals refused with the named key, and the demo."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rwkv_swarm.swarm import load_trace, read_events
from rwkv_swarm.swarm.commands.cli import main

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 180.0


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_id_in(runs: Path) -> str:
    (run,) = [p.name for p in runs.iterdir() if (p / "run.json").exists()]
    return run


def test_run_then_status_and_inject_from_another_process_then_trace(ray_session, tmp_path,
                                                                    capsys):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "rwkv_swarm.swarm.commands.cli", "run",
           str(ROOT / "configs" / "signal.toml"), "--generations", "40", "--run-dir", str(runs),
           "--address", ray_session, "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: runs.exists() and any((p / "run.json").exists()
                                               for p in runs.iterdir()), "the run to start")
        run_id = run_id_in(runs)
        assert main(["status", run_id, "--runs-dir", str(runs)]) == 0
        assert f"run {run_id}: generation" in capsys.readouterr().out
        assert main(["inject", run_id, "freq_shift", "freq=0.021,0.047,0.25",
                     "--runs-dir", str(runs)]) == 0
        assert "applied from the next generation" in capsys.readouterr().out
        assert main(["inject", run_id, "gravity", "g=3", "--runs-dir", str(runs)]) == 2
        assert "unknown signal 'gravity'" in capsys.readouterr().err
        out, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    run_dir = runs / run_id
    assert load_trace(run_dir).num_rows == 4 * 40
    signals = [e for e in read_events(run_dir) if e["kind"] == "signal"]
    assert len(signals) == 1 and signals[0]["name"] == "freq_shift"
    assert main(["trace", "summary", str(run_dir)]) == 0
    assert "best_fitness" in capsys.readouterr().out
    assert main(["trace", "plot", str(run_dir), "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run_dir / "run.json").read_text())["run_id"] == run_id


@pytest.mark.parametrize("text, message", [
    ("nodes = 0\n", "nodes: got 0, expected an integer >= 1"),
    ('[env]\nkind = "gym"\nid = "CartPole-v1"\nobs_clip = -1\n', "env: obs_clip must be > 0"),
])
def test_run_refuses_a_bad_config_naming_the_key_before_anything_starts(tmp_path, capsys, text,
                                                                       message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["run", str(path), "--run-dir", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_inject_into_a_run_that_does_not_exist_says_so(tmp_path, capsys):
    assert main(["inject", "nope", "amplitude", "scale=2", "--runs-dir", str(tmp_path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_the_demo_runs_injects_midway_and_gives_a_verdict(ray_session, tmp_path, capsys):
    assert main(["demo", "--generations", "6", "--run-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "verdict: " in out and "of the drop undone" in out
    (run_dir,) = list(tmp_path.iterdir())
    assert (run_dir / "trace.png").exists() and load_trace(run_dir).num_rows == 4 * 6
