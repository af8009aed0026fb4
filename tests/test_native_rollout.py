"""The native rollout (CartPole and the row step in one C loop) against the Python rollout it
replaces, bit for bit: returns, steps, what went wrong, rows computed, final states and the
world's observation statistics; and against gymnasium's own CartPole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_kernels_model import needs_native

from rwkv_swarm.kernels import RWKV7, Population, RWKV7Config
from rwkv_swarm.node import KalmanESConfig, Node, NodeConfig
from rwkv_swarm.node import native_rollout as nr
from rwkv_swarm.node.envs import make_env
from rwkv_swarm.node.rollout import COMPACT_BELOW, rollout

TINY = RWKV7Config(n_embd=16, n_layer=1, head_size=16, dim_w=8, dim_a=8, dim_v=8, dim_g=8,
                   dim_ffn=32, input_dim=4, output_dim=2)
TWO = RWKV7Config(n_embd=32, n_layer=2, head_size=16, input_dim=4, output_dim=2)
CARTPOLE = {"kind": "gym", "id": "CartPole-v1"}


def python_rollout(env, pop: Population, members: torch.Tensor, n: int, seed: int, state,
                   max_steps: int, keys, path: str, on_step=None):
    """The Python rollout as Node.evaluate ran it before the native one existed."""
    batch: list = [None, members]

    def policy(obs, st, rows=None):
        if rows is not None and rows is not batch[0]:
            batch[:] = rows, members[torch.from_numpy(rows)]
        return pop.step_rows(obs, st, members if rows is None else batch[1],
                             inplace=rows is not None, path=path)
    return rollout(env, policy, n, seed, state, max_steps, keys, on_step, compact=COMPACT_BELOW)


def both(spec: dict, cfg: RWKV7Config, size: int, sigma: float, max_steps: int = 500,
         warm: bool = True):
    """(native, python, their envs) for the same population, seed and world."""
    pop = Population(RWKV7(cfg, seed=1, init="live"), seed=5, sigma=sigma, size=size)
    members = torch.arange(size, dtype=torch.int32).repeat_interleave(2)  # 2 episodes each
    keys = [m // 2 * 2 + e for m in range(size) for e in range(2)]  # pairs meet the same ones
    n, envs = 2 * size, [make_env(spec), make_env(spec)]
    for env in envs:  # normalisation statistics that are not the identity
        if warm:
            python_rollout(env, pop, members, n, 11, pop.model.zero_state(n), 60, keys,
                           "native:1")
        env.end_generation()
    start = pop.model.zero_state(n)
    seen: list[int] = []
    native = nr.native_rollout(envs[0], pop, members, n, 7, start, max_steps, keys,
                               seen.append, COMPACT_BELOW, "native:1")
    python = python_rollout(envs[1], pop, members, n, 7, start, max_steps, keys, "native:1")
    return native, python, envs, seen


def assert_same(native, python, envs) -> None:
    assert np.array_equal(native.returns, python.returns, equal_nan=True)
    assert np.array_equal(native.steps, python.steps)
    assert np.array_equal(native.diverged, python.diverged)
    assert np.array_equal(native.bad_obs, python.bad_obs)
    assert native.rows_computed == python.rows_computed
    for a, b in zip(native.state.tensors(), python.state.tensors(), strict=True):
        assert torch.equal(a, b)
    a, b = (env.observation_stats() for env in envs)
    if a is None:
        assert b is None
    else:
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    for env in envs:
        env.end_generation()
    assert np.array_equal(envs[0].norm.mean, envs[1].norm.mean)


@needs_native
@pytest.mark.parametrize("options", [
    {},
    {"obs_mask": [0, 2]},
    {"normalize_obs": False},
    {"env_kwargs": {"sutton_barto_reward": True}, "obs_clip": 0.5},
    {"max_steps": 25},
])
@pytest.mark.parametrize("cfg", [TINY, TWO], ids=["C16L1", "C32L2"])
def test_the_native_rollout_is_the_python_rollout_bit_for_bit(options, cfg):
    spec = {**CARTPOLE, **options}
    if "obs_mask" in options:
        cfg = RWKV7Config(**{**cfg.to_dict(), "input_dim": 2})
    native, python, envs, _ = both(spec, cfg, 24, 2.0)
    assert len(set(python.steps.tolist())) > 3  # episodes of many lengths: compaction ran
    assert python.rows_computed < len(python.steps) * python.steps.max()
    assert_same(native, python, envs)


@needs_native
def test_copies_cut_off_by_max_steps_keep_their_state_and_on_step_runs_between_calls():
    native, python, envs, seen = both(CARTPOLE, TWO, 16, 0.5, max_steps=20)
    assert (python.steps == 20).any() and (python.steps < 20).any()
    assert_same(native, python, envs)
    assert seen[0] == 0 and seen[-1] == 19  # the first call steps once, the last ends at 20
    assert seen == sorted(set(seen))


@needs_native
def test_a_policy_whose_outputs_turn_non_finite_is_marked_diverged_alike():
    pop_model = RWKV7(TINY, seed=1, init="live")
    with torch.no_grad():
        pop_model.head.weight[0, 0] = float("inf")  # outputs inf - inf = NaN where x != 0
    pop = Population(pop_model, seed=5, sigma=0.5, size=4)
    members = torch.arange(4, dtype=torch.int32)
    runs = []
    for fn in (nr.native_rollout, python_rollout):
        env = make_env(CARTPOLE)
        args = (env, pop, members, 4, 3, pop.model.zero_state(4), 50, None)
        runs.append((fn(*args, None, COMPACT_BELOW, "native:1") if fn is nr.native_rollout
                     else fn(*args, "native:1"), env))
    (native, env_a), (python, env_b) = runs
    assert python.diverged.all() and np.isnan(python.returns).all()
    assert np.array_equal(native.diverged, python.diverged)
    assert np.array_equal(native.returns, python.returns, equal_nan=True)
    assert np.array_equal(native.steps, python.steps)


@needs_native
def test_the_native_world_is_gymnasiums_cartpole():
    """Against one gymnasium CartPoleEnv per copy (vectorize="list", its math.cos): an
    independent reference for the C physics."""
    pop = Population(RWKV7(TWO, seed=4, init="live"), seed=2, sigma=1.0, size=12)
    members = torch.arange(12, dtype=torch.int32)
    spec = {**CARTPOLE, "normalize_obs": False}
    native = nr.native_rollout(make_env(spec), pop, members, 12, 9, pop.model.zero_state(12),
                               500, None, None, COMPACT_BELOW, "native:1")
    listed = make_env({**spec, "vectorize": "list"})
    reference = python_rollout(listed, pop, members, 12, 9, pop.model.zero_state(12), 500, None,
                               "native:1")
    assert len(set(reference.steps.tolist())) > 3
    assert np.array_equal(native.returns, reference.returns)
    assert np.array_equal(native.steps, reference.steps)


@needs_native
def test_usable_only_where_the_loop_does_what_the_world_would():
    pop = Population(RWKV7(TINY, seed=1, init="live"), seed=5, sigma=1.0, size=4)
    assert nr.usable(make_env(CARTPOLE), pop, "native:1")
    assert not nr.usable(make_env(CARTPOLE), pop, "torch")
    assert not nr.usable(make_env({**CARTPOLE, "vectorize": "list"}), pop, "native:1")
    assert not nr.usable(make_env({**CARTPOLE, "obs_noise": 0.1}), pop, "native:1")
    noisy_later = make_env(CARTPOLE)
    noisy_later.apply_signal("action_noise", {"level": 0.2})  # pending: applies at the reset
    assert not nr.usable(noisy_later, pop, "native:1")
    assert not nr.usable(make_env({"kind": "signal", "lags": 3}), pop, "native:1")
    with pytest.raises(ValueError, match="native rollout needs"):
        nr.native_rollout(make_env(CARTPOLE), pop, torch.arange(4, dtype=torch.int32), 4, 0,
                          pop.model.zero_state(4), 10, path="torch")


@needs_native
def test_a_node_generation_is_the_same_with_and_without_the_native_loop(monkeypatch):
    cfgs = [NodeConfig(model=TINY, es=KalmanESConfig(population=16), seed=3) for _ in range(2)]
    native, python = Node(cfgs[0]), Node(cfgs[1])
    calls = []
    inner = nr.native_rollout
    monkeypatch.setattr(nr, "native_rollout", lambda *a, **k: calls.append(1) or inner(*a, **k))
    for g in range(3):
        row = native.generation()
        with monkeypatch.context() as m:
            m.setattr(nr, "usable", lambda *a: False)
            other = python.generation()
        assert len(calls) == g + 1  # the native node ran the C loop, the other one did not
        for k in row:
            if not k.endswith("_s"):
                assert row[k] == other[k] or (row[k] != row[k] and other[k] != other[k]), k
    for a, b in zip(native.model.parameters(), python.model.parameters(), strict=True):
        assert torch.equal(a, b)
