"""RWKV-7 ("x070") compute: the model, its recurrent state, and the population forward."""

from .config import RWKV7Config
from .state import RWKV7State

__all__ = ["RWKV7Config", "RWKV7State"]
