"""Every setting documented and taken as written: docs/config.md is what the generator makes
from the config classes (every key with a meaning), the comment reader files each comment
under its field, and nested tables are taken as dicts in Python as they are from TOML."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

from rwkv_swarm.kalman import DirectionConfig, FitnessConfig
from rwkv_swarm.kernels import RWKV7Config
from rwkv_swarm.node import ESConfig, ExchangeConfig, KalmanESConfig, NodeConfig
from rwkv_swarm.node.envs import GymConfig, PythonConfig, SignalConfig
from rwkv_swarm.swarm import SwarmConfig
from rwkv_swarm.swarm.config import Migration, Resources, Scheduled, Topology, Variation
from rwkv_swarm.swarm.configdoc import ACCEPTED, FREE, main, render
from rwkv_swarm.util.configdoc import field_docs
from rwkv_swarm.util.configio import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "config.md"
DOCUMENTED = [SwarmConfig, Topology, Resources, Migration, Variation, Scheduled, RWKV7Config,
              ESConfig, KalmanESConfig, FitnessConfig, DirectionConfig, GymConfig, SignalConfig,
              PythonConfig, NodeConfig, ExchangeConfig]
KEYS = {"env_id": "id", "class_path": "class", "options": "any other key"}
LEFT_OUT = {"vocab_size", "input_dim", "output_dim"}  # token mode; sizes from the env


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line]


def test_the_committed_doc_is_what_the_generator_makes():
    assert DOC.read_text() == render(), ("docs/config.md is out of step with the config "
                                         "classes: python -m rwkv_swarm.swarm.configdoc > "
                                         "docs/config.md")


def test_the_generator_entry_prints_the_doc(capsys):
    assert main() == 0
    assert capsys.readouterr().out == DOC.read_text()


def test_every_key_is_listed_with_a_meaning_and_every_choice_with_its_values():
    rows = table_rows(render())
    listed = {r[0] for r in rows if len(r) == 5}
    for cls in DOCUMENTED:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in LEFT_OUT:
                continue
            assert KEYS.get(f.name, f.name) in listed, f"{cls.__name__}.{f.name} not in the doc"
            choices = any(f.name in ACCEPTED.get(c, {}) for c in cls.__mro__)
            tp = hints[f.name]
            if tp is str or (get_origin(tp) in (Union, UnionType) and str in get_args(tp)):
                assert choices or (cls, f.name) in FREE, \
                    f"{cls.__name__}.{f.name}: a string without its accepted values"
    empty = [r[0] for r in rows if len(r) == 5 and not r[4]]
    assert not empty, f"keys without a meaning: {empty}"


def test_the_python_example_in_the_doc_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    exec(compile(code, "docs/config.md", "exec"), {"__name__": "__doc__"})


@dataclass(frozen=True)
class Commented:
    """A class written the ways the project writes them.

    steps: taken from the docstring, when no comment says anything; rate is
        its companion, and used by `steps` too.
    """

    rate: float = 0.1  # a trailing comment that goes on and on, or
    # continues on the next line
    # and then this block leads the next field, which has no comment of its own
    kind: str = "plain"
    steps: int = 3
    limit: int = 5  # a comment followed by a line that is its own: the next field
    # has a comment of its own
    flag: bool = False  # which ends here
    named: str = field(default="x", metadata={"doc": "from the metadata"})


def test_comments_are_filed_under_the_field_they_describe():
    docs = field_docs(Commented)
    assert docs["rate"] == "a trailing comment that goes on and on, or continues on the next line"
    assert docs["kind"] == ("and then this block leads the next field, which has no comment of "
                            "its own")
    assert docs["steps"].startswith("taken from the docstring, when no comment says anything;")
    assert docs["limit"] == ("a comment followed by a line that is its own: the next field has a "
                             "comment of its own")
    assert docs["flag"] == "which ends here" and docs["named"] == "from the metadata"


def test_nested_tables_are_taken_as_dicts_as_from_toml():
    kw: dict[str, Any] = dict(
        nodes=4, env={"kind": "signal", "lags": 3}, resources={"cpus": 0.5},
        es={"population": 16, "fitness": {"surprise_p": 0.95}}, topology={"kind": "full"},
        migration={"gate": 0.95}, variations=[{"nodes": [2, 3], "env": {"seed": 7}}],
        signals=[{"generation": 5, "name": "noise", "params": {"std": 0.1}}])
    config = SwarmConfig(**kw)
    assert config == SwarmConfig.from_dict(kw) == SwarmConfig.from_toml_text(config.to_toml())
    assert config.resources == Resources(cpus=0.5) and config.topology.kind == "full"
    # a table replaces its default whole, as docs/config.md says
    assert config.es == KalmanESConfig(population=16, fitness=FitnessConfig(surprise_p=0.95))
    assert config.variations == (Variation(nodes=(2, 3), env={"seed": 7}),)
    assert config.signals[0] == Scheduled(5, "noise", {"std": 0.1})
    lowrank = SwarmConfig(strategy="lowrank", es={"population": 8}, env={"kind": "signal"})
    assert type(lowrank.es) is ESConfig and lowrank.es.population == 8
    node = NodeConfig(model={"n_embd": 16, "n_layer": 1, "head_size": 16, "input_dim": 4,
                             "output_dim": 1}, env={"kind": "signal", "lags": 3},
                      es={"population": 8}, exchange={"mode": "gossip"})
    assert node.model == RWKV7Config(n_embd=16, n_layer=1, head_size=16, input_dim=4,
                                     output_dim=1) and node.exchange.mode == "gossip"


@pytest.mark.parametrize("changes, key, message", [
    ({"resources": {"cpuz": 1}}, "resources.cpuz", r"unknown key; Resources accepts \['cpus'"),
    ({"resources": {"cpus": "half"}}, "resources.cpus", "got 'half', expected a number"),
    ({"es": {"population": 7}}, "es", "population must be even"),
    ({"es": {"fitness": {"p": 1}}}, "es.fitness.p", "unknown key; FitnessConfig accepts"),
    ({"strategy": "lowrank", "es": {"sigma_surprise": 2.0}}, "es.sigma_surprise",
     "unknown key; ESConfig accepts"),
    ({"topology": {"kind": "mesh"}}, "topology.kind", "expected one of"),
    ({"migration": {"gate": 2.0}}, "migration", "gate < 1"),
    ({"variations": [{"nodes": [1], "envs": {}}]}, "variations[0].envs", "unknown key"),
    ({"signals": [{"generation": 1}]}, "signals[0]", "name"),
    ({"signals": [{"generation": 1, "name": "noise", "when": 2}]}, "signals[0].when",
     "unknown key; Scheduled accepts"),
])
def test_a_bad_nested_key_in_python_is_named_as_in_toml(changes, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        SwarmConfig(**{"env": {"kind": "signal"}, **changes})
    assert info.value.key == key
