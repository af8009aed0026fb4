"""`Policy`: a node's centre as a file that acts exactly as the node does, without Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import prefer_native_teams
from tracking_env import TrackingEnv

from rwkv_swarm.kernels import RWKV7, RWKV7Config, paths, save_checkpoint
from rwkv_swarm.node import KalmanESConfig, Node, NodeConfig
from rwkv_swarm.node.envs import GymEnv
from rwkv_swarm.node.policy import Policy

# velocities and angle, reordered: the policy must keep the world's own order
CARTPOLE = {"kind": "gym", "id": "CartPole-v1", "obs_mask": [3, 0, 2]}


def node_config(env: dict, input_dim: int, output_dim: int, **kw) -> NodeConfig:
    return NodeConfig(model=RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=input_dim,
                                        output_dim=output_dim),
                      env=env, es=KalmanESConfig(population=16), **kw)


def evolved(config: NodeConfig, generations: int) -> Node:
    node = Node(config)
    for _ in range(generations):
        node.generation()
    return node


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    """A node that evolved 4 generations on (masked) CartPole, on injected kernel paths."""
    paths.set_default(paths.PathChooser(tmp_path_factory.mktemp("paths"),
                                        measure=prefer_native_teams))
    try:
        yield evolved(node_config(CARTPOLE, 3, 2, seed=1), 4)
    finally:
        paths.set_default(None)


def centre_episode(node: Node, seed: int, monkeypatch) -> tuple[list, list, list, float]:
    """The node's own centre rollout of one episode: the raw observations and actions its
    gymnasium backend saw, the rows its model saw, and the episode's return."""
    cls, model = type(node.env._backend), node.model
    reset, step, model_step = cls.reset, cls.step, model.step
    seen: list = []
    rows: list = []
    acts: list = []

    def spy_reset(self, seed, keys):
        obs = reset(self, seed, keys)
        seen.append(np.array(obs[0]))
        return obs

    def spy_step(self, actions, live):
        acts.append(np.array(actions[0]))
        out = step(self, actions, live)
        seen.append(np.array(out[0][0]))
        return out

    def spy_model(x, state):
        rows.append(x.numpy().copy())
        return model_step(x, state)

    with monkeypatch.context() as m:
        m.setattr(cls, "reset", spy_reset)
        m.setattr(cls, "step", spy_step)
        m.setattr(model, "step", spy_model)
        returns = node.evaluate_centre(1, seed=seed)
    return seen[:len(acts)], rows, acts, float(returns[0])


def replay(policy: Policy, node: Node, seed: int, monkeypatch) -> list:
    """Drive `policy` on the observations of one centre episode of `node`: it must see the
    same model rows and take the same actions, step by step; returns the actions."""
    observations, rows, actions, _ = centre_episode(node, seed, monkeypatch)
    assert len(rows) == len(actions) == len(observations)
    policy.reset()
    for t, (obs, row, action) in enumerate(zip(observations, rows, actions, strict=True)):
        assert np.array_equal(policy.preprocess(obs[None]), row), (seed, t)
        got = policy.act(obs)
        assert np.asarray(got).dtype == action.dtype and np.array_equal(got, action), (seed, t)
    return actions


def test_a_policy_acts_step_by_step_as_the_node_s_centre(cartpole, monkeypatch):
    node = cartpole
    assert node.env.norm.count > 0 and np.abs(node.env.norm.mean).max() > 0  # real statistics
    policy = Policy.from_node(node)
    assert policy.origin == {"node": "node-0", "generation": 4}
    actions = [a for seed in range(12) for a in replay(policy, node, seed, monkeypatch)]
    assert type(policy.act(np.zeros(4))) is int
    far = np.array([[1e3, -1e3, 1e3, -1e3]])  # normalised beyond obs_clip: clipped, as the world
    assert np.array_equal(policy.preprocess(far), np.float32([[-5, 5, 5]]))
    assert len(actions) >= 100 and {int(a) for a in actions} == {0, 1}


@pytest.mark.parametrize("env, dims", [
    ({"kind": "gym", "id": "Pendulum-v1", "max_steps": 30}, (3, 1)),  # Box actions: tanh-scaled
    ({"kind": "gym", "id": "FrozenLake-v1", "max_steps": 30}, (16, 4)),  # Discrete obs: one-hot
], ids=["pendulum", "frozenlake"])
def test_other_spaces_act_as_the_node_s_centre(env, dims, monkeypatch):
    node = evolved(node_config(env, *dims), 1)
    policy = Policy.from_node(node)
    actions = [a for seed in range(3) for a in replay(policy, node, seed, monkeypatch)]
    assert len(actions) >= 6
    if env["id"] == "Pendulum-v1":  # no termination: 3 whole episodes, actions that vary
        assert len(actions) == 90 and len({a.tobytes() for a in actions}) > 1


