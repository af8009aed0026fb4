"""Optimizers a strategy may feed its gradient estimate to, and the calibration of its
fitness predictions."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

OPTIMIZERS = ("adam", "sgd", "clipup")


class PlainOptimizer(ABC):
    """The part of `torch.optim.Optimizer` a strategy uses (`param_groups`, `state`, `step`,
    `state_dict` in torch's format), over one group of parameters, without torch.optim: its
    methods import torch's compiler (torch._dynamo) the first time one runs, a second of CPU
    in every node process. A state dict saved by torch's optimizer of the same rule loads."""

    def __init__(self, params: list[torch.Tensor], defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = [{"params": list(params), **defaults}]
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """{"state": {index: {name: value}}, "param_groups": [{hyperparameters, "params":
        [index]}]}, indices in parameter order; the tensors are the live ones."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        return {"state": {index[id(p)]: s for p, s in self.state.items()},
                "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take a `state_dict()`'s moments (cast to each parameter's device and floating
        dtype; a step count stays as saved) and hyperparameters."""
        saved = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in saved]
        if sizes != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"optimizer state for parameter groups of sizes {sizes}, not "
                             f"{[len(g['params']) for g in self.param_groups]}")
        by_index = dict(zip((i for g in saved for i in g["params"]), self._params(),
                            strict=True))
        self.state = defaultdict(dict)
        for i, values in state_dict["state"].items():
            p = by_index[i]
            self.state[p] = {k: _like(v, p) if k != "step" else v for k, v in values.items()}
        self.param_groups = [{**{k: v for k, v in s.items() if k != "params"},
                              "params": g["params"]}
                             for s, g in zip(saved, self.param_groups, strict=True)]

    @abstractmethod
    def step(self) -> None:
        """One step of the rule over every parameter that has a gradient."""


def _like(value: Any, p: torch.Tensor) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)


class AdamW(PlainOptimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), step for step what
    `torch.optim.AdamW` computes on the CPU (its single-tensor path), bit for bit."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (
            0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                m, v, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
                state["step"] += 1
                if group["weight_decay"] != 0:
                    p.mul_(1 - lr * group["weight_decay"])
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                t = state["step"].item()
                denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
                p.addcdiv_(m, denom, value=-(lr / (1 - beta1**t)))


class SGD(PlainOptimizer):
    """SGD with momentum (no dampening) and L2 weight decay folded into the gradient, step for
    step what `torch.optim.SGD` computes on the CPU, bit for bit."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        # dampening and nesterov: torch's SGD needs them in a state it loads; 0 and off here
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "dampening": 0.0, "nesterov": False})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in (p for p in group["params"] if p.grad is not None):
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if group["momentum"] != 0:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = grad.detach().clone()
                    else:
                        buf.mul_(group["momentum"]).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-group["lr"])


class ClipUp(PlainOptimizer):
    """ClipUp (Toklu et al., PPSN 2020): momentum on the normalised gradient, speed clipped.

        v <- momentum * v - lr * grad / ||grad||;  v <- v * min(1, max_speed / ||v||);  x += v

    Norms are over all parameters together, so a step keeps the estimate's direction and its
    size is set by lr and max_speed alone, whatever the number of coordinates or the fitness
    scale (unlike Adam's per-coordinate normalisation, which moves every coordinate by about
    lr even where the estimate is pure noise).
    """

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.9,
                 max_speed: float = 0.3, weight_decay: float = 0.0):
        if not (lr > 0 and max_speed > 0):
            raise ValueError(f"lr and max_speed must be > 0, got {lr}, {max_speed}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "max_speed": max_speed,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
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
                   max_speed: float, weight_decay: float) -> PlainOptimizer:
    """AdamW, SGD with momentum or ClipUp over `params`."""
    if name == "clipup":
        return ClipUp(params, lr=lr, momentum=momentum, max_speed=max_speed,
                      weight_decay=weight_decay)
    if name == "adam":
        return AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
