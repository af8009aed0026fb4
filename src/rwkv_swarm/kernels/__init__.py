"""RWKV-7 ("x070") compute: the model, its recurrent state, and the population forward."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import RWKV7Config
from .model import RWKV7
from .population import GROUPS, Population, apply_update, pair_noise
from .state import RWKV7State

__all__ = ["GROUPS", "Population", "RWKV7", "RWKV7Config", "RWKV7State", "apply_update",
           "load_checkpoint", "pair_noise", "save_checkpoint"]
