"""docs/config.md, generated from the config dataclasses: every key, its type, default, accepted
values and meaning (read from the comments next to each field, `util.configdoc`).

    python -m rwkv_swarm.swarm.configdoc > docs/config.md

tests/test_config_docs.py fails when the committed file differs from `render()`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from ..cluster.placement import PLACEMENTS
from ..kalman import DirectionConfig, FitnessConfig
from ..kalman import direction as _direction
from ..kalman.fitness import NOISE_MODELS
from ..kernels import RWKV7Config
from ..kernels.model import GROUPS
from ..node import ESConfig, ExchangeConfig, KalmanESConfig, NodeConfig
from ..node.config import DEVICES, INITS, MODES, STRATEGY_CONFIGS
from ..node.envs import GYM_SIGNALS, PROCESSES, SIGNALS, GymConfig, PythonConfig, SignalConfig
from ..node.envs.gym import VECTORIZE_MODES
from ..node.kalman_es import STEP_RULES
from ..node.optim import OPTIMIZERS
from ..node.shaping import SHAPINGS
from ..node.strategy import FUSIONS
from ..util.configdoc import default_of, rows, table, value_text
from .config import Migration, Resources, Scheduled, SwarmConfig, Topology, Variation
from .topology import KINDS as TOPOLOGIES


def _one_of(values: Any) -> str:
    return ", ".join(value_text(v) for v in values)


# accepted values of the fields whose type does not say them; FREE: any string is accepted
ACCEPTED: dict[type, dict[str, str]] = {
    SwarmConfig: {"mode": _one_of(MODES), "strategy": _one_of(STRATEGY_CONFIGS),
                  "init": _one_of(INITS)},
    NodeConfig: {"strategy": _one_of(STRATEGY_CONFIGS), "init": _one_of(INITS),
                 "device": _one_of(DEVICES)},
    ExchangeConfig: {"mode": _one_of(MODES)},
    Topology: {"kind": _one_of(TOPOLOGIES)},
    Resources: {"placement": _one_of(PLACEMENTS),
                "nodes_per_actor": 'an integer >= 1, or "auto"'},
    ESConfig: {"optimizer": _one_of(OPTIMIZERS), "shaping": _one_of(SHAPINGS),
               "fusion": _one_of(FUSIONS), "include": f"some of {_one_of(GROUPS)}"},
    KalmanESConfig: {"step_rule": _one_of(STEP_RULES)},
    FitnessConfig: {"noise_model": _one_of(NOISE_MODELS)},
    DirectionConfig: {"dtype": _one_of(_direction._DTYPES)},
    GymConfig: {"vectorize": _one_of(VECTORIZE_MODES)},
    SignalConfig: {"process": f"{_one_of(PROCESSES)}, or a table with `name` and its "
                              "parameters (below)"},
}
FREE = {(SwarmConfig, "run_dir"), (GymConfig, "env_id"), (GymConfig, "module"),
        (PythonConfig, "class_path"), (Scheduled, "name")}
# meanings of fields whose source says nothing next to them
MEANINGS: dict[type, dict[str, str]] = {
    KalmanESConfig: {"direction": "the gradient's belief (the `[es.direction]` table)",
                     "lr_scale_range": "adapt_lr: the lr scale stays within [low, high]",
                     "sigma_scale_max": "largest sigma scale that surprises can widen to"},
}
TYPES = {SignalConfig: {"process": str | dict[str, Any]}, PythonConfig: {"options": Any}}


def section(title: str, cls: type, text: str = "", **kw: Any) -> str:
    """A heading, `text`, and the table of `cls`'s keys (accepted values and meanings from
    ACCEPTED and MEANINGS for it and the classes it derives from)."""
    accepted: dict[str, str] = {}
    meanings: dict[str, str] = {}
    for owner in reversed(type.mro(cls)):
        accepted.update(ACCEPTED.get(owner, {}))
        meanings.update(MEANINGS.get(owner, {}))
    body = table(rows(cls, accepted=accepted, meanings=meanings, types_=TYPES.get(cls), **kw))
    intro = f"{text}\n\n" if text else ""
    return f"### {title}\n\n{intro}{body}\n"


def changed(default: Any, cls: type) -> str:
    """The keys where `default` (a table or an instance of `cls`) differs from `cls`'s own
    defaults, as TOML."""
    base = {f.name: default_of(f) for f in dataclasses.fields(cls)}
    items = default.items() if isinstance(default, dict) else (
        (f.name, getattr(default, f.name)) for f in dataclasses.fields(default))
    return ", ".join(f"{k} = {value_text(v)}" for k, v in items if base.get(k) != v)


def swarm_default(name: str) -> Any:
    return default_of({f.name: f for f in dataclasses.fields(SwarmConfig)}[name])


def signals_table(signals: dict[str, dict[str, str]]) -> str:
    return table([(f"`{name}`", f"`{p}`", text) for name, params in signals.items()
                  for p, text in params.items()], ("signal", "parameter", "meaning"))


def render() -> str:
    """The whole of docs/config.md."""
    parts = [HEAD, "## The swarm (`SwarmConfig`)\n", section(
        "Top level", SwarmConfig, "Keys of the file itself; the tables below are its sections.")]
    parts += [section("`[topology]`", Topology, "Who gossips with whom (docs/swarm.md)."),
              section("`[model]`", RWKV7Config, MODEL_TEXT.format(
                  changed(swarm_default("model"), RWKV7Config)),
                  skip=("vocab_size", "input_dim", "output_dim")),
              section("`[es]`", ESConfig, ES_TEXT.format(
                  changed(swarm_default("es"), KalmanESConfig))),
              section("`[es]`, strategy \"kalman\" only", KalmanESConfig,
                      skip=tuple(f.name for f in dataclasses.fields(ESConfig))),
              section("`[es.fitness]`", FitnessConfig, FITNESS_TEXT.format(
                  changed(default_of({f.name: f for f in dataclasses.fields(ESConfig)}
                                     ["fitness"]), FitnessConfig))),
              section("`[es.direction]`", DirectionConfig,
                      "strategy \"kalman\": how the gradient's belief drifts (docs/kalman.md)."),
              section("`[migration]`", Migration),
              section("`[resources]`", Resources),
              section("`[[variations]]`", Variation, VARIATIONS_TEXT),
              section("`[[signals]]`", Scheduled, SCHEDULED_TEXT)]
    parts += [ENV_HEAD, section('kind = "gym"', GymConfig, GYM_TEXT, keys={"env_id": "id"}),
              section('kind = "signal"', SignalConfig, SIGNAL_TEXT), processes(),
              section('kind = "python"', PythonConfig, PYTHON_TEXT,
                      keys={"class_path": "class", "options": "any other key"}),
              "## Signals\n\n" + SIGNALS_TEXT,
              '### kind = "gym"\n\n' + signals_table(GYM_SIGNALS) + "\n",
              '### kind = "signal"\n\n' + signals_table(SIGNALS) + "\n",
              '### kind = "python"\n\n' + PYTHON_SIGNALS_TEXT]
    parts += ["## One node (`NodeConfig`)\n\n" + NODE_TEXT,
              section("`NodeConfig`", NodeConfig), section("`[exchange]`", ExchangeConfig)]
    return "\n".join(parts)


def processes() -> str:
    """One table per process of kind "signal"."""
    out = ["#### Processes\n\nThe `process` key names one of these, or is a table with "
           "`name` and some of its parameters.\n"]
    for name, cls in PROCESSES.items():
        doc = " ".join((cls.__doc__ or "").split())
        out.append(f"`{name}`: {doc}\n\n" + table(rows(cls)) + "\n")
    return "\n".join(out)


def main() -> int:
    sys.stdout.write(render())
    return 0


HEAD = """# Settings

