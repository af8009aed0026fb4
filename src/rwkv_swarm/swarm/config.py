"""`SwarmConfig`: a whole swarm as one frozen dataclass, from TOML or from Python.

    SwarmConfig.from_toml("swarm.toml")                  a file; from_toml_text(text) for text
    SwarmConfig.from_dict({"nodes": 8, "es": {...}})     nested dicts, as TOML gives them
    SwarmConfig(nodes=8, resources={"cpus": 0.5})        keywords; nested tables as dicts or
                                                         as their dataclasses

Every key and value is checked when the config is made, before any actor starts: an error
names the dotted key, the bad value and what is accepted (`util.configio.ConfigError`); a world
the nodes could not build (a module they cannot import, an id only this process registered) is
refused here too. `node_configs()` resolves it into one `NodeConfig` per node (the model's input
and output sizes come from the environment). Every key is listed in docs/config.md, generated
from these classes by `python -m rwkv_swarm.swarm.configdoc`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..cluster.placement import PLACEMENTS
from ..kernels import RWKV7Config
from ..node import MODES, STRATEGY_CONFIGS, ESConfig, ExchangeConfig, KalmanESConfig, NodeConfig
from ..node.config import INITS, es_field_type
from ..node.environment import Environment
from ..node.envs import env_config, env_modules, env_table, make_env
from ..util import configio
from ..util.configio import ConfigError, ConfigFile
from .signals import Signal, validate
from .topology import KINDS, neighbours

# about 3k evolved weights: a population of 32-64 resolves its gradient (docs/evolution.md)
TINY_MODEL = {"n_embd": 16, "n_layer": 1, "head_size": 16, "dim_w": 8, "dim_a": 8, "dim_v": 8,
              "dim_g": 8, "dim_ffn": 32}


@dataclass(frozen=True)
class Topology:
    kind: str = "ring"  # "ring", "k-regular", "small-world" (Watts-Strogatz) or "full"
    k: int = 2  # degree of "k-regular", and of the lattice "small-world" rewires (even)
    rewire: float = 0.1  # small-world: probability of rewiring each lattice edge


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0  # CPUs per node (fractions allowed); an actor of k nodes asks Ray for
    #                    k x cpus, and torch gets max(1, int(k x cpus)) threads in it
    gpus: float = 0.0  # GPUs per node: 0 (the node runs on its CPUs), a share of one GPU in
    # (0, 1] (e.g. 0.5: two nodes per GPU) or a whole number; an actor of k nodes asks for
    # k x gpus; above 0 the node's model, populations, rollouts and strategy state live on
    # its CUDA device
    placement: str = "none"  # "none", "pack" or "spread" (a Ray placement group of the actors)
    # nodes hosted by one actor (one process), k >= 1; "auto": no more actors than whole CPUs
    # the swarm is given, ceil(nodes / max(1, floor(nodes x cpus))) nodes each
    nodes_per_actor: int | str = 1

    @property
    def device(self) -> str:
        """The device of every node: "cuda" with a GPU share, else "cpu". The one place
        where a node's device is decided."""
        return "cuda" if self.gpus > 0 else "cpu"


@dataclass(frozen=True)
class Migration:
    enabled: bool = True  # move weights (and states) from better nodes to worse ones
    # the source must be best with P >= gate, and better than the migrant too: at 0.99, four or
    # eight nodes of equal fitness never moved in 2000 decisions (at 0.9 four did, 3.9%)
    gate: float = 0.99
    every: int = 5  # generations between decisions
    fraction: float = 0.25  # share of the swarm (its worst, by belief) that may move at once
    with_state: bool = True  # the migrant takes the source's live RWKV state with its weights


@dataclass(frozen=True)
class Variation:
    """Options for some nodes only: their env and es tables are merged over the swarm's."""

    nodes: tuple[int, ...] = ()  # the node ids it applies to (at least one)
    env: dict[str, Any] = field(default_factory=dict)  # keys merged over the swarm's [env]
    es: dict[str, Any] = field(default_factory=dict)  # keys merged over the swarm's [es]


