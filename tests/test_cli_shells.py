"""Every `rwkv-swarm` verb from another shell, the way a user meets it: `run` in a process of its
own (its own embedded Ray, or joined to a `ray start --head` cluster), and `status`, `inject`
(good and bad signals), `trace summary` each in a fresh process whose environment has none of
the Ray settings this test session's Ray put in ours; then the run after Ctrl-C, and a
launcher killed with SIGKILL. This test process never joins Ray itself; every process a test
starts is in a session of its own, ended (all of it, Ray's processes included) when the test
ends."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rwkv_swarm.swarm import read_events, runinfo
from rwkv_swarm.swarm.commands.cli import main
from rwkv_swarm.swarm.trace import last_generation

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rwkv_swarm.swarm.commands.cli"]
START_S = 180.0  # safety bounds, not timings
VERB_S = 90.0
RAY_SETTINGS = ("RAY_AUTH_MODE", "RAY_ADDRESS")  # what a ray.init() here would have set


def shell_env() -> dict[str, str]:
    """A new shell's environment: ours, less the Ray settings a test's Ray may have put in."""
    return {k: v for k, v in os.environ.items() if k not in RAY_SETTINGS}


def verb(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """One `rwkv-swarm` command in a process of its own (with `env` added to its
    environment)."""
    return subprocess.run([*CLI, *args], cwd=cwd, env={**shell_env(), **env},
                          capture_output=True, text=True, timeout=VERB_S)


def verbs(cwd: Path, *commands: tuple[tuple[str, ...], dict[str, str]]
          ) -> list[subprocess.CompletedProcess]:
    """Several `rwkv-swarm` commands at once (args, env added), as from several shells: each
    in a process of its own, started together; their results in order."""
    procs = [subprocess.Popen([*CLI, *args], cwd=cwd, env={**shell_env(), **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args, env in commands]
    try:
        outs = [p.communicate(timeout=VERB_S) for p in procs]
        return [subprocess.CompletedProcess(p.args, p.returncode, *out)
                for p, out in zip(procs, outs, strict=True)]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def session_pids(sid: int) -> list[int]:
    """The live (not zombie) processes of session `sid`."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                pids.append(int(stat.parent.name))
    return pids