<!-- Generated by `python -m rwkv_swarm.swarm.configdoc > docs/config.md` from the config
classes; tests/test_config_docs.py fails when this file is out of step with them. To change a
meaning, edit the comment next to the field in the source, then regenerate. -->

Every setting of a swarm, with its type, its default, the values it accepts and what it means.
A swarm is one TOML file (`rwkv-swarm run swarm.toml`, examples in configs/) or a
`SwarmConfig` in Python, made in any of these ways:

```python
from rwkv_swarm import SwarmConfig

config = SwarmConfig.from_toml("configs/signal.toml")     # a file; from_toml_text(text) for text
config = SwarmConfig.from_dict({"nodes": 2, "env": {"kind": "signal", "lags": 3},
                                "es": {"population": 16}})   # nested dicts, as TOML gives them
config = SwarmConfig(nodes=2, env={"kind": "signal", "lags": 3}, es={"population": 16},
                     resources={"cpus": 0.5})              # keywords; tables as dicts or classes
print(config.to_toml())                                   # and back: to_toml(), to_dict()
```

Every key and value is checked when the config is made, before any actor starts; an error
(`rwkv_swarm.util.configio.ConfigError`) names the dotted key (`resources.cpus`,
`variations[0].nodes`), the bad value and what is accepted. A table replaces its default
whole: keys it leaves out take the defaults listed here.
"""
MODEL_TEXT = ("The RWKV-7 policy of every node (`RWKV7Config`). Without a `[model]` table a "
              "swarm uses {}; input_dim and output_dim always come from the environment.")
ES_TEXT = ("The evolution strategy: `LowRankES` for strategy \"lowrank\" (these keys), "
           "`KalmanES` for \"kalman\" (these and the next table's); docs/evolution.md. Without "
           "an `[es]` table a swarm uses {}. Each node's noise derives from `seed`, the swarm "
           "seed and its lineage (`stream` is set per node).")
FITNESS_TEXT = ("How a node's fitness belief models drift, noise and surprise (docs/kalman.md). "
                "Without an `[es.fitness]` table: {}.")
VARIATIONS_TEXT = ("Give some nodes other options: each `[[variations]]` entry merges its `env` "
                   "and `es` keys over the swarm's for the nodes it lists (later entries win).")
SCHEDULED_TEXT = ("Signals the swarm applies by itself; `rwkv-swarm inject` and "
                  "`Swarm.inject` send them to a running swarm. The signal and its parameters "
                  "are checked against the environment (see Signals below).")
ENV_HEAD = """## `[env]`: the world

