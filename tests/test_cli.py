"""The `rwkv-swarm` command line end to end: `run` in one process (joining the session's Ray, as
`--address` does), `status` and `inject` from another, `trace summary` and `trace plot` after,
bad configs and bad signals refused with the named key, and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rwkv_swarm.swarm import load_trace, read_events, runinfo
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
    info = json.loads((run_dir / "run.json").read_text())
    assert info["run_id"] == run_id and info["embedded"] is False
    assert (info["ended"]["generation"], info["ended"]["reason"]) == (40, "finished")
    assert read_events(run_dir)[-1]["kind"] == "end"


def ended_run(runs: Path) -> Path:
    """The files of run r1, which ended at generation 7 (no trace)."""
    run_dir = runs / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text((ROOT / "configs" / "signal.toml").read_text())
    (run_dir / "run.json").write_text(json.dumps({
        "run_id": "r1", "address": "127.0.0.1:1", "namespace": "n", "coordinator": "c",
        "embedded": True, "auth": "token", "pid": 1, "host": "elsewhere",
        "ended": {"time": 0.0, "generation": 7, "reason": "finished"}}))
    return run_dir


def test_a_finished_run_is_told_from_its_files_alone(tmp_path, capsys):
    """status and inject after the run: its run.json says it ended (no Ray is joined)."""
    run_dir = ended_run(tmp_path / "runs")
    told = f"run r1 ended at generation 7 (see {run_dir / 'events.jsonl'})"
    assert main(["status", "r1", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert told in capsys.readouterr().out
    assert main(["inject", "r1", "amplitude", "scale=2", "--runs-dir",
                 str(tmp_path / "runs")]) == 2
    assert told in capsys.readouterr().err


def test_trace_summary_of_a_run_without_a_generation_says_so(tmp_path, capsys):
    """A run that has recorded nothing yet is told apart from a directory that is no run."""
    ended_run(tmp_path / "runs")
    assert main(["trace", "summary", "r1", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "r1 has recorded no generation yet" in err and "a run directory?" not in err
    (tmp_path / "elsewhere").mkdir()
    assert main(["trace", "summary", str(tmp_path / "elsewhere")]) == 2
    assert f"is {tmp_path / 'elsewhere'} a run directory?" in capsys.readouterr().err


def test_a_launcher_whose_pid_names_another_process_now_is_dead(tmp_path, capsys):
    """pid reuse: this process's pid, recorded with another start time, is another launcher."""
    run_dir = tmp_path / "r2"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text((ROOT / "configs" / "signal.toml").read_text())
    me = runinfo.launcher()
    assert runinfo.launcher_alive(me) is True
    info = {"run_id": "r2", "address": "127.0.0.1:1", "namespace": "n", "coordinator": "c",
            "embedded": True, "auth": "token", **me, "pid_start": me["pid_start"] - 1,
            "ended": None}
    (run_dir / "run.json").write_text(json.dumps(info))
    assert main(["status", "r2", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"run r2's launcher died (pid {os.getpid()} on {me['host']} is gone)" in err
    assert "`rwkv-swarm resume r2`" in err


LOADED = """
import sys
from rwkv_swarm.swarm.commands.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:  # --help
    rc = e.code
print("loaded:", sorted(m for m in ("torch", "ray") if m in sys.modules))
sys.exit(rc)
"""


@pytest.mark.parametrize("argv, rc, told", [
    (["--help"], 0, "run, inject, status"),
    (["status", "r1"], 0, "run r1 ended at generation 7"),
    (["inject", "r1", "amplitude", "scale=2"], 2, "run r1 ended at generation 7"),
    (["status", "nothing"], 2, "no run 'nothing'"),
])
def test_verbs_answered_from_files_load_neither_torch_nor_ray(tmp_path, argv, rc, told):
    """In a fresh process, as a user meets them: these verbs need only a run's files, so they
    do not pay seconds for importing torch and Ray."""
    ended_run(tmp_path / "runs")
    out = subprocess.run([sys.executable, "-c", LOADED, *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == rc, out.stderr[-2000:]
    assert told in out.stdout + out.stderr
    assert "loaded: []" in out.stdout


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
