"""Environments from config values (a TOML table or a short string), and back.

    env_config(spec)  -> GymConfig | SignalConfig | PythonConfig   validated, nothing built
    make_env(spec)    -> GymEnv | SignalEnv | PythonEnv
    env_spec(env)     -> the canonical table that makes the same environment
    env_signals(spec) -> the signals that environment takes: {name: {parameter: meaning}}
    env_modules(spec) -> the modules another process imports to build it (a swarm's nodes)
    env_table(spec)   -> spec with an Environment class given as an object replaced by its path
"""

from __future__ import annotations

from typing import Any

from ..environment import Environment
from ._gym_backends import registered_by_gymnasium, resolve_env_id
from ._util import config_with
from .gym import GYM_SIGNALS, GymConfig, GymEnv
from .processes import PROCESSES, make_process, process_to_dict
from .python_env import PythonConfig, PythonEnv, class_path, class_signals, load_class
from .signal import SIGNALS, SignalConfig, SignalEnv

KINDS = {
    "gym": 'a gymnasium id: "gym:CartPole-v1" or {"kind": "gym", "id": ..., GymConfig options}',
    "signal": 'a synthetic stream: "signal", "signal:<process>" or {"kind": "signal", '
              '"process": name or {"name": ..., params}, SignalConfig options}',
    "python": 'your own Environment class: {"kind": "python", "class": "module:Class", '
              'constructor options}',
}
EnvConfig = GymConfig | SignalConfig | PythonConfig


def env_config(spec: str | dict[str, Any]) -> EnvConfig:
    """The validated config that `spec` names; ValueError naming what is wrong and what is
    accepted. Builds no environment (a module a world names is imported).

    Examples: "gym:CartPole-v1"; {"kind": "gym", "id": "CartPole-v1", "obs_mask": [0, 2]};
    {"kind": "gym", "id": "Reach1D-v0", "module": "mytasks"}; "signal:mackey_glass";
    {"kind": "signal", "process": {"name": "ar", "coeffs": [0.9]}, "segment_length": 128};
    {"kind": "python", "class": "mytasks:Reach", "length": 32}.
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
        return _signal_config(options)
    if kind == "python":
        if "class" not in options:
            raise ValueError(f"a python environment spec needs 'class' (\"module:ClassName\"), "
                             f"got {spec}")
        cls = options.pop("class")
        return PythonConfig(class_path(cls) if isinstance(cls, type) else cls, options)
    raise ValueError(f"unknown environment kind {kind!r}; accepted kinds: {KINDS}")


def _signal_config(options: dict[str, Any]) -> SignalConfig:
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


def make_env(spec: str | dict[str, Any]) -> Environment:
    """The environment `spec` names (see `env_config`)."""
    config = env_config(spec)
    if isinstance(config, GymConfig):
        return GymEnv(config)
    return SignalEnv(config) if isinstance(config, SignalConfig) else PythonEnv(config)


def env_spec(env: Environment) -> dict[str, Any] | None:
    """The canonical table of a `GymEnv` / `SignalEnv` / `PythonEnv` (every option, defaults
    included), or None for an environment this module does not build."""
    config = getattr(env, "config", None)
    if isinstance(config, GymConfig):
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}
        if d["module"] is None:  # tables from before `module` existed stay equal
            del d["module"]
        return {"kind": "gym", "id": d.pop("env_id"), **d}
    if isinstance(config, SignalConfig):
        d = dict(vars(config))
        return {"kind": "signal", **d, "process": process_to_dict(config.process)}
    if isinstance(config, PythonConfig):
        return {"kind": "python", "class": config.class_path, **config.options}
    return None


def env_table(spec: str | dict[str, Any]) -> str | dict[str, Any]:
    """`spec`, with an Environment class given as a class object replaced by its import path
    (what a TOML file and another process can hold)."""
    if isinstance(spec, dict) and isinstance(spec.get("class"), type):
        return {**spec, "class": class_path(spec["class"])}
    return spec


def env_signals(spec: str | dict[str, Any]) -> dict[str, dict[str, str]]:
    """The signals the environment `spec` takes: {name: {parameter: meaning}}."""
    config = env_config(spec)
    if isinstance(config, GymConfig):
        return GYM_SIGNALS
    if isinstance(config, SignalConfig):
        return SIGNALS
    return class_signals(load_class(config.class_path))


def env_modules(spec: str | dict[str, Any]) -> tuple[str, ...]:
    """The modules another process (a swarm's node) must import to build `spec`'s world; a
    ValueError saying how to fix it when no module can give it its world: a gymnasium id
    registered in this process only, a class defined in the script being run (__main__)."""
    config = env_config(spec)
    if isinstance(config, PythonConfig):
        module = config.class_path.partition(":")[0]
        if module == "__main__":
            raise ValueError(f"class {config.class_path!r} is defined in the script you run; "
                             "the nodes are other processes and cannot import it: move it into "
                             "a module of its own (e.g. mytasks.py beside the script) and name "
                             "it \"mytasks:ClassName\"")
        return (module,)
    if not isinstance(config, GymConfig):
        return ()
    prefix, sep, _ = config.env_id.partition(":")
    modules = tuple(m for m in (config.module, prefix if sep else None) if m)
    gym_spec = resolve_env_id(config.env_id, config.module)
    if not modules and not registered_by_gymnasium(gym_spec):
        raise ValueError(_unregistered(gym_spec.id, gym_spec.entry_point))
    return modules


def _unregistered(env_id: str, entry_point: Any) -> str:
    where = entry_point if isinstance(entry_point, str) else \
        f"{getattr(entry_point, '__module__', '?')}:{getattr(entry_point, '__qualname__', '?')}"
    module = where.partition(":")[0]
    fix = (f"name the module that registers it: module = \"{module}\" (or id = "
           f"\"{module}:{env_id}\")" if module and module != "__main__" else
           "move the gymnasium.register call (and the class) into a module of its own, e.g. "
           "mytasks.py beside the script, and name it: module = \"mytasks\"")
    return (f"gymnasium id {env_id!r} is registered in this process only (entry point "
            f"{where}); the nodes are other processes and do not know it: {fix}")
