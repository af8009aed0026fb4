"""Initial weights as BlinkDL's RWKV-7 trainer sets them (train_temp/src/model.py).

Blocks start close to identity (output and ffn.value are zero; LoRA down-projections are zero),
so an evolving model starts as a normalised linear map from input to head and grows its
recurrence as mutations accumulate. The generator is injected; global RNGs are never touched.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RWKV7Config


def _mix_and_decay(cfg: RWKV7Config, layer_id: int) -> dict[str, torch.Tensor]:
    C, N = cfg.n_embd, cfg.head_size
    L = cfg.n_layer
    ratio_0_to_1 = layer_id / (L - 1) if L > 1 else 0.0
    ratio_1_to_almost0 = 1.0 - layer_id / L
    ddd = (torch.arange(C, dtype=torch.float64) / C).view(1, 1, C)
    n = torch.arange(C, dtype=torch.float64)
    linear = n / max(C - 1, 1) - 0.5
    zigzag = ((n % N) - (N - 1) / 2) / max((N - 1) / 2, 1e-9)
    zigzag = zigzag * zigzag.abs()
    www = -6 + 6 * (n / max(C - 1, 1)) ** (1 + ratio_0_to_1 ** 0.3)
    out = {
        "x_r": 1 - ddd ** (0.2 * ratio_1_to_almost0),
        "x_w": 1 - ddd ** (0.9 * ratio_1_to_almost0),
        "x_k": 1 - ddd ** (0.7 * ratio_1_to_almost0),
        "x_v": 1 - ddd ** (0.7 * ratio_1_to_almost0),
        "x_a": 1 - ddd ** (0.9 * ratio_1_to_almost0),
        "x_g": 1 - ddd ** (0.2 * ratio_1_to_almost0),
        "w0": (www + 0.5 + zigzag * 2.5).view(1, 1, C),
        "a0": (-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C),
        "v0": (0.73 - linear * 0.4).view(1, 1, C),
        "k_k": (0.71 - linear * 0.1).view(1, 1, C),
        "k_a": torch.full((1, 1, C), 1.02, dtype=torch.float64),
        "ffn_x_k": 1 - ddd ** (ratio_1_to_almost0 ** 4),
    }
    return {k: v.float() for k, v in out.items()}


INITS = ("trainer", "live")


@torch.no_grad()
def init_weights(model: nn.Module, gen: torch.Generator, scheme: str = "trainer") -> None:
    """Initial weights for an `RWKV7` (token or control mode).

    "trainer": as BlinkDL's trainer, every block starts as the identity (output, ffn.value and
    the LoRA down-projections w1/a1/v1/g1 zero). "live": the same, but those drawn
    N(0, 1/fan_in), so every path through the blocks acts from the start. Evolution needs
    that: while output is zero, a perturbation of receptance, key, value or a LoRA changes
    nothing, and while w1 is zero neither does one of w2 (and the decay ignores the input).
    """
    if scheme not in INITS:
        raise ValueError(f"init scheme must be one of {INITS}, got {scheme!r}")
    cfg: RWKV7Config = model.config
    C = cfg.n_embd
    bound = 0.5 / C ** 0.5
    for i, block in enumerate(model.blocks):
        att, ffn = block.att, block.ffn
        vals = _mix_and_decay(cfg, i)
        for name, value in vals.items():
            target = ffn.x_k if name == "ffn_x_k" else getattr(att, name, None)
            if target is not None:
                target.copy_(value)
        for lora in ("w", "a", "v", "g"):
            if hasattr(att, lora + "1"):
                if scheme == "live":
                    getattr(att, lora + "1").normal_(0.0, C ** -0.5, generator=gen)
                else:
                    getattr(att, lora + "1").zero_()
                nn.init.orthogonal_(getattr(att, lora + "2"), gain=0.1, generator=gen)
        att.r_k.fill_(-0.04)
        nn.init.uniform_(att.receptance.weight, -bound, bound, generator=gen)
        nn.init.uniform_(att.key.weight, -0.1 * bound, 0.1 * bound, generator=gen)
        nn.init.uniform_(att.value.weight, -bound, bound, generator=gen)
        if scheme == "live":
            att.output.weight.normal_(0.0, C ** -0.5, generator=gen)
        else:
            att.output.weight.zero_()
        att.ln_x.weight.fill_(((1 + i) / cfg.n_layer) ** 0.7)
        att.ln_x.bias.zero_()
        nn.init.uniform_(ffn.key.weight, -bound, bound, generator=gen)
        if scheme == "live":
            ffn.value.weight.normal_(0.0, cfg.ffn_dim ** -0.5, generator=gen)
        else:
            ffn.value.weight.zero_()
        for ln in (block.ln1, block.ln2, getattr(block, "ln0", None)):
            if ln is not None:
                ln.weight.fill_(1.0)
                ln.bias.zero_()
    model.ln_out.weight.fill_(1.0)
    model.ln_out.bias.zero_()
    out_dim = model.head.weight.shape[0]
    gain = 0.5 * (out_dim / C) ** 0.5 if out_dim > C else 0.5
    nn.init.orthogonal_(model.head.weight, gain=gain, generator=gen)
    if cfg.token_mode:
        nn.init.uniform_(model.emb.weight, -1e-4, 1e-4, generator=gen)
    else:
        enc_bound = 1.0 / cfg.input_dim ** 0.5
        nn.init.uniform_(model.encoder.weight, -enc_bound, enc_bound, generator=gen)
        # a non-zero bias keeps the size of a low-dimensional input visible through ln0
        # (LayerNorm(W x) keeps only its direction: a scalar input would keep only its sign)
        nn.init.uniform_(model.encoder.bias, -1.0, 1.0, generator=gen)
