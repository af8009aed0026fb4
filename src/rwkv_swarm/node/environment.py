"""The batched `Environment` protocol a node evaluates its population in.

Concrete environments (`rwkv_swarm.node.envs`: gymnasium adapter, streaming signal) satisfy
it structurally; a node only needs these methods. One evaluation runs `n` copies of the world
in lock step, one per mutant (or per mutant and episode); copies end independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Environment(Protocol):
    """n parallel copies of a world, stepped together.

    observation_dim: floats per observation row; action_dim: outputs the policy must produce
    per row (the environment maps them to its actions, e.g. argmax or tanh scaling).
    persistent: True when the world is one continuing stream (the organism's recurrent state
    carries over from one evaluation to the next); False for episodic tasks (each episode
    starts from a zero state).
    """

    observation_dim: int
    action_dim: int
    persistent: bool

    def reset(self, n: int, seed: int, keys: Sequence[int] | None = None) -> np.ndarray:
        """Start n copies; returns observations (n, observation_dim) float32. Copy i is seeded
        from (seed, keys[i]), keys 0..n-1 by default: copies with equal keys start alike and
        meet the same noise (common random numbers, e.g. for an antithetic pair)."""

    def step(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply policy outputs (n, action_dim); returns (obs (n, obs_dim), reward (n,),
        done (n,) bool). Copies already done keep returning done=True and reward 0."""

    def end_generation(self) -> None:
        """Called once per generation, after all of its evaluations: fold the observations seen
        into running statistics (frozen while evaluating), and move a stream to its next
        segment (until then every reset replays the current one, so the population and the
        updated centre see the same data)."""

    def apply_signal(self, name: str, params: dict[str, Any]) -> None:
        """Change the world (e.g. shift a frequency): from the next reset, or for a stream
        from its next segment (the node applies signals at a generation boundary)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides future behaviour (stats, stream position, RNG), msgpack-able."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
