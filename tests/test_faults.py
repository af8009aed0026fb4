"""A dead node loses nothing: its peers stop waiting for it at once, it is restarted from its
newest snapshot in a new actor (or host) and rejoins at the swarm's generation; a consensus
member re-syncs to its group. In-process hosts for the coordinator's logic, then real Ray
actors killed with SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
import torch
from test_exchange import CARTPOLE, TINY
from test_member import members_of

from rwkv_swarm.cluster.host import NodeHost
from rwkv_swarm.cluster.nodes import LocalNodes, _collect
from rwkv_swarm.node import (
    ExchangeConfig,
    KalmanESConfig,
    Node,
    NodeConfig,
    SwarmKeyring,
    TransportConfig,
)
from rwkv_swarm.node.member import Member
from rwkv_swarm.swarm import (
    Coordinator,
    Migration,
    Resources,
    Swarm,
    SwarmConfig,
    Variation,
    load_trace,
    read_events,
)

SIGNAL_ENV = {"kind": "signal", "lags": 3}
WAIT_S = 60.0  # the peers' longest wait: a test that met it once would take a minute


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(tmp_path: Path, **kw) -> SwarmConfig:
    return SwarmConfig(**{"nodes": 4, "env": SIGNAL_ENV, "resources": Resources(cpus=0.5),
                          "es": KalmanESConfig(population=16), "run_dir": str(tmp_path),
                          "wait_s": WAIT_S, "checkpoint_every": 2, **kw})


def local_swarm(cfg: SwarmConfig, run_dir: Path) -> tuple[Coordinator, LocalNodes]:
    """Hosts in this process over real sockets; a dead one is made again with its keys."""
    configs = cfg.node_configs()
    ring, keys = SwarmKeyring.generate([f"node-{c.node_id}" for c in configs])

    def make(i: int, snapshot: bytes | None = None) -> NodeHost:
        return NodeHost(configs[i], "run", keys=keys[f"node-{i}"], keyring=ring,
                        snapshot=snapshot)

    nodes = LocalNodes([make(i) for i in range(cfg.nodes)], factory=make)
    endpoints = [h.endpoint() for h in nodes.hosts]
    for h in nodes.hosts:
        h.connect(endpoints)
    return Coordinator(cfg, "run", run_dir, nodes), nodes


def kill_at(nodes: LocalNodes, node: int, generation: int):
    """An on_generation hook that closes node's sockets once `generation` is next: its next
    call fails, as a dead actor's would."""
    def hook(status):
        if status["generation"] == generation:
            nodes.hosts[node].close()
    return hook


def rows_by_node(run_dir: Path) -> dict[int, dict[int, dict]]:
    t = load_trace(run_dir).to_pylist()
    out: dict[int, dict[int, dict]] = {}
    for r in t:
        out.setdefault(r["node"], {})[r["generation"]] = r
    return out


@pytest.fixture
def closing():
    made: list[LocalNodes] = []
    yield made
    for nodes in made:
        for h in nodes.hosts:
            h.close()


