"""`RWKV7State`: the constant-size recurrent state of an RWKV-7 model, and its byte layout."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import RWKV7Config

MAGIC = b"RWKV7ST"
VERSION = 1
# magic, version, x_prev dtype code, n_layer, head_size, batch, n_embd (little endian)
_HEADER = struct.Struct("<7sBBHHII")
HEADER_SIZE = _HEADER.size

_DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


@dataclass
class RWKV7State:
    """Per-layer recurrent state, stacked over layers.

    att_x_prev: (L, B, C)   last normalised time-mix input (token shift)
    wkv:        (L, B, H, N, N) float32, S[h, value, key] (BlinkDL layout)
    ffn_x_prev: (L, B, C)   last normalised channel-mix input

    Its size does not depend on how many tokens the model has seen.
    """

    att_x_prev: torch.Tensor
    wkv: torch.Tensor
    ffn_x_prev: torch.Tensor

    def __post_init__(self) -> None:
        L, B, C = self.att_x_prev.shape
        if self.ffn_x_prev.shape != (L, B, C):
            raise ValueError(
                f"ffn_x_prev shape {tuple(self.ffn_x_prev.shape)} != att_x_prev {(L, B, C)}"
            )
        w = self.wkv
        if w.dim() != 5 or w.shape[:2] != (L, B) or w.shape[3] != w.shape[4]:
            raise ValueError(f"wkv must be (L={L}, B={B}, H, N, N), got {tuple(self.wkv.shape)}")
        if self.wkv.shape[2] * self.wkv.shape[3] != C:
            raise ValueError(f"wkv heads x head_size must equal C={C}, got {tuple(self.wkv.shape)}")
        if self.wkv.dtype != torch.float32:
            raise ValueError(f"wkv must be float32, got {self.wkv.dtype}")

    @classmethod
    def zeros(
        cls,
        config: RWKV7Config,
        batch: int = 1,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> RWKV7State:
        """The all-zero state every sequence starts from."""
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        return cls(
            att_x_prev=torch.zeros(L, batch, C, dtype=dtype, device=device),
            wkv=torch.zeros(L, batch, H, N, N, dtype=torch.float32, device=device),
            ffn_x_prev=torch.zeros(L, batch, C, dtype=dtype, device=device),
        )

    @property
    def n_layer(self) -> int:
        return self.att_x_prev.shape[0]

    @property
    def batch(self) -> int:
        return self.att_x_prev.shape[1]

    @property
    def n_embd(self) -> int:
        return self.att_x_prev.shape[2]

    @property
    def head_size(self) -> int:
        return self.wkv.shape[3]

    @property
    def device(self) -> torch.device:
        return self.wkv.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.att_x_prev, self.wkv, self.ffn_x_prev

    def select(self, rows: int | Sequence[int] | torch.Tensor) -> RWKV7State:
        """A new state holding only the given batch rows (an int keeps a batch of one)."""
        if isinstance(rows, int):
            rows = [rows]
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.wkv.device)
        return RWKV7State(*(t.index_select(1, idx) for t in self.tensors()))

    def assign(self, rows: Sequence[int] | torch.Tensor, other: RWKV7State) -> None:
        """Write `other`'s rows into this state's batch rows `rows`, in place."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.wkv.device)
        if idx.numel() != other.batch:
            raise ValueError(f"{idx.numel()} rows to write, the other state has {other.batch}")
        for mine, theirs in zip(self.tensors(), other.tensors(), strict=True):
            mine.index_copy_(1, idx, theirs)

    @staticmethod
    def cat(states: Sequence[RWKV7State]) -> RWKV7State:
        """Stack states along the batch axis (hand one organism's rows to another batch)."""
        if not states:
            raise ValueError("cat needs at least one state")
        columns = zip(*(s.tensors() for s in states), strict=True)
        return RWKV7State(*(torch.cat(ts, dim=1) for ts in columns))

    def repeat(self, times: int) -> RWKV7State:
        """Each row repeated `times` times in place: rows (r0, r0, ..., r1, r1, ...)."""
        return RWKV7State(*(t.repeat_interleave(times, dim=1) for t in self.tensors()))

    def rows(self, lo: int, hi: int) -> RWKV7State:
        """A view of batch rows [lo, hi): writing into it writes into this state."""
        return RWKV7State(*(t[:, lo:hi] for t in self.tensors()))

    def empty_like(self) -> RWKV7State:
        """An uninitialised state of the same shape, dtypes and device."""
        return RWKV7State(*(torch.empty_like(t) for t in self.tensors()))

    def clone(self) -> RWKV7State:
        return RWKV7State(*(t.clone() for t in self.tensors()))

    def to(self, device: torch.device | str) -> RWKV7State:
        return RWKV7State(*(t.to(device) for t in self.tensors()))

    # -- bytes ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Fixed layout: header, att_x_prev, ffn_x_prev (model dtype), wkv (float32), all LE."""
        dtype = self.att_x_prev.dtype
        if dtype not in _DTYPE_CODES or self.ffn_x_prev.dtype != dtype:
            raise ValueError(f"x_prev dtype must be one of {list(_DTYPE_CODES)}, got {dtype}")
        header = _HEADER.pack(MAGIC, VERSION, _DTYPE_CODES[dtype], self.n_layer,
                              self.head_size, self.batch, self.n_embd)
        parts = [header]
        for t in (self.att_x_prev, self.ffn_x_prev, self.wkv):
            parts.append(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls, blob: bytes | bytearray | memoryview, config: RWKV7Config | None = None
    ) -> RWKV7State:
        """Inverse of `to_bytes`. With `config`, the state must belong to a model of that shape.

        Raises ValueError naming the problem: magic, version, dtype, size or shape.
        """
        view = memoryview(blob).cast("B")
        if len(view) < HEADER_SIZE:
            raise ValueError(f"state blob of {len(view)} bytes is shorter than its header "
                             f"({HEADER_SIZE} bytes)")
        magic, version, code, L, N, B, C = _HEADER.unpack_from(view)
        if magic != MAGIC:
            raise ValueError(f"not an RWKV7State blob: magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise ValueError(f"unsupported state version {version}, expected {VERSION}")
        if code not in _CODE_DTYPES:
            raise ValueError(f"unknown x_prev dtype code {code}, known {sorted(_CODE_DTYPES)}")
        if N == 0 or C % N:
            raise ValueError(f"n_embd {C} is not a multiple of head_size {N}")
        if config is not None:
            expected = (config.n_layer, config.n_embd, config.head_size)
            if (L, C, N) != expected:
                raise ValueError(f"state shape (n_layer, n_embd, head_size) = {(L, C, N)} "
                                 f"does not match the model's {expected}")
        dtype = _CODE_DTYPES[code]
        H = C // N
        itemsize = torch.empty((), dtype=dtype).element_size()
        n_prev = L * B * C * itemsize
        n_wkv = L * B * H * N * N * 4
        expected_size = HEADER_SIZE + 2 * n_prev + n_wkv
        if len(view) != expected_size:
            raise ValueError(f"state blob is {len(view)} bytes, expected {expected_size} for "
                             f"L={L}, B={B}, C={C}, N={N}, dtype={dtype}")

        def take(offset: int, size: int, dt: torch.dtype, shape: tuple) -> torch.Tensor:
            raw = torch.tensor(bytearray(view[offset:offset + size]), dtype=torch.uint8)
            return raw.view(dt).reshape(shape)

        att = take(HEADER_SIZE, n_prev, dtype, (L, B, C))
        ffn = take(HEADER_SIZE + n_prev, n_prev, dtype, (L, B, C))
        wkv = take(HEADER_SIZE + 2 * n_prev, n_wkv, torch.float32, (L, B, H, N, N))
        return cls(att_x_prev=att, wkv=wkv, ffn_x_prev=ffn)

    def equal(self, other: RWKV7State) -> bool:
        """Bitwise equality of every tensor."""
        return all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
                   for a, b in zip(self.tensors(), other.tensors(), strict=True))
