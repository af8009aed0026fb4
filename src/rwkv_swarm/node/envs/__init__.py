"""Environments a swarm node evaluates its population in (the node's `Environment` protocol).

`GymEnv`: n copies of a gymnasium task (episodic). `SignalEnv`: next-value prediction on a
persistent synthetic stream. `PythonEnv`: an Environment class of your own, by import path.
`make_env` builds any of them from a config value, `env_config` validates one without building
anything, `env_spec` gives an environment's canonical table, `env_signals` the signals it
takes and `env_modules` the modules another process imports to build it.
"""

from ..environment import Environment
from .factory import (
    KINDS,
    env_config,
    env_modules,
    env_signals,
    env_spec,
    env_table,
    make_env,
)
from .gym import GYM_SIGNALS, GymConfig, GymEnv
from .normalize import RunningNorm
from .processes import AR, PROCESSES, MackeyGlass, Sines, make_process, process_params
from .python_env import PythonConfig, PythonEnv
from .signal import SIGNALS, SignalConfig, SignalEnv

__all__ = [
    "AR",
    "GYM_SIGNALS",
    "KINDS",
    "PROCESSES",
    "SIGNALS",
    "Environment",
    "GymConfig",
    "GymEnv",
    "MackeyGlass",
    "PythonConfig",
    "PythonEnv",
    "RunningNorm",
    "SignalConfig",
    "SignalEnv",
    "Sines",
    "env_config",
    "env_modules",
    "env_signals",
    "env_spec",
    "env_table",
    "make_env",
    "make_process",
    "process_params",
]
