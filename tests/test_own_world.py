"""A world of one's own (tests/worlds/reach1d.py, a module outside rwkv_swarm): an Environment
class by import path (kind "python"), a gymnasium id its module registers (`module`, or
"module:Id"); in a Node, in a SwarmConfig, from another working directory with the folder off
the Python path (as the `rwkv-swarm` command runs), and in a Ray actor started with
`runtime_env_for`. Worlds that cannot be built are refused when the config is made, in one
line that says how to fix them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest
from worlds.reach1d import Reach1D, Reach1DGym

from rwkv_swarm.cluster.worlds import runtime_env_for
from rwkv_swarm.node import Node, NodeConfig
from rwkv_swarm.node.envs import PythonEnv, env_spec, make_env
from rwkv_swarm.swarm import Signal, SwarmConfig
from rwkv_swarm.swarm.signals import schema, validate
from rwkv_swarm.util.configio import ConfigError

WORLD = Path(__file__).parent / "worlds" / "reach1d.py"
PYTHON = {"kind": "python", "class": "worlds.reach1d:Reach1D", "length": 6}
SMALL = {"nodes": 2, "es": {"population": 8}, "resources": {"cpus": 0.5}}
MODEL = {"n_embd": 16, "n_layer": 1, "head_size": 16, "dim_w": 8, "dim_a": 8, "dim_v": 8,
         "dim_g": 8, "dim_ffn": 32, "input_dim": 2, "output_dim": 1}


@pytest.fixture
def isolated_imports(monkeypatch):
    """Imports, path entries and gymnasium ids a test adds are gone after it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules, ids = set(sys.modules), set(gymnasium.registry)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    for env_id in set(gymnasium.registry) - ids:
        del gymnasium.registry[env_id]


def node_config(env: dict) -> NodeConfig:
    return NodeConfig(model=MODEL, env=env, es={"population": 8})


def test_an_environment_class_by_import_path_runs_in_a_node_with_its_signals():
    node = Node(node_config(PYTHON))
    assert isinstance(node.env, PythonEnv) and isinstance(node.env.world, Reach1D)
    assert node.env.world.length == 6 and env_spec(node.env) == PYTHON == node.config.env
    assert node.generation()["fitness_mean"] < 0  # -(position - target)^2 per step
    assert schema(PYTHON) == Reach1D.SIGNALS
    node.apply_signal("move_target", {"offset": 0.5})
    assert node.env.world.offset == 0.5
    restored = Node.restore(node.checkpoint())
    assert restored.env.world.offset == 0.5 and restored.config == node.config
    with pytest.raises(ValueError, match=r"unknown signal 'gravity'; this environment accepts "
                                         r"\['move_target'\]"):
        validate(Signal("gravity", {}), PYTHON, 2)


def test_a_class_object_is_kept_as_its_import_path():
    config = SwarmConfig(env={"kind": "python", "class": Reach1D, "length": 6}, **SMALL)
    assert config.env == PYTHON
    assert SwarmConfig.from_toml_text(config.to_toml()) == config
    assert [c.model.input_dim for c in config.node_configs()] == [2, 2]


def test_a_gymnasium_id_of_ones_own_names_the_module_that_registers_it():
    by_key = {"kind": "gym", "id": "Reach1D-v0", "module": "worlds.reach1d"}
    by_prefix = {"kind": "gym", "id": "worlds.reach1d:Reach1D-v0"}
    for env in (by_key, by_prefix):
        (node,) = SwarmConfig(env=env, nodes=1, es={"population": 8}).node_configs()
        assert node.model.input_dim == 2 and node.env == env
    assert Node(node_config(by_key)).generation()["fitness_mean"] < 0
    assert gymnasium.registry["Reach1D-v0"].entry_point is Reach1DGym


def test_an_id_only_this_process_registered_is_refused_naming_the_module_to_give():
    # importing worlds.reach1d (above) registered Reach1D-v0 in this process, and only here
    with pytest.raises(ConfigError) as info:
        SwarmConfig(env={"kind": "gym", "id": "Reach1D-v0"}, **SMALL)
    assert info.value.key == "env" and "\n" not in str(info.value)
    assert "registered in this process only" in str(info.value)
    assert 'module = "worlds.reach1d"' in str(info.value)
    assert Node(node_config({"kind": "gym", "id": "Reach1D-v0"})).env.action_dim == 1  # alone


class NoProtocol:
    def reset(self, n, seed, keys=None):
        return None


@pytest.mark.parametrize("env, message", [
    ({"kind": "python", "class": "worlds.reach1d"}, "must be 'package.module:ClassName'"),
    ({"kind": "python", "class": "worlds.reach2d:Reach1D"},
     "cannot import module 'worlds.reach2d': package 'worlds' has no module 'reach2d'"),
    ({"kind": "python", "class": "mytasks_nowhere:Reach"},
     r"no mytasks_nowhere.py or mytasks_nowhere/ on the Python path or in the working "
     r"directory .*; run from the folder that holds it, add that folder to PYTHONPATH"),
    ({"kind": "python", "class": "worlds.reach1d:Reach2D"},
     r"module 'worlds.reach1d' has no class 'Reach2D'; it defines \['Reach1D', 'Reach1DGym'\]"),
    ({"kind": "python", "class": f"{__name__}:NoProtocol"},
     r"does not implement the Environment protocol .*: it lacks the methods \['step', "),
    ({**PYTHON, "lenght": 3}, r"option\(s\) \['lenght'\] not taken by worlds.reach1d:Reach1D; "
                              r"its constructor takes \['length', 'speed'\]"),
    ({**PYTHON, "length": 0}, r"cannot build the world: worlds.reach1d:Reach1D\(\*\*\{'length': "
                              r"0\}\) failed: ValueError: need length >= 1"),
    ({"kind": "gym", "id": "Reach2D-v0"}, r"unknown gymnasium env id 'Reach2D-v0'; close "
                                          r"matches: .*module = \"mytasks\""),
    ({"kind": "gym", "id": "Reach1D-v0", "module": "mytasks_nowhere"},
     "cannot import module 'mytasks_nowhere'"),
])
def test_a_world_that_cannot_be_built_is_refused_in_one_line_saying_why(env, message):
    with pytest.raises(ConfigError, match=message) as info:
        SwarmConfig(env=env, **SMALL).node_configs()
    assert info.value.key == "env" and "\n" not in str(info.value)