def test_a_dead_gossip_node_is_not_waited_for_and_rejoins_from_its_snapshot(tmp_path, closing):
    coordinator, nodes = local_swarm(config(tmp_path), tmp_path / "run")
    closing.append(nodes)
    coordinator.run(7, on_generation=kill_at(nodes, 2, 3))
    rows = rows_by_node(coordinator.run_dir)
    assert {n: sorted(g) for n, g in rows.items()} == \
        {0: list(range(7)), 1: list(range(7)), 2: [0, 1, 2, 4, 5, 6], 3: list(range(7))}
    # the peers waited for nobody: communicate_s holds each absorb's wait
    assert all(r["communicate_s"] < 10 for g in rows.values() for r in g.values())
    events = read_events(coordinator.run_dir)
    (fault,) = [e for e in events if e["kind"] == "fault"]
    (restart,) = [e for e in events if e["kind"] == "restart"]
    assert (fault["node"], fault["generation"], fault["phase"], fault["restart"]) == \
        (2, 3, "share", True)
    assert (restart["node"], restart["lost_at"], restart["generation"],
            restart["snapshot_generation"], restart["source"]) == (2, 3, 4, 2, "snapshot")
    # the snapshot before generation 2 holds the weights that generation 1 left
    assert restart["fingerprint"] == rows[2][1]["fingerprint"]
    assert rows[2][4]["fingerprint"] != restart["fingerprint"]  # and they move on from there
    # its peers reach its new endpoint and it reaches theirs: two neighbours' reports again
    assert all(rows[n][g]["absorbed_from"] == 2 for n in range(4) for g in (5, 6))
    assert nodes.hosts[2].node.generation_count == 7
    assert coordinator.status()["nodes"][2]["restarts"] == 1


def test_a_restarted_consensus_member_takes_its_groups_weights(tmp_path, closing):
    coordinator, nodes = local_swarm(config(tmp_path, mode="consensus"), tmp_path / "run")
    closing.append(nodes)
    coordinator.run(6, on_generation=kill_at(nodes, 1, 3))
    rows = rows_by_node(coordinator.run_dir)
    assert sorted(rows[1]) == [0, 1, 2, 4, 5]
    for g in range(6):  # one node throughout: the three left, then the four again
        prints = {rows[n][g]["fingerprint"] for n in range(4) if g in rows[n]}
        assert len(prints) == 1, (g, prints)
    assert [rows[0][g]["missing"] for g in range(6)] == [0, 0, 0, 1, 0, 0]
    (restart,) = [e for e in read_events(coordinator.run_dir) if e["kind"] == "restart"]
    assert (restart["generation"], restart["source"]) == (4, "node-0")
    assert restart["fingerprint"] == rows[0][3]["fingerprint"]  # the group's, not its own
    host = nodes.hosts[1]
    assert (host.node.config.node_id, host.node.config.members) == \
        (1, config(tmp_path).replace(mode="consensus").node_configs()[1].members)


def test_a_consensus_member_whose_weights_left_its_group_takes_the_majoritys(tmp_path, closing):
    coordinator, nodes = local_swarm(config(tmp_path, mode="consensus"), tmp_path / "run")
    closing.append(nodes)

    def nudge(status):  # as if member 3 alone had folded a dead member's report in
        if status["generation"] == 3:
            with torch.no_grad():
                next(nodes.hosts[3].node.model.parameters()).add_(0.01)

    coordinator.run(5, on_generation=nudge)
    rows = rows_by_node(coordinator.run_dir)
    assert len({rows[n][3]["fingerprint"] for n in range(3)}) == 1
    assert rows[3][3]["fingerprint"] != rows[0][3]["fingerprint"]  # split in generation 3
    assert len({rows[n][4]["fingerprint"] for n in range(4)}) == 1  # one node again
    (resync,) = [e for e in read_events(coordinator.run_dir) if e["kind"] == "resync"]
    assert (resync["node"], resync["generation"], resync["source"]) == (3, 4, "node-0")


def test_a_member_re_syncs_only_from_its_own_consensus_group(tmp_path):
    two_groups = config(tmp_path, mode="consensus", group_size=2).node_configs()
    gossip = config(tmp_path).node_configs()
    hosts = [NodeHost(two_groups[0], "run"), NodeHost(two_groups[2], "run"),
             NodeHost(gossip[1], "run")]
    try:
        for other, what in ((hosts[1], "node 2 (consensus, group 1)"),
                            (hosts[2], "node 1 (gossip, group 0)")):
            with pytest.raises(ValueError, match=rf"node 0 re-syncs from a member of its "
                                                 rf"consensus group only, got a snapshot of "
                                                 rf"{re.escape(what)}"):
                hosts[0].rejoin(4, other.snapshot()["snapshot"])
        assert hosts[0].node.generation_count == 0  # nothing taken
    finally:
        for h in hosts:
            h.close()


