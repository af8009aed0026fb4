"""`make_env`: build an environment from a config value (a TOML table or a short string)."""

from __future__ import annotations

from typing import Any

from ..environment import Environment
from .gym import GymEnv
from .processes import PROCESSES, make_process
from .signal import SignalEnv

KINDS = {
    "gym": 'a gymnasium id: "gym:CartPole-v1" or {"kind": "gym", "id": ..., GymConfig options}',
    "signal": 'a synthetic stream: "signal", "signal:<process>" or {"kind": "signal", '
              '"process": name or {"name": ..., params}, SignalConfig options}',
}


def make_env(spec: str | dict[str, Any]) -> Environment:
    """The environment `spec` names; ValueError listing the accepted kinds otherwise.

    Examples: "gym:CartPole-v1"; {"kind": "gym", "id": "CartPole-v1", "obs_mask": [0, 2]};
    "signal:mackey_glass"; {"kind": "signal", "process": {"name": "ar", "coeffs": [0.9]},
    "segment_length": 128}.
    """
    if isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        if kind == "gym" and rest:
            return GymEnv(rest)
        if kind == "signal":
            return SignalEnv() if not rest else SignalEnv(process=make_process(rest, {}))
        raise ValueError(f"unknown environment spec {spec!r}; accepted kinds: {KINDS}")
    if not isinstance(spec, dict):
        raise ValueError(f"environment spec must be a str or dict, got {type(spec).__name__}; "
                         f"accepted kinds: {KINDS}")
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind == "gym":
        if "id" not in options:
            raise ValueError(f"a gym environment spec needs 'id' (a gymnasium id), got {spec}")
        return GymEnv(options.pop("id"), **options)
    if kind == "signal":
        process = options.pop("process", None)
        if isinstance(process, str):
            options["process"] = make_process(process, {})
        elif isinstance(process, dict):
            params = dict(process)
            if "name" not in params:
                raise ValueError(f"a process table needs 'name' (one of {sorted(PROCESSES)}), "
                                 f"got {process}")
            options["process"] = make_process(params.pop("name"), params)
        elif process is not None:
            raise ValueError(f"process must be a name {sorted(PROCESSES)} or a table with "
                             f"'name' and parameters, got {process!r}")
        return SignalEnv(**options)
    raise ValueError(f"unknown environment kind {kind!r}; accepted kinds: {KINDS}")