The table's `kind` picks the world; its other keys are that kind's options. The default is
`{kind = "gym", id = "CartPole-v1"}`. In Python a spec may also be a short string:
`"gym:CartPole-v1"`, `"signal"`, `"signal:mackey_glass"`. Every node builds its own copy of the
world from this table, in its own process: a module the world needs is imported from the
Python path or the working directory (docs/environments.md, "Your own world").
"""
GYM_TEXT = ("Any registered gymnasium id, run as n copies (docs/environments.md). An id of your "
            "own: name the module that registers it (`module = \"mytasks\"`, or "
            "`id = \"mytasks:Reach1D-v0\"`).")
SIGNAL_TEXT = "Next-value prediction on a synthetic stream (docs/environments.md)."
PYTHON_TEXT = ("A class of your own implementing the Environment protocol "
               "(`rwkv_swarm.node.Environment`), e.g. `{kind = \"python\", class = "
               "\"mytasks:Reach1D\", length = 16}` builds `mytasks.Reach1D(length=16)`. A bad "
               "path, a missing class, a class without the protocol's methods or options its "
               "constructor does not take are refused when the config is made.")
SIGNALS_TEXT = ("A signal changes the world of a running swarm: `[[signals]]` in the config, "
                "`rwkv-swarm inject <run-id> NAME key=value ...`, or `Swarm.inject(Signal(name, "
                "params))`. Which signals there are depends on the environment's kind.\n")
PYTHON_SIGNALS_TEXT = ("The class's own: a class attribute `SIGNALS = {name: {parameter: "
                       "meaning}}` lists them (none when absent), and its `apply_signal(name, "
                       "params)` applies them.\n")
NODE_TEXT = ("One node on its own, in Python (`Node(NodeConfig(...))`, no Ray). A swarm makes "
             "one per node from its `SwarmConfig` (`node_configs()`). `model` is required and "
             "must be in control mode (input_dim and output_dim set, matching the "
             "environment); `env` takes the `[env]` tables above.\n")


if __name__ == "__main__":
    sys.exit(main())
