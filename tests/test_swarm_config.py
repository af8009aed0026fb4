"""SwarmConfig: TOML in, every bad key or value refused before any actor starts, naming it."""

from __future__ import annotations

import pytest

from rwkv_swarm.swarm import SwarmConfig
from rwkv_swarm.util.configio import ConfigError

GOOD = """
nodes = 4
mode = "gossip"
generations = 10
[env]
kind = "signal"
lags = 3
[es]
population = 16
sigma = 0.05
[topology]
kind = "small-world"
k = 2
[resources]
cpus = 0.5
[[variations]]
nodes = [2, 3]
env = { seed = 7 }
[[signals]]
generation = 5
name = "freq_shift"
params = { freq = [0.021, 0.047, 0.25] }
"""


def from_text(tmp_path, text: str) -> SwarmConfig:
    path = tmp_path / "swarm.toml"
    path.write_text(text)
    return SwarmConfig.from_toml(path)


def test_a_toml_config_resolves_to_one_node_config_per_node(tmp_path):
    config = from_text(tmp_path, GOOD)
    nodes = config.node_configs()
    assert [n.node_id for n in nodes] == [0, 1, 2, 3]
    assert nodes[0].model.input_dim == 4 and nodes[0].model.output_dim == 1  # from the env
    assert nodes[2].env["seed"] == 7 and "seed" not in nodes[0].env
    assert nodes[1].es.population == 16 and nodes[1].exchange.mode == "gossip"
    assert from_text(tmp_path, config.to_toml()) == config


def test_consensus_groups_split_the_nodes(tmp_path):
    config = SwarmConfig(nodes=4, mode="consensus", group_size=2, env={"kind": "signal"})
    ex = [n.exchange for n in config.node_configs()]
    assert [(e.group, e.member, e.group_size) for e in ex] == [(0, 0, 2), (0, 1, 2), (1, 0, 2),
                                                              (1, 1, 2)]


@pytest.mark.parametrize("text, key, message", [
    ("nodes = 0", "nodes", "expected an integer >= 1"),
    ("node = 4", "node", r"unknown key; SwarmConfig accepts \['nodes'"),
    ('mode = "mesh"', "mode", r"expected one of \['isolated', 'consensus', 'gossip'\]"),
    ('mode = "consensus"\nsync = false', "sync", "needs sync = true"),
    ("nodes = 4\ngroup_size = 3", "group_size", "divisor of nodes"),
    ("[topology]\nkind = \"k-regular\"\nk = 3", "topology", "even degree k"),
    ("[es]\npopulation = 7", "es", "population must be even"),
    ("[es]\ndirection = 1", "es.direction", "expected a table"),
    ('strategy = "lowrank"\n[es]\nsigma_surprise = 2.0', "es.sigma_surprise", "unknown key"),
    ("[model]\nn_embd = \"wide\"", "model.n_embd", "expected an integer"),
    ('[env]\nkind = "atari"', "env", "unknown environment kind 'atari'"),
    ("[[variations]]\nnodes = [9]", "variations[0].nodes", r"node ids in 0\.\.3"),
    ('[[signals]]\ngeneration = 2\nname = "gravity"', "signals[0]", "unknown signal 'gravity'"),
    ("[resources]\ncpus = 0", "resources.cpus", "cpus > 0"),
    ("[resources]\ngpus = -0.5", "resources.gpus", r"got -0\.5, expected 0 \(nodes on CPUs\), a "
                                                 r"share of one GPU in \(0, 1\]"),
    ("[resources]\ngpus = nan", "resources.gpus", "got nan, expected a finite number"),
    ("[resources]\ngpus = inf", "resources.gpus", "got inf, expected a finite number"),
    ("[resources]\ngpus = 1.5", "resources.gpus", "or a whole number of GPUs per node"),
    ('[resources]\ngpus = "half"', "resources.gpus", "expected a"),
    ("[migration]\ngate = 1.5", "migration", "gate < 1"),
])
def test_a_bad_key_or_value_is_refused_naming_it(tmp_path, text, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_text(tmp_path, text)
    assert info.value.key == key


def test_a_missing_or_broken_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        SwarmConfig.from_toml(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        from_text(tmp_path, "nodes = ")
