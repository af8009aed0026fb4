"""rwkv-swarm: evolve swarms of RWKV-7 recurrent models with Kalman-guided evolution strategies.

    from rwkv_swarm import Swarm, SwarmConfig, Signal, load_trace

The user API is loaded on first use, so that `import rwkv_swarm.kernels` (or a node actor)
does not pay for Ray and the swarm layer.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_API = ("Swarm", "SwarmConfig", "Signal", "load_trace")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(".swarm", __name__), name)
    raise AttributeError(f"module 'rwkv_swarm' has no attribute {name!r}")
