"""Node: a generation evolves the policy; checkpoint/restore continues bitwise identically."""

from __future__ import annotations

import math
import re

import msgpack
import numpy as np
import pytest
import torch
from tracking_env import TrackingEnv

from rwkv_swarm.kernels import RWKV7Config
from rwkv_swarm.node import ESConfig, KalmanESConfig, Node, NodeConfig

MODEL = RWKV7Config(n_embd=32, n_layer=1, head_size=16, input_dim=3, output_dim=2)
TIMING = {"ask_s", "evaluate_s", "tell_s", "centre_s"}


def config(strategy="kalman", **kw) -> NodeConfig:
    es_cls = KalmanESConfig if strategy == "kalman" else ESConfig
    es = es_cls(population=16, sigma=0.05, lr=0.03, include=("matrices", "head"))
    return NodeConfig(model=MODEL, strategy=strategy, es=es, seed=11, **kw)


@pytest.mark.parametrize("strategy", ["kalman", "lowrank"])
def test_generations_improve_the_policy_and_count_episodes(strategy):
    node = Node(config(strategy, episodes=2), TrackingEnv())
    before = node.evaluate_centre(8, seed=5).mean()
    rows = [node.generation() for _ in range(15)]
    after = node.evaluate_centre(8, seed=5).mean()
    assert after > before + 0.3 * abs(before)
    assert rows[-1]["episodes"] == 15 * 16 * 2 and rows[-1]["env_steps"] == 15 * 32 * 20
    assert rows[-1]["generation"] == 14 and rows[-1]["node"] == 0
    for key in ("fitness_mean", "belief_mean", "belief_var", "gain", "innovation", "nis",
                "sigma", "step_norm", *TIMING):
        assert key in rows[-1] and math.isfinite(rows[-1][key])


@pytest.mark.parametrize("strategy, persistent", [("kalman", True), ("lowrank", False),
                                                  ("kalman", False)])