@dataclass(frozen=True)
class Scheduled:
    """A signal the swarm applies at the start of `generation`."""

    generation: int  # applied at the start of this generation (>= 0)
    name: str  # a signal the environment takes (docs/config.md lists each kind's)
    params: dict[str, Any] = field(default_factory=dict)  # the signal's parameters
    targets: tuple[int, ...] = ()  # the node ids it goes to; empty: every node
    announce: bool = True  # False: the world changes, the nodes are not told

    def signal(self) -> Signal:
        return Signal(self.name, dict(self.params), list(self.targets) or "all", self.announce,
                      id=f"scheduled-{self.generation}-{self.name}")


@dataclass(frozen=True)
class SwarmConfig(ConfigFile):
    """A swarm: how many nodes, how they learn from each other, their model and world.

    Build one with `from_toml(path)`, `from_toml_text(text)`, `from_dict(data)` or keywords;
    nested tables (topology, es, migration, resources, variations, signals) may be given as
    dicts there too. `to_toml()` / `to_dict()` give it back."""

    nodes: int = 4  # node actors, each one RWKV-7 population (>= 1)
    mode: str = "gossip"  # "isolated", "consensus" or "gossip" (docs/swarm.md)
    sync: bool = True  # a generation barrier; False: every node runs at its own pace
    generations: int = 50  # what `run()` runs when not told otherwise
    # end the run early once the best lineage's belief mean (its Kalman-filtered fitness, less
    # fooled by one lucky generation than fitness_mean) reaches this; None: run them all
    target: float | None = None
    seed: int = 0  # swarm seed: the nodes' weights, noise and topology derive from it
    group_size: int = 0  # consensus: nodes per lineage group (0: all in one group)
    topology: Topology = field(default_factory=Topology)  # gossip: who hears whom
    model: dict[str, Any] = field(default_factory=lambda: dict(TINY_MODEL))  # RWKV7Config
    # fields; input_dim and output_dim come from the environment
    strategy: str = "kalman"  # "kalman" (KalmanES) or "lowrank" (LowRankES)
    es: ESConfig = field(default_factory=lambda: KalmanESConfig(population=32))  # the
    # strategy's settings: a KalmanESConfig ("kalman") or an ESConfig ("lowrank")
    # the world: a table whose `kind` is "gym", "signal" or "python"
    env: dict[str, Any] = field(default_factory=lambda: {"kind": "gym", "id": "CartPole-v1"})
    episodes: int = 1  # episodes per mutant per generation
    max_steps: int = 500  # cap on steps per episode / segment
    init: str = "live"  # initial weights: "live" (every block path active) or "trainer"
    variations: tuple[Variation, ...] = ()  # other env / es options for some nodes
    signals: tuple[Scheduled, ...] = ()  # signals applied at given generations
    migration: Migration = field(default_factory=Migration)  # moving weights between nodes
    resources: Resources = field(default_factory=Resources)  # what each node actor gets
    wait_s: float = 60.0  # sync: longest a node waits for its peers' reports
    stretch_s: float = 0.25  # sync: longest a stretch of generations runs in one round trip to
    # the nodes (rows stream back as each generation ends); signals, topology changes and stop
    # wait for its end. A stretch ends before every checkpoint, scheduled signal and migration
    # decision (0: one generation a round trip)
    checkpoint_every: int = 5  # generations between node snapshots in runs/<id>/checkpoints/
    # (0: none; a dead node then restarts from scratch and a run cannot be resumed)
    secure: bool = True  # CURVE keys for every node; peers without them are refused
    run_dir: str = "runs"  # runs/<run-id>/ holds config.toml, trace.parquet, events.jsonl
    tensorboard: bool = False  # also log scalars under runs/<run-id>/tb (needs tensorboard)
    trace_flush_s: float = 1.0  # longest the newest trace rows wait in memory before they go to
    # disk as one Parquet part (a part is also written before every checkpoint and at the end of
    # a run; 0: a part per generation)

    def __post_init__(self) -> None:
        configio.take_tables(self)
        object.__setattr__(self, "env", env_table(self.env))
        object.__setattr__(self, "variations", tuple(
            dataclasses.replace(v, env=env_table(v.env)) for v in self.variations))
        _positive_ints(self, ("nodes", "generations", "episodes", "max_steps"))
        _choice("mode", self.mode, MODES)
        _choice("strategy", self.strategy, tuple(STRATEGY_CONFIGS))
        _choice("init", self.init, INITS)
        if not isinstance(self.es, STRATEGY_CONFIGS[self.strategy]):
            raise ConfigError("es", f"strategy {self.strategy!r} needs a "
                                    f"{STRATEGY_CONFIGS[self.strategy].__name__}")
        if self.mode == "consensus" and not self.sync:
            raise ConfigError("sync", "consensus groups step together: mode 'consensus' needs "
                                      "sync = true")
        size = self.group_size or self.nodes
        if self.group_size < 0 or self.nodes % size:
            raise ConfigError("group_size", f"got {self.group_size}, expected 0 or a divisor of "
                                            f"nodes ({self.nodes})")
        self._check_parts()

    def _check_parts(self) -> None:
        t = self.topology
        _choice("topology.kind", t.kind, KINDS)
        try:
            self.neighbours()
        except ValueError as e:
            raise ConfigError("topology", str(e)) from None
        configio.from_dict(RWKV7Config, {**self.model, "input_dim": 1, "output_dim": 1},
                           key="model")
        _env_ok("env", self.env)
        _check_resources(self.resources)
        _check_migration(self.migration)
        for i, v in enumerate(self.variations):
            bad = [n for n in v.nodes if not 0 <= n < self.nodes]
            if not v.nodes or bad:
                raise ConfigError(f"variations[{i}].nodes", f"got {list(v.nodes)}, expected node "
                                                            f"ids in 0..{self.nodes - 1}")
            _env_ok(f"variations[{i}].env", {**self.env, **v.env})
        for i, s in enumerate(self.signals):
            if not 0 <= s.generation:
                raise ConfigError(f"signals[{i}].generation", f"got {s.generation}, expected >= 0")
            try:
                validate(s.signal(), self.env, self.nodes)
            except ValueError as e:
                raise ConfigError(f"signals[{i}]", str(e)) from None
        if self.target is not None and (type(self.target) not in (int, float)
                                        or not math.isfinite(self.target)):
            raise ConfigError("target", f"got {self.target!r}, expected a finite number (the "
                                        "fitness that ends the run) or none")
        if type(self.checkpoint_every) is not int or self.checkpoint_every < 0:
            raise ConfigError("checkpoint_every", f"got {self.checkpoint_every!r}, expected an "
                                                  "integer >= 0 (0: no checkpoints)")
        if type(self.trace_flush_s) not in (int, float) or not 0 <= self.trace_flush_s < math.inf:
            raise ConfigError("trace_flush_s", f"got {self.trace_flush_s!r}, expected a number of "
                                               "seconds >= 0")
        if type(self.stretch_s) not in (int, float) or not 0 <= self.stretch_s < math.inf:
            raise ConfigError("stretch_s", f"got {self.stretch_s!r}, expected a number of "
                                           "seconds >= 0 (0: one generation a round trip)")
        if not self.wait_s > 0 or not self.run_dir:
            raise ConfigError("wait_s", f"need wait_s > 0 and a run_dir, got {self.wait_s}, "
                                        f"{self.run_dir!r}")

    _field_type = staticmethod(es_field_type)

    # -- resolution ------------------------------------------------------------------------------

    def neighbours(self) -> list[list[int]]:
        t = self.topology
        return neighbours(t.kind, self.nodes, k=t.k, rewire=t.rewire, seed=self.seed)

    def groups(self) -> list[list[int]]:
        """Consensus lineage groups (one node each otherwise)."""
        if self.mode != "consensus":
            return [[i] for i in range(self.nodes)]
        size = self.group_size or self.nodes
        return [list(range(g, g + size)) for g in range(0, self.nodes, size)]

    def node_env(self, i: int) -> dict[str, Any]:
        env = dict(self.env)
        for v in self.variations:
            if i in v.nodes:
                env.update(v.env)
        return env

    def node_configs(self) -> list[NodeConfig]:
        """One resolved NodeConfig per node."""
        out, dims = [], {}
        size = self.group_size or self.nodes
        for i in range(self.nodes):
            env = self.node_env(i)
            key = repr(sorted(env.items()))
            if key not in dims:
                where = [j for j, v in enumerate(self.variations) if i in v.nodes and v.env]
                world = _build(f"variations[{where[-1]}].env" if where else "env", env)
                dims[key] = (world.observation_dim, world.action_dim)
            model = RWKV7Config(**{**self.model, "input_dim": dims[key][0],
                                   "output_dim": dims[key][1]})
            es = self.es
            for v in self.variations:
                if i in v.nodes and v.es:
                    es = configio.from_dict(type(es), {**configio.to_dict(es), **v.es},
                                            key="es")
            exchange = ExchangeConfig(mode=self.mode) if self.mode != "consensus" else \
                ExchangeConfig(mode="consensus", group=i // size, group_size=size,
                               member=i % size)
            out.append(NodeConfig(model=model, env=env, strategy=self.strategy, es=es,
                                  exchange=exchange, episodes=self.episodes,
                                  max_steps=self.max_steps, init=self.init, node_id=i,
                                  seed=self.seed, device=self.resources.device))
        return out

    def per_actor(self) -> int:
        """Nodes per actor, resolved: `resources.nodes_per_actor`, or for "auto" as many as
        keep the actors to the whole CPUs the swarm is given (nodes x resources.cpus, at least
        one actor); the last actor may hold fewer."""
        k = self.resources.nodes_per_actor
        if k == "auto":
            actors = max(1, math.floor(self.nodes * self.resources.cpus + 1e-9))
            return math.ceil(self.nodes / min(actors, self.nodes))
        return int(k)

    def replace(self, **changes: Any) -> SwarmConfig:
        return dataclasses.replace(self, **changes)


