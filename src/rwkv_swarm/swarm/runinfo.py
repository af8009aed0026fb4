"""runs/<id>/run.json: how another process reaches a run, and whether it still can.

The launcher writes it once the run is up (`record_launch`: Ray's address and namespace, the
coordinator's name, whether Ray is embedded in the launcher, Ray's auth mode and a fingerprint
of its token, and who the launcher is: pid, host, boot and process start time) and marks the
end (`record_end`). `rwkv-swarm status/inject` read it (`read`, `check_running`) before they
touch Ray, so an ended run or a dead launcher is told at once, and `prepare_join` gives the
attaching process what Ray needs to let it in. Every write is atomic (a temporary file, then
a rename): a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..cluster.runtime import reachable, token_fingerprint, use_token_auth
from .trace import last_generation

RUN_FILE = "run.json"
PROBE_S = 2.0  # how long a live GCS may take to accept a TCP connection


class RunEnded(ValueError):
    """The run ended (its launcher recorded the end); `info["ended"]` says when and how."""


class RunGone(ValueError):
    """The run's launcher, coordinator or Ray is gone without recording an end."""


def resume_hint(run_id: str) -> str:
    return f"`rwkv-swarm resume {run_id}`"


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- writing ---------------------------------------------------------------------------------------

def write(run_dir: Path, info: dict[str, Any]) -> None:
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)


def launcher() -> dict[str, Any]:
    """Who this process is, in a way that survives pid reuse: pid, host, boot id, start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
            "pid_start": _start_time(os.getpid())}


def record_launch(run_dir: Path, run_id: str, *, coordinator: str, address: str,
                  namespace: str, embedded: bool, auth: str, token_sha256: str | None,
                  **more: Any) -> dict[str, Any]:
    """Write run.json for a run that is up (`more`: a resumed run's total `generations` and
    its `resumed` records); returns what was written."""
    info = {"run_id": run_id, "address": address, "namespace": namespace,
            "coordinator": coordinator, "embedded": embedded, "auth": auth,
            "token_sha256": token_sha256, "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH"),
            **launcher(), "started": time.time(), "ended": None, **more}
    write(run_dir, info)
    return info


def record_end(run_dir: Path, generation: int | None, reason: str) -> None:
    """Mark the run as ended at `generation` ("finished", "interrupted", "failed: ...")."""
    info = json.loads((Path(run_dir) / RUN_FILE).read_text())
    info["ended"] = {"time": time.time(), "generation": generation, "reason": reason}
    write(run_dir, info)


# -- reading ---------------------------------------------------------------------------------------

def read(run_id: str, runs_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The run's directory and run.json, or ValueError saying why there is none."""
    run_dir = Path(runs_dir) / run_id
    try:
        return run_dir, json.loads((run_dir / RUN_FILE).read_text())
    except FileNotFoundError:
        if (run_dir / "config.toml").exists():
            raise ValueError(f"run {run_id!r} has no {RUN_FILE} yet: its launcher is still "
                             "starting it, or the launch failed") from None
        raise ValueError(f"no run {run_id!r} in {runs_dir}: no {run_dir / RUN_FILE}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{run_dir / RUN_FILE} is not valid JSON ({e})") from None


def ended_message(run_dir: Path, info: dict[str, Any]) -> str:
    end, run_id = info["ended"], info["run_id"]
    at = "" if end.get("generation") is None else f" at generation {end['generation']}"
    where = f"see {shown(run_dir / 'events.jsonl')}"
    if end.get("reason") == "finished":
        return f"run {run_id} ended{at} ({where})"
    return (f"run {run_id} ended{at} ({end.get('reason')}; {where}); {resume_hint(run_id)} "
            "goes on from there")


def check_running(run_dir: Path, info: dict[str, Any]) -> None:
    """RunEnded if the run recorded its end, RunGone if its launcher (on this host) is dead;
    reads only files, so it answers at once."""
    if info.get("ended"):
        raise RunEnded(ended_message(run_dir, info))
    if launcher_alive(info) is False:
        raise RunGone(died_message(run_dir, info))


def died_message(run_dir: Path, info: dict[str, Any]) -> str:
    run_id, reached = info["run_id"], last_generation(run_dir)
    trace = f"; its trace reaches generation {reached}" if reached is not None else ""
    return (f"run {run_id}'s launcher died (pid {info.get('pid')} on {info.get('host')} is "
            f"gone{trace}): {resume_hint(run_id)}")


def gone(run_dir: Path, info: dict[str, Any], what: str) -> ValueError:
    """Why the run cannot be reached after all (`what` failed): read run.json again, since the
    run may have ended meanwhile."""
    try:
        check_running(run_dir, json.loads((run_dir / RUN_FILE).read_text()))
    except (RunEnded, RunGone) as e:
        return e
    run_id = info["run_id"]
    return RunGone(f"run {run_id} is not running: {what} (launched by pid {info.get('pid')} "
                   f"on {info.get('host')}); {resume_hint(run_id)}")


# -- the launcher, alive or not --------------------------------------------------------------------

def launcher_alive(info: dict[str, Any]) -> bool | None:
    """Whether the run's launcher still runs; None when this host cannot tell (another host,
    or another boot of this one)."""
    if info.get("host") != socket.gethostname() or info.get("boot_id") != _boot_id():
        return None
    pid = info.get("pid")
    if not isinstance(pid, int):
        return None
    if info.get("pid_start") is not None:
        return _start_time(pid) == info["pid_start"]  # None (gone) or another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is field 3
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22, starttime


# -- joining ---------------------------------------------------------------------------------------

def prepare_join(info: dict[str, Any]) -> None:
    """Get this process ready to join the run's Ray, or ValueError in seconds: token auth on
    (with a token that matches the run's) when the run's Ray uses it, and its GCS answering."""
    run_id, auth = info["run_id"], info.get("auth")
    if auth is None:  # a run.json from before auth was recorded: do what Ray does for "auto"
        auth = "token" if token_fingerprint() else "disabled"
    if auth == "token":
        use_token_auth(info.get("token_path"))
        mine, theirs = token_fingerprint(), info.get("token_sha256")
        if mine is None:
            raise ValueError(f"run {run_id}'s Ray uses token authentication and this shell "
                             f"has no Ray token: {_token_advice(info)}")
        if theirs is not None and mine != theirs:
            raise ValueError(f"run {run_id}'s Ray uses another auth token than this shell's "
                             f"({_token_source()}): {_token_advice(info)}")
    address = info["address"]
    if not reachable(address, PROBE_S):
        if launcher_alive(info):
            raise RunGone(f"run {run_id}'s Ray at {address} does not answer, though its "
                          f"launcher (pid {info.get('pid')} on {info.get('host')}) still runs")
        if info.get("embedded"):
            raise RunGone(f"run {run_id}'s Ray at {address} does not answer: its launcher "
                          f"(pid {info.get('pid')} on {info.get('host')}) has probably died: "
                          f"{resume_hint(run_id)}")
        raise RunGone(f"the Ray cluster of run {run_id} at {address} does not answer: is it "
                      f"still up? (`ray status --address {address}`)")


def _token_source() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "from RAY_AUTH_TOKEN"
    return f"in {os.environ.get('RAY_AUTH_TOKEN_PATH') or '~/.ray/auth_token'}"


def _token_advice(info: dict[str, Any]) -> str:
    where = info.get("token_path") or "~/.ray/auth_token"
    return (f"use the launcher's token ({where} on {info.get('host')}): copy it to "
            "~/.ray/auth_token, or point RAY_AUTH_TOKEN_PATH at it, or set RAY_AUTH_TOKEN")
