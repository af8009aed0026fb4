"""Random checkpoints in the official RWKV-7 layout, built from the spec's table (not from our
model), and the official `rwkv` package loaded as the oracle."""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")


def random_official_checkpoint(
    path: Path, C: int, L: int, V: int, N: int = 64, *, dims=(32, 32, 32, 64), F: int | None = None,
    seed: int = 0, dtype: torch.dtype = torch.float32, with_layer0_v: bool = True,
) -> Path:
    """Write `path` (.pth) with every tensor of BlinkDL's layout, random and non-degenerate."""
    g = torch.Generator().manual_seed(seed)
    H, F = C // N, F or 4 * C
    Dw, Da, Dv, Dg = dims

    def rnd(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g) * scale + offset)

    def vec(scale=0.3, offset=0.0):
        return rnd(1, 1, C, scale=scale, offset=offset)

    sd = {"emb.weight": rnd(V, C), "blocks.0.ln0.weight": rnd(C, scale=0.2, offset=1.0),
          "blocks.0.ln0.bias": rnd(C, scale=0.1)}
    for i in range(L):
        b, a = f"blocks.{i}.", f"blocks.{i}.att."
        for ln in ("ln1", "ln2"):
            sd[b + ln + ".weight"] = rnd(C, scale=0.2, offset=1.0)
            sd[b + ln + ".bias"] = rnd(C, scale=0.1)
        for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            sd[a + m] = torch.rand(1, 1, C, generator=g)
        sd[a + "w0"] = vec(1.0, -2.0)
        sd[a + "w1"], sd[a + "w2"] = rnd(C, Dw, scale=0.1), rnd(Dw, C, scale=0.1)
        sd[a + "a0"] = vec()
        sd[a + "a1"], sd[a + "a2"] = rnd(C, Da, scale=0.1), rnd(Da, C, scale=0.1)
        if i > 0 or with_layer0_v:
            sd[a + "v0"] = vec(0.3, 0.5)
            sd[a + "v1"], sd[a + "v2"] = rnd(C, Dv, scale=0.1), rnd(Dv, C, scale=0.1)
        sd[a + "g1"], sd[a + "g2"] = rnd(C, Dg, scale=0.1), rnd(Dg, C, scale=0.1)
        sd[a + "k_k"] = vec(0.1, 0.7)
        sd[a + "k_a"] = vec(0.1, 1.0)
        sd[a + "r_k"] = rnd(H, N, scale=0.1)
        for m in ("receptance", "key", "value", "output"):
            sd[a + m + ".weight"] = rnd(C, C, scale=C ** -0.5)
        sd[a + "ln_x.weight"] = rnd(C, scale=0.1, offset=1.0)
        sd[a + "ln_x.bias"] = rnd(C, scale=0.1)
        sd[b + "ffn.x_k"] = torch.rand(1, 1, C, generator=g)
        sd[b + "ffn.key.weight"] = rnd(F, C, scale=C ** -0.5)
        sd[b + "ffn.value.weight"] = rnd(C, F, scale=F ** -0.5)
    sd["ln_out.weight"] = rnd(C, scale=0.2, offset=1.0)
    sd["ln_out.bias"] = rnd(C, scale=0.1)
    sd["head.weight"] = rnd(V, C, scale=C ** -0.5)
    torch.save({k: v.to(dtype) for k, v in sd.items()}, path)
    return path


def official_model(path: Path):
    """The official `rwkv` package's RWKV-7 on CPU fp32 (it wants the path without .pth)."""
    from rwkv.model import RWKV

    return RWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32")
