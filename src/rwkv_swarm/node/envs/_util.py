"""Validation, seeding and msgpack-friendly encoding shared by the environments."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

C = TypeVar("C")


def check_seed(seed: Any) -> int:
    """A seed as a non-negative python int (numpy integers accepted, bools rejected)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def check_count(n: Any) -> int:
    """A number of copies: a positive python int."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of copies) must be a positive int, got {n!r}")
    return int(n)


def finite(name: str, value: Any, *, low: float | None = None, strict: bool = False) -> float:
    """`value` as a finite float, optionally >= low (> low when strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if low is not None and (v <= low if strict else v < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {v}")
    return v


def check_outputs(outputs: Any, n: int, action_dim: int) -> np.ndarray:
    """Policy outputs as a finite float64 (n, action_dim) array, or a ValueError saying why not."""
    arr = np.asarray(outputs)
    if arr.shape != (n, action_dim):
        raise ValueError(f"outputs must have shape (n, action_dim) = ({n}, {action_dim}), "
                         f"got {arr.shape}")
    if arr.dtype.kind != "f" and (not np.issubdtype(arr.dtype, np.number)
                                  or np.issubdtype(arr.dtype, np.complexfloating)):
        raise ValueError(f"outputs must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(f"outputs must be finite; rows {rows[:8].tolist()} hold NaN or inf "
                         "(a diverged policy: sanitise before stepping)")
    return arr


def copy_seed(seed: int, i: int, stream: int = 0) -> np.random.SeedSequence:
    """Seed material for copy i of an evaluation seeded `seed`: a function of (seed, i, stream)
    only, so copy i behaves the same whatever the number of copies."""
    return np.random.SeedSequence([seed, i, stream])


def check_keys(keys: Sequence[int] | None, n: int) -> list[int]:
    """Per-copy seed keys: 0..n-1 by default; otherwise n non-negative ints."""
    if keys is None:
        return list(range(n))
    keys = list(keys)
    if len(keys) != n or not all(isinstance(k, (int, np.integer)) and k >= 0 for k in keys):
        raise ValueError(f"keys must be {n} non-negative ints (one per copy), got {keys[:8]}"
                         + ("..." if len(keys) > 8 else ""))
    return [int(k) for k in keys]


def copy_int_seed(seed: int, i: int, stream: int = 0) -> int:
    """`copy_seed` as one 32-bit int, for APIs that take an int seed (gymnasium's reset)."""
    return int(copy_seed(seed, i, stream).generate_state(1)[0])


def config_with(cls: type[C], base: C | None, overrides: dict[str, Any]) -> C:
    """`base` (or the default `cls()`) with `overrides`; unknown names -> ValueError listing
    the accepted ones."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; accepted: {names}")
    if base is None:
        return cls(**overrides)
    return dataclasses.replace(base, **overrides)  # type: ignore[type-var]


def check_state_keys(kind: str, state: Any, required: tuple[str, ...]) -> None:
    """Raise a ValueError unless `state` is a dict holding every key in `required`."""
    if not isinstance(state, dict):
        raise ValueError(f"{kind} state must be a dict, got {type(state).__name__}")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"{kind} state lacks {missing}; expected keys {list(required)}")