def test_noise_of_the_world_is_not_part_of_the_policy(cartpole):
    noisy = Node.restore(cartpole.checkpoint())
    noisy.apply_signal("obs_noise", {"std": 0.5})
    noisy.apply_signal("action_noise", {"level": 0.9})
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    a, b = Policy.from_node(cartpole), Policy.from_node(noisy)
    assert np.array_equal(a.act_batch(obs), b.act_batch(obs))


def same(a, b) -> bool:
    """Equal values, tensors bitwise and of one dtype."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def test_save_and_load_round_trip_bitwise(cartpole, tmp_path):
    policy = Policy.from_node(cartpole)
    written = policy.save(tmp_path)  # a directory: policy.pt inside
    assert written == tmp_path / "policy.pt" and not list(tmp_path.glob(".*tmp"))
    raw = torch.load(written, weights_only=True)
    assert (raw["format"], raw["version"], raw["world"]["keep"]) == ("rwkv-swarm/policy", 1,
                                                                    [3, 0, 2])
    loaded = Policy.load(tmp_path)
    assert same(loaded.to_dict(), policy.to_dict())
    assert Policy.load(policy.save(tmp_path / "p.policy")).to_dict()["origin"] == policy.origin
    obs = np.random.default_rng(1).normal(size=(5, 4)) * 3  # some clip at obs_clip
    for _ in range(4):  # the recurrent state carries over, in both
        assert np.array_equal(loaded.act_batch(obs), policy.act_batch(obs))
        obs = obs[::-1].copy()


def test_a_node_checkpoint_and_a_run_s_snapshot_file_become_the_policy(cartpole, tmp_path):
    from rwkv_swarm.cluster.host import NodeHost
    from rwkv_swarm.swarm.checkpoints import CheckpointStore

    want = Policy.from_node(cartpole).to_dict()
    assert same(Policy.from_snapshot(cartpole.checkpoint()).to_dict(), want)
    host = NodeHost(cartpole.config, "run", snapshot=None)
    try:
        host.node.generation()
        snap = host.snapshot()
        path = CheckpointStore(tmp_path).save_node(0, snap["generation"], snap["snapshot"])
        want = Policy.from_node(host.node).to_dict()
    finally:
        host.close()
    assert same(Policy.from_snapshot(path.read_bytes()).to_dict(), want)
    assert same(Policy.load(path).to_dict(), want)
    assert want["origin"] == {"node": "node-0", "generation": 1}


def test_a_node_s_policy_file_bytes_are_the_file_save_writes(cartpole, tmp_path):
    from rwkv_swarm.cluster.host import NodeHost
    from rwkv_swarm.node.policy import node_policy_file

    written = Policy.from_node(cartpole).save(tmp_path / "saved.pt")
    blob = node_policy_file(cartpole)
    want = Policy.from_node(cartpole).to_dict()
    assert same(Policy.from_bytes(blob).to_dict(), want)
    assert same(Policy.load(written).to_dict(), want)
    (tmp_path / "exported.pt").write_bytes(blob)
    assert same(Policy.load(tmp_path / "exported.pt").to_dict(), want)
    with pytest.raises(ValueError, match="cannot read node-3's policy"):
        Policy.from_bytes(blob[:100], "node-3's policy")
    host = NodeHost(cartpole.config, "run", snapshot=None)
    try:
        host.node.generation()
        out = host.policy()
        want = Policy.from_node(host.node).to_dict()
    finally:
        host.close()
    assert out["generation"] == 1
    assert same(Policy.from_bytes(out["policy"]).to_dict(), want)
    assert want["origin"] == {"node": "node-0", "generation": 1}


def test_a_signal_policy_predicts_the_next_value_from_the_lagged_inputs():
    signal = {"kind": "signal", "lags": 3, "segment_length": 16}
    node = evolved(node_config(signal, 4, 1), 1)
    policy = Policy.from_node(node)
    assert policy.kind == "signal" and policy.env["lags"] == 3
    assert same(Policy.from_snapshot(node.checkpoint()).to_dict(), policy.to_dict())
    obs, state = node.env.reset(1, 0), node.model.zero_state(1)
    for _ in range(10):  # [y_t, y_t-1, y_t-2, y_t-3] -> prediction of y_t+1, state carried
        out, state = node.model.step(torch.from_numpy(obs), state)
        prediction = policy.act(obs[0].astype(np.float64))
        assert type(prediction) is float and prediction == float(out[0, 0])
        obs, _, _ = node.env.step(np.array([[prediction]]))
    with pytest.raises(ValueError, match="a signal world is a stream"):
        policy.make_gym_env()


def test_bad_paths_and_files_are_named(cartpole, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no policy at '.*nowhere\.pt'"):
        Policy.load(tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match="a directory holding policy.pt"):
        Policy.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="directory '.*missing' does not exist"):
        Policy.from_node(cartpole).save(tmp_path / "missing" / "p.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x01 not a policy at all")
    with pytest.raises(ValueError, match="junk.pt' is neither a policy .* nor a node checkpoint"):
        Policy.load(junk)
    control = RWKV7(RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=3, output_dim=2))
    save_checkpoint(control, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="holds a control-mode model checkpoint, not a policy"):
        Policy.load(tmp_path / "model.pt")
    save_checkpoint(RWKV7(RWKV7Config(n_embd=16, n_layer=1, head_size=16, vocab_size=5)),
                    tmp_path / "tokens.pth")
    with pytest.raises(ValueError, match="no 'format' field"):
        Policy.load(tmp_path / "tokens.pth")
    with pytest.raises(ValueError, match="not a node checkpoint"):
        Policy.from_snapshot(b"garbage")


def test_a_damaged_policy_file_names_the_field(cartpole, tmp_path):
    good = Policy.from_node(cartpole).to_dict()

    def fails(d, pattern):
        torch.save(d, tmp_path / "p.pt")
        with pytest.raises(ValueError, match=pattern):
            Policy.load(tmp_path / "p.pt")

    fails({**good, "version": 9}, "format 'rwkv-swarm/policy' version 9, expected")
    world = good["world"]
    fails({**good, "world": {**world, "keep": [0, 1]}},
          r"bad 'world': keep must be 3 distinct indices .* in \[0, 4\), got \[0, 1\]")
    norm = {**world["normalize"], "mean": torch.zeros(4, dtype=torch.float64)}
    fails({**good, "world": {**world, "normalize": norm}},
          r"\['mean'\] must be a float64 tensor of shape \(3,\), got torch.float64 \(4,\)")
    fails({**good, "world": {**world, "action": {"space": "discrete", "n": 3, "start": 0}}},
          "the action space takes 3 outputs, the model gives 2")
    fails({**good, "world": {**world, "kind": "atari"}}, r"kind 'atari' is not one of")
    fails({**good, "model": {**good["model"], "weights": {}}}, r"'model'.*missing tensor")


def test_bad_observations_and_worlds_are_refused(cartpole):
    policy = Policy.from_node(cartpole)
    with pytest.raises(ValueError, match=r"an observation must be shape \(4,\), got shape \(3,\)"):
        policy.act(np.zeros(3))
    with pytest.raises(ValueError, match=r"observation rows \[0\] hold NaN or inf"):
        policy.act(np.array([np.nan, 0, 0, 0]))
    policy.act(np.zeros(4))
    with pytest.raises(ValueError, match="holds 1 rows, this call has 2 observations: call "
                                         "reset"):
        policy.act_batch(np.zeros((2, 4)))
    policy.reset()
    assert policy.act_batch(np.zeros((2, 4))).shape == (2,)
    tracking = Node(node_config({"kind": "gym", "id": "CartPole-v1"}, 3, 2), env=TrackingEnv())
    with pytest.raises(ValueError, match="needs a GymEnv or SignalEnv world.*TrackingEnv"):
        Policy.from_node(tracking)
    closed = Node.restore(cartpole.checkpoint())
    assert isinstance(closed.env, GymEnv)
    closed.env.close()
    with pytest.raises(ValueError, match="GymEnv was closed"):
        Policy.from_node(closed)


SCRIPT = textwrap.dedent("""
    import sys

    import gymnasium as gym

    from rwkv_swarm.node.policy import Policy

    policy = Policy.load(sys.argv[1])
    env = gym.make("CartPole-v1")
    for episode in range(2):
        obs, _ = env.reset(seed=episode)
        policy.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
            total, done = total + reward, terminated or truncated
        print("return", total)
    print("ray imported:", "ray" in sys.modules)
""")


def test_a_plain_script_plays_a_saved_policy_without_ray(cartpole, tmp_path):
    policy = Policy.from_node(cartpole)
    path = policy.save(tmp_path / "cartpole.policy")
    (tmp_path / "play.py").write_text(SCRIPT)
    # both on PyTorch's step (the native kernel's choice is measured per process)
    env = {**os.environ, "RWKV_SWARM_NATIVE": "0"}
    done = subprocess.run([sys.executable, str(tmp_path / "play.py"), str(path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    policy.model.step_path = "torch"
    expected = policy.play(2, seed=0)
    assert lines == [f"return {r}" for r in expected] + ["ray imported: False"]
    assert all(r >= 1 for r in expected)
