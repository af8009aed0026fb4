"""`Signal`: a change of the world injected into a running swarm, validated against the
environment's own schema before anything is sent anywhere."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..node.envs import env_signals, make_env


@dataclass(frozen=True)
class Signal:
    """`name` with `params`, for `targets` ("all" or node ids); `announce=False` changes the
    world without telling the nodes' beliefs (an unannounced shift). `id` makes a repeated
    delivery harmless: a node applies each id once."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    targets: str | Sequence[int] = "all"
    announce: bool = True
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def target_ids(self, nodes: int) -> list[int]:
        if self.targets == "all":
            return list(range(nodes))
        return sorted({int(t) for t in self.targets})


def schema(env: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The signals the environment `env` (a spec) accepts: {name: {param: meaning}} (gym:
`GYM_SIGNALS`, signal: `SIGNALS`, python: the class's own `SIGNALS` attribute)."""
    return env_signals(env)


def validate(signal: Signal, env: dict[str, Any], nodes: int) -> Signal:
    """`signal`, or ValueError naming what is wrong and what is accepted. The parameters are
    checked by the environment's own `apply_signal` on a throwaway copy of the world."""
    accepted = schema(env)
    if not isinstance(signal, Signal):
        raise ValueError(f"expected a Signal, got {type(signal).__name__}")
    if signal.name not in accepted:
        raise ValueError(f"unknown signal {signal.name!r}; this environment accepts "
                         f"{sorted(accepted)}: {accepted}")
    if not isinstance(signal.params, dict):
        raise ValueError(f"signal params must be a table, got {signal.params!r}")
    if signal.targets != "all":
        if isinstance(signal.targets, str) or not signal.targets:
            raise ValueError(f"targets must be 'all' or a non-empty list of node ids, got "
                             f"{signal.targets!r}")
        bad = [t for t in signal.targets if type(t) is not int or not 0 <= t < nodes]
        if bad:
            raise ValueError(f"targets {bad} are not node ids; accepted 0..{nodes - 1} or 'all'")
    try:
        make_env(env).apply_signal(signal.name, dict(signal.params))
    except (ValueError, TypeError) as e:
        raise ValueError(f"signal {signal.name!r} refused: {e}") from None
    return signal


def parse_value(text: str) -> Any:
    """A command-line value: numbers, true/false, comma lists of them, else the text."""
    if "," in text:
        return [parse_value(t) for t in text.split(",") if t]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            v = kind(text)
        except ValueError:
            continue
        if kind is float and not math.isfinite(v):
            raise ValueError(f"value {text!r} is not finite")
        return v
    return text


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """["freq=0.021,0.047,0.25", "scale=2"] -> {"freq": [0.021, 0.047, 0.25], "scale": 2}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"signal parameters are key=value, got {pair!r}")
        out[key] = parse_value(value)
    return out
