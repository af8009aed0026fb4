"""`Node`: one organism. An RWKV-7 policy, an evolution strategy, an environment, a live state.

One `generation()` is predict -> mutate -> evaluate -> correct:

    ask()      the strategy predicts the fitness its last step should bring, draws P mutants
    evaluate   all mutants act in P x episodes environment copies in one batched forward
    tell()     fitness shaping, Kalman updates, the weight step
    live on    in a continuing world, the updated centre runs the same segment from the live
               recurrent state, which becomes the next generation's starting state

A plain class (no Ray, no sockets): `cluster/` wraps it as an actor.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import msgpack
import numpy as np
import torch

from ..kalman import DirectionConfig, FitnessConfig
from ..kernels import RWKV7, RWKV7Config, RWKV7State
from .environment import Environment
from .rollout import Rollout, rollout
from .strategy import STRATEGIES, ESConfig, KalmanESConfig, derive_seed

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class NodeConfig:
    """One node: its model, its strategy and how it evaluates."""

    model: RWKV7Config  # control mode: input_dim / output_dim match the environment
    strategy: str = "kalman"  # "kalman" (KalmanES) or "lowrank" (LowRankES)
    es: ESConfig = field(default_factory=KalmanESConfig)
    episodes: int = 1  # episodes per mutant per generation (fitness = their mean)
    paired_episodes: bool = True  # the two members of an antithetic pair meet the same
    # episodes (starts and noise): their fitness difference then measures the mutation alone
    max_steps: int = 500  # cap on steps per episode / segment
    init: str = "live"  # initial weights: "live" (every block path active) or "trainer"
    node_id: int = 0  # index in the swarm; seeds and noise streams derive from it
    seed: int = 0  # swarm seed

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got "
                             f"{self.strategy!r}")
        if self.strategy == "kalman" and not isinstance(self.es, KalmanESConfig):
            raise ValueError("strategy 'kalman' needs a KalmanESConfig")
        if self.model.token_mode:
            raise ValueError("a node's policy is a control-mode model (input_dim/output_dim)")
        if self.episodes < 1 or self.max_steps < 1:
            raise ValueError(f"episodes and max_steps must be >= 1, got {self.episodes}, "
                             f"{self.max_steps}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["es_kind"] = type(self.es).__name__
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeConfig:
        d = dict(d)
        es = dict(d.pop("es"))
        es_cls = KalmanESConfig if d.pop("es_kind", "ESConfig") == "KalmanESConfig" else ESConfig
        es["fitness"] = FitnessConfig(**es["fitness"])
        es["include"] = tuple(es["include"])
        if es_cls is KalmanESConfig:
            es["direction"] = DirectionConfig(**es["direction"])
            es["lr_scale_range"] = tuple(es["lr_scale_range"])
        return cls(model=RWKV7Config(**d.pop("model")), es=es_cls(**es), **d)


class Node:
    """An organism that evolves in its environment, one `generation()` at a time."""

    def __init__(self, config: NodeConfig, env: Environment):
        self._check_env(config, env)
        # noise seeds: the swarm seed and the ES config's own; the node index picks the stream
        es = replace(config.es, seed=derive_seed(config.seed, config.es.seed),
                     stream=config.node_id)
        self.config, self.env = config, env
        self.model = RWKV7(config.model, seed=derive_seed(config.seed, config.node_id, 1) % 2**31,
                           init=config.init)
        self.strategy = STRATEGIES[config.strategy](self.model, es)
        self.live_state = self.model.zero_state(1)
        self.generation_count = 0
        self.episodes_used = 0
        self.env_steps = 0

    @staticmethod
    def _check_env(config: NodeConfig, env: Environment) -> None:
        if not isinstance(env, Environment):
            raise TypeError(f"env must implement rwkv_swarm.node.Environment, got "
                            f"{type(env).__name__}")
        m = config.model
        if (env.observation_dim, env.action_dim) != (m.input_dim, m.output_dim):
            raise ValueError(f"model (input_dim, output_dim) = {(m.input_dim, m.output_dim)} "
                             f"does not match the environment's "
                             f"{(env.observation_dim, env.action_dim)}")

    # -- one generation ------------------------------------------------------------------------

    def generation(self) -> dict[str, Any]:
        """predict -> mutate -> evaluate -> correct; returns the trace row."""
        t0 = time.perf_counter()
        mutants = self.strategy.ask()
        pop = mutants.population(self.model)
        P, E = mutants.size, self.config.episodes
        start = self.live_state.repeat(P * E) if self.env.persistent \
            else self.model.zero_state(P * E)

        def policy(obs: torch.Tensor, state: RWKV7State):
            out, state = pop.step(obs.view(P, E, -1), state)
            return out.reshape(P * E, -1), state

        seed = derive_seed(self.config.seed, self.config.node_id, self.generation_count, 2)
        t1 = time.perf_counter()
        keys = [(m // 2) * E + e for m in range(P) for e in range(E)] \
            if self.config.paired_episodes else None
        evaluated = rollout(self.env, policy, P * E, seed, start, self.config.max_steps, keys)
        fitness = evaluated.returns.reshape(P, E).mean(axis=1)
        t2 = time.perf_counter()
        info = self.strategy.tell(fitness)
        t3 = time.perf_counter()
        row = {"node": self.config.node_id, **info.to_dict(), "centre_return": float("nan")}
        if self.env.persistent:  # the organism lives on: the updated centre runs the segment
            centre = self._centre_rollout(1, seed, self.live_state)
            self.live_state = centre.state
            row["centre_return"] = float(centre.returns[0])
        self.env.end_generation()
        self.generation_count += 1
        self.episodes_used += P * E
        self.env_steps += evaluated.env_steps
        row.update(episodes=self.episodes_used, env_steps=self.env_steps,
                   ask_s=t1 - t0, evaluate_s=t2 - t1, tell_s=t3 - t2,
                   centre_s=time.perf_counter() - t3)
        return row

    def _centre_rollout(self, n: int, seed: int, state: RWKV7State) -> Rollout:
        def policy(obs: torch.Tensor, st: RWKV7State):
            return self.model.step(obs, st)

        return rollout(self.env, policy, n, seed, state, self.config.max_steps)

    def evaluate_centre(self, episodes: int, seed: int | None = None) -> np.ndarray:
        """Returns (episodes,) of the current weights, without mutation (not counted as
        training episodes; a continuing world is evaluated from a copy of the live state)."""
        seed = derive_seed(self.config.seed, self.config.node_id, self.generation_count, 3) \
            if seed is None else seed
        start = self.live_state.repeat(episodes) if self.env.persistent \
            else self.model.zero_state(episodes)
        return self._centre_rollout(episodes, seed, start).returns

    def apply_signal(self, name: str, params: dict[str, Any]) -> None:
        """Change the world (at the next generation boundary) and tell the beliefs."""
        self.env.apply_signal(name, params)
        self.strategy.world_changed()

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """Weights, live state, strategy (beliefs, optimizer), environment, counters: bytes."""
        weights = io.BytesIO()
        torch.save(self.model.state_dict(), weights)
        return msgpack.packb({
            "version": CHECKPOINT_VERSION, "config": self.config.to_dict(),
            "weights": weights.getvalue(), "live_state": self.live_state.to_bytes(),
            "strategy": self.strategy.state_dict(), "env": self.env.state_dict(),
            "generation": self.generation_count, "episodes": self.episodes_used,
            "env_steps": self.env_steps,
        }, use_bin_type=True)

    @classmethod
    def restore(cls, blob: bytes, env: Environment) -> Node:
        """A node from `checkpoint()` bytes, in `env` (a fresh environment of the same kind;
        its saved state is loaded into it)."""
        try:
            d = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ValueError(f"not a node checkpoint: {exc}") from exc
        if not isinstance(d, dict) or d.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"not a node checkpoint of version {CHECKPOINT_VERSION}")
        node = cls(NodeConfig.from_dict(d["config"]), env)
        node.model.load_state_dict(torch.load(io.BytesIO(d["weights"]), weights_only=True))
        node.live_state = RWKV7State.from_bytes(d["live_state"], node.config.model)
        node.strategy.load_state_dict(d["strategy"])
        env.load_state_dict(d["env"])
        node.generation_count, node.episodes_used = d["generation"], d["episodes"]
        node.env_steps = d["env_steps"]
        return node