def test_a_node_that_cannot_be_restarted_stays_out_of_the_run_and_of_migration(tmp_path,
                                                                            closing):
    cfg = config(tmp_path, migration=Migration(every=1, gate=0.5, fraction=0.5))
    coordinator, nodes = local_swarm(cfg, tmp_path / "run")
    nodes._factory = None  # no way to start it again
    closing.append(nodes)
    coordinator.run(5, on_generation=kill_at(nodes, 2, 2))
    rows = rows_by_node(coordinator.run_dir)
    assert sorted(rows[2]) == [0, 1] and all(sorted(rows[n]) == list(range(5)) for n in (0, 1, 3))
    (fault,) = [e for e in read_events(coordinator.run_dir) if e["kind"] == "fault"]
    assert fault["restart"] is False and not coordinator.status()["nodes"][2]["alive"]
    late = [m for m in coordinator.lineage if m["generation"] >= 2]
    assert late and all(2 not in (m["src"], m["dst"]) for m in late)


def test_a_node_that_dies_before_its_migration_is_a_fault_not_a_crash(tmp_path, closing):
    cfg = config(tmp_path, migration=Migration(every=1, gate=0.5, fraction=0.5))
    coordinator, nodes = local_swarm(cfg, tmp_path / "run")
    closing.append(nodes)
    transfer, dead = nodes.transfer, []

    def dies_first(src, dst, belief, with_state):
        if not dead:  # the first migrant dies between its row and its adoption: its adopt
            dead.append(dst)  # call fails, as a dead actor's would
            nodes.hosts[dst].close()
            raise RuntimeError(f"node-{dst}'s actor died")
        return transfer(src, dst, belief, with_state)

    nodes.transfer = dies_first
    coordinator.run(4)
    events = read_events(coordinator.run_dir)
    transfer_fault, fault = [e for e in events if e["kind"] == "fault"]
    assert (transfer_fault["phase"], transfer_fault["dst"]) == ("transfer", dead[0])
    assert dead and (fault["node"], fault["phase"], fault["restart"]) == (dead[0], "migration",
                                                                          True)
    assert any(e["kind"] == "restart" and e["node"] == dead[0] for e in events)
    assert coordinator.status()["generation"] == 4


# -- members: whom a member stops waiting for -----------------------------------------------

QUICK = TransportConfig(heartbeat_interval=0.1, heartbeat_liveness=3)  # dead after 0.3 s


def three(mode: str) -> list[Node]:
    def exchange(k: int) -> ExchangeConfig:
        return ExchangeConfig(mode=mode) if mode == "gossip" else \
            ExchangeConfig(mode="consensus", group_size=3, member=k)

    return [Node(NodeConfig(model=TINY, env=CARTPOLE, es=KalmanESConfig(population=4),
                            node_id=k, exchange=exchange(k))) for k in range(3)]


@pytest.fixture
def trio(request):
    members = members_of(three(request.param), QUICK)
    names = [m.name for m in members]
    for m in members:
        m.set_peers(neighbours=names, group=names)
    members[2].close()  # dead without a word: no heartbeats, no report
    yield members
    for m in members:
        m.close()


def one_generation(a: Member, b: Member, wait_s: float) -> dict:
    a.share()
    b.share()
    row = a.absorb(wait_s)
    b.absorb(0.0)
    return row


@pytest.mark.parametrize("trio", ["gossip"], indirect=True)
def test_a_gossip_member_stops_waiting_for_a_neighbour_its_heartbeats_call_dead(trio):
    row = one_generation(trio[0], trio[1], WAIT_S)
    assert row["absorbed_from"] == 1 and row["wait_s"] < WAIT_S / 2


