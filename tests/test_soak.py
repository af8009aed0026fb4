"""A 40-second soak on real Ray actors (the 32-node, 10-minute version is
`benchmarks/chaos.py --tasks soak`): after a warm-up, every node actor's resident memory stays
within 10% of where it was, and no valid message is dropped."""

from __future__ import annotations

import time
from pathlib import Path

import ray

from rwkv_swarm import Swarm, SwarmConfig
from rwkv_swarm.node import KalmanESConfig
from rwkv_swarm.swarm import Resources

SOAK_S, WARM_S, EVERY_S = 40.0, 15.0, 4.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_a_soak_of_generations_keeps_node_memory_flat_and_drops_nothing(ray_session,
                                                                        tmp_path):
    config = SwarmConfig(nodes=4, mode="gossip", generations=10**6, run_dir=str(tmp_path),
                         env={"kind": "signal", "lags": 3}, es=KalmanESConfig(population=16),
                         resources=Resources(cpus=0.5), checkpoint_every=20)
    with Swarm.launch(config) as swarm:
        actors = ray.get(swarm.coordinator.actors.remote())
        pids = ray.get([a.pid.remote() for a in actors])
        swarm.start()
        t0, samples = time.monotonic(), []
        while (t := time.monotonic() - t0) < SOAK_S:
            time.sleep(EVERY_S)
            if t >= WARM_S:
                samples.append([rss_mib(p) for p in pids])
        ray.get(swarm.coordinator.stop.remote())
        status = swarm.wait(120)
    assert status["generation"] > 20 and len(samples) >= 5
    base = samples[0]
    for sample in samples[1:]:
        drift = [m / b - 1 for m, b in zip(sample, base, strict=True)]
        assert max(map(abs, drift)) <= 0.10, f"node actor memory drifted {drift} ({samples})"
    assert all(n["alive"] and n["dropped"] == 0 for n in status["nodes"].values()), status
