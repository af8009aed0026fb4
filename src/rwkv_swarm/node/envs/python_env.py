"""`PythonEnv`: a world of your own, an `Environment` class given by import path.

    {"kind": "python", "class": "mytasks:Reach", "length": 32}

builds `mytasks.Reach(length=32)`: every key but `kind` and `class` goes to the constructor.
The class declares the signals it takes as a class attribute
`SIGNALS = {name: {parameter: meaning}}` (none when absent). Everything that can be checked
without building the world (the import, the class, its protocol methods, the constructor's
parameters, SIGNALS) is checked by `PythonConfig`, so that a swarm refuses a bad world before
any actor starts.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..environment import Environment
from ._imports import import_user_module

METHODS = ("reset", "step", "end_generation", "apply_signal", "state_dict", "load_state_dict")
ATTRIBUTES = ("observation_dim", "action_dim", "persistent")
PROTOCOL = "the Environment protocol (rwkv_swarm.node.Environment, docs/environments.md)"


def class_path(cls: type) -> str:
    """"module:QualName", the import path of class `cls`."""
    return f"{cls.__module__}:{cls.__qualname__}"


def load_class(path: str) -> type:
    """The class that `path` ("package.module:ClassName") names, refused (ValueError, one line
    saying how to fix it) unless it has the Environment protocol's methods."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"class must be 'package.module:ClassName' (the module, a colon, the "
                         f"class), got {path!r}")
    module_name, _, qualname = path.partition(":")
    obj: Any = import_user_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            module = import_user_module(module_name)
            classes = sorted(n for n, v in vars(module).items()
                             if isinstance(v, type) and v.__module__ == module.__name__)
            raise ValueError(f"module {module_name!r} has no class {qualname!r}; it defines "
                             f"{classes or 'no classes'}")
    if not isinstance(obj, type):
        raise ValueError(f"{path!r} is a {type(obj).__name__}, not a class implementing "
                         f"{PROTOCOL}")
    missing = [m for m in METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise ValueError(f"class {path!r} does not implement {PROTOCOL}: it lacks the methods "
                         f"{missing}")
    class_signals(obj)
    return obj


def class_signals(cls: type) -> dict[str, dict[str, str]]:
    """The signals class `cls` takes: its `SIGNALS` attribute ({} when it has none)."""
    signals = getattr(cls, "SIGNALS", {})
    ok = isinstance(signals, dict) and all(
        isinstance(name, str) and isinstance(params, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
        for name, params in signals.items())
    if not ok:
        raise ValueError(f"{class_path(cls)}.SIGNALS must be {{signal name: {{parameter: "
                         f"meaning}}}} with strings throughout, got {signals!r}")
    return {name: dict(params) for name, params in signals.items()}


def _check_options(path: str, cls: type, options: dict[str, Any]) -> None:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read (e.g. a C extension): the build tells
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"option(s) {unknown} not taken by {path}; its constructor takes "
                         f"{names}")
    needed = [p.name for p in params if p.default is p.empty and p.name not in options
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if needed:
        raise ValueError(f"{path} needs the option(s) {needed} (keys of the [env] table)")


@dataclass(frozen=True)
class PythonConfig:
    """A world of your own: an Environment class and its constructor's options."""

    # "package.module:ClassName", a class implementing the Environment protocol; the module is
    # imported from the Python path or the working directory (the nodes import it too)
    class_path: str
    # keyword arguments for the class's constructor: every other key of the [env] table
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.options, dict) or not all(isinstance(k, str)
                                                         for k in self.options):
            raise ValueError(f"options must be a table of keyword arguments, got "
                             f"{self.options!r}")
        _check_options(self.class_path, load_class(self.class_path), self.options)
        object.__setattr__(self, "options", dict(self.options))


def _check_world(path: str, world: Any) -> None:
    missing = [a for a in ATTRIBUTES if not hasattr(world, a)]
    if missing or not isinstance(world, Environment):
        raise ValueError(f"a {path} does not implement {PROTOCOL}: it lacks {missing}")
    for name in ("observation_dim", "action_dim"):
        v = getattr(world, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{path}.{name} must be an integer >= 1, got {v!r}")
    if not isinstance(world.persistent, (bool, np.bool_)):
        raise ValueError(f"{path}.persistent must be True (one continuing stream) or False "
                         f"(episodic), got {world.persistent!r}")


class PythonEnv:
    """`PythonConfig.class_path` built with its options, as `world`; the Environment protocol
    (and any other attribute, e.g. `observation_stats`) is that world's own.

    PythonEnv(PythonConfig("mytasks:Reach", {"length": 32})) or PythonEnv("mytasks:Reach",
    length=32)."""

    def __init__(self, config: PythonConfig | str, **options: Any) -> None:
        if isinstance(config, str):
            config = PythonConfig(config, options)
        elif options:
            config = dataclasses.replace(config, options={**config.options, **options})
        self.config = config
        cls = load_class(config.class_path)
        try:
            world = cls(**config.options)
        except Exception as e:  # noqa: BLE001 - whatever the user's constructor raises
            text = " ".join(str(e).split())
            raise ValueError(f"{config.class_path}(**{config.options!r}) failed: "
                             f"{type(e).__name__}: {text}") from e
        _check_world(config.class_path, world)
        self.world = world

    @property
    def observation_dim(self) -> int:
        return int(self.world.observation_dim)

    @property
    def action_dim(self) -> int:
        return int(self.world.action_dim)

    @property
    def persistent(self) -> bool:
        return bool(self.world.persistent)

    def reset(self, n: int, seed: int, keys: Sequence[int] | None = None) -> np.ndarray:
        return self.world.reset(n, seed, keys)

    def step(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.world.step(outputs)

    def end_generation(self) -> None:
        self.world.end_generation()

    def apply_signal(self, name: str, params: dict[str, Any]) -> None:
        self.world.apply_signal(name, params)

    def state_dict(self) -> dict[str, Any]:
        return self.world.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        if name == "world":  # not built yet
            raise AttributeError(name)
        return getattr(self.world, name)

    def __repr__(self) -> str:
        return f"PythonEnv({self.config.class_path!r}, {self.config.options!r})"