def end_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (Ray's agents ignore SIGTERM), until none is
    left."""
    deadline = time.monotonic() + 30
    while pids := session_pids(sid):
        assert time.monotonic() < deadline, f"processes {pids} of session {sid} outlived SIGKILL"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@contextlib.contextmanager
def started(cmd: list[str], cwd: Path, log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """`cmd` in a new session (`env` added to its environment), its output in `log`; the
    whole session is ended afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**shell_env(), **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        end_session(proc.pid)
    assert not session_pids(proc.pid)


# the launcher as a shell starts it in the foreground: Ctrl-C at its default action, whatever
# this process inherited (a job started in the background ignores SIGINT, and so does every
# process it starts, a launcher included)
FOREGROUND = [sys.executable, "-c", "import os, signal, sys; "
              "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"]


def run_cmd(*extra: str) -> list[str]:
    return [*FOREGROUND, *CLI, "run", str(ROOT / "configs" / "signal.toml"), "--nodes", "2",
            "--generations", "2000", "--quiet", *extra]


def wait_for_run(runs: Path, proc: subprocess.Popen, log: Path) -> tuple[str, dict]:
    """The run id and run.json, once the launcher has written it."""
    deadline = time.monotonic() + START_S
    while not (found := list(runs.glob("*/run.json"))):
        assert proc.poll() is None, f"the launcher exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the run to start"
        time.sleep(0.2)
    return found[0].parent.name, json.loads(found[0].read_text())


def wait_for_trace(run_dir: Path, proc: subprocess.Popen, log: Path) -> None:
    """Until the run's trace holds its first generation (what `trace summary` reads)."""
    deadline = time.monotonic() + START_S
    while last_generation(run_dir) is None:
        assert proc.poll() is None, f"the launcher exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the first generation"
        time.sleep(0.2)


def signal_events(run_dir: Path) -> list[str]:
    return [e["name"] for e in read_events(run_dir) if e["kind"] == "signal"]


def test_an_embedded_run_is_reached_from_other_shells_until_its_launcher_is_killed(tmp_path,
                                                                                   capsys):
    log = tmp_path / "launcher.log"
    # a RAY_ADDRESS left in the shell names no Ray: the embedded one is still our own
    with started(run_cmd(), tmp_path, log, RAY_ADDRESS=f"127.0.0.1:{free_port()}") as proc:
        run_id, info = wait_for_run(tmp_path / "runs", proc, log)
        run_dir = tmp_path / "runs" / run_id
        assert (info["embedded"], info["auth"], info["pid"]) == (True, "token", proc.pid)
        wait_for_trace(run_dir, proc, log)

        # five other shells at once
        status, inject, gravity, summary, stranger = verbs(
            tmp_path, (("status", run_id), {}),
            (("inject", run_id, "freq_shift", "freq=0.021,0.047,0.25"), {}),
            (("inject", run_id, "gravity", "g=3"), {}), (("trace", "summary", run_id), {}),
            (("status", run_id), {"RAY_AUTH_TOKEN": "0" * 32}))  # not the run's token
        assert status.returncode == 0, status.stderr[-2000:]
        assert f"run {run_id}: generation" in status.stdout
        assert inject.returncode == 0, inject.stderr[-2000:]
        assert "applied from the next generation" in inject.stdout
        assert gravity.returncode == 2
        assert "unknown signal 'gravity'" in gravity.stderr and "'freq_shift'" in gravity.stderr
        assert summary.returncode == 0 and "best_fitness" in summary.stdout
        assert stranger.returncode == 2
        assert (f"run {run_id}'s Ray uses another auth token than this shell's (from "
                "RAY_AUTH_TOKEN)") in stranger.stderr
        # in this process, which has no Ray: refused before any connection is tried
        assert main(["inject", run_id, "freq_shift", "freq=0.9",
                     "--runs-dir", str(tmp_path / "runs")]) == 2
        assert "freqs must all be < 0.5" in capsys.readouterr().err
        assert signal_events(run_dir) == ["freq_shift"]  # the good one; nothing for either other

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        status, inject = verbs(tmp_path, (("status", run_id), {}),
                               (("inject", run_id, "amplitude", "scale=2"), {}))
        assert status.returncode == 2, status.stdout
        died = f"run {run_id}'s launcher died (pid {proc.pid} on {socket.gethostname()} is gone"
        assert died in status.stderr and f"`rwkv-swarm resume {run_id}`" in status.stderr
        assert inject.returncode == 2 and died in inject.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster(port: int, head: subprocess.Popen) -> str:
    """The head's address, once its GCS accepts connections."""
    deadline = time.monotonic() + START_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return f"127.0.0.1:{port}"
        assert head.poll() is None, "`ray start --head` exited"
        assert time.monotonic() < deadline, "timed out waiting for the head"
        time.sleep(0.2)


def test_a_run_on_a_cluster_is_reached_from_other_shells_and_told_ended_after_ctrl_c(tmp_path,
                                                                                    capsys):
    """The cluster's token is its own, named by RAY_AUTH_TOKEN_PATH in the shells of the head
    and the launcher only: the other shells learn where it is from run.json."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="rs-")  # Ray's socket paths stay short
    token = tmp_path / "cluster-token"
    token.write_text(secrets.token_hex(32))
    head_cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                "--temp-dir", temp]
    try:
        with started(head_cmd, tmp_path, tmp_path / "head.log", RAY_AUTH_MODE="token",
                     RAY_AUTH_TOKEN_PATH=str(token)) as head, \
                started(run_cmd("--address", cluster(port, head)), tmp_path,
                        tmp_path / "launcher.log", RAY_AUTH_TOKEN_PATH=str(token)) as proc:
            run_id, info = wait_for_run(tmp_path / "runs", proc, tmp_path / "launcher.log")
            assert info["embedded"] is False and info["address"].endswith(f":{port}")
            assert (info["auth"], info["token_path"]) == ("token", str(token))
            status, inject = verbs(tmp_path, (("status", run_id, "--json"), {}),
                                   (("inject", run_id, "amplitude", "scale=2"), {}))
            assert status.returncode == 0, status.stderr[-2000:]
            assert json.loads(status.stdout)["run_id"] == run_id
            assert inject.returncode == 0, inject.stderr[-2000:]

            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert proc.wait(timeout=START_S) == 130
            end = json.loads((tmp_path / "runs" / run_id / "run.json").read_text())["ended"]
            assert end["reason"] == "interrupted" and end["generation"] >= 1
            last = read_events(tmp_path / "runs" / run_id)[-1]
            assert (last["kind"], last["generation"], last["reason"]) == (
                "end", end["generation"], "interrupted")

            told = f"run {run_id} ended at generation {end['generation']} (interrupted; see "
            out = verb(tmp_path, "status", run_id)
            assert out.returncode == 0 and told in out.stdout
            assert "best_fitness" in out.stdout  # the final summary, from the trace
            assert main(["inject", run_id, "amplitude", "scale=2",
                         "--runs-dir", str(tmp_path / "runs")]) == 2
            assert told in capsys.readouterr().err
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_a_run_whose_ray_does_not_answer_is_told_without_ray_retrying(tmp_path):
    """The GCS address in run.json takes no connection: told after one TCP probe."""
    run_dir = tmp_path / "runs" / "r3"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text((ROOT / "configs" / "signal.toml").read_text())
    address = f"127.0.0.1:{free_port()}"  # closed again: nothing listens there
    (run_dir / "run.json").write_text(json.dumps({
        "run_id": "r3", "address": address, "namespace": "n", "coordinator": "c",
        "embedded": False, "auth": "disabled", **runinfo.launcher(), "ended": None}))
    out = verb(tmp_path, "status", "r3")
    assert out.returncode == 2
    assert (f"run r3's Ray at {address} does not answer, though its launcher (pid "
            f"{os.getpid()} on {socket.gethostname()}) still runs") in out.stderr
