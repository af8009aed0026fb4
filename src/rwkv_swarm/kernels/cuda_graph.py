"""Optional CUDA paths: a one-token step captured once as a CUDA graph and replayed, for the
model (`CudaGraphStep`) and for a population's rows (`CudaGraphRows`).

A step of a small model is ~100 tiny kernels whose launch cost dwarfs their work; replaying a
captured graph launches them all at once. The graph reads the model's parameters in place, so
in-place evolution updates are seen; if a parameter is reallocated (e.g. `.to()`), the graph is
recaptured. The caller's state is copied in and the result copied out, so `step` keeps its
contract of never modifying the given state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from . import paths
from .state import RWKV7State

if TYPE_CHECKING:
    from .model import RWKV7
    from .population import Population


class CudaGraphStep:
    """`model.step` for one fixed batch size on one CUDA device, as a replayed graph."""

    def __init__(self, model: RWKV7, batch: int):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; none is available")
        self.model, self.batch = model, batch
        self._key: list[int] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def _capture(self) -> None:
        m, cfg = self.model, self.model.config
        device = m.head.weight.device
        if cfg.token_mode:
            self.x = torch.zeros(self.batch, dtype=torch.long, device=device)
        else:
            self.x = torch.zeros(self.batch, cfg.input_dim, device=device)
        self.state = m.zero_state(self.batch)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():  # warm up outside the graph
            for _ in range(2):
                m.step_torch(self.x, self.state)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out, self.new_state = m.step_torch(self.x, self.state)
        self._key = [p.data_ptr() for p in m.parameters()]

    def __call__(self, x: torch.Tensor, state: RWKV7State) -> tuple[torch.Tensor, RWKV7State]:
        if self._key != [p.data_ptr() for p in self.model.parameters()]:
            self._capture()
        self.x.copy_(x)
        for static, given in zip(self.state.tensors(), state.tensors(), strict=True):
            static.copy_(given)
        self.graph.replay()
        return self.out.clone(), self.new_state.clone()


def step_path(model: RWKV7, batch: int) -> str:
    """"torch" or "graph" for a CUDA step of `batch` rows of `model`: measured once per device
    (by name), model shape and batch, each candidate waiting for the device (a rollout waits
    for every step's actions)."""
    device = model.head.weight.device
    cfg = model.config
    x = (torch.zeros(batch, dtype=torch.long, device=device) if cfg.token_mode
         else torch.zeros(batch, cfg.input_dim, device=device))
    state = model.zero_state(batch)
    graph = CudaGraphStep(model, batch)
    cands = {"torch": lambda: (model.step_torch(x, state), torch.cuda.synchronize(device)),
             "graph": lambda: (graph(x, state), torch.cuda.synchronize(device))}
    sizes = {**cfg.to_dict(), "batch": batch, "device": torch.cuda.get_device_name(device)}
    return paths.default_chooser().choose("step_cuda", sizes, cands)


class CudaGraphRows:
    """`Population.step_rows` (the PyTorch form) of one population on one CUDA device, as
    replayed graphs: one per batch bucket (the next power of two), so a rollout whose batch
    shrinks as episodes end captures a handful of graphs, not one per batch size.

    Correct by construction where it has not been run: every tensor the graph reads is a
    static buffer (input, members, state) that a call copies into; the population's noise is
    drawn before the capture, so the graph reads it in place; warm-up runs on a side stream
    before the capture, as PyTorch's CUDA graph docs prescribe; a graph is recaptured when a
    parameter is reallocated. Rows past the batch (the bucket's padding) compute on whatever
    their buffers hold: a row's result never depends on another row's, and they are never
    read back.
    """

    def __init__(self, step: Callable[..., torch.Tensor],
                 capture: Callable[..., _Captured] | None = None):
        if capture is None and not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; none is available")
        self.step = step  # step(pop, x, state, members, out) -> outputs; new state into out
        self.capture = capture or _capture  # tests inject an eager stand-in on the CPU
        self.graphs: dict[int, _Captured] = {}

    def __call__(self, pop: Population, x: torch.Tensor, state: RWKV7State,
                 members: torch.Tensor, out: RWKV7State) -> torch.Tensor:
        """Outputs (R, n_out) for R rows; the new state is written into `out` (may be
        `state`)."""
        R = x.shape[0]
        bucket = 1 << (max(R, 1) - 1).bit_length()
        key = [p.data_ptr() for p in pop.model.parameters()]
        g = self.graphs.get(bucket)
        if g is None or g.key != key:
            g = self.graphs[bucket] = self.capture(self.step, pop, x, bucket, key)
        g.x[:R].copy_(x)
        g.members[:R].copy_(members)
        for static, given in zip(g.state.tensors(), state.tensors(), strict=True):
            static[:, :R].copy_(given)
        g.graph.replay()
        for static, dest in zip(g.new.tensors(), out.tensors(), strict=True):
            dest.copy_(static[:, :R])
        return g.out[:R].clone()


class _Captured:
    """One captured graph (anything with `replay()`), the static buffers it reads, the new
    state it writes and its output."""

    def __init__(self, key: list[int], x: torch.Tensor, members: torch.Tensor,
                 state: RWKV7State, new: RWKV7State):
        self.key, self.x, self.members, self.state, self.new = key, x, members, state, new
        self.graph = None
        self.out: torch.Tensor | None = None


def buffers(pop: Population, x: torch.Tensor, bucket: int, key: list[int]) -> _Captured:
    """Static buffers for `bucket` rows like `x`, on its device; members 0.. cycle through P."""
    _ = pop.noise, pop.noise_t  # drawn (and uploaded) before any capture, read in place by it
    device = x.device
    return _Captured(key, torch.zeros(bucket, *x.shape[1:], dtype=x.dtype, device=device),
                     torch.arange(bucket, device=device) % pop.size,
                     pop.model.zero_state(bucket), pop.model.zero_state(bucket))


def _capture(step: Callable[..., torch.Tensor], pop: Population, x: torch.Tensor, bucket: int,
             key: list[int]) -> _Captured:
    g = buffers(pop, x, bucket, key)
    device = x.device
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.no_grad():  # warm up outside the graph
        for _ in range(2):
            step(pop, g.x, g.state, g.members, g.new)
    torch.cuda.current_stream(device).wait_stream(side)
    g.graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g.graph), torch.no_grad():
        g.out = step(pop, g.x, g.state, g.members, g.new)
    return g
