"""Valid wire messages for tests, built in one place so that a schema change is one edit."""

from __future__ import annotations

from typing import Any

import numpy as np

from rwkv_swarm.node.wire import Message, message


def fitness_arrays(n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a valid `fitness` message reporting n members."""
    rng = np.random.default_rng(seed)
    return {"raw": rng.standard_normal(n), "valid": np.ones(n, np.uint8),
            "shaped": rng.standard_normal(n).astype(np.float32),
            "sketch": rng.standard_normal(16).astype(np.float32)}


def fitness_message(*, swarm: str = "s", node: str = "n", gen: int = 0, ts: float | None = None,
                    n: int = 8, arrays: dict[str, Any] | None = None, **fields: Any) -> Message:
    """A valid `fitness` message of n members (fields and arrays overridable)."""
    values = {"seed": 1, "sigma": 0.1, "size": n, "first": 0, "rank": 1,
              "include": ["matrices"], "perturbation": b"\x01" * 8, "fingerprint": b"\x02" * 16,
              "belief_mean": 0.0, "belief_var": 1.0, **fields}
    return message("fitness", swarm=swarm, node=node, gen=gen, ts=ts,
                   arrays={**fitness_arrays(n), **(arrays or {})}, **values)