def test_restored_node_continues_bitwise_identically(strategy, persistent):
    node = Node(config(strategy), TrackingEnv(persistent=persistent))
    for _ in range(3):
        node.generation()
    blob = node.checkpoint()
    expected = node.generation()
    restored = Node.restore(blob, TrackingEnv(persistent=persistent, seed=999))
    got = restored.generation()
    assert got.keys() == expected.keys()
    for key in expected.keys() - TIMING:  # NaN (a value that does not apply) equals NaN
        a, b = got[key], expected[key]
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), key
    for a, b in zip(node.model.parameters(), restored.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert node.live_state.equal(restored.live_state)


def test_a_continuing_world_carries_the_live_state_across_generations():
    node = Node(config(), TrackingEnv(persistent=True))
    zero = node.live_state.clone()
    row = node.generation()
    assert not node.live_state.equal(zero) and math.isfinite(row["centre_return"])
    episodic = Node(config(), TrackingEnv(persistent=False))
    assert math.isnan(episodic.generation()["centre_return"])
    assert episodic.live_state.equal(zero)


def test_evaluate_centre_does_not_count_as_training():
    node = Node(config(), TrackingEnv())
    returns = node.evaluate_centre(5)
    assert returns.shape == (5,) and node.episodes_used == 0 and node.generation_count == 0


def test_an_injected_signal_changes_the_world_and_widens_the_search():
    node = Node(config(), TrackingEnv())
    node.generation()
    w = node.env.W.copy()
    node.apply_signal("scale", {"factor": 2.0})
    assert np.allclose(node.env.W, 2 * w) and node.strategy.sigma_scale == 2.0
    assert node.strategy.fitness_belief.var > 50 * node.strategy.fitness_belief.config.min_var


def test_mismatched_or_foreign_environments_are_rejected():
    with pytest.raises(ValueError, match=r"\(input_dim, output_dim\) = \(4, 2\) does not match"):
        Node(NodeConfig(model=RWKV7Config(n_embd=32, n_layer=1, head_size=16, input_dim=4,
                                          output_dim=2), es=KalmanESConfig()), TrackingEnv())
    with pytest.raises(TypeError, match="Environment"):
        Node(config(), object())


def test_restore_rejects_bytes_that_are_not_a_checkpoint():
    with pytest.raises(ValueError, match="not a node checkpoint"):
        Node.restore(b"\x93garbage", TrackingEnv())
    with pytest.raises(ValueError, match="version"):
        Node.restore(msgpack.packb({"version": 99}), TrackingEnv())


def test_a_diverged_mutant_scores_nan_and_never_stops_the_others():
    from rwkv_swarm.kernels import RWKV7State
    from rwkv_swarm.node import rollout
    from rwkv_swarm.node.envs import GymEnv

    env = GymEnv("CartPole-v1", normalize_obs=False)
    state = RWKV7State.zeros(MODEL, 4)

    def policy(obs: torch.Tensor, st: RWKV7State):
        out = torch.zeros(len(obs), 2)
        out[:, 1] = obs[:, 2]  # push toward the pole's lean: balances for a while
        out[1] = float("nan")  # mutant 1 diverged
        return out, st

    result = rollout(env, policy, 4, seed=3, state=state, max_steps=200)
    assert math.isnan(result.returns[1])
    assert np.isfinite(result.returns[[0, 2, 3]]).all() and (result.returns[[0, 2, 3]] > 20).all()


def test_antithetic_pairs_meet_the_same_episodes_unless_told_otherwise():
    paired = Node(config(episodes=2), TrackingEnv())
    paired.generation()
    assert paired.env.last_keys[:8] == [0, 1, 0, 1, 2, 3, 2, 3]  # member-major, E=2
    unpaired = Node(config(episodes=2, paired_episodes=False), TrackingEnv())
    unpaired.generation()
    assert unpaired.env.last_keys[:8] == list(range(8))


def test_restore_names_what_is_wrong_with_a_malformed_checkpoint():
    node = Node(config(), TrackingEnv())
    node.generation()
    good = msgpack.unpackb(node.checkpoint(), raw=False)
    cases = {
        "fields ['weights'] missing": {k: v for k, v in good.items() if k != "weights"},
        "weights: ": {**good, "weights": b"junk"},
        "live_state: ": {**good, "live_state": b"\x00" * 7},
        "strategy state: ": {**good, "strategy": {"generation": 1}},
        "generation must be an int >= 0": {**good, "generation": "three"},
        "config: model.n_embd": {**good, "config": {**good["config"],
                                                    "model": {"n_embd": "wide"}}},
    }
    for expected, d in cases.items():
        with pytest.raises(ValueError, match="not a node checkpoint: " + re.escape(expected)):
            Node.restore(msgpack.packb(d, use_bin_type=True), TrackingEnv())
    with pytest.raises(ValueError, match="not a node checkpoint: expected bytes"):
        Node.restore("a string", TrackingEnv())


def test_restore_refuses_an_environment_of_other_options():
    from rwkv_swarm.node.envs import GymEnv

    model = RWKV7Config(n_embd=32, n_layer=1, head_size=16, input_dim=4, output_dim=2)
    node = Node(NodeConfig(model=model, es=KalmanESConfig(population=8)))  # CartPole from config
    blob = node.checkpoint()
    assert Node.restore(blob).config.env == node.config.env  # rebuilt from the config
    with pytest.raises(ValueError, match="refused for GymEnv .*'obs_noise': 0.3"):
        Node.restore(blob, GymEnv("CartPole-v1", obs_noise=0.3))
    with pytest.raises(ValueError, match="refused for TrackingEnv"):
        Node.restore(blob, TrackingEnv())


class NaNObservations(TrackingEnv):
    def reset(self, n, seed, keys=None):
        return np.full_like(super().reset(n, seed, keys), np.nan)


def test_non_finite_observations_are_named_as_the_environment_s_doing():
    node = Node(config(), NaNObservations())
    with pytest.raises(ValueError, match="16 of 16 copies got non-finite observations from the "
                                         "environment"):
        node.generation()


def test_node_config_round_trips_through_toml_and_names_bad_keys():
    from rwkv_swarm.node import ExchangeConfig
    from rwkv_swarm.util.configio import ConfigError

    cfg = NodeConfig(model=MODEL, env={"kind": "signal", "lags": 2,
                                       "process": {"name": "sines", "freqs": [0.05, 0.1]}},
                     strategy="lowrank", es=ESConfig(population=16, include=("matrices",)),
                     exchange=ExchangeConfig(mode="gossip"), seed=4)
    assert NodeConfig.from_toml_text(cfg.to_toml()) == cfg
    assert NodeConfig.from_dict(config().to_dict()) == config()
    with pytest.raises(ConfigError, match=r"es\.direction: unknown key; ESConfig accepts"):
        NodeConfig.from_dict({**cfg.to_dict(), "es": {"direction": {}}})
    with pytest.raises(ConfigError, match=r"es\.population: got 'many', expected an integer"):
        NodeConfig.from_dict({**config().to_dict(), "es": {"population": "many"}})
    with pytest.raises(ConfigError, match="unknown GymConfig option"):
        NodeConfig.from_dict({**config().to_dict(), "env": {"kind": "gym", "id": "CartPole-v1",
                                                            "gravity": 3}})


def test_score_evaluates_in_a_copy_of_the_world_and_leaves_training_alone():
    import pickle

    model = RWKV7Config(n_embd=32, n_layer=1, head_size=16, input_dim=4, output_dim=2)
    node = Node(NodeConfig(model=model, es=KalmanESConfig(population=8)))
    node.generation()
    before = pickle.dumps(node.env.state_dict())
    first = node.score(6, seed=3)
    assert pickle.dumps(node.env.state_dict()) == before
    assert node.score(6, seed=3) == first and math.isfinite(first)
    with pytest.raises(ValueError, match="TrackingEnv is not one it describes"):
        Node(config(), TrackingEnv()).score(2, seed=0)