def _positive_ints(cfg: Any, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(cfg, name)
        if type(v) is not int or v < 1:
            raise ConfigError(name, f"got {v!r}, expected an integer >= 1")


def _choice(key: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(key, f"got {value!r}, expected one of {list(accepted)}")


def _env_ok(key: str, env: dict[str, Any]) -> None:
    """Refuse a world that is bad, or that the nodes (other processes) could not build."""
    try:
        env_config(env)
        env_modules(env)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def _build(key: str, env: dict[str, Any]) -> Environment:
    """The world `env`, built here to learn its sizes: any failure is one line naming `key`."""
    try:
        return make_env(env)
    except Exception as e:  # noqa: BLE001 - whatever the world's own code raises
        text = " ".join(str(e).split())
        detail = text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}"
        raise ConfigError(key, f"cannot build the world: {detail}") from None


def _check_resources(r: Resources) -> None:
    for name in ("cpus", "gpus"):
        v = getattr(r, name)
        if type(v) not in (int, float) or not math.isfinite(v):
            raise ConfigError(f"resources.{name}", f"got {v!r}, expected a finite number")
    if not r.cpus > 0:
        raise ConfigError("resources.cpus", f"got {r.cpus!r}, expected cpus > 0 (fractions "
                                            "allowed)")
    if r.gpus < 0 or (r.gpus > 1 and r.gpus != int(r.gpus)):
        raise ConfigError("resources.gpus", f"got {r.gpus!r}, expected 0 (nodes on CPUs), a "
                                            "share of one GPU in (0, 1] or a whole number of "
                                            "GPUs per node")
    _choice("resources.placement", r.placement, PLACEMENTS)
    k = r.nodes_per_actor
    if k != "auto" and (type(k) is not int or k < 1):
        raise ConfigError("resources.nodes_per_actor", f"got {k!r}, expected an integer >= 1 "
                                                       "or 'auto'")


def _check_migration(m: Migration) -> None:
    if not 0.5 <= m.gate < 1 or m.every < 1 or not 0 < m.fraction <= 1:
        raise ConfigError("migration", f"need 0.5 <= gate < 1, every >= 1 and 0 < fraction <= 1, "
                                       f"got gate={m.gate}, every={m.every}, "
                                       f"fraction={m.fraction}")
