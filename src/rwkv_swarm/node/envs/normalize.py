"""Running observation normalisation that is frozen while a generation is evaluated.

Observations seen during evaluations go into a *pending* accumulator; `commit()` (called by an
environment's `end_generation`) merges them into the statistics used to normalise. So within a
generation the same observation always normalises to the same value, and every mutant is judged
against the same input scaling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...util.codec import decode_array, encode_array
from ._util import check_state_keys, finite

_KEYS = ("dim", "count", "mean", "m2", "pending_count", "pending_mean", "pending_m2")


def _merge(
    na: float, ma: np.ndarray, sa: np.ndarray, nb: float, mb: np.ndarray, sb: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Chan et al.'s parallel merge of (count, mean, sum of squared deviations) pairs."""
    if nb == 0:
        return na, ma, sa
    if na == 0:
        return nb, mb.copy(), sb.copy()
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), sa + sb + delta * delta * (na * nb / n)


class RunningNorm:
    """Per-feature running mean/variance (float64) with a pending accumulator.

    normalize(x) = clip((x - mean) / sqrt(var + eps), -clip, +clip) with the committed
    statistics; before the first commit that hold data, mean = 0 and var = 1 (identity, then
    clipped).
    """

    def __init__(self, dim: int, *, clip: float = 5.0, eps: float = 1e-8) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.clip = finite("clip", clip, low=0.0, strict=True)
        self.eps = finite("eps", eps, low=0.0, strict=True)
        self.count = 0.0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)
        self._pending: tuple[float, np.ndarray, np.ndarray] = (0.0, np.zeros(dim), np.zeros(dim))
        self._refresh()

    def _refresh(self) -> None:
        # cache what normalize() needs: it runs every step, the statistics change once per gen
        var = self.m2 / self.count if self.count > 0 else np.ones(self.dim)
        self._shift = self.mean.copy()
        self._inv_std = 1.0 / np.sqrt(var + self.eps)

    @property
    def scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """(shift, inv_std): normalize(x) is clip((x - shift) * inv_std), frozen until commit."""
        return self._shift, self._inv_std

    @property
    def var(self) -> np.ndarray:
        """Committed population variance (ones before any data was committed)."""
        return self.m2 / self.count if self.count > 0 else np.ones(self.dim)

    @property
    def pending_count(self) -> float:
        """Rows observed since the last commit."""
        return self._pending[0]

    @property
    def pending(self) -> tuple[float, np.ndarray, np.ndarray]:
        """The statistics observed since the last commit: (count, mean, m2), copies."""
        count, mean, m2 = self._pending
        return count, mean.copy(), m2.copy()

    def replace_pending(self, parts: list[tuple[float, np.ndarray, np.ndarray]]) -> None:
        """Pending statistics := `parts` merged in order. The members of a consensus group,
        each of which saw a slice of one population's episodes, merge all slices in member
        order and so commit the same statistics as one node that saw them all."""
        merged: tuple[float, np.ndarray, np.ndarray] = (0.0, np.zeros(self.dim),
                                                        np.zeros(self.dim))
        for i, (count, mean, m2) in enumerate(parts):
            mean, m2 = np.asarray(mean, np.float64), np.asarray(m2, np.float64)
            if mean.shape != (self.dim,) or m2.shape != (self.dim,) or not count >= 0:
                raise ValueError(f"parts[{i}] must be (count >= 0, mean ({self.dim},), "
                                 f"m2 ({self.dim},)), got count {count}, shapes {mean.shape}, "
                                 f"{m2.shape}")
            merged = _merge(*merged, float(count), mean, m2)
        self._pending = merged

    def observe(self, rows: np.ndarray) -> None:
        """Add rows (k, dim) to the pending statistics (not used until `commit`)."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"rows must have shape (k, {self.dim}), got {x.shape}")
        if x.shape[0] == 0:
            return
        # x.mean(axis=0) and .sum(axis=0), the same reductions without their Python wrappers
        # (this runs every environment step)
        mb = np.add.reduce(x, axis=0) / x.shape[0]
        sb = np.add.reduce(np.square(x - mb), axis=0)
        self._pending = _merge(*self._pending, float(x.shape[0]), mb, sb)

    def commit(self) -> None:
        """Fold the pending statistics into the ones `normalize` uses."""
        self.count, self.mean, self.m2 = _merge(self.count, self.mean, self.m2, *self._pending)
        self._pending = (0.0, np.zeros(self.dim), np.zeros(self.dim))
        self._refresh()

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """x (..., dim) normalised with the committed statistics, clipped, as float64."""
        y = (x - self._shift) * self._inv_std
        return np.minimum(np.maximum(y, -self.clip, out=y), self.clip, out=y)  # np.clip's bits

    def state_dict(self) -> dict[str, Any]:
        pc, pm, ps = self._pending
        return {
            "dim": self.dim,
            "count": self.count,
            "mean": encode_array(self.mean),
            "m2": encode_array(self.m2),
            "pending_count": pc,
            "pending_mean": encode_array(pm),
            "pending_m2": encode_array(ps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys("RunningNorm", state, _KEYS)
        if state["dim"] != self.dim:
            raise ValueError(f"state is for dim {state['dim']}, this normaliser has {self.dim}")
        arrays = [decode_array(state[k]) for k in ("mean", "m2", "pending_mean", "pending_m2")]
        if any(a.shape != (self.dim,) for a in arrays):
            raise ValueError(f"state arrays must have shape ({self.dim},)")
        self.count = float(state["count"])
        self.mean, self.m2 = arrays[0], arrays[1]
        self._pending = (float(state["pending_count"]), arrays[2], arrays[3])
        self._refresh()
