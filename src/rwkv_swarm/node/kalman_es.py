"""`KalmanES`: `LowRankES` with the organism's reflex (docs/evolution.md gives the equations).

- the direction is the `DirectionBelief`'s filtered gradient m with variance P (a per-coordinate
  Kalman gain from the population's own per-coordinate variance; neighbours' estimates enter
  as further measurements), and the step is lr * m / sqrt(m^2 + Rbar), Rbar the running
  variance of one generation's estimate: Adam's m / sqrt(v) with both moments from the filter;
- optionally (`adapt_lr`) the lr scale grows by `lr_up` when the measured change beats the
  prediction and shrinks by `lr_down` when it falls short;
- on a bad surprise (NIS above its threshold, fitness below the prediction) sigma is multiplied
  by `sigma_surprise` (then relaxes back), the lr scale returns to 1, the optimizer's moments
  and the direction belief are reset: the old world's statistics are dropped;
- when nothing is known of the direction and every antithetic pair tied, the perturbations are
  too small to change behaviour: sigma grows by `sigma_surprise` until they do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..kalman import DirectionBelief, DirectionConfig, FitnessUpdate
from ..kernels import RWKV7
from .fusion import Evidence
from .strategy import (
    WORLD_CHANGE_INFLATION,
    ESConfig,
    Measurement,
    Strategy,
    device_vector,
    host_bytes,
)

STEP_RULES = ("snr", "optimizer")


@dataclass(frozen=True)
class KalmanESConfig(ESConfig):
    """`ESConfig` plus the reflex: how beliefs throttle the step and the exploration."""

    direction: DirectionConfig = field(default_factory=DirectionConfig)
    step_rule: str = "snr"  # "snr": lr * m / sqrt(m^2 + Rbar), m the filtered gradient, Rbar
    # the running per-coordinate variance of one estimate; "optimizer": m fed to `optimizer`
    noise_memory: float = 0.9  # weight kept per generation by the running variance Rbar
    drift_floor: float = 0.2  # per-coordinate process noise at least drift_floor * Rbar: a
    # steady-state gain of at least K with K^2 / (1 - K) = drift_floor (0.2: K ~ 0.36)
    adapt_lr: bool = False  # scale lr by lr_up / lr_down as measured changes beat / miss the
    # predicted ones
    lr_up: float = 1.2  # lr scale factor when the measured change beats the prediction
    lr_down: float = 1 / 1.2  # ... when it falls short
    lr_scale_range: tuple[float, float] = (0.25, 4.0)
    sigma_surprise: float = 2.0  # sigma scale factor on a surprise (explore the new world)
    sigma_relax: float = 0.8  # per generation, the sigma scale relaxes toward 1 by this factor
    sigma_scale_max: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be one of {STEP_RULES}, got {self.step_rule!r}")
        lo, hi = self.lr_scale_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"lr_scale_range must hold 1 within positive bounds, got "
                             f"{self.lr_scale_range}")
        if not (self.sigma_surprise >= 1 and 0 < self.sigma_relax <= 1
                and self.sigma_scale_max >= 1):
            raise ValueError(f"need sigma_surprise >= 1, 0 < sigma_relax <= 1 and "
                             f"sigma_scale_max >= 1, got {self.sigma_surprise}, "
                             f"{self.sigma_relax}, {self.sigma_scale_max}")


class KalmanES(Strategy):
    """`LowRankES` with the organism's reflex; see the module docstring."""

    config: KalmanESConfig

    def __init__(self, model: RWKV7, config: KalmanESConfig | None = None):
        super().__init__(model, config or KalmanESConfig())
        self.direction_belief = self._new_belief()
        self.sigma_scale = 1.0
        self.noise_var: torch.Tensor | None = None  # Rbar: running variance of one estimate

    def _new_belief(self) -> DirectionBelief:
        """A belief that knows nothing yet, on the model's device."""
        return DirectionBelief(self.dim, self.config.direction, device=self.device)

    def _on_predict(self) -> None:
        db = self.direction_belief
        db.predict()
        if db.var is not None and self.noise_var is not None and self.config.drift_floor > 0:
            # the pooled drift estimate is dominated by the many weights whose gradient never
            # moves; a floor per coordinate keeps the relevant ones from being over-smoothed
            floor = self.config.drift_floor * self.noise_var.to(db.var.dtype)
            db.var = db.var + torch.clamp(floor - db.drift, min=0.0)

    def _sigma_scale(self) -> float:
        return self.sigma_scale

    def _direction(self, m: Measurement, absorbed: list[Evidence]) -> tuple[torch.Tensor, float]:
        db = self.direction_belief
        dtype = self.params[0].dtype
        if m.tied and not absorbed:
            # every antithetic pair tied (common on a plateau): the estimate is exactly 0 with
            # a sample variance of 0, which is no evidence at all, not an exact measurement of
            # 0 (gain 1 would erase the direction). A missing measurement: predict only.
            if db.mean is None:  # and nothing known: the mutants all behave alike
                self._widen()
            return db.direction.to(dtype), 0.0
        fused = self.combine(m, absorbed) if absorbed else m.estimate()
        if fused is None:  # tied, and no neighbour's estimate counts: nothing measured
            return db.direction.to(dtype), 0.0
        g, var = fused
        b = self.config.noise_memory
        self.noise_var = var.clone() if self.noise_var is None \
            else b * self.noise_var + (1 - b) * var
        gain = float(db.update(g, var).gain.mean())
        return db.direction.to(dtype), gain

    def _reference(self) -> torch.Tensor | None:
        return self.direction_belief.mean  # the filtered direction, before this update

    def _throttle(self, belief: FitnessUpdate) -> float:
        c = self.config
        if belief.surprised and belief.innovation < 0:  # worse than predicted: the world changed
            self._explore()
            return self.lr_scale
        self.sigma_scale = max(1.0, self.sigma_scale * c.sigma_relax)
        if c.adapt_lr and math.isfinite(belief.S):
            lo, hi = c.lr_scale_range
            factor = c.lr_up if belief.innovation >= 0 else c.lr_down
            self.lr_scale = min(max(self.lr_scale * factor, lo), hi)
        return self.lr_scale

    def _widen(self) -> None:
        """sigma *= sigma_surprise (up to the cap). The population's mean fitness depends on
        sigma, so the fitness belief is told its next measurement is of a changed search."""
        c = self.config
        new = min(self.sigma_scale * c.sigma_surprise, c.sigma_scale_max)
        if new > self.sigma_scale and math.isfinite(self.fitness_belief.var):
            self.fitness_belief.inflate(WORLD_CHANGE_INFLATION)
        self.sigma_scale = new

    def _explore(self) -> None:
        """Drop the old world's statistics and widen the search."""
        self._widen()
        self.lr_scale = 1.0
        self.optimizer.state.clear()
        self.direction_belief = self._new_belief()

    def world_changed(self) -> None:
        super().world_changed()
        self._explore()

    def adopted(self, belief_mean: float, belief_var: float) -> None:
        super().adopted(belief_mean, belief_var)
        self.direction_belief = self._new_belief()
        self.noise_var = None

    def _step(self, direction: torch.Tensor, lr: float) -> None:
        if self.config.step_rule == "optimizer":
            return super()._step(direction, lr)
        m = self.direction_belief.mean  # step_i = lr m_i / sqrt(m_i^2 + Rbar_i): |step_i| <= lr
        if m is None or self.noise_var is None:  # no evidence yet: every pair has tied so far
            return None
        snr_step = m / torch.sqrt(m * m + self.noise_var.to(m.dtype)).clamp_min(1e-30)
        if self.config.weight_decay:  # a factor of 1 changes no bit: skipped
            with torch.no_grad():
                torch._foreach_mul_(self.params, 1 - lr * self.config.weight_decay)
        self._apply(snr_step, lr)
        return None

    def _extra_state(self) -> dict[str, Any]:
        return {"sigma_scale": self.sigma_scale,
                "direction_belief": self.direction_belief.to_dict(),
                "noise_var": host_bytes(self.noise_var)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.sigma_scale = float(state["sigma_scale"])
        self.direction_belief = DirectionBelief.from_dict(state["direction_belief"], self.device)
        self.noise_var = device_vector(state["noise_var"], self.device)