@pytest.mark.parametrize("trio", ["consensus"], indirect=True)
def test_a_consensus_member_waits_for_a_silent_member_until_told_it_is_gone(trio):
    a, b, dead = trio
    row = one_generation(a, b, 1.0)  # heartbeats alone never drop a member from the union
    assert row["wait_s"] >= 1.0 and row["missing"] == 1
    told = threading.Timer(0.3, a.gone, args=(dead.name,))
    told.start()
    row = one_generation(a, b, WAIT_S)  # told mid-wait: it stops waiting at once
    told.join()
    assert row["missing"] == 1 and row["wait_s"] < WAIT_S / 2
    assert dead.name not in a.reached() and b.name in a.reached()


# -- real Ray actors, killed -9 ---------------------------------------------------------------

BOUND_S = 120.0  # safety bound on any wait below: a run that waited WAIT_S per generation
#                  after the kill would need 60 s for each


def wait_until(what, bound_s: float = BOUND_S):
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {bound_s} s: {what.__doc__ or what}")


@ray.remote(num_cpus=0, max_concurrency=2)
class Batches:
    """An actor streaming batches of results, the second only once released."""

    def __init__(self):
        self.go = threading.Event()

    def stream(self, batches: list) -> object:
        for k, batch in enumerate(batches):
            if k:
                self.go.wait(60)
            yield batch

    def release(self) -> None:
        self.go.set()

    def pid(self) -> int:
        return os.getpid()


def test_an_actor_that_dies_with_generations_held_is_seen_before_its_peers_answer(
        ray_session):
    """Actor a's first batch brought two generations, b's one; a dies. Reading b's second
    batch, `_collect` watches a's stream too: a's death reaches `on_fault` at once, and here
    only that releases b (as a consensus member's peers stop waiting only when told)."""
    a, b = Batches.remote(), Batches.remote()
    streams = {a.stream.remote([[["a0"], ["a1"]], [["a2"]]]): (0, [0]),
               b.stream.remote([[["b0"]], [["b1"]]]): (1, [1])}
    (sa, sb), held = streams, {}
    for s in streams:
        held[s] = list(ray.get(next(s)))
    assert held[sa] == [["a0"], ["a1"]] and held[sb] == [["b0"]]
    os.kill(ray.get(a.pid.remote()), signal.SIGKILL)
    faults: list = []

    def on_fault(i, e):
        faults.append(i)
        b.release.remote()

    def stash(stream):
        held[stream] += ray.get(next(stream))

    ended: set = set()
    out = _collect({sb: (1, [1])}, 30.0, set(), on_fault, take=lambda s: ray.get(next(s))[0],
                   ended=ended, watch={sa: (0, [0])}, stash=stash)
    assert faults == [0] and ended == {sa}  # seen while b was still to answer
    assert out[1] == "b1" and isinstance(out[0], ray.exceptions.RayError)


def kill_node_mid_run(swarm: Swarm, node: int, at: int, more: int) -> float:
    """SIGKILL node's actor process once generation `at` runs, let the run go on until `more`
    generations after its restart, stop it; returns the kill's time."""
    swarm.start(10_000)
    wait_until(lambda: swarm.status()["generation"] >= at)
    actor = ray.get(swarm.coordinator.actors.remote())[node]
    pid = ray.get(actor.pid.remote())
    killed = time.time()
    os.kill(pid, signal.SIGKILL)

    def restarted():
        """a restart event and `more` generations after it"""
        r = [e for e in read_events(swarm.run_dir) if e["kind"] == "restart"]
        return r and swarm.status()["generation"] >= r[0]["generation"] + more

    wait_until(restarted)
    ray.get(swarm.coordinator.stop.remote())
    swarm.wait(BOUND_S)
    return killed


