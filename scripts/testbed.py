#!/usr/bin/env python3
"""A test cluster of several hosts with their own addresses, on one Linux machine (root).

Each host is a network namespace with one veth link to a bridge inside a "switch" namespace;
the hosts' addresses (198.51.100.0/24, a documentation range) exist on those links only, and
no namespace has a default route, so nothing leaves the testbed. Every host runs
`ray start --block` (token auth on, one token file handed to all hosts); the first is the head.

    python scripts/testbed.py up [--hosts 3] [--port 6380] [--cpus 1]
    python scripts/testbed.py address                 # the head's host:port
    python scripts/testbed.py exec h1 -- rwkv-swarm run configs/signal.toml \\
        --address 198.51.100.1:6380
    python scripts/testbed.py exec h2 -- rwkv-swarm inject RUN_ID freq_shift freq=0.021,0.047,0.25
    python scripts/testbed.py cut h3; python scripts/testbed.py restore h3   # a partition
    python scripts/testbed.py down

Nothing may connect to the testbed's addresses from outside the namespaces (they are not
routed there): run every command that talks to Ray through `exec`, which also sets the auth
environment (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH). While the testbed is up, do not use
`--address auto` outside it: Ray picks "auto" out of this machine's process table, where
the testbed's head is too.

`down` stops the processes `up` started (by the pids recorded in the state directory, then
whatever is left inside the namespaces) and deletes the namespaces, which takes the links and
the bridge with them; it also cleans up after an `up` that failed halfway.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NETWORK = ipaddress.ip_network("198.51.100.0/24")
FORBIDDEN = ipaddress.ip_network("192.0.2.0/24")  # never a testbed address, never routed to
LINK = "tb0"  # each host's end of its veth link
BRIDGE = "br0"
DEFAULT_STATE = os.environ.get("RWKV_TESTBED_STATE", "/tmp/rwkv-testbed")
MAX_STATE_LEN = 40  # Ray's unix sockets live below it: their paths must stay under 108 bytes
START_TIMEOUT_S = 90.0
# The GCS health-checks every raylet; with Ray's defaults (a check every 3 s, each given 10 s,
# 5 failures in a row) a host cut off is declared dead only after about a minute, and one
# cut for less comes back as if nothing happened. The testbed's checks declare a cut host dead
# within about 3 to 5 s: its actors are then dead to their callers, its placement-group
# bundles move to live hosts, and its raylet exits when it hears of it (a host declared dead
# never comes back: it must be started again). `up --health-check default` keeps Ray's.
HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "2000", "RAY_health_check_period_ms": "1000",
                "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
STOP_GRACE_S = 10.0


class TestbedError(RuntimeError):
    pass


# -- small helpers --------------------------------------------------------------------------------


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run an `ip`-style command; a failure names the command and its error."""
    p = subprocess.run(list(args), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise TestbedError(f"`{' '.join(args)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def netns_list() -> set[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def netns_pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): a pid plus it names one process,
    so a pid reused by another process is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def load_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def save_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(state_dir / "state.json")


def host_env(state: dict[str, Any]) -> dict[str, str]:
    """The environment of every process inside the testbed: token auth on, the testbed's token,
    no usage-stats reporting (there is no route out), no inherited Ray address."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=state["token"],
               RAY_USAGE_STATS_ENABLED="0")
    return env


def find_host(state: dict[str, Any], name: str) -> dict[str, Any]:
    for h in state["hosts"]:
        if name in (h["name"], h["ns"], h["ip"]):
            return h
    names = ", ".join(h["name"] for h in state["hosts"])
    raise TestbedError(f"no host {name!r} in the testbed (hosts: {names})")


# -- the network ----------------------------------------------------------------------------------


def plan(prefix: str, hosts: int, port: int, cpus: float, state_dir: Path) -> dict[str, Any]:
    """What `up` will make; every argument checked before anything is."""
    if not 2 <= hosts <= 16:
        raise TestbedError(f"--hosts must be between 2 and 16, got {hosts}")
    if not 1024 <= port <= 65535:
        raise TestbedError(f"--port must be between 1024 and 65535, got {port}")
    if not cpus > 0:
        raise TestbedError(f"--cpus must be > 0, got {cpus:g}")
    if not prefix.replace("-", "").isalnum() or len(prefix) > 20:
        raise TestbedError(f"--prefix must be letters, digits and '-', at most 20, got {prefix!r}")
    addrs = [str(NETWORK.network_address + i) for i in range(1, hosts + 1)]
    assert not any(ipaddress.ip_address(a) in FORBIDDEN for a in addrs)
    return {"prefix": prefix, "port": port, "switch": f"{prefix}-sw",
            "token": str(state_dir / "token"), "ray": [],
            "hosts": [{"name": f"h{i + 1}", "ns": f"{prefix}-h{i + 1}", "ip": a,
                       "peer": f"p{i + 1}"} for i, a in enumerate(addrs)]}


def make_network(state: dict[str, Any]) -> None:
    """Namespaces, links and addresses. The veth pairs are made inside the switch namespace
    with their other end put straight into the host's: nothing appears in the root namespace."""
    sw = state["switch"]
    sh("ip", "netns", "add", sw)
    sh("ip", "-n", sw, "link", "set", "lo", "up")
    sh("ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", sw, "link", "set", BRIDGE, "up")
    for h in state["hosts"]:
        ns = h["ns"]
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", sw, "link", "add", h["peer"], "type", "veth", "peer", "name", LINK,
           "netns", ns)
        sh("ip", "-n", sw, "link", "set", h["peer"], "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{h['ip']}/{NETWORK.prefixlen}", "dev", LINK)
        sh("ip", "-n", ns, "link", "set", LINK, "up")


def check_routes(state: dict[str, Any]) -> None:
    """Inside each host: no default route, and every other host is reached over its link,
    directly (no gateway)."""
    for h in state["hosts"]:
        ns = h["ns"]
        default = sh("ip", "-n", ns, "route", "show", "default").stdout.strip()
        if default:
            raise TestbedError(f"{ns} has a default route ({default}); refusing to go on")
        for other in state["hosts"]:
            if other is h:
                continue
            (route,) = json.loads(sh("ip", "-n", ns, "-j", "route", "get", other["ip"]).stdout)
            if route.get("dev") != LINK or "gateway" in route:
                raise TestbedError(f"in {ns}, {other['ip']} is routed {route}, not straight "
                                   f"over {LINK}; refusing to go on")


def set_link(state: dict[str, Any], name: str, up: bool) -> None:
    """Cut (or restore) a host's only link: down, its end of the veth pair takes the carrier of
    the switch's end with it, so nothing gets through either way."""
    h = find_host(state, name)
    sh("ip", "-n", h["ns"], "link", "set", LINK, "up" if up else "down")


# -- Ray ------------------------------------------------------------------------------------------


def ray_command(state: dict[str, Any], h: dict[str, Any], cpus: float, head: bool,
                state_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
           "--node-ip-address", h["ip"], "--num-cpus", f"{cpus:g}",
           "--temp-dir", str(state_dir / h["name"]), "--include-log-monitor=false",
           "--disable-usage-stats", "--object-store-memory", str(100 * 1024 * 1024)]
    if head:
        # no autoscaler monitor: the testbed has a fixed set of hosts
        cmd += ["--head", "--port", str(state["port"]), "--include-dashboard=false", "--no-monitor"]
    else:
        cmd += ["--address", f"{state['hosts'][0]['ip']}:{state['port']}"]
    return cmd


def start_ray(state: dict[str, Any], h: dict[str, Any], cpus: float, head: bool,
              state_dir: Path) -> subprocess.Popen:
    """`ray start --block` inside the host, in a session of its own; the pid is recorded
    before anything else happens (`started` waits for Ray's "started" line)."""
    log_path = state_dir / f"{h['name']}.log"
    cmd = ["ip", "netns", "exec", h["ns"], *ray_command(state, h, cpus, head, state_dir)]
    env = host_env(state) | (HEALTH_CHECK if state.get("health_check", "fast") == "fast" else {})
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
    state["ray"].append({"host": h["name"], "pid": p.pid, "start": start_time(p.pid)})
    save_state(state_dir, state)
    return p


def started(p: subprocess.Popen, h: dict[str, Any], state_dir: Path) -> None:
    """Wait for the "started" line of host h's `ray start` (process p)."""
    log_path = state_dir / f"{h['name']}.log"
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in log_path.read_text(errors="replace"):
        if p.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            why = f"exited with {p.returncode}" if p.returncode is not None else "timed out"
            raise TestbedError(f"ray start on {h['name']} {why}:\n{tail}")
        time.sleep(0.2)


WAIT_NODES = """
import sys, time
from ray._raylet import GcsClient
want, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
client = GcsClient(address=sys.argv[1])
while True:
    alive = [n for n in client.get_all_node_info().values() if n.state == 0]
    if len(alive) >= want:
        print(len(alive)); break
    if time.monotonic() > deadline:
        sys.exit(f"{len(alive)} of {want} Ray nodes joined")
    time.sleep(0.3)
"""


def wait_for_nodes(state: dict[str, Any]) -> None:
    """Every host's raylet registered with the head, seen from inside the head's host."""
    head = state["hosts"][0]
    p = subprocess.run(["ip", "netns", "exec", head["ns"], sys.executable, "-c", WAIT_NODES,
                        f"{head['ip']}:{state['port']}", str(len(state["hosts"])),
                        str(START_TIMEOUT_S)],
                       capture_output=True, text=True, env=host_env(state))
    if p.returncode != 0:
        raise TestbedError(f"the cluster did not form: {p.stderr.strip()[-2000:]}")


# -- the subcommands ------------------------------------------------------------------------------


def up(state_dir: Path, prefix: str, hosts: int, port: int, cpus: float,
       health_check: str = "fast") -> dict[str, Any]:
    """Make the network, check its routes, start Ray on every host; on any failure, tear down
    what was made and raise."""
    if len(str(state_dir)) > MAX_STATE_LEN:
        raise TestbedError(f"state directory {state_dir} is longer than {MAX_STATE_LEN} "
                           "characters (Ray's socket paths below it would be too long)")
    if load_state(state_dir) is not None:
        raise TestbedError(f"a testbed is recorded in {state_dir} already: `down` it first")
    state = plan(prefix, hosts, port, cpus, state_dir)
    if health_check not in ("fast", "default"):
        raise TestbedError(f"--health-check must be 'fast' or 'default', got {health_check!r}")
    state["health_check"] = health_check
    taken = netns_list() & {state["switch"], *(h["ns"] for h in state["hosts"])}
    if taken:  # another testbed's: checked before anything is recorded, so ours never stops it
        raise TestbedError(f"namespaces {sorted(taken)} exist already: `down` the testbed that "
                           "made them, or pick another --prefix")
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        make_network_recorded(state, state_dir)
        check_routes(state)
        token = Path(state["token"])
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
        head, *others = state["hosts"]
        started(start_ray(state, head, cpus, head=True, state_dir=state_dir), head, state_dir)
        # the other hosts join the head together
        joining = [(start_ray(state, h, cpus, head=False, state_dir=state_dir), h)
                   for h in others]
        for p, h in joining:
            started(p, h, state_dir)
        wait_for_nodes(state)
    except BaseException:
        down(state_dir, keep=True)  # the logs stay for the error; `down` removes them
        raise
    return state


def make_network_recorded(state: dict[str, Any], state_dir: Path) -> None:
    # recorded before it is made, so that `down` finds whatever a failure left
    save_state(state_dir, state)
    make_network(state)


def stop_processes(state: dict[str, Any]) -> None:
    """SIGTERM the recorded `ray start` processes, the head's last (each stops what it started,
    in a second or two; signalling their children as well would leave the raylets waiting for
    a GCS that is gone), then SIGKILL whatever is still inside the testbed's namespaces after
    STOP_GRACE_S: every process there was started by this testbed or through `exec`. Nothing
    is waited for that cannot stop in order: what is left on a host whose `ray start` is gone
    already, and anything at all once the head's processes (its GCS) are gone (a host Ray
    declared dead after a cut keeps its raylet and actors: they stop only when killed)."""
    stopping = set()
    for r in reversed(state.get("ray", [])):
        if start_time(r["pid"]) == r["start"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r["pid"], signal.SIGTERM)
            stopping.add(find_host(state, r["host"])["ns"])
    head = state["hosts"][0]["ns"]
    spaces = [h["ns"] for h in state["hosts"]] + [state["switch"]]
    deadline = time.monotonic() + STOP_GRACE_S
    while (any(netns_pids(ns) for ns in stopping) and (head not in stopping or netns_pids(head))
           and time.monotonic() < deadline):
        time.sleep(0.2)
    for ns in spaces:
        for pid in netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def down(state_dir: Path, keep: bool = False) -> None:
    """Stop what `up` started, delete its namespaces (their links and bridge go with them);
    with `keep`, the state directory (logs) stays. Safe to repeat."""
    state = load_state(state_dir)
    if state is None:  # nothing up; what is left is the logs of a failed `up`, or nothing
        if not keep and (state_dir / "state.down.json").exists():
            shutil.rmtree(state_dir, ignore_errors=True)
        return
    stop_processes(state)
    existing = netns_list()
    for ns in [h["ns"] for h in state["hosts"]] + [state["switch"]]:
        if ns in existing:
            deadline = time.monotonic() + STOP_GRACE_S
            while netns_pids(ns) and time.monotonic() < deadline:
                time.sleep(0.1)
            sh("ip", "netns", "del", ns)
    if keep:
        (state_dir / "state.json").rename(state_dir / "state.down.json")
    else:
        shutil.rmtree(state_dir, ignore_errors=True)


def run_in(state: dict[str, Any], name: str, cmd: list[str]) -> int:
    if not cmd:
        raise TestbedError("exec needs a command after the host: exec HOST -- CMD ...")
    h = find_host(state, name)
    return subprocess.run(["ip", "netns", "exec", h["ns"], *cmd], env=host_env(state)).returncode


def status(state: dict[str, Any]) -> str:
    lines = [f"head {state['hosts'][0]['ip']}:{state['port']}  token {state['token']}"]
    pids = {r["host"]: r for r in state.get("ray", [])}
    for h in state["hosts"]:
        link = sh("ip", "-n", h["ns"], "-j", "link", "show", LINK, check=False).stdout
        oper = json.loads(link)[0]["operstate"] if link.strip() else "absent"
        r = pids.get(h["name"])
        alive = r is not None and start_time(r["pid"]) == r["start"]
        lines.append(f"{h['name']}  {h['ns']}  {h['ip']}  link {oper}  ray "
                     f"{'pid ' + str(r['pid']) if alive else 'not running'}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", default=DEFAULT_STATE,
                   help=f"where pids, logs, the token and Ray's files go (default {DEFAULT_STATE})")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="make the hosts and links, start Ray on every host")
    u.add_argument("--hosts", type=int, default=3)
    u.add_argument("--port", type=int, default=6380, help="the head's GCS port")
    u.add_argument("--cpus", type=float, default=1, help="logical CPUs of each host")
    u.add_argument("--prefix", default="rwkvtb", help="the namespaces' names start with it")
    u.add_argument("--health-check", default="fast", choices=("fast", "default"),
                   help="how soon the head declares a silent host dead: 'fast' (3 to 5 s, "
                        "the testbed's) or 'default' (Ray's, about a minute)")
    d = sub.add_parser("down", help="stop everything up started, delete the namespaces")
    d.add_argument("--keep", action="store_true", help="keep the state directory (logs)")
    e = sub.add_parser("exec", help="run a command inside a host: exec HOST -- CMD ...")
    e.add_argument("host", help="h1, h2, ... (or its namespace or address)")
    e.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    for verb, what in (("cut", "take a host's link down (a partition)"),
                       ("restore", "bring a host's link back up")):
        sub.add_parser(verb, help=what).add_argument("host", help="h1, h2, ...")
    sub.add_parser("address", help="print the head's host:port")
    sub.add_parser("status", help="hosts, links and Ray processes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    state_dir = Path(args.state).absolute()
    try:
        if args.command == "up":
            state = up(state_dir, args.prefix, args.hosts, args.port, args.cpus,
                       args.health_check)
            print(status(state))
            return 0
        if args.command == "down":
            down(state_dir, keep=args.keep)
            return 0
        state = load_state(state_dir)
        if state is None:
            raise TestbedError(f"no testbed recorded in {state_dir}: `up` one first")
        if args.command == "exec":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            return run_in(state, args.host, cmd)
        if args.command in ("cut", "restore"):
            set_link(state, args.host, up=args.command == "restore")
        elif args.command == "address":
            print(f"{state['hosts'][0]['ip']}:{state['port']}")
        else:
            print(status(state))
        return 0
    except TestbedError as e:
        print(f"testbed {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
