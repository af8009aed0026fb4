"""Environments from config values (a TOML table or a short string), and back.

    env_config(spec) -> GymConfig | SignalConfig   validated, nothing built (cheap)
    make_env(spec)   -> GymEnv | SignalEnv
    env_spec(env)    -> the canonical table that makes the same environment
"""

from __future__ import annotations

from typing import Any

from ..environment import Environment
from ._util import config_with
from .gym import GymConfig, GymEnv
from .processes import PROCESSES, make_process, process_to_dict
from .signal import SignalConfig, SignalEnv

KINDS = {
    "gym": 'a gymnasium id: "gym:CartPole-v1" or {"kind": "gym", "id": ..., GymConfig options}',
    "signal": 'a synthetic stream: "signal", "signal:<process>" or {"kind": "signal", '
              '"process": name or {"name": ..., params}, SignalConfig options}',
}


def env_config(spec: str | dict[str, Any]) -> GymConfig | SignalConfig:
    """The validated config that `spec` names; ValueError naming what is wrong and what is
    accepted. Builds no environment.

    Examples: "gym:CartPole-v1"; {"kind": "gym", "id": "CartPole-v1", "obs_mask": [0, 2]};
    "signal:mackey_glass"; {"kind": "signal", "process": {"name": "ar", "coeffs": [0.9]},
    "segment_length": 128}.
    """
    if isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        if kind == "gym" and rest:
            return GymConfig(env_id=rest)
        if kind == "signal":
            return SignalConfig() if not rest else SignalConfig(process=make_process(rest, {}))
        raise ValueError(f"unknown environment spec {spec!r}; accepted kinds: {KINDS}")
    if not isinstance(spec, dict):
        raise ValueError(f"environment spec must be a str or table, got {type(spec).__name__}; "
                         f"accepted kinds: {KINDS}")
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind == "gym":
        if "id" not in options:
            raise ValueError(f"a gym environment spec needs 'id' (a gymnasium id), got {spec}")
        return config_with(GymConfig, None, {"env_id": options.pop("id"), **options})
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
        return config_with(SignalConfig, None, options)
    raise ValueError(f"unknown environment kind {kind!r}; accepted kinds: {KINDS}")


def make_env(spec: str | dict[str, Any]) -> Environment:
    """The environment `spec` names (see `env_config`)."""
    config = env_config(spec)
    return GymEnv(config) if isinstance(config, GymConfig) else SignalEnv(config)


def env_spec(env: Environment) -> dict[str, Any] | None:
    """The canonical table of a `GymEnv` / `SignalEnv` (every option, defaults included), or
    None for an environment this module does not build."""
    config = getattr(env, "config", None)
    if isinstance(config, GymConfig):
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}
        return {"kind": "gym", "id": d.pop("env_id"), **d}
    if isinstance(config, SignalConfig):
        d = dict(vars(config))
        return {"kind": "signal", **d, "process": process_to_dict(config.process)}
    return None