def fault_and_restart(run_dir: Path, killed: float, node: int) -> tuple[dict, dict]:
    events = read_events(run_dir)
    (fault,) = [e for e in events if e["kind"] == "fault"]
    (restart,) = [e for e in events if e["kind"] == "restart"]
    assert fault["node"] == restart["node"] == node and fault["restart"]
    assert fault["time"] - killed < 5.0, "detected within 5 s"
    assert restart["lost_at"] == fault["generation"] < restart["generation"]
    return fault, restart


def test_a_node_killed_mid_run_is_restarted_and_no_generation_waits_for_it(ray_session,
                                                                           tmp_path):
    with Swarm.launch(config(tmp_path)) as swarm:
        killed = kill_node_mid_run(swarm, 2, at=3, more=2)
        last = swarm.status()["generation"]
    fault, restart = fault_and_restart(swarm.run_dir, killed, 2)
    rows = rows_by_node(swarm.run_dir)
    gap = list(range(fault["generation"], restart["generation"]))
    assert {n: sorted(g) for n, g in rows.items()} == \
        {n: [g for g in range(last) if n != 2 or g not in gap] for n in range(4)}
    assert all(r["communicate_s"] < 10 for g in rows.values() for r in g.values())
    snap = restart["snapshot_generation"]
    assert snap >= 2 and restart["fingerprint"] == rows[2][snap - 1]["fingerprint"]
    after = [g for g in rows[2] if g >= restart["generation"]]
    assert len(after) >= 2 and all(rows[n][g]["absorbed_from"] == 2 for n in range(4)
                                   for g in after[1:])


def test_a_node_killed_within_a_stretch_of_generations_is_restarted_after_it(ray_session,
                                                                             tmp_path):
    """Stretches of up to 4 generations a round trip (a checkpoint every 4): the kill falls
    within one, the dead actor's stream is not read again, the rest of the stretch goes on
    without waiting for it; while it restarts a stretch is one generation, and the stretches
    after its restart read its new actor's."""
    with Swarm.launch(config(tmp_path, checkpoint_every=4, stretch_s=60.0)) as swarm:
        killed = kill_node_mid_run(swarm, 2, at=5, more=9)
        last = swarm.status()["generation"]
    fault, restart = fault_and_restart(swarm.run_dir, killed, 2)
    rows = rows_by_node(swarm.run_dir)
    gap = range(fault["generation"], restart["generation"])
    assert {n: sorted(g) for n, g in rows.items()} == \
        {n: [g for g in range(last) if n != 2 or g not in gap] for n in range(4)}
    assert all(r["communicate_s"] < 10 for g in rows.values() for r in g.values())
    assert restart["snapshot_generation"] % 4 == 0  # a snapshot comes with a stretch's last


