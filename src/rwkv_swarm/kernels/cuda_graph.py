"""Optional CUDA path: the one-token step captured once as a CUDA graph and replayed.

A step of a small model is ~100 tiny kernels whose launch cost dwarfs their work; replaying a
captured graph launches them all at once. The graph reads the model's parameters in place, so
in-place evolution updates are seen; if a parameter is reallocated (e.g. `.to()`), the graph is
recaptured. The caller's state is copied in and the result copied out, so `step` keeps its
contract of never modifying the given state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .state import RWKV7State

if TYPE_CHECKING:
    from .model import RWKV7


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
