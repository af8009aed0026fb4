"""Environments a swarm node evaluates its population in (the node's `Environment` protocol).

`GymEnv`: n copies of a gymnasium task (episodic). `SignalEnv`: next-value prediction on a
persistent synthetic stream. `make_env` builds either from a config value, `env_config`
validates one without building anything, `env_spec` gives an environment's canonical table.
"""

from ..environment import Environment
from .factory import KINDS, env_config, env_spec, make_env
from .gym import GYM_SIGNALS, GymConfig, GymEnv
from .normalize import RunningNorm
from .processes import AR, PROCESSES, MackeyGlass, Sines, make_process, process_params
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
    "RunningNorm",
    "SignalConfig",
    "SignalEnv",
    "Sines",
    "env_config",
    "env_spec",
    "make_env",
    "make_process",
    "process_params",
]
