"""Beliefs a coordinator can trust: with default settings, in worlds that never change, the
surprise flag fires at about its nominal rate (1%; at most 5% of generations over 5 seeds) and
no run sits at a zero step. (benchmarks/beliefs.py runs the same at length.)"""

from __future__ import annotations

import pytest

from rwkv_swarm.kernels import RWKV7Config
from rwkv_swarm.node import Node, NodeConfig

GENERATIONS, SEEDS = 20, 5
WORLDS = {  # the README's model, every other setting at its default
    "cartpole": (RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=4, output_dim=2),
                 {"kind": "gym", "id": "CartPole-v1"}),
    "signal": (RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=1, output_dim=1),
               {"kind": "signal"}),
}


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_a_stationary_world_raises_few_surprises_and_never_stalls(world):
    model, env = WORLDS[world]
    flags, longest_zero_run = 0, 0
    for seed in range(SEEDS):
        node = Node(NodeConfig(model=model, env=env, seed=seed))
        run = 0
        for _ in range(GENERATIONS):
            row = node.generation()
            flags += row["surprised"]
            run = run + 1 if row["step_norm"] == 0 else 0
            longest_zero_run = max(longest_zero_run, run)
    assert flags <= 0.05 * SEEDS * GENERATIONS, f"{flags} surprises in a world that never changed"
    assert longest_zero_run <= 3, f"a run sat at a zero step for {longest_zero_run} generations"
