"""The strategies' optimizers: step for step what torch.optim's compute, bit for bit, their
state saved and loaded (torch's own format included), and a node process that never imports
torch's compiler for them."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from rwkv_swarm.node.optim import SGD, AdamW, ClipUp, make_optimizer

SHAPES = [(3, 5), (7,), (2, 2, 2)]
LRS = [0.05, 0.01, 0.2, 0.05, 0.003]  # a strategy sets lr before every step


def params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in SHAPES]


def step(opt, ps: list[torch.Tensor], lr: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for group in opt.param_groups:
        group["lr"] = lr
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()


def saved(opt) -> bytes:
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    return buf.getvalue()


def loaded(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


PAIRS = {
    "adamw": (lambda ps: AdamW(ps, lr=0.05, weight_decay=0.1),
              lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1)),
    "sgd": (lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1),
            lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_each_step_equals_torch_optims_bitwise_and_its_saved_state_loads_either_way(name):
    ours_of, torchs_of = PAIRS[name]
    a, b = params(1), params(1)
    ours, theirs = ours_of(a), torchs_of(b)
    for k, lr in enumerate(LRS[:3]):
        step(ours, a, lr, k)
        step(theirs, b, lr, k)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), (name, k)
    # a state saved by either loads into the other, and the three go on as one
    a2, b2 = [p.clone() for p in a], [p.clone() for p in a]
    from_ours, from_torch = torchs_of(a2), ours_of(b2)
    from_ours.load_state_dict(loaded(saved(ours)))
    from_torch.load_state_dict(loaded(saved(theirs)))
    for k, lr in enumerate(LRS[3:], start=3):
        for opt, ps in ((ours, a), (theirs, b), (from_ours, a2), (from_torch, b2)):
            step(opt, ps, lr, k)
        assert all(torch.equal(x, y) and torch.equal(x, z) and torch.equal(x, w)
                   for x, y, z, w in zip(a, b, a2, b2, strict=True)), (name, k)


def test_clipup_state_round_trips_and_a_cleared_state_starts_over():
    a, b = params(2), params(2)
    first = ClipUp(a, lr=0.1, momentum=0.9, max_speed=0.2)
    step(first, a, 0.1, 0)
    again = ClipUp(b, lr=0.1, momentum=0.9, max_speed=0.2)
    again.load_state_dict(loaded(saved(first)))
    for p, q in zip(a, b, strict=True):
        q.copy_(p)
    step(first, a, 0.1, 1)
    step(again, b, 0.1, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    moved = [p.clone() for p in a]
    first.state.clear()  # what a strategy does when the world changed: no velocity left
    step(first, a, 0.1, 2)
    total = torch.cat([(p - m).flatten() for p, m in zip(a, moved, strict=True)]).norm()
    assert float(total) == pytest.approx(0.1)  # lr * unit gradient: no momentum carried


def test_a_state_of_another_parameter_layout_is_refused():
    opt = make_optimizer(params(3), "adam", 0.05, 0.9, 0.3, 0.0)
    with pytest.raises(ValueError, match=r"parameter groups of sizes \[2\], not \[3\]"):
        opt.load_state_dict(AdamW(params(3)[:2], lr=0.05).state_dict())


NO_COMPILER = """
import sys
from rwkv_swarm import SwarmConfig
from rwkv_swarm.cluster.host import NodeHost
from rwkv_swarm.node import KalmanESConfig
for optimizer, rule in (("adam", "optimizer"), ("sgd", "optimizer"), ("clipup", "snr")):
    es = KalmanESConfig(population=4, optimizer=optimizer, step_rule=rule)
    (config,) = SwarmConfig(nodes=1, env={"kind": "signal", "lags": 3}, es=es).node_configs()
    host = NodeHost(config, "s")
    host.generation(0.0, snapshot=True)
    NodeHost(config, "s", snapshot=host.snapshot()["snapshot"]).close()
    host.close()
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo"))[:3])
"""


def test_a_node_process_steps_and_snapshots_without_importing_torchs_compiler():
    """torch._dynamo costs every node process a second of CPU to import (torch.optim's
    methods import it when first called): a node's whole life needs none of it."""
    out = subprocess.run([sys.executable, "-c", NO_COMPILER], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
