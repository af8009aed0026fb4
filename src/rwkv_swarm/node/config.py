"""`NodeConfig`: everything one node is made of, as one frozen dataclass that round-trips
through dicts and TOML (`util.configio`); docs/config.md lists every key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..kernels import RWKV7Config
from ..util import configio
from ..util.configio import ConfigFile
from .envs import env_config, env_table
from .kalman_es import KalmanES, KalmanESConfig
from .strategy import ESConfig, LowRankES

STRATEGIES = {"kalman": KalmanES, "lowrank": LowRankES}
STRATEGY_CONFIGS = {"kalman": KalmanESConfig, "lowrank": ESConfig}
MODES = ("isolated", "consensus", "gossip")
INITS = ("live", "trainer")
DEVICES = ("cpu", "cuda")


def es_field_type(name: str, data: dict[str, Any]) -> type | None:
    """configio hook of the configs with an `es` table: its class follows `strategy`."""
    return STRATEGY_CONFIGS.get(data.get("strategy", "kalman")) if name == "es" else None


@dataclass(frozen=True)
class ExchangeConfig:
    """How a node learns from others (docs/swarm.md): alone, in step with a lineage group, or
    from its neighbours' estimates."""

    mode: str = "isolated"  # "isolated", "consensus" or "gossip"
    group: int = 0  # consensus: the lineage group; its members share seeds and weights
    group_size: int = 1  # consensus: members of the group (the group's population is
    # group_size x es.population, each member evaluating its own slice)
    member: int = 0  # consensus: this node's index in its group (0 .. group_size - 1)
    sketch_size: int = 64  # gossip: buckets of the weight sketch that estimates distances

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.group < 0 or self.group_size < 1 or not 0 <= self.member < self.group_size:
            raise ValueError(f"need group >= 0, group_size >= 1 and 0 <= member < group_size, "
                             f"got group={self.group}, group_size={self.group_size}, "
                             f"member={self.member}")
        if self.mode != "consensus" and (self.group_size, self.member) != (1, 0):
            raise ValueError(f"group_size and member apply to mode 'consensus' only, got mode "
                             f"{self.mode!r} with group_size={self.group_size}")
        if self.sketch_size < 1:
            raise ValueError(f"sketch_size must be >= 1, got {self.sketch_size}")


@dataclass(frozen=True)
class NodeConfig(ConfigFile):
    """One node: its model, its world, its strategy and how it evaluates and exchanges.

    Nested tables (model, es, exchange) may be given as dicts, as `from_dict` and
    `from_toml_text` take them."""

    model: RWKV7Config  # control mode: input_dim / output_dim match the environment
    # the world, as `envs.make_env` takes it; a node builds its own environment from it
    env: dict[str, Any] = field(default_factory=lambda: {"kind": "gym", "id": "CartPole-v1"})
    strategy: str = "kalman"  # "kalman" (KalmanES) or "lowrank" (LowRankES)
    es: ESConfig = field(default_factory=KalmanESConfig)  # KalmanESConfig or ESConfig, as
    # `strategy` says
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)  # learning from others
    episodes: int = 1  # episodes per mutant per generation (fitness = their mean)
    paired_episodes: bool = True  # the two members of an antithetic pair meet the same
    # episodes (starts and noise): their fitness difference then measures the mutation alone
    max_steps: int = 500  # cap on steps per episode / segment
    init: str = "live"  # initial weights: "live" (every block path active) or "trainer"
    node_id: int = 0  # index in the swarm; seeds and noise streams derive from it
    seed: int = 0  # swarm seed
    device: str = "cpu"  # where the model, its populations, rollout tensors and strategy state
    # live: "cpu" or "cuda" (a swarm sets it from resources.gpus); beliefs and messages reach
    # the host only where they leave the node

    def __post_init__(self) -> None:
        configio.take_tables(self)
        object.__setattr__(self, "env", env_table(self.env))
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got "
                             f"{self.strategy!r}")
        if not isinstance(self.es, STRATEGY_CONFIGS[self.strategy]):
            raise ValueError(f"strategy {self.strategy!r} needs a "
                             f"{STRATEGY_CONFIGS[self.strategy].__name__}, got "
                             f"{type(self.es).__name__}")
        if self.model.token_mode:
            raise ValueError("a node's policy is a control-mode model (input_dim/output_dim)")
        if self.episodes < 1 or self.max_steps < 1:
            raise ValueError(f"episodes and max_steps must be >= 1, got {self.episodes}, "
                             f"{self.max_steps}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.node_id < 0 or self.seed < 0:
            raise ValueError(f"node_id and seed must be >= 0, got {self.node_id}, {self.seed}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        env_config(self.env)  # a bad world fails here, naming the option

    _field_type = staticmethod(es_field_type)

    def torch_device(self) -> torch.device:
        """`device` as torch names it, refused (ValueError naming it) where this process cannot
        use it: a node on "cuda" needs a CUDA device that PyTorch sees."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device 'cuda' (a swarm's resources.gpus > 0) needs a CUDA device "
                             f"this process can use; PyTorch sees none (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}): "
                             f"expected device 'cpu' here")
        return torch.device(self.device)

    @property
    def lineage(self) -> int:
        """Whose seeds this node draws: its consensus group's, or its own."""
        return self.exchange.group if self.exchange.mode == "consensus" else self.node_id

    @property
    def population(self) -> int:
        """Mutants of the lineage's population (a consensus group's whole one)."""
        return self.es.population * self.exchange.group_size

    @property
    def members(self) -> tuple[int, int]:
        """The members [lo, hi) of that population this node evaluates."""
        lo = self.exchange.member * self.es.population
        return lo, lo + self.es.population
