"""The native row step (`csrc/rwkv7_rows.c`): one token for R rows, each its own mutant.

The kernel reads packed weights: every matrix transposed to (in, out) with its rows padded to
a whole number of vectors, so its GEMM micro-kernel streams whole vectors. The packed copy is
rebuilt when a parameter changes (its data pointer or PyTorch's version counter: every
in-place update bumps it), so in-place weight updates are seen. A population adds its noise
(rank axis first, read where it lies) and, for perturbed vectors, one table of every member's
vector (base + s sigma eps), built once per population and weights.
"""

from __future__ import annotations

import ctypes
import operator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import native
from .state import RWKV7State

if TYPE_CHECKING:
    from .population import Population

VW = 16  # pad to 16 floats: a vector with AVX-512, two without; the kernel pads to its own
_DATA_PTR, _VERSION = torch.Tensor.data_ptr, operator.attrgetter("_version")
TILE = 32  # rows per tile: their activations stay in L2 through every layer
# the C enums' order (rwkv7_rows.c)
MATS = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
        "att.w1", "att.w2", "att.a1", "att.a2", "att.v1", "att.v2", "att.g1", "att.g2",
        "ffn.key.weight", "ffn.value.weight")
GLOBAL_MATS = ("encoder.weight", "head.weight")
VECS = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.x_r", "att.x_w", "att.x_k",
        "att.x_v", "att.x_a", "att.x_g", "att.w0", "att.a0", "att.v0", "att.k_k", "att.k_a",
        "att.r_k", "att.ln_x.weight", "att.ln_x.bias", "ffn.x_k")
GLOBAL_VECS = ("blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias",
               "encoder.bias")


def _names(cfg) -> tuple[list[str], list[str]]:
    """Every matrix and vector the kernel reads, in its order ('' for one a layer lacks)."""
    mats, vecs = [], []
    for i in range(cfg.n_layer):
        mats += [f"blocks.{i}.{n}" for n in MATS]
        vecs += [f"blocks.{i}.{n}" for n in VECS]
    return mats + list(GLOBAL_MATS), vecs + list(GLOBAL_VECS)


def _rows_kind(name: str) -> bool:
    """nn.Linear weights (out, in) are transposed when packed; LoRAs are stored (in, out)."""
    return name.endswith(".weight")


def _pack(w: torch.Tensor, rows_kind: bool) -> torch.Tensor:
    """W^T (in, out) zero-padded to (in, ld), ld a multiple of VW."""
    wt = w.t() if rows_kind else w
    out = wt.shape[1]
    return F.pad(wt, (0, -out % VW)).contiguous()


