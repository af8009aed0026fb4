"""RWKV-7 ("x070") in PyTorch, readable in one sitting.

The math follows BlinkDL's reference (`rwkv` package, RWKV_x070): token shift on the normalised
input, w/a/v/g LoRAs, decay w = exp(-0.606531 sigmoid(d)), normalised removal key kk, value
residual from layer 0, group-norm readout (eps 64e-5), the delta-rule state update, and a
ReLU^2 channel mix. Parameter names and shapes are those of official checkpoints.

The block code is written once against `Ops`, which applies a named weight: `BaseOps` uses the
module's parameters as they are; `kernels.population` adds per-mutant low-rank perturbations.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import cuda_graph, native
from .config import DECAY_SCALE, GN_EPS, LN_EPS, ROW_BLOCK, RWKV7Config
from .cuda_graph import CudaGraphStep
from .init import init_weights
from .native import NativeStep
from .native_rows import row_step
from .state import RWKV7State
from .wkv import wkv_heads

LORA_NAMES = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")  # stored (in, out), used as x @ W
MIX_NAMES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
GROUPS = ("matrices", "vectors", "embedding", "head")  # what evolution may perturb


def is_matrix(name: str, param: torch.Tensor) -> bool:
    """Whether a weight acts as a matrix (x W^T, x W or an embedding lookup). r_k is stored
    (H, N) but multiplies elementwise, so it counts as a vector."""
    return param.dim() == 2 and not name.endswith("r_k")


def parameter_group(name: str, param: torch.Tensor) -> str:
    """Which of `GROUPS` a parameter belongs to: the one definition evolution and the
    population forward share."""
    if name.startswith(("emb.", "encoder.")):
        return "embedding"
    if name.startswith("head."):
        return "head"
    return "matrices" if is_matrix(name, param) else "vectors"


class Ops:
    """How a block reads its weights. Subclasses decide whether weights are perturbed.

    `native`: whether the block may run native kernels where measured faster (native_ops.py).
    """

    native = False

    def vec(self, name: str) -> torch.Tensor:  # a (1, 1, C)-like vector, broadcastable to x
        raise NotImplementedError

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:  # x @ W^T, W (out, in)
        raise NotImplementedError

    def lora(self, name: str, x: torch.Tensor) -> torch.Tensor:  # x @ W, W (in, out)
        raise NotImplementedError

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def norm(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm over the last axis with `prefix.weight` / `prefix.bias`."""
        return F.layer_norm(x, x.shape[-1:], eps=LN_EPS) * self.vec(prefix + ".weight") \
            + self.vec(prefix + ".bias")

    def group_norm(self, prefix: str, y: torch.Tensor, n_head: int) -> torch.Tensor:
        """GroupNorm over heads of y (..., C) with eps 64e-5, affine from `prefix`."""
        shape = y.shape
        y = F.group_norm(y.reshape(-1, shape[-1]), n_head, eps=GN_EPS).view(shape)
        return y * self.vec(prefix + ".weight") + self.vec(prefix + ".bias")