def test_a_class_in_the_script_being_run_is_refused_for_a_swarm(monkeypatch):
    class Local(Reach1D):
        pass

    Local.__module__, Local.__qualname__ = "__main__", "Local"
    monkeypatch.setattr(sys.modules["__main__"], "Local", Local, raising=False)
    spec = {"kind": "python", "class": Local}
    assert Node(node_config(spec)).env.observation_dim == 2  # one process: fine
    with pytest.raises(ConfigError, match=r"defined in the script you run; .*move it into a "
                                          r"module of its own"):
        SwarmConfig(env=spec, **SMALL)


CHECK = """
import json, os
from rwkv_swarm.cluster.worlds import runtime_env_for
from rwkv_swarm.swarm import SwarmConfig
out = {}
for name in ("python.toml", "gym.toml"):
    config = SwarmConfig.from_toml(name)
    nodes = config.node_configs()
    out[name] = {"dims": [(c.model.input_dim, c.model.output_dim) for c in nodes],
                 "runtime_env": runtime_env_for(config, os.getcwd())}
print(json.dumps(out))
"""
PYTHON_TOML = """
nodes = 2
env = {kind = "python", class = "mytasks:Reach1D", length = 5}
variations = [{nodes = [1], env = {length = 3}}]
"""
GYM_TOML = 'env = {kind = "gym", id = "Reach1D-v0", module = "mytasks"}\n'



def test_from_another_working_directory_off_the_python_path(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(WORLD, project / "mytasks.py")
    (project / "python.toml").write_text(PYTHON_TOML)
    (project / "gym.toml").write_text(GYM_TOML)
    # -P: the working directory is not on the path, as for the installed `rwkv-swarm` command
    done = subprocess.run([sys.executable, "-P", "-c", CHECK], cwd=project, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    runtime_env = {"env_vars": {"PYTHONPATH": f"{project.resolve()}{os.pathsep}${{PYTHONPATH}}"}}
    assert json.loads(done.stdout) == {
        "python.toml": {"dims": [[2, 1], [2, 1]], "runtime_env": runtime_env},
        "gym.toml": {"dims": [[2, 1]] * 4, "runtime_env": runtime_env}}
    (project / "bad.toml").write_text(PYTHON_TOML.replace("mytasks:Reach1D", "mytasks:Reach"))
    cli = [sys.executable, "-P", "-m", "rwkv_swarm.swarm.commands.cli", "run", "bad.toml"]
    done = subprocess.run(cli, cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == ("rwkv-swarm run: env: module 'mytasks' has no class 'Reach'; it "
                           "defines ['Reach1D', 'Reach1DGym'] (in bad.toml)\n")


def test_runtime_env_names_the_folders_of_the_users_modules_only(tmp_path, monkeypatch,
                                                                 isolated_imports):
    assert runtime_env_for(SwarmConfig(env={"kind": "signal"}), tmp_path) == {}
    installed = {"kind": "gym", "id": "gymnasium.envs.classic_control:CartPole-v1"}
    assert runtime_env_for([installed], tmp_path) == {}  # every process has gymnasium
    tests = str(WORLD.parent.parent.resolve())
    config = SwarmConfig(env=PYTHON, variations=[{"nodes": [1], "env": {"length": 3}}], **SMALL)
    expected = {"env_vars": {"PYTHONPATH": f"{tests}{os.pathsep}${{PYTHONPATH}}"}}
    assert runtime_env_for(config, tmp_path) == expected
    assert runtime_env_for(config.node_configs(), tmp_path) == expected
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(WORLD, other / "mytasks_other.py")
    monkeypatch.chdir(other)
    both = [PYTHON, {"kind": "python", "class": "mytasks_other:Reach1D"}]
    assert runtime_env_for(both, other)["env_vars"]["PYTHONPATH"].split(os.pathsep) == [
        tests, str(other.resolve()), "${PYTHONPATH}"]


def test_a_ray_actor_started_with_runtime_env_for_builds_the_world(ray_session, tmp_path,
                                                                   monkeypatch,
                                                                   isolated_imports):
    import ray

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(WORLD, project / "mytasks_ray.py")
    monkeypatch.chdir(project)  # where the driver finds it; the actors are elsewhere
    spec = {"kind": "python", "class": "mytasks_ray:Reach1D", "length": 4}
    assert make_env(spec).observation_dim == 2

    @ray.remote(num_cpus=0.1, max_restarts=0)
    class Builder:
        def build(self, spec: dict) -> tuple[int, int]:
            env = make_env(spec)
            return env.observation_dim, env.action_dim

    plain = Builder.remote()  # both start at once
    given = Builder.options(runtime_env=runtime_env_for([spec], project)).remote()
    built, failed = given.build.remote(spec), plain.build.remote(spec)
    assert ray.get(built, timeout=120) == (2, 1)
    with pytest.raises(ray.exceptions.RayTaskError, match="cannot import module 'mytasks_ray'"):
        ray.get(failed, timeout=120)
    for actor in (plain, given):
        ray.kill(actor)

