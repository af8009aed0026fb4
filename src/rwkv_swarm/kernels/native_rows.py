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


def _packed_view(w: torch.Tensor, rows_kind: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A zeroed buffer (in, ld) for W^T, ld a multiple of VW, and the view of it W^T fills
    (its padding stays zero)."""
    wt = w.t() if rows_kind else w
    buf = torch.zeros(wt.shape[0], wt.shape[1] + -wt.shape[1] % VW, dtype=w.dtype,
                      device=w.device)
    return buf, buf[:, :wt.shape[1]]


class RowStep:
    """Runs a model's step for R rows through the row kernel, each row optionally a member of a
    population. Packs the weights once per weights version, into buffers that stay put while
    the parameters do: the pointer tables then change only where a population's noise goes."""

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
        """Packed matrices and base vectors, refreshed when any parameter changed (one copy
        into the packed buffers; laid out anew when a parameter moved)."""
        key = self._weights_key()
        if key == self._key:
            return
        if self._key is None or key[0] != self._key[0]:
            self._layout()
        with torch.no_grad():
            torch._foreach_copy_(self._fill, self._sources)
        self._key, self._pop_key = key, None  # a population's member tables are rebuilt too

    def _layout(self) -> None:
        """Buffers for the packed matrices, and the pointer tables with no population: weights
        where they lie, zeros where a population's noise goes."""
        params = dict(self.model.named_parameters())
        self._packed, self._fill, self._sources = {}, [], []
        mats, dims = [], []
        for n in self._mat_names:
            p = params.get(n)
            if p is None:  # layer 0's v1/v2, or the encoder in token mode
                mats += [0, 0, 0]
                dims += [0, 0, 0]
                continue
            w = p.detach()
            buf, fill = _packed_view(w, _rows_kind(n))
            self._packed[n] = buf
            self._fill.append(fill)
            self._sources.append(w.t() if _rows_kind(n) else w)
            mats += [buf.data_ptr(), 0, 0]
            dims += [buf.shape[0], fill.shape[1], buf.shape[1]]
        self._base = {}
        for n in (n for n in self._vec_names if n in params):
            v = params[n].detach()
            if v.is_contiguous():  # read where it lies
                self._base[n] = v.view(-1)
            else:
                self._base[n] = torch.empty(v.numel(), dtype=v.dtype, device=v.device)
                self._fill.append(self._base[n].view(v.shape))
                self._sources.append(v)
        self._plain_mats, self._mat_dims = mats, (ctypes.c_int * len(dims))(*dims)
        self._plain_vecs = [self._base[n].data_ptr() if n in self._base else 0
                            for n in self._vec_names]
        self._mat_at = {n: 3 * i for i, n in enumerate(self._mat_names)}
        self._vec_at = {n: i for i, n in enumerate(self._vec_names)}

    def _tables(self, pop: Population | None) -> None:
        """The kernel's pointer arrays for these weights and this population (or none)."""
        if self._pop_key is not None and self._pop_key[0] is pop:
            return
        mats, vecs = list(self._plain_mats), list(self._plain_vecs)
        strides = [0] * len(vecs)
        self._keep = []  # tensors the pointers point into
        if pop is not None:
            noise_t = pop.noise_t
            for t in pop.targets:
                if t.kind == "vector":
                    if t.name in self._base:
                        table = member_table(pop, t.name, self._base[t.name])
                        i = self._vec_at[t.name]
                        vecs[i], strides[i] = table.data_ptr(), table.shape[1]
                        self._keep.append(table)
                    continue
                if t.name not in self._packed:  # not a matrix the kernel reads
                    continue
                At, Bt = noise_t[t.name]  # (pairs, r, m), (pairs, r, n) of W (m, n)
                lt, rt = (Bt, At) if t.kind == "rows" else (At, Bt)
                i = self._mat_at[t.name]
                mats[i + 1], mats[i + 2] = lt.data_ptr(), rt.data_ptr()
                self._keep += [lt, rt]
        self._mats = (ctypes.c_void_p * len(mats))(*mats)
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