class PerturbedNorms:
    """`norm` and `group_norm` for Ops whose `kinds` name the perturbed parameters: the base
    Ops' path where a norm's own weights are perturbed, torch's fused norm where they are not.
    Put it before `Ops` in the bases."""

    def norm(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        if prefix + ".weight" in self.kinds or prefix + ".bias" in self.kinds:
            return super().norm(prefix, x)
        return F.layer_norm(x, x.shape[-1:], self.p[prefix + ".weight"],
                            self.p[prefix + ".bias"], eps=LN_EPS)

    def group_norm(self, prefix: str, y: torch.Tensor, n_head: int) -> torch.Tensor:
        if prefix + ".weight" in self.kinds or prefix + ".bias" in self.kinds:
            return super().group_norm(prefix, y, n_head)
        shape = y.shape
        return F.group_norm(y.reshape(-1, shape[-1]), n_head, self.p[prefix + ".weight"],
                            self.p[prefix + ".bias"], eps=GN_EPS).view(shape)

class BaseOps(Ops):
    """The model's own weights, unperturbed."""

    def __init__(self, params: dict[str, torch.Tensor], native: bool = False):
        self.p, self.native = params, native

    def vec(self, name: str) -> torch.Tensor:
        return self.p[name]

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.p[name])

    def lora(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x @ self.p[name]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.p["emb.weight"])

    def norm(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.p[prefix + ".weight"], self.p[prefix + ".bias"],
                            eps=LN_EPS)

    def group_norm(self, prefix: str, y: torch.Tensor, n_head: int) -> torch.Tensor:
        shape = y.shape
        y = F.group_norm(y.reshape(-1, shape[-1]), n_head, self.p[prefix + ".weight"],
                         self.p[prefix + ".bias"], eps=GN_EPS)
        return y.view(shape)


# -- the block ---------------------------------------------------------------------------------


