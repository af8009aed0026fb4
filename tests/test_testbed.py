"""The swarm across hosts with their own addresses: three network namespaces on this machine
(scripts/testbed.py), each running Ray with token auth, linked through a bridge. The driver
(`rwkv-swarm run --address`) runs inside one host, `rwkv-swarm inject` inside another, and the
nodes, spread over the hosts, talk ZeroMQ + CURVE over the links. Needs root and `ip`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rwkv_swarm.node import node_name
from rwkv_swarm.swarm import SwarmConfig, load_trace, read_events

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "scripts" / "testbed.py"
HOSTS = {"198.51.100.1", "198.51.100.2", "198.51.100.3"}
NODES, GENERATIONS = 4, 24
WAIT_S = 180.0

CONFIG = f"""
nodes = {NODES}
mode = "gossip"
generations = {GENERATIONS}
secure = true
[env]
kind = "signal"
lags = 3
[es]
population = 16
[resources]
cpus = 0.5
placement = "spread"
"""

# the other shells: started (torch and Ray imported) before the run, they act once its
# run.json is there, so that a short run is still running when they do
WHEN_STARTED = """
import json, sys, time
from pathlib import Path
def started(runs, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in Path(runs).glob("*/run.json"):
            try:
                return json.loads(p.read_text())
            except ValueError:  # being written
                pass
        time.sleep(0.05)
    sys.exit("no run started")
"""
# `rwkv-swarm inject RUN_ID ARGS...`, as the CLI's entry point runs it
INJECT = WHEN_STARTED + """
import rwkv_swarm.swarm.api  # the CLI imports torch and Ray only when a verb needs them
from rwkv_swarm.swarm.commands.cli import main
info = started(sys.argv[1], float(sys.argv[2]))
sys.exit(main(["inject", info["run_id"], *sys.argv[3:], "--runs-dir", sys.argv[1]]))
"""
# after the run: where each of its node actors ran (the address of its Ray node), from the
# GCS's actor table (which keeps ended actors)
HOSTS_OF = """
import json, sys, ray
info = json.load(open(sys.argv[1]))
ray.init(address=info["address"], log_to_driver=False)
print(json.dumps({a["Name"].split("/")[-1]: a["Address"]["IPAddress"]
                  for a in ray._private.state.actors().values()
                  if a["Name"].startswith(info["run_id"] + "/")}))
"""

# run inside a host: does the GCS answer this process (its auth from the environment)?
GCS = """
import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    print(len(GcsClient(address=sys.argv[1]).get_all_node_info(timeout=30)), "nodes")
except AuthenticationError:
    print("refused")
"""


def unavailable() -> str | None:
    """Why this machine cannot make the testbed, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"rwkvtb-probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    try:  # the links: a veth pair and a bridge, made inside the probe namespace
        for what in (["type", "bridge"], ["type", "veth", "peer", "name", "probe1"]):
            link = subprocess.run(["ip", "-n", probe, "link", "add", "probe0", *what],
                                  capture_output=True, text=True)
            if link.returncode != 0:
                return f"cannot make a {what[1]} link here: {link.stderr.strip()}"
            subprocess.run(["ip", "-n", probe, "link", "del", "probe0"], capture_output=True)
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def script(state: Path, *args: str) -> list[str]:
    return [sys.executable, str(TESTBED), "--state", str(state), *args]


def in_host(state: Path, host: str, *cmd: str) -> list[str]:
    return script(state, "exec", host, "--", *cmd)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rwkv_swarm.swarm.commands.cli", *args]


def our_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


@pytest.fixture(scope="module")
def cluster():
    """Three hosts up (Ray on each, token auth), for this module's tests; everything torn down
    after, whatever happens, and checked gone: no namespace, no process inside one."""
    why = unavailable()
    if why:
        pytest.skip(why)
    state = Path(tempfile.mkdtemp(prefix="rwkvtb-", dir="/tmp"))  # Ray's sockets: short paths
    prefix = f"rwkvtb{os.getpid()}"
    try:
        up = subprocess.run(script(state, "up", "--prefix", prefix, "--cpus", "1"),
                            capture_output=True, text=True, timeout=WAIT_S)
        assert up.returncode == 0, up.stderr[-3000:]
        yield state, "198.51.100.1:6380"
    finally:
        for log in sorted(state.glob("h*.log")):  # shown by pytest when the test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
        down = subprocess.run(script(state, "down"), capture_output=True, text=True,
                              timeout=WAIT_S)
        assert down.returncode == 0, down.stderr
        assert our_namespaces(prefix) == []
        assert not state.exists()


def gcs_answers(state: Path, address: str, **env: str) -> str:
    """What the GCS says to a process in h2 with `env` over the testbed's auth environment."""
    sets = [f"{k}={v}" for k, v in env.items()]
    got = subprocess.run(in_host(state, "h2", "env", *sets, sys.executable, "-c", GCS, address),
                         capture_output=True, text=True, timeout=WAIT_S)
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout.strip()


def test_the_testbed_refuses_a_process_without_its_token(cluster, tmp_path):
    state, address = cluster
    (tmp_path / "wrong").write_text("0" * 64)
    assert gcs_answers(state, address) == "3 nodes"
    assert gcs_answers(state, address, RAY_AUTH_MODE="disabled") == "refused"
    assert gcs_answers(state, address, RAY_AUTH_TOKEN_PATH=str(tmp_path / "wrong")) == "refused"


def test_a_swarm_across_three_hosts_with_token_auth_and_an_inject_from_another_host(
        cluster, tmp_path):
    state, address = cluster
    config, runs = tmp_path / "swarm.toml", tmp_path / "runs"
    config.write_text(CONFIG)
    pipes = {"cwd": tmp_path, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
             "text": True}
    # a second shell, on another host, injects a signal while the run runs
    inject = subprocess.Popen(in_host(state, "h3", sys.executable, "-c", INJECT, str(runs),
                                      str(WAIT_S), "amplitude", "scale=2"), **pipes)
    driver = subprocess.Popen(
        in_host(state, "h1", *cli("run", str(config), "--address", address, "--run-dir",
                                  str(runs), "--quiet")), **pipes)
    ran = driver.communicate(timeout=WAIT_S)
    assert driver.returncode == 0, ran[1][-3000:]  # (the inject is stopped by `down`)
    injected = inject.communicate(timeout=WAIT_S)
    assert inject.returncode == 0, injected[1][-3000:]
    assert "applied from the next generation" in injected[0]

    (run_dir,) = [p.parent for p in runs.glob("*/run.json")]
    hosts_of = subprocess.run(in_host(state, "h2", sys.executable, "-c", HOSTS_OF,
                                      str(run_dir / "run.json")),
                              capture_output=True, text=True, timeout=WAIT_S)
    assert hosts_of.returncode == 0, hosts_of.stderr[-3000:]
    names = {node_name(i): i for i in range(NODES)}
    host = {names[k]: ip for k, ip in json.loads(hosts_of.stdout.splitlines()[-1]).items()
            if k in names}
    assert sorted(host) == list(range(NODES)) and set(host.values()) <= HOSTS, host
    assert len(set(host.values())) >= 2, host  # the nodes ran on more than one host

    trace = load_trace(run_dir).to_pylist()
    assert {(r["generation"], r["node"]) for r in trace} == \
        {(g, n) for g in range(GENERATIONS) for n in range(NODES)}
    # every node absorbed the reports of both its ring neighbours in every generation, and
    # some of those neighbours ran on another host: messages crossed the links
    ring = SwarmConfig.from_toml(config).neighbours()
    assert any(host[m] != host[n] for n in range(NODES) for m in ring[n])
    assert all(r["absorbed_from"] == len(ring[r["node"]]) and r["missing"] == 0
               for r in trace), [(r["generation"], r["node"]) for r in trace if r["missing"]]
    assert all(r["received"] > 0 for r in trace if r["generation"] == GENERATIONS - 1)
    assert all(r["dropped"] == 0 for r in trace)  # none refused (CURVE, checks), none lost
    (signal,) = [e for e in read_events(run_dir) if e["kind"] == "signal"]
    assert signal["name"] == "amplitude"
    # every node applied it, from the generation it acknowledged
    assert {(r["generation"], r["node"]) for r in trace if "amplitude" in r["signals"]} == \
        {(g, int(n)) for n, g in signal["applied"].items()}
    assert len(signal["applied"]) == NODES


# -- a partition: one host cut off for CUT_S ------------------------------------------------------

# The testbed's raylet health checks declare a silent host dead in 3 to 5 s (scripts/testbed.py
# HEALTH_CHECK), well within the cut: h3's nodes are lost and restarted on h1/h2, and h3 does
# not come back. Enough generations that the restarts (7 to 18 s on a busy machine) rejoin
# before the run ends.
CUT_S, CUT_AFTER_S, PARTITION_GENERATIONS = 20.0, 4.0, 150
PARTITION_WAIT_S = 150.0  # the driver's bound: the cut, Ray declaring h3 dead, the restarts
CUT_HOST = "198.51.100.3"

# after the run: for each node, the address of the Ray node of each of its actors (a restarted
# node has two: the dead one and the one that finished the run); and the live Ray nodes
ACTORS_OF = """
import json, sys, ray
info = json.load(open(sys.argv[1]))
ray.init(address=info["address"], log_to_driver=False)
out = {}
for a in ray._private.state.actors().values():
    if a["Name"].startswith(info["run_id"] + "/"):
        out.setdefault(a["Name"].split("/")[-1], []).append(a["Address"]["IPAddress"])
print(json.dumps([out, sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])]))
"""


def cut_during(state: Path, runs: Path, host: str) -> subprocess.Popen:
    """A shell that cuts `host` off CUT_AFTER_S after the run started, for CUT_S, then
    restores it; prints when it did each (seconds since the epoch)."""
    code = WHEN_STARTED + f"""
import subprocess, time
started(sys.argv[1], {WAIT_S})
time.sleep({CUT_AFTER_S})
for verb, then in (("cut", {CUT_S}), ("restore", 0)):
    subprocess.run({script(state)!r} + [verb, "{host}"], check=True)
    print(verb, time.time(), flush=True)
    time.sleep(then)
"""
    return subprocess.Popen([sys.executable, "-c", code, str(runs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def partitioned_run(state: Path, address: str, tmp_path: Path) -> tuple[Path, dict[str, float]]:
    """The swarm run from h1 while h3 is cut off and restored; its run directory, and when the
    cut and the restore were made. The driver must exit 0 within PARTITION_WAIT_S."""
    config, runs = tmp_path / "swarm.toml", tmp_path / "runs"
    config.write_text(CONFIG.replace(f"generations = {GENERATIONS}",
                                     f"generations = {PARTITION_GENERATIONS}"))
    cutter = cut_during(state, runs, "h3")
    driver = subprocess.Popen(
        in_host(state, "h1", *cli("run", str(config), "--address", address, "--run-dir",
                                  str(runs), "--quiet")),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ran = driver.communicate(timeout=PARTITION_WAIT_S)
    assert driver.returncode == 0, ran[1][-3000:]
    cut = cutter.communicate(timeout=WAIT_S)
    assert cutter.returncode == 0, cut[1][-3000:]
    times = {verb: float(t) for verb, t in (line.split() for line in cut[0].splitlines())}
    assert times["restore"] - times["cut"] >= CUT_S
    (run_dir,) = [p.parent for p in runs.glob("*/run.json")]
    return run_dir, times


def test_a_host_cut_off_for_20_s_its_nodes_restart_elsewhere_and_the_run_finishes(
        cluster, tmp_path):
    state, address = cluster
    run_dir, times = partitioned_run(state, address, tmp_path)
    got = subprocess.run(in_host(state, "h2", sys.executable, "-c", ACTORS_OF,
                                 str(run_dir / "run.json")),
                         capture_output=True, text=True, timeout=WAIT_S)
    assert got.returncode == 0, got.stderr[-3000:]
    placed, alive = json.loads(got.stdout.splitlines()[-1])
    names = {node_name(i): i for i in range(NODES)}
    actors = {names[k]: ips for k, ips in placed.items() if k in names}
    events, trace = read_events(run_dir), load_trace(run_dir).to_pylist()
    print(f"cut at {times['cut']:.1f}, restored at {times['restore']:.1f}; actors {actors}")
    for e in (e for e in events if e["kind"] in ("fault", "restart", "warning", "resync")):
        print({k: v for k, v in e.items() if k != "error"}, e.get("error", "")[:200])

    cut_nodes = {n for n, ips in actors.items() if CUT_HOST in ips}
    assert cut_nodes and cut_nodes != set(range(NODES)), actors  # h3 ran some nodes, not all
    assert CUT_HOST not in alive and len(alive) == 2, alive  # declared dead; not come back
    rows = {n: [r["generation"] for r in trace if r["node"] == n] for n in range(NODES)}
    for n in set(range(NODES)) - cut_nodes:  # the others lost no generation, repeated none
        assert rows[n] == list(range(PARTITION_GENERATIONS)), (n, rows[n])
        assert len(actors[n]) == 1, actors  # and were never restarted
    faults = [e for e in events if e["kind"] == "fault" and "node" in e]
    restarts = {e["node"]: e for e in events if e["kind"] == "restart"}
    assert sorted(e["node"] for e in faults) == sorted(cut_nodes), faults  # one each, no other
    # each cut node is lost to its actor's death, not to a phase it raised in (share,
    # absorb), and seen by the call the coordinator was making to it then: mostly a stretch's
    # round trip, but a cut that comes as a stretch ends meets a boundary's call (a migration
    # into or out of it, the snapshot of a node a migration changed, the best node's policy at
    # a checkpoint); the code before this revision met the snapshot case as well
    assert all(e["restart"] and e["phase"] in ("generation", "migration", "snapshot", "policy")
               for e in faults), faults
    # a migration cut short is its own `fault` of phase "transfer", naming a cut node
    transfers = [e for e in events if e["kind"] == "fault" and "node" not in e]
    assert all(e["phase"] == "transfer" and {e["src"], e["dst"]} & cut_nodes
               for e in transfers), transfers
    # seen once Ray declared h3 dead: after the cut, long before the restore
    assert all(times["cut"] < e["time"] < times["restore"] for e in faults), (times, faults)
    assert sorted(restarts) == sorted(cut_nodes), restarts
    for n in cut_nodes:  # restarted on a live host from its snapshot, back in the trace
        assert len(actors[n]) == 2 and actors[n].count(CUT_HOST) == 1, actors[n]
        r = restarts[n]
        assert r["source"] == "snapshot" and r["lost_at"] >= r["snapshot_generation"], r
        lost = set(range(r["lost_at"], r["generation"]))
        assert rows[n] == sorted(set(range(PARTITION_GENERATIONS)) - lost), (n, r, rows[n])
    assert not [e for e in events if e["kind"] in ("warning", "resync")], events
