"""A run whose launcher died goes on from its newest checkpoint: `Swarm.resume` after the run's
actors died ends with the same trace and weights as the run that never stopped (sync, one
seed); `rwkv-swarm run` killed -9 with its embedded Ray, then `rwkv-swarm resume` in another
process, leaves every (generation, node) once; runs that cannot be resumed are refused."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from rwkv_swarm import Swarm, SwarmConfig, load_trace
from rwkv_swarm.node import KalmanESConfig
from rwkv_swarm.swarm import Resources, read_events, runinfo
from rwkv_swarm.swarm.checkpoints import CheckpointStore
from rwkv_swarm.swarm.commands.cli import main
from rwkv_swarm.swarm.runinfo import last_generation
from rwkv_swarm.swarm.trace import TraceWriter, truncate_trace

SIGNAL_ENV = {"kind": "signal", "lags": 3}
TIME_DEPENDENT = {"evaluate_s", "update_s", "communicate_s", "generation_s", "time", "received",
                  "bytes_sent", "bytes_received"}
COUNTERS = {"sent"}  # a resumed node's sockets count from zero
WAIT_S = 180.0


def config(tmp_path: Path, **kw) -> SwarmConfig:
    return SwarmConfig(**{"nodes": 2, "env": SIGNAL_ENV, "resources": Resources(cpus=0.5),
                          "es": KalmanESConfig(population=16), "run_dir": str(tmp_path),
                          "seed": 5, **kw})


def comparable(run_dir: Path) -> dict:
    t = load_trace(run_dir).to_pydict()
    return {k: v for k, v in t.items() if k not in TIME_DEPENDENT | COUNTERS}


def die(swarm: Swarm) -> None:
    """What a launcher's death does to its swarm: the coordinator and every node end at once,
    nothing shut down in order."""
    actors = ray.get(swarm.coordinator.actors.remote())
    for a in [swarm.coordinator, *actors]:
        ray.kill(a)
    deadline = time.monotonic() + WAIT_S
    for a in [swarm.coordinator, *actors]:  # a call sent just after a kill may still be served
        while not dead(a):
            assert time.monotonic() < deadline, "a killed actor still answers"
            time.sleep(0.05)


def dead(actor) -> bool:
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=WAIT_S)
    except ray.exceptions.RayActorError:
        return True
    return False


@pytest.mark.parametrize("mode, k", [("consensus", 1), ("isolated", 2)])
def test_a_resumed_sync_run_repeats_the_run_that_never_stopped_bitwise(ray_session, tmp_path,
                                                                      mode, k):
    c = config(tmp_path, mode=mode, generations=5, checkpoint_every=3,
               resources=Resources(cpus=0.5, nodes_per_actor=k))
    swarm = Swarm.launch(c)
    swarm.run()  # uninterrupted; its newest checkpoint is at 3: generations 3 and 4 come after
    whole = comparable(swarm.run_dir)
    with pytest.raises(ValueError, match="is still running: its coordinator is alive"):
        Swarm.resume(swarm.run_id, tmp_path, generations=6)  # its launcher: this process
    die(swarm)
    with Swarm.resume(swarm.run_id, tmp_path, generations=6) as resumed:
        assert resumed.config.generations == 3  # 3 and 4 again, then one more
        resumed.run()
    again = comparable(swarm.run_dir)
    assert {k: v[:10] for k, v in again.items()} == whole  # every row, weights' hashes included
    assert again["generation"][10:] == [5, 5] and again["node"][10:] == [0, 1]
    (event,) = [e for e in read_events(swarm.run_dir) if e["kind"] == "resume"]
    assert event["from_generation"] == 3 and event["rows_dropped"] == 4
    info = json.loads((swarm.run_dir / "run.json").read_text())
    assert info["generations"] == 6 and info["resumed"][0]["from_generation"] == 3
    assert info["pid"] == os.getpid() and info["coordinator"] == f"rwkv-swarm/{swarm.run_id}"


def test_truncation_keeps_every_earlier_row_and_a_later_writer_never_overwrites_a_part(
        tmp_path):
    writer = TraceWriter(tmp_path)
    for rows in ([(0, 0), (0, 1)], [(1, 0), (2, 0)], [(3, 0)], [(1, 1)]):
        writer.write([{"generation": g, "node": n} for g, n in rows])
    assert truncate_trace(tmp_path, 2) == 2
    assert truncate_trace(tmp_path, 2) == 0  # run again: nothing more to do
    parts = sorted(p.name for p in (tmp_path / "trace.parquet").iterdir())
    assert parts == ["part-000000.parquet", "part-000001.parquet", "part-000003.parquet"]
    TraceWriter(tmp_path).write([{"generation": 2, "node": 1}])  # after part 3, not over it
    t = load_trace(tmp_path).to_pydict()
    assert list(zip(t["generation"], t["node"], strict=True)) == \
        [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1)]


def fake_run(runs: Path, run_id: str, info: dict, checkpoint: bool = True) -> None:
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(config(runs, nodes=1).to_toml())
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, **info}))
    if checkpoint:
        store = CheckpointStore(run_dir)
        store.save_node(0, 5, b"")
        store.save_coordinator(5, {"alive": [0]})


def test_a_run_that_runs_has_ended_or_has_no_checkpoint_is_refused(tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = {"host": socket.gethostname(), "boot_id": runinfo._boot_id()}
        fake_run(tmp_path, "alive", {"pid": sleeper.pid, **here,
                                     "pid_start": runinfo._start_time(sleeper.pid)})
        fake_run(tmp_path, "ended", {"pid": 1 << 30, "ended": {"time": 1.0, "generation": 3,
                                                               "reason": "finished"}})
        fake_run(tmp_path, "bare", {"pid": 1 << 30}, checkpoint=False)
        fake_run(tmp_path, "reused", {"pid": sleeper.pid, **here, "pid_start": 1})
        cases = {"alive": f"run 'alive' is still running: its launcher (pid {sleeper.pid})",
                 "ended": "run 'ended' has ended (finished at generation 3); --generations N",
                 "bare": "run 'bare' has no complete checkpoint to resume from",
                 "nope": "no run 'nope'"}
        for run_id, message in cases.items():
            assert main(["resume", run_id, "--runs-dir", str(tmp_path), "--quiet"]) == 2
            assert message in capsys.readouterr().err
        # a later process took the dead launcher's pid: not the launcher
        assert main(["resume", "reused", "--runs-dir", str(tmp_path), "--generations", "5"]) == 2
        assert "has nothing left to run: its checkpoint is at generation 5 of 5" in \
            capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()


def session_pids(leader: int) -> set[int]:
    """Live processes in `leader`'s session or below it (Ray's daemons and workers included,
    whatever process group they moved to)."""
    stats = {}
    for p in Path("/proc").iterdir():
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        if p.name.isdigit() and fields[0] not in ("Z", "X"):
            stats[int(p.name)] = (int(fields[1]), int(fields[3]))  # ppid, session
    found = {pid for pid, (_, sid) in stats.items() if sid == leader} | {leader}
    while more := {pid for pid, (ppid, _) in stats.items() if ppid in found} - found:
        found |= more
    return found & set(stats)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group, then by pid every process of its session or below
    it (found before the kill: an orphan's parent is no longer the launcher), until none is
    left."""
    tree = session_pids(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while left := {p for p in tree if alive(p)} | session_pids(proc.pid) - {proc.pid}:
        assert time.monotonic() < deadline, f"still alive: {sorted(left)}"
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def cli(*args: str, out: Path) -> subprocess.Popen:
    """`rwkv-swarm *args` in a process of its own session, its output into `out`; its embedded
    Ray on the loopback interface (Ray's own switch for a machine that is no cluster)."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    with out.open("w") as f:
        return subprocess.Popen([sys.executable, "-m", "rwkv_swarm.swarm.commands.cli", *args],
                                cwd=out.parent, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def reached(runs: Path, generation: int) -> bool:
    """Whether the one run under `runs` has trace rows of `generation`."""
    run_dirs = list(runs.iterdir()) if runs.exists() else []
    return bool(run_dirs) and (last_generation(run_dirs[0]) or 0) >= generation


def test_a_run_killed_with_its_ray_is_resumed_from_another_process(tmp_path):
    runs = tmp_path / "runs"
    path = tmp_path / "swarm.toml"
    gens = 40  # the kill lands after checkpoint 4 at the earliest, and well before the end
    # a trace part per generation: the rows of generation 4 are seen before checkpoint 8
    path.write_text(config(runs, mode="consensus", generations=gens, checkpoint_every=4,
                           trace_flush_s=0.0).to_toml())
    launcher = cli("run", str(path), "--quiet", out=tmp_path / "run.log")
    try:
        deadline = time.monotonic() + WAIT_S
        while not reached(runs, 4):
            assert launcher.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at generation 4"
            time.sleep(0.05)
    finally:
        kill_all(launcher)  # its Ray and every node with it
    (run_dir,) = runs.iterdir()
    # how far the run got before the kill depends on the machine; what follows holds for any
    ckpt, last = CheckpointStore(run_dir).latest_complete(2), last_generation(run_dir)
    assert ckpt is not None and ckpt >= 4 and ckpt % 4 == 0 and last < gens - 1, (ckpt, last)
    resumer = cli("resume", run_dir.name, "--runs-dir", str(runs), "--quiet",
                  out=tmp_path / "resume.log")
    try:
        assert resumer.wait(timeout=WAIT_S) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    finally:
        kill_all(resumer)
    t = load_trace(run_dir).to_pydict()
    assert list(zip(t["generation"], t["node"], strict=True)) == \
        [(g, n) for g in range(gens) for n in range(2)]  # every one once, none lost, none twice
    (event,) = [e for e in read_events(run_dir) if e["kind"] == "resume"]
    assert event["from_generation"] == ckpt
    assert event["rows_dropped"] == 2 * max(0, last - ckpt + 1)  # the rows after it, exactly
    assert f"resumed from generation {ckpt}" in (tmp_path / "resume.log").read_text()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["pid"] == resumer.pid and info["resumed"][0]["from_generation"] == ckpt
