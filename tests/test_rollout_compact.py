"""A rollout compacted to its live copies computes fewer rows and changes nothing else: the
same returns, steps and final states, bitwise, as the rollout that steps every row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_kernels_model import needs_native

from rwkv_swarm.kernels import RWKV7, Population, RWKV7Config
from rwkv_swarm.node import KalmanESConfig, Node, NodeConfig
from rwkv_swarm.node import node as node_module
from rwkv_swarm.node.envs import make_env
from rwkv_swarm.node.rollout import COMPACT_BELOW, rollout

MODEL = RWKV7Config(n_embd=32, n_layer=2, head_size=16, input_dim=4, output_dim=2)
CARTPOLE = {"kind": "gym", "id": "CartPole-v1"}


def population_policy(pop: Population, E: int, path: str):
    member_of = torch.arange(pop.size).repeat_interleave(E)

    def policy(obs, state, rows=None):
        members = member_of if rows is None else member_of[rows]
        return pop.step_rows(obs, state, members, inplace=rows is not None, path=path)
    return policy


def run(pop: Population, E: int, path: str, compact: float, max_steps: int):
    n = pop.size * E
    start = pop.model.zero_state(n)
    return rollout(make_env(CARTPOLE), population_policy(pop, E, path), n, seed=3,
                           state=start, max_steps=max_steps, compact=compact)


@needs_native
@pytest.mark.parametrize("path", ["native:1", "native:2"])
def test_a_compacted_rollout_equals_the_full_one_bitwise(path):
    pop = Population(RWKV7(MODEL, seed=1, init="live"), seed=5, sigma=2.0, size=24)
    E, max_steps = 2, 30  # some copies outlive max_steps: their final states are compared
    full = run(pop, E, path, 0.0, max_steps)
    compact = run(pop, E, path, COMPACT_BELOW, max_steps)
    assert np.array_equal(full.returns, compact.returns)
    assert np.array_equal(full.steps, compact.steps)
    assert np.array_equal(full.diverged, compact.diverged)
    live = np.flatnonzero(full.steps == max_steps)
    ended = np.flatnonzero(full.steps < max_steps)
    assert 0 < len(live) < len(ended)  # the case compaction is for
    assert compact.state.select(live).equal(full.state.select(live))
    n = pop.size * E
    assert full.rows_computed == n * int(full.steps.max())
    assert compact.rows_computed < 0.6 * full.rows_computed
    assert full.env_steps >= COMPACT_BELOW * compact.rows_computed  # useful rows


@needs_native
def test_a_dropped_copy_keeps_the_state_of_its_last_step():
    pop = Population(RWKV7(MODEL, seed=2, init="live"), seed=6, sigma=2.0, size=8)
    compact = run(pop, 1, "native:1", 1.0, 200)  # compact as soon as any copy ends
    for j in range(pop.size):  # replay copy j alone, for exactly its steps
        env = make_env(CARTPOLE)
        obs, state = env.reset(pop.size, 3), pop.model.zero_state(1)
        for _ in range(compact.steps[j]):
            x = torch.from_numpy(np.asarray(obs[j:j + 1], dtype=np.float32))
            out, state = pop.step_rows(x, state, [j], path="native:1")
            actions = np.zeros((pop.size, 2), dtype=np.float32)
            actions[j] = out.numpy()[0]
            obs, _, _ = env.step(actions)
        assert compact.state.select(j).equal(state), j


def test_compact_must_be_a_share():
    pop = Population(RWKV7(MODEL), seed=1, sigma=0.1, size=4)
    with pytest.raises(ValueError, match=r"compact must be a share of rows in \[0, 1\], got 2"):
        run(pop, 1, "torch", 2, 5)


@needs_native
def test_a_node_evaluates_the_same_fitness_with_and_without_compaction(monkeypatch):
    def fitness(compact: float) -> np.ndarray:
        monkeypatch.setattr(node_module, "COMPACT_BELOW", compact)
        cfg = NodeConfig(model=MODEL, es=KalmanESConfig(population=16, sigma=0.3), seed=4,
                         episodes=2, env=CARTPOLE, init="live")
        node = Node(cfg)
        node.begin()
        return node.evaluate()

    assert np.array_equal(fitness(0.0), fitness(COMPACT_BELOW))
