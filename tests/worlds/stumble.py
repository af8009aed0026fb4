"""Stumble: Reach1D whose `stumble` copies raise once per process, at their `at`-th reset (a
node that fails alone, its process unharmed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .reach1d import Reach1D

_stumbled = False  # once per process: the node restarted in the same process goes on


class Stumble(Reach1D):
    def __init__(self, length: int = 10, speed: float = 0.2, stumble: bool = False,
                 at: int = 3) -> None:
        super().__init__(length, speed)
        self.stumble, self.at, self.resets = stumble, at, 0

    def reset(self, n: int, seed: int, keys: Any = None) -> np.ndarray:
        global _stumbled
        self.resets += 1
        if self.stumble and self.resets >= self.at and not _stumbled:
            _stumbled = True
            raise RuntimeError("stumbled")
        return super().reset(n, seed, keys)