class RowStep:
    """Runs a model's step for R rows through the row kernel, each row optionally a member of a
    population. Packs the weights once per weights version."""

    def __init__(self, model: torch.nn.Module):
        if native.load() is None:
            raise RuntimeError("the native RWKV-7 kernels are not available (see the log)")
        self.model = model
        self._params = list(model.parameters())
        self._key: tuple[list, list] | None = None
        self._pop_key: tuple | None = None
        cfg = model.config
        self._mat_names, self._vec_names = _names(cfg)
        d = cfg.lora_dims
        self._in0 = 0 if cfg.token_mode else cfg.input_dim
        self._n_out = model.head.weight.shape[0]
        self._dims = [cfg.n_embd, cfg.n_head, cfg.head_size, cfg.n_layer, cfg.ffn_dim, d["w"],
                      d["a"], d["v"], d["g"], self._n_out, self._in0, 1, TILE]

    def _weights_key(self) -> tuple[list, list]:
        # every step checks this: map keeps the loops over the parameters in C
        return list(map(_DATA_PTR, self._params)), list(map(_VERSION, self._params))

    def _pack_weights(self) -> None:
        """Packed matrices and base vectors, rebuilt when any parameter changed."""
        key = self._weights_key()
        if key == self._key:
            return
        params = dict(self.model.named_parameters())
        self._packed = {n: _pack(params[n].detach(), _rows_kind(n))
                        for n in self._mat_names if n in params}
        self._base = {n: params[n].detach().reshape(-1).contiguous()
                      for n in self._vec_names if n in params}
        self._key, self._pop_key = key, None  # pointers of a population are rebuilt too

    def _tables(self, pop: Population | None) -> None:
        """The kernel's pointer arrays for these weights and this population (or none)."""
        if self._pop_key is not None and self._pop_key[0] is pop:
            return
        noise_t = pop.noise_t if pop is not None else {}
        kinds = {t.name: t.kind for t in pop.targets} if pop is not None else {}
        self._keep = []  # tensors the pointers point into
        mats, dims = [], []
        for n in self._mat_names:
            w = self._packed.get(n)
            if w is None:  # layer 0's v1/v2, or the encoder in token mode
                mats += [0, 0, 0]
                dims += [0, 0, 0]
                continue
            left = right = 0
            if n in noise_t:
                At, Bt = noise_t[n]  # (pairs, r, m), (pairs, r, n) of W (m, n)
                lt, rt = (Bt, At) if kinds[n] == "rows" else (At, Bt)
                left, right = lt.data_ptr(), rt.data_ptr()
                self._keep += [lt, rt]
            in_, out = (w.shape[0], self.model.get_parameter(n).shape[0]) if _rows_kind(n) \
                else (w.shape[0], self.model.get_parameter(n).shape[1])
            mats += [w.data_ptr(), left, right]
            dims += [in_, out, w.shape[1]]
        vecs, strides = [], []
        for n in self._vec_names:
            base = self._base.get(n)
            if base is None:
                vecs.append(0)
                strides.append(0)
            elif kinds.get(n) == "vector":
                table = member_table(pop, n, base)
                self._keep.append(table)
                vecs.append(table.data_ptr())
                strides.append(table.shape[1])
            else:
                vecs.append(base.data_ptr())
                strides.append(0)
        self._mats = (ctypes.c_void_p * len(mats))(*mats)
        self._mat_dims = (ctypes.c_int * len(dims))(*dims)
        self._vecs = (ctypes.c_void_p * len(vecs))(*vecs)
        self._strides = (ctypes.c_int64 * len(strides))(*strides)
        dims = list(self._dims)
        dims[11] = pop.rank if pop is not None else 1
        self._cdims = (ctypes.c_int * len(dims))(*dims)
        self._sigma = pop.sigma if pop is not None else 0.0
        self._pop_key = (pop,)

    def tables(self, pop: Population | None) -> tuple:
        """The kernel's weight arguments (dims, mats, mat_dims, vecs, strides, sigma) for these
        weights and `pop`, as rwkv7_rows and the native rollout take them."""
        self._pack_weights()
        self._tables(pop)
        return (self._cdims, self._mats, self._mat_dims, self._vecs, self._strides, self._sigma)

    def __call__(self, x: torch.Tensor, state: RWKV7State, member: torch.Tensor | None = None,
                 pop: Population | None = None, threads: int = 1, inplace: bool = False
                 ) -> tuple[torch.Tensor, RWKV7State]:
        """x (R, input_dim) observations or (R, C) embedded tokens; member (R,) int32 member
        indices of `pop` (None: the plain model). Returns (outputs (R, n_out), new state),
        written into `state` itself when `inplace`."""
        self._pack_weights()
        self._tables(pop)
        R = x.shape[0]
        x = x.contiguous()
        if member is None:
            member = torch.full((R,), -1, dtype=torch.int32)
        tensors = state.tensors()
        ins = [t.contiguous() for t in tensors]
        if inplace and all(map(operator.is_, ins, tensors)):
            new = state
        else:
            new = RWKV7State(*(torch.empty_like(t) for t in ins))
        out = torch.empty(R, self._n_out)
        rc = native.load().rwkv7_rows(
            R, self._cdims, self._mats, self._mat_dims, self._vecs, self._strides,
            member.data_ptr(), self._sigma, x.data_ptr(), *map(_DATA_PTR, ins),
            *map(_DATA_PTR, new.tensors()), out.data_ptr(), threads)
        if rc != 0:
            raise MemoryError("native RWKV-7 row step could not allocate its scratch buffers")
        return out, new


def member_table(pop: Population, name: str, base: torch.Tensor) -> torch.Tensor:
    """(P, numel): vector `name` as each member sees it, base + s_j sigma eps_{j//2}, computed
    as the PyTorch population forward computes it."""
    (eps,) = pop.noise[name]
    pairs = eps.shape[0]
    signed = eps.reshape(pairs, 1, -1) * torch.tensor([1.0, -1.0]).view(1, 2, 1)
    return (base + pop.sigma * signed.reshape(2 * pairs, -1)).contiguous()


def row_step(model: torch.nn.Module) -> RowStep:
    """The model's row step (its packed weights are kept with the model)."""
    if getattr(model, "_rows", None) is None:
        model._rows = RowStep(model)
    return model._rows