def test_a_consensus_member_killed_mid_run_rejoins_its_group_bitwise(ray_session, tmp_path):
    with Swarm.launch(config(tmp_path, mode="consensus")) as swarm:
        killed = kill_node_mid_run(swarm, 1, at=3, more=2)
        last = swarm.status()["generation"]
    fault, restart = fault_and_restart(swarm.run_dir, killed, 1)
    assert restart["source"] in {"node-0", "node-2", "node-3"}
    rows = rows_by_node(swarm.run_dir)
    every = swarm.config.checkpoint_every  # a stretch of generations ends before a checkpoint
    boundary = (fault["generation"] // every + 1) * every
    healed = {}
    for g in range(last):  # one node throughout: three members in the gap, four after
        prints = {n: rows[n][g]["fingerprint"] for n in range(4) if g in rows[n]}
        major, count = Counter(prints.values()).most_common(1)[0]
        split = {n: (g + 1, p, major) for n, p in prints.items() if p != major}
        # only where the kill fell between the report's sends (it reached some members, not
        # all): the minority takes the majority's state at the end of the stretch of
        # generations the fault fell in (`Recovery.heal`), before the next checkpoint at the
        # latest
        assert not split or (fault["generation"] <= g < boundary and count > len(split)), \
            (g, prints)
        healed.update(split)
    assert {e["node"]: (e["generation"], e["was"], e["fingerprint"])
            for e in read_events(swarm.run_dir) if e["kind"] == "resync"} == healed
    assert sorted(g for g in rows[1] if g >= restart["generation"]) == \
        list(range(restart["generation"], last))


def test_an_async_run_with_a_node_killed_goes_on_without_it(ray_session, tmp_path):
    with Swarm.launch(config(tmp_path, sync=False)) as swarm:
        swarm.start(30)  # node 2 cannot be done before it is killed
        wait_until(lambda: swarm.status()["generation"] >= 2)
        actor = ray.get(swarm.coordinator.actors.remote())[2]
        pid = ray.get(actor.pid.remote())
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        status = swarm.wait(BOUND_S)
    (fault,) = [e for e in read_events(swarm.run_dir) if e["kind"] == "fault"]
    assert (fault["node"], fault["phase"], fault["restart"]) == (2, "run_async", False)
    assert fault["time"] - killed < 5.0 and not status["nodes"][2]["alive"]
    rows = rows_by_node(swarm.run_dir)
    assert all(sorted(rows[n]) == list(range(30)) for n in (0, 1, 3))
    assert len(rows.get(2, {})) < 30  # none at all when it died before its first generation


def test_packed_nodes_one_raising_alone_and_an_actor_of_two_killed(ray_session, tmp_path):
    """Two nodes per actor. Node 1 raises once (its world stumbles): it restarts in its slot,
    its actor and actor-mate untouched. The actor of nodes 2 and 3 is killed: both are
    faults, and both restart in one new actor."""
    world = {"kind": "python", "class": "worlds.stumble:Stumble", "length": 6}
    cfg = config(tmp_path, env=world, resources=Resources(cpus=0.5, nodes_per_actor=2),
                 variations=(Variation(nodes=(1,), env={"stumble": True}),))
    with Swarm.launch(cfg) as swarm:
        actors = ray.get(swarm.coordinator.actors.remote())
        before = ray.get([a.pid.remote() for a in actors])
        swarm.start(10_000)
        wait_until(lambda: swarm.status()["generation"] >= 4)
        killed = time.time()
        os.kill(before[2], signal.SIGKILL)

        def restarted():
            """nodes 1, 2 and 3 restarted, and two generations after the last"""
            r = [e for e in read_events(swarm.run_dir) if e["kind"] == "restart"]
            return len(r) == 3 and swarm.status()["generation"] >= r[-1]["generation"] + 2

        wait_until(restarted)
        after = ray.get([a.pid.remote() for a in ray.get(swarm.coordinator.actors.remote())])
        ray.get(swarm.coordinator.stop.remote())
        swarm.wait(BOUND_S)
        last = swarm.status()["generation"]
    assert before[0] == before[1] == after[0] == after[1]  # node 1 restarted in its actor
    assert before[2] == before[3] and after[2] == after[3] not in set(before)  # one new actor
    events = read_events(swarm.run_dir)
    faults = {e["node"]: e for e in events if e["kind"] == "fault"}
    restarts = {e["node"]: e for e in events if e["kind"] == "restart"}
    assert sorted(faults) == sorted(restarts) == [1, 2, 3] and all(
        f["restart"] for f in faults.values())
    assert "RuntimeError: stumbled" in faults[1]["error"] and faults[1]["phase"] == "share"
    assert faults[1]["generation"] < 4 and all(faults[n]["time"] - killed < 5.0 for n in (2, 3))
    rows = rows_by_node(swarm.run_dir)
    assert sorted(rows[0]) == list(range(last))  # node 1's actor-mate lost nothing
    for n in (1, 2, 3):
        f, r = faults[n], restarts[n]
        gap = range(f["generation"], r["generation"])
        assert sorted(rows[n]) == [g for g in range(last) if g not in gap]
        assert r["fingerprint"] == rows[n][r["snapshot_generation"] - 1]["fingerprint"]
