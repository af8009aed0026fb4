"""`RWKV7Config`: the shape of an RWKV-7 model, in token mode or control mode."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import sqrt

DECAY_SCALE = 0.606531  # w = exp(-DECAY_SCALE * sigmoid(d)); e^-0.5 as the official code writes it
LN_EPS = 1e-5  # LayerNorm
GN_EPS = 64e-5  # ln_x GroupNorm: hard-coded in the official code (not head_size * 1e-5)
ROW_BLOCK = 2048  # CPU forward runs in blocks of about this many (row, token) activations,
# so a block's intermediates stay in cache (measured: docs/benchmarks.md)


def suggested_lora_dim(n_embd: int, factor: float) -> int:
    """BlinkDL trainer's LoRA size: max(32, round(factor * sqrt(C) / 32) * 32)."""
    return max(32, round(factor * sqrt(n_embd) / 32) * 32)


@dataclass(frozen=True)
class RWKV7Config:
    """Shape of an RWKV-7 ("x070") model.

    Token mode (`vocab_size` set): embedding + head, the official layout.
    Control mode (`input_dim` and `output_dim` set): a linear encoder from an observation
    vector and a linear head to action outputs. The blocks are the same in both modes.
    """

    n_embd: int = 128  # C, channels
    n_layer: int = 2  # L, blocks
    head_size: int = 64  # N; H = C / N heads (64 in every official model)
    vocab_size: int | None = None  # V, token mode
    input_dim: int | None = None  # observation size, control mode
    output_dim: int | None = None  # action outputs, control mode
    dim_w: int | None = None  # decay LoRA rank (None: trainer's suggestion)
    dim_a: int | None = None  # in-context learning-rate LoRA rank
    dim_v: int | None = None  # value-residual LoRA rank
    dim_g: int | None = None  # gate LoRA rank
    dim_ffn: int | None = None  # channel-mix hidden size (None: 4C)

    def __post_init__(self) -> None:
        if self.n_embd < 1 or self.n_layer < 1 or self.head_size < 1:
            raise ValueError(
                f"n_embd, n_layer and head_size must be >= 1, got "
                f"{self.n_embd}, {self.n_layer}, {self.head_size}"
            )
        if self.n_embd % self.head_size:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})"
            )
        token = self.vocab_size is not None
        control = self.input_dim is not None or self.output_dim is not None
        if token == control:
            raise ValueError(
                "set either vocab_size (token mode) or input_dim and output_dim (control mode), "
                f"got vocab_size={self.vocab_size}, input_dim={self.input_dim}, "
                f"output_dim={self.output_dim}"
            )
        if control and (self.input_dim is None or self.output_dim is None):
            raise ValueError(
                f"control mode needs both input_dim and output_dim, got "
                f"input_dim={self.input_dim}, output_dim={self.output_dim}"
            )
        for name in ("vocab_size", "input_dim", "output_dim", "dim_w", "dim_a", "dim_v",
                     "dim_g", "dim_ffn"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @property
    def token_mode(self) -> bool:
        return self.vocab_size is not None

    @property
    def lora_dims(self) -> dict[str, int]:
        """Resolved LoRA ranks {'w', 'a', 'v', 'g'}."""
        c = self.n_embd
        return {
            "w": self.dim_w or suggested_lora_dim(c, 2.5),
            "a": self.dim_a or suggested_lora_dim(c, 2.5),
            "v": self.dim_v or suggested_lora_dim(c, 1.7),
            "g": self.dim_g or suggested_lora_dim(c, 5.0),
        }

    @property
    def ffn_dim(self) -> int:
        return self.dim_ffn or 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)