def shift_delta(x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """x_{t-1} - x_t at every position of x (..., T, C); x_prev (..., C) stands in for t = -1.

    Written in place into one buffer: a concatenation would cost an extra pass over x.
    """
    xx = torch.empty_like(x)
    torch.sub(x[..., :-1, :], x[..., 1:, :], out=xx[..., 1:, :])
    torch.sub(x_prev, x[..., 0, :], out=xx[..., 0, :])
    return xx


def time_mix(
    ops: Ops,
    cfg: RWKV7Config,
    i: int,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    S: torch.Tensor,
    v_first: torch.Tensor | None,
    S_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention analogue. x: (..., T, C) normalised; x_prev (..., C); S (..., H, N, N).

    Writes the new state into S_out (which may be S) and returns (out, v_first).
    """
    H, N = cfg.n_head, cfg.head_size
    p = f"blocks.{i}.att."
    xx = shift_delta(x, x_prev)
    xr, xw, xk, xv, xa, xg = (torch.addcmul(x, xx, ops.vec(p + m)) for m in MIX_NAMES)

    r = ops.linear(p + "receptance.weight", xr)
    d = ops.vec(p + "w0") + ops.lora(p + "w2", torch.tanh(ops.lora(p + "w1", xw)))
    k = ops.linear(p + "key.weight", xk)
    v = ops.linear(p + "value.weight", xv)
    a = torch.sigmoid_(ops.lora(p + "a2", ops.lora(p + "a1", xa)).add_(ops.vec(p + "a0")))
    g = ops.lora(p + "g2", torch.sigmoid(ops.lora(p + "g1", xg)))

    heads = (*k.shape[:-1], H, N)  # (..., T, H, N)
    kk = F.normalize((k * ops.vec(p + "k_k")).view(heads), dim=-1, p=2.0, eps=1e-12).view(k.shape)
    k_a = ops.vec(p + "k_a")
    k = k * torch.addcmul(1 - k_a, a, k_a)  # k * (1 + (a - 1) k_a)
    if i == 0:
        v_first = v
    else:  # value residual: lerp toward layer 0's value of the same token
        nu = torch.sigmoid_(ops.lora(p + "v2", ops.lora(p + "v1", xv)).add_(ops.vec(p + "v0")))
        v = torch.lerp(v, v_first, nu)
    logw = -DECAY_SCALE * torch.sigmoid(d.float())  # log of the decay, kept in float32

    y = wkv_heads(S, r, logw, k, v, kk, a, H, N, S_out, ops.native)
    y = ops.group_norm(p + "ln_x", y.to(x.dtype), H)
    bonus = ((r * k).view(heads) * ops.vec(p + "r_k")).sum(-1, keepdim=True)  # (..., T, H, 1)
    y = torch.addcmul(y.view(heads), bonus, v.view(heads)).view(y.shape)
    return ops.linear(p + "output.weight", y.mul_(g)), v_first


def channel_mix(ops: Ops, i: int, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """Feed-forward with token shift: value(relu(key(lerp(x, x_prev)))^2). x: (..., T, C)."""
    p = f"blocks.{i}.ffn."
    kx = torch.addcmul(x, shift_delta(x, x_prev), ops.vec(p + "x_k"))
    return ops.linear(p + "value.weight", torch.relu_(ops.linear(p + "key.weight", kx)).square_())


def run_blocks(
    ops: Ops, cfg: RWKV7Config, x: torch.Tensor, state: RWKV7State, lead: tuple[int, ...],
    out: RWKV7State | None = None,
) -> tuple[torch.Tensor, RWKV7State]:
    """All blocks on embedded input x: (*lead, T, C). State rows are `lead` flattened.

    The new state is written layer by layer into `out` (allocated if None; it may be `state`
    itself for an in-place update), so no per-layer state is ever stacked or copied.
    """
    out = state.empty_like() if out is None else out
    v_first = None
    H, N, C = cfg.n_head, cfg.head_size, cfg.n_embd
    for i in range(cfg.n_layer):
        if i == 0:
            x = ops.norm("blocks.0.ln0", x)
        xa = ops.norm(f"blocks.{i}.ln1", x)
        att_prev, ffn_prev = state.att_x_prev[i].view(*lead, C), state.ffn_x_prev[i].view(*lead, C)
        o, v_first = time_mix(ops, cfg, i, xa, att_prev, state.wkv[i].view(*lead, H, N, N),
                              v_first, out.wkv[i])
        x = x + o
        xf = ops.norm(f"blocks.{i}.ln2", x)
        x = x + channel_mix(ops, i, xf, ffn_prev)
        out.att_x_prev[i].view(*lead, C).copy_(xa[..., -1, :])
        out.ffn_x_prev[i].view(*lead, C).copy_(xf[..., -1, :])
    return x, out


def embed_input(ops: Ops, cfg: RWKV7Config, x: torch.Tensor) -> torch.Tensor:
    """Token ids (..., T) -> (..., T, C), or observations (..., T, input_dim) -> (..., T, C)."""
    if cfg.token_mode:
        return ops.embed(x)
    return ops.linear("encoder.weight", x) + ops.vec("encoder.bias")


def readout(ops: Ops, x: torch.Tensor) -> torch.Tensor:
    """Logits (token mode) or action outputs (control mode) from the last block's x."""
    return ops.linear("head.weight", ops.norm("ln_out", x))


# -- the module --------------------------------------------------------------------------------


class TimeMix(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        dims = cfg.lora_dims
        for m in MIX_NAMES:
            setattr(self, m, nn.Parameter(torch.zeros(1, 1, C)))
        loras = [("w", dims["w"]), ("a", dims["a"]), ("g", dims["g"])]
        if layer_id > 0:  # layer 0's v0/v1/v2 are unused in the official code
            loras.append(("v", dims["v"]))
        for name, D in loras:
            if name != "g":
                setattr(self, name + "0", nn.Parameter(torch.zeros(1, 1, C)))
            setattr(self, name + "1", nn.Parameter(torch.zeros(C, D)))
            setattr(self, name + "2", nn.Parameter(torch.zeros(D, C)))
        self.k_k = nn.Parameter(torch.zeros(1, 1, C))
        self.k_a = nn.Parameter(torch.zeros(1, 1, C))
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GN_EPS)


class ChannelMix(nn.Module):
    def __init__(self, cfg: RWKV7Config):
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
        self.key = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.value = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=False)


class Block(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg)


class RWKV7(nn.Module):
    """RWKV-7 in token mode (emb + head) or control mode (encoder + head); same blocks.

    `step(x, state)` runs one token / observation per batch row; `forward(x_seq, state)` runs a
    sequence in chunks. Both return `(outputs, new_state)` and never modify `state`.
    """

    def __init__(self, config: RWKV7Config, seed: int = 0, init: str = "trainer"):
        super().__init__()
        self.config = config
        C = config.n_embd
        if config.token_mode:
            self.emb = nn.Embedding(config.vocab_size, C)
        else:
            self.encoder = nn.Linear(config.input_dim, C)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(C, eps=LN_EPS)
        out = config.vocab_size if config.token_mode else config.output_dim
        self.head = nn.Linear(C, out, bias=False)
        init_weights(self, torch.Generator().manual_seed(seed), init)
        self.n_params = sum(p.numel() for p in self.parameters())
        self.use_native = True  # CPU steps may run csrc/rwkv7_step.c where measured faster
        # "torch", "native:<threads>" or "rows:<threads>" forces a path (populations too)
        self.step_path: str | None = None
        self._native = None
        self._rows = None  # RowStep (native_rows.py): packed weights of the row kernel
        self._step_paths: dict[int, str] = {}  # batch -> measured path (native.step_path)
        self._graph = None  # CudaGraphStep, after enable_cuda_graph_step
        self._graphs: dict[int, CudaGraphStep] = {}  # batch -> graph, where measured faster
        self.requires_grad_(False)  # weights evolve; no autograd

    @classmethod
    def from_checkpoint(cls, path: str, **kwargs) -> RWKV7:
        """Load an official RWKV-7 `.pth` (BlinkDL's trainer layout, fp32/fp16/bf16)."""
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, **kwargs)

    def ops(self) -> BaseOps:
        return BaseOps(dict(self.named_parameters()), native=self.use_native)

    def zero_state(self, batch: int = 1) -> RWKV7State:
        p = next(self.parameters())
        return RWKV7State.zeros(self.config, batch, dtype=p.dtype, device=p.device)

    def step(self, x: torch.Tensor, state: RWKV7State | None = None
             ) -> tuple[torch.Tensor, RWKV7State]:
        """One token (B,) or observation (B, input_dim) per row -> (outputs (B, out), state).

        A CPU batch runs PyTorch ops, the native step kernel or the row kernel, whichever was
        measured fastest for this CPU, model and batch size (`native.step_path`); a CUDA batch
        replays a graph where `enable_cuda_graph_step` was called for it or where the graph
        was measured faster (`cuda_graph.step_path`); anything else runs PyTorch ops.
        numpy input is accepted (observations become float32, tokens int64).
        """
        x = self._as_tensor(x)
        B = x.shape[0]
        state = self.zero_state(B) if state is None else state
        if state.batch == B and state.att_x_prev.dtype == torch.float32:
            graph = self._cuda_graph(B) if x.is_cuda else None
            if graph is not None:
                self._check_input(x.unsqueeze(1))
                return graph(x, state)
            if self.use_native and not x.is_cuda and NativeStep.available(self):
                path = self.chosen_step_path(B)
                if path != "torch":
                    self._check_input(x.unsqueeze(1))
                    if path.startswith("rows"):
                        return self.step_rows_native(x, state, native.threads_of(path))
                    return self.step_native(x, state, native.threads_of(path))
        return self.step_torch(x, state)

    def chosen_step_path(self, batch: int) -> str:
        """The path a step of `batch` rows takes: `step_path` if forced, else measured (on a
        CUDA device "torch" or "graph")."""
        if self.step_path is not None:
            return self.step_path
        if batch not in self._step_paths:
            on_cuda = self.head.weight.device.type == "cuda"
            self._step_paths[batch] = (cuda_graph.step_path if on_cuda
                                       else native.step_path)(self, batch)
        return self._step_paths[batch]

    def _cuda_graph(self, batch: int) -> CudaGraphStep | None:
        """The graph a CUDA step of `batch` rows replays: the enabled one, else one where the
        chosen path is "graph"; None: PyTorch ops."""
        if self._graph is not None and self._graph.batch == batch:
            return self._graph
        if self.chosen_step_path(batch) != "graph":
            return None
        if batch not in self._graphs:
            self._graphs[batch] = CudaGraphStep(self, batch)
        return self._graphs[batch]

    def step_torch(self, x: torch.Tensor, state: RWKV7State) -> tuple[torch.Tensor, RWKV7State]:
        """`step` through PyTorch ops only (any device, dtype and batch)."""
        out, state = self.forward(x.unsqueeze(1), state)
        return out[:, 0], state

    def step_native(self, x: torch.Tensor, state: RWKV7State, threads: int = 1
                    ) -> tuple[torch.Tensor, RWKV7State]:
        """`step` through the C kernel on `threads` threads (fp32 parameters on the CPU)."""
        with torch.no_grad():
            if self._native is None:
                self._native = NativeStep(self)
            return self._native(native.embed(self, x), state, threads)

    def step_rows_native(self, x: torch.Tensor, state: RWKV7State, threads: int = 1
                         ) -> tuple[torch.Tensor, RWKV7State]:
        """`step` through the row kernel (csrc/rwkv7_rows.c) on `threads` threads."""
        with torch.no_grad():
            if self.config.token_mode:
                x = F.embedding(x, self.emb.weight)
            return row_step(self)(x, state, None, None, threads)

    def enable_cuda_graph_step(self, batch: int = 1) -> None:
        """Replay `step` at this batch size as a CUDA graph (model on a CUDA device)."""
        if self.head.weight.device.type != "cuda":
            raise ValueError(f"CUDA graph step needs the model on a CUDA device, it is on "
                             f"{self.head.weight.device}")
        self._graph = CudaGraphStep(self, batch)

    def forward(self, x: torch.Tensor, state: RWKV7State | None = None
                ) -> tuple[torch.Tensor, RWKV7State]:
        """Tokens (B, T) or observations (B, T, input_dim) -> (outputs (B, T, out), state)."""
        x = self._as_tensor(x)
        self._check_input(x)
        B = x.shape[0]
        state = self.zero_state(B) if state is None else state
        if state.batch != B:
            raise ValueError(f"state has batch {state.batch}, input has batch {B}")
        ops = self.ops()
        rows = B if x.device.type != "cpu" else max(1, ROW_BLOCK // x.shape[1])
        new, outs = state.empty_like(), []
        with torch.no_grad():
            for lo in range(0, B, rows):  # cache-sized row blocks on CPU
                hi = min(lo + rows, B)
                h, _ = run_blocks(ops, self.config, embed_input(ops, self.config, x[lo:hi]),
                                  state.rows(lo, hi), (hi - lo,), new.rows(lo, hi))
                outs.append(readout(ops, h))
        return (outs[0] if len(outs) == 1 else torch.cat(outs)), new

    def _as_tensor(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """x as a tensor on the model's device: numpy observations as float32, tokens int64."""
        if isinstance(x, torch.Tensor):
            return x
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input must be a torch.Tensor or numpy.ndarray, got "
                            f"{type(x).__name__}")
        p = self.head.weight
        if self.config.token_mode:
            if not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"token mode expects integer token ids, got numpy {x.dtype}")
            return torch.from_numpy(x.astype(np.int64, copy=False)).to(p.device)
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"control mode expects real observations, got numpy {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(p.device, p.dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if cfg.token_mode:
            if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"token mode expects int tokens (B, T), got {x.dtype} "
                                 f"{tuple(x.shape)}")
        elif x.dim() != 3 or x.shape[-1] != cfg.input_dim:
            raise ValueError(f"control mode expects observations (B, T, {cfg.input_dim}), got "
                             f"{tuple(x.shape)}")

    def matrices(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights of the "matrices" group: the 2-D weights inside blocks."""
        for name, p in self.named_parameters():
            if parameter_group(name, p) == "matrices":
                yield name, p
