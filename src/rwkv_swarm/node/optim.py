"""Optimizers a strategy may feed its gradient estimate to, and the calibration of its
fitness predictions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OPTIMIZERS = ("adam", "sgd", "clipup")


class ClipUp(torch.optim.Optimizer):
    """ClipUp (Toklu et al., PPSN 2020): momentum on the normalised gradient, speed clipped.

        v <- momentum * v - lr * grad / ||grad||;  v <- v * min(1, max_speed / ||v||);  x += v

    Norms are over all parameters together, so a step keeps the estimate's direction and its
    size is set by lr and max_speed alone, whatever the number of coordinates or the fitness
    scale (unlike Adam's per-coordinate normalisation, which moves every coordinate by about
    lr even where the estimate is pure noise).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, max_speed: float = 0.3,
                 weight_decay: float = 0.0):
        if not (lr > 0 and max_speed > 0):
            raise ValueError(f"lr and max_speed must be > 0, got {lr}, {max_speed}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "max_speed": max_speed,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer.step
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            gnorm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
            if gnorm == 0:
                continue
            vel = [self.state[p].setdefault("velocity", torch.zeros_like(p)) for p in params]
            for v, p in zip(vel, params, strict=True):
                v.mul_(group["momentum"]).add_(p.grad, alpha=-group["lr"] / float(gnorm))
            vnorm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in vel)))
            scale = min(1.0, group["max_speed"] / vnorm) if vnorm > 0 else 1.0
            for v, p in zip(vel, params, strict=True):
                v.mul_(scale)
                p.mul_(1 - group["weight_decay"]).add_(v)
        return None


@dataclass
class Calibration:
    """How much of a predicted fitness change arrives: kappa in [0, 1], by exponentially
    weighted least squares of measured (population mean) on predicted changes, shrunk toward a
    prior of 0. Noise in the measured change only adds variance, not bias, to the slope.

    The first-order prediction g . step is biased upward: the step is computed from the same
    noisy g it is dotted with. kappa learns the discount instead of assuming one.
    """

    sxy: float = 0.0  # weighted sum of predicted * measured
    sxx: float = 0.0  # weighted sum of predicted^2
    memory: float = 0.9  # weight kept per generation
    prior: float = 0.0  # kappa before any evidence: predictions are not trusted until they
    # have been seen to come true
    prior_share: float = 0.1  # the prior counts as this share of the evidence

    @property
    def kappa(self) -> float:
        if self.sxx <= 0:
            return self.prior
        w = self.prior_share * self.sxx
        return min(max((self.sxy + self.prior * w) / (self.sxx + w), 0.0), 1.0)

    def observe(self, predicted: float, realised: float) -> None:
        if math.isfinite(predicted) and math.isfinite(realised):
            self.sxy = self.memory * self.sxy + predicted * realised
            self.sxx = self.memory * self.sxx + predicted * predicted


def make_optimizer(params: list[torch.Tensor], name: str, lr: float, momentum: float,
                   max_speed: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, SGD with momentum or ClipUp over `params`."""
    if name == "clipup":
        return ClipUp(params, lr=lr, momentum=momentum, max_speed=max_speed,
                      weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
