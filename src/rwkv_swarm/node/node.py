"""`Node`: one organism. An RWKV-7 policy, an evolution strategy, an environment, a live state.

One `generation()` is predict -> mutate -> evaluate -> correct, in phases that a swarm member
drives one by one, exchanging with its neighbours in between:

    begin()          the strategy predicts the fitness its last step should bring, draws mutants
    evaluate(cb)     this node's mutants act in P x episodes environment copies in one batched
                     forward; cb(t) runs after every environment step (service the transport)
    report()         what the generation showed, as neighbours receive it (exchange.Report)
    finish(reports)  fold the neighbours' reports in (consensus: the group's union of fitness;
                     gossip: their estimates as evidence), step, live on; returns the trace row

In a continuing world the updated centre then runs the same segment from the live recurrent
state, which becomes the next generation's starting state: the organism lives on.

A plain class (no Ray, no sockets): `node.member` adds the transport, `cluster/` the actor.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..kernels import RWKV7, Population, RWKV7State
from . import checkpoint as ckpt
from . import native_rollout
from .config import STRATEGIES, NodeConfig
from .environment import Environment
from .envs import env_spec, make_env
from .exchange import Report, WeightSketch, fingerprint, perturbation_key, replay, report_of
from .rollout import COMPACT_BELOW, Rollout, rollout
from .shaping import derive_seed
from .strategy import Measurement, Mutants, StepInfo
from .wire import ProtocolError


def node_name(node_id: int) -> str:
    """The name node `node_id` goes by: its transport's id and its actor's name."""
    return f"node-{node_id}"


class Node:
    """An organism that evolves in its environment, one generation at a time.

    `env` defaults to the one `config.env` describes; a node given another environment
    records that environment's own table in `config.env` when it has one."""

    def __init__(self, config: NodeConfig, env: Environment | None = None):
        env = make_env(config.env) if env is None else env
        self._check_env(config, env)
        spec = env_spec(env)
        if spec is not None and spec != config.env:
            config = replace(config, env=spec)
        # noise seeds: the swarm seed and the ES config's own; the lineage picks the stream
        es = replace(config.es, population=config.population, stream=config.lineage,
                     seed=derive_seed(config.seed, config.es.seed))
        self.config, self.env = config, env
        self.device = config.torch_device()
        # drawn on the host, then moved: a node's initial weights never depend on its device
        self.model = RWKV7(config.model, seed=derive_seed(config.seed, self.ancestor, 1) % 2**31,
                           init=config.init).to(self.device)
        self.strategy = STRATEGIES[config.strategy](self.model, es)
        self.sketch = WeightSketch(self.strategy.dim, config.exchange.sketch_size)
        self.perturbation = perturbation_key(self.model, es.rank, tuple(es.include))
        self.live_state = self.model.zero_state(1)
        self.generation_count = self.episodes_used = self.env_steps = 0
        self.refused: Counter[str] = Counter()  # neighbours' reports refused, by reason
        self._copy: Environment | None = None  # the world `score` evaluates in
        self._reset_generation()

    @property
    def ancestor(self) -> int:
        """Whose initial weights this node starts from: gossiping nodes share one ancestor (a
        neighbour's gradient is then a measurement near ours), consensus groups share their
        group's, isolated nodes start alone."""
        mode = self.config.exchange.mode
        return 0 if mode == "gossip" else self.config.lineage

    @property
    def node_name(self) -> str:
        return node_name(self.config.node_id)

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

    def _reset_generation(self) -> None:
        self._stage = "idle"  # idle -> begun -> evaluated (-> reported) -> idle
        self._fitness: np.ndarray | None = None
        self._evaluated: Rollout | None = None
        self._measured: Measurement | None = None
        self._weights = b""
        self._times: dict[str, float] = {}

    def _require(self, stage: str, call: str) -> None:
        if self._stage != stage:
            raise RuntimeError(f"{call} needs the generation at stage {stage!r}, it is at "
                               f"{self._stage!r} (order: begin, evaluate, report, finish)")

    # -- one generation, in phases -------------------------------------------------------------

    def begin(self) -> Mutants:
        """Predict and draw this generation's mutants."""
        self._require("idle", "begin()")
        t0 = time.perf_counter()
        mutants = self.strategy.ask()
        self._weights = fingerprint(self.model)
        self._stage = "begun"
        self._times["ask_s"] = time.perf_counter() - t0
        return mutants

    def evaluate(self, on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """Run this node's members; returns their fitness (NaN where a copy went wrong)."""
        self._require("begun", "evaluate()")
        t0 = time.perf_counter()
        c, pop = self.config, self.strategy.population
        lo, hi = c.members
        P, E = hi - lo, c.episodes
        start = self.live_state.repeat(P * E) if self.env.persistent \
            else self.model.zero_state(P * E)
        # copy m * E + e: member lo + m (int32: what the native row kernel reads)
        member_of = torch.arange(lo, hi, dtype=torch.int32).repeat_interleave(E)
        # one path for the whole rollout: on the native path a row's bits never depend on the
        # batch, so compacting to the live copies leaves their returns as they were
        path = pop.row_path(P * E)

        keys, seed = self._episode_keys(), self._eval_seed()
        if native_rollout.usable(self.env, pop, path):  # the same bits, without Python a step
            self._evaluated = native_rollout.native_rollout(
                self.env, pop, member_of, P * E, seed, start, c.max_steps, keys, on_step,
                COMPACT_BELOW, path)
        else:
            self._evaluated = rollout(self.env, _row_policy(pop, member_of, path), P * E, seed,
                                      start, c.max_steps, keys, on_step, compact=COMPACT_BELOW)
        self._fitness = self._evaluated.returns.reshape(P, E).mean(axis=1)
        self._stage = "evaluated"
        self._times["evaluate_s"] = time.perf_counter() - t0
        return self._fitness

    def _eval_seed(self) -> int:
        c = self.config
        return derive_seed(c.seed, c.lineage, self.generation_count, 2)

    def _episode_keys(self) -> list[int]:
        """Copy m * E + e's episode: paired, both members of an antithetic pair meet the same
        ones."""
        c = self.config
        (lo, hi), E = c.members, c.episodes
        return [((lo + m) // (2 if c.paired_episodes else 1)) * E + e
                for m in range(hi - lo) for e in range(E)]

    def report(self) -> Report:
        """This generation as the neighbours receive it (the wire's `fitness` message). A
        consensus member reports its slice's raw fitness (shaped: zeros; the group shapes the
        union) and its observation statistics; others report their measured generation."""
        self._require("evaluated", "report()")
        assert self._fitness is not None
        sketch = self.sketch(self.strategy.params)
        mutants = self.strategy.ask()
        belief = self.strategy.fitness_belief
        if self.config.exchange.mode == "consensus":
            stats = getattr(self.env, "observation_stats", lambda: None)()
            return report_of(self.node_name, mutants, self.config.members[0], self._fitness,
                             np.zeros(len(self._fitness)), self.perturbation, self._weights,
                             sketch, belief, stats)
        m = self._measure()
        return report_of(self.node_name, mutants, 0, m.fitness, m.shaped, self.perturbation,
                         self._weights, sketch, belief)

    def _measure(self) -> Measurement:
        if self._measured is None:
            assert self._fitness is not None and self._evaluated is not None
            try:
                self._measured = self.strategy.measure(self._fitness)
            except ValueError as e:
                why = self._evaluated.why_nan()
                raise ValueError(f"{e}: {why}" if why else str(e)) from None
        return self._measured

    def finish(self, reports: Sequence[Report] = ()) -> dict[str, Any]:
        """Fold the neighbours' `reports` in, step, live on; returns the trace row."""
        self._require("evaluated", "finish()")
        t0 = time.perf_counter()
        before = sum(self.refused.values())
        if self.config.exchange.mode == "consensus":
            info, missing = self._step_consensus(reports)
        else:
            info, missing = self._step_own(reports), 0
        t1 = time.perf_counter()
        row = {"node": self.config.node_id, **info.to_dict(), "centre_return": float("nan")}
        seed = self._eval_seed() if self.env.persistent else 0
        if self.env.persistent:  # the organism lives on: the updated centre runs the segment
            centre = self._centre_rollout(1, seed, self.live_state)
            self.live_state = centre.state
            row["centre_return"] = float(centre.returns[0])
        return self._close(row, info, missing, before, t0, t1)

    def _close(self, row: dict[str, Any], info: StepInfo, missing: int, refused_before: int,
               t0: float, t1: float) -> dict[str, Any]:
        assert self._evaluated is not None
        self.env.end_generation()
        self.generation_count += 1
        self.episodes_used += self._evaluated.returns.size
        self.env_steps += self._evaluated.env_steps
        row.update(episodes=self.episodes_used, env_steps=self.env_steps,
                   rows_useful=self._evaluated.env_steps,
                   rows_computed=self._evaluated.rows_computed,
                   bad_obs=int(self._evaluated.bad_obs.sum()),
                   diverged=int(self._evaluated.diverged.sum()),
                   refused=sum(self.refused.values()) - refused_before,
                   missing=missing,
                   ask_s=self._times.get("ask_s", 0.0),
                   evaluate_s=self._times.get("evaluate_s", 0.0), tell_s=t1 - t0,
                   centre_s=time.perf_counter() - t1)
        self._reset_generation()
        return row

    def _step_own(self, reports: Sequence[Report]) -> StepInfo:
        m = self._measure()
        evidence = []
        if self.config.exchange.mode == "gossip" and reports:  # the sketch only replay needs
            sketch = self.sketch(self.strategy.params)
            for r in reports:
                try:
                    e = replay(r, self.strategy, sketch)
                except ProtocolError as err:
                    self.refused[err.reason] += 1
                    continue
                if e is not None:
                    evidence.append(e)
        return self.strategy.step(m, evidence)

    def _step_consensus(self, reports: Sequence[Report]) -> tuple[StepInfo, int]:
        """The group's union of raw fitness, in member order, shaped and stepped on alike by
        every member: one node with the group's whole population."""
        assert self._fitness is not None
        c = self.config
        mutants = self.strategy.ask()
        fitness = np.full(c.population, np.nan)
        lo, hi = c.members
        fitness[lo:hi] = self._fitness
        filled = {lo}
        stats = {lo: getattr(self.env, "observation_stats", lambda: None)()}
        for r in reports:
            reason = self._consensus_mismatch(r, mutants)
            if reason is not None or r.first in filled:
                self.refused[reason or "duplicate"] += 1
                continue
            fitness[r.first:r.first + len(r.raw)] = r.raw
            filled.add(r.first)
            stats[r.first] = r.obs_stats
        parts = [stats[k] for k in sorted(stats) if stats[k] is not None]
        if parts and hasattr(self.env, "merge_observation_stats"):
            self.env.merge_observation_stats(parts)
        self._fitness = fitness
        return self.strategy.step(self._measure()), c.exchange.group_size - len(filled)

    def _consensus_mismatch(self, r: Report, mutants: Mutants) -> str | None:
        """Why a group member's report cannot join this generation's union (None: it can)."""
        if r.perturbation != self.perturbation or r.size != self.config.population:
            return "mismatch"
        if (r.seed, r.sigma, r.fingerprint) != (mutants.seed, mutants.sigma, self._weights):
            return "out_of_step"  # another generation, or weights that drifted from ours
        if r.first % self.config.es.population or len(r.raw) != self.config.es.population:
            return "mismatch"
        return None

    def generation(self, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """predict -> mutate -> evaluate -> correct, with no neighbours; returns the trace row."""
        self.begin()
        self.evaluate(on_step)
        return self.finish()

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

    def score(self, episodes: int, seed: int) -> float:
        """Mean return of the current weights over `episodes` fresh episodes, in a copy of the
        world (its whole state loaded: normalisation, signals applied, stream position), so
        that training is not disturbed. Needs a world that `config.env` describes."""
        if env_spec(self.env) is None:
            raise ValueError(f"score() copies the world from config.env; this node's "
                             f"{type(self.env).__name__} is not one it describes")
        if self._copy is None:
            self._copy = make_env(self.config.env)
        self._copy.load_state_dict(self.env.state_dict())
        train, self.env = self.env, self._copy
        try:
            return float(np.nanmean(self.evaluate_centre(episodes, seed=seed)))
        finally:
            self.env = train

    def apply_signal(self, name: str, params: dict[str, Any]) -> None:
        """Change the world (at the next generation boundary) and tell the beliefs."""
        self.env.apply_signal(name, params)
        self.strategy.world_changed()

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """Weights, live state, strategy (beliefs, optimizer), environment, counters: bytes."""
        self._require("idle", "checkpoint()")
        return ckpt.dump(self)

    @classmethod
    def restore(cls, blob: bytes, env: Environment | None = None,
                device: str | None = None) -> Node:
        """A node from `checkpoint()` bytes, in `env` (default: the one its config describes;
        a given one must be of the same kind and options), on `device` (default: the one it
        was checkpointed on). Malformed bytes raise ValueError("not a node checkpoint: <what
        is wrong>")."""
        return ckpt.load(cls, blob, env, device)


def _row_policy(pop: Population, member_of: torch.Tensor, path: str) -> Callable:
    """The population's row step as `rollout`'s policy: copy i is member `member_of[i]`; the
    members of a compacted batch's rows are gathered once per compaction."""
    batch: list = [None, member_of]  # the rows last stepped and their members

    def policy(obs: torch.Tensor, state: RWKV7State, rows: np.ndarray | None = None):
        if rows is not None and rows is not batch[0]:  # None: every copy
            batch[:] = rows, member_of[torch.from_numpy(rows)]  # new after a compaction
        members = member_of if rows is None else batch[1]
        return pop.step_rows(obs, state, members, inplace=rows is not None, path=path)
    return policy
