"""Official RWKV-7 `.pth` checkpoints (BlinkDL's trainer layout) to and from `RWKV7`.

Shapes are read from the tensors: C and V from `emb.weight`, H and N from `blocks.0.att.r_k`,
LoRA ranks from `w1/a1/g1` and `blocks.1.att.v1`, the FFN size from `ffn.key.weight`.
Layer 0's `v0/v1/v2` are optional (unused by the official code). Any stored float dtype loads;
the model is float32 unless `dtype` says otherwise.
"""

from __future__ import annotations

import os
import re

import torch

from .config import RWKV7Config
from .model import RWKV7


def _require(sd: dict[str, torch.Tensor], name: str, ndim: int | None = None) -> torch.Tensor:
    if name not in sd:
        raise ValueError(f"not an RWKV-7 checkpoint: missing tensor {name!r}")
    t = sd[name]
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"not an RWKV-7 checkpoint: {name!r} is a {type(t).__name__}, "
                         "expected a tensor")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {ndim} dims")
    return t


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> RWKV7Config:
    """Infer the `RWKV7Config` of an official token-mode state dict."""
    V, C = _require(sd, "emb.weight", 2).shape
    H, N = _require(sd, "blocks.0.att.r_k", 2).shape
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    L = max(layers) + 1
    if layers != set(range(L)):
        raise ValueError(f"checkpoint blocks are not contiguous: {sorted(layers)}")
    dim_v = sd["blocks.1.att.v1"].shape[1] if "blocks.1.att.v1" in sd else None
    return RWKV7Config(
        n_embd=C, n_layer=L, head_size=N, vocab_size=V,
        dim_w=_require(sd, "blocks.0.att.w1", 2).shape[1],
        dim_a=_require(sd, "blocks.0.att.a1", 2).shape[1],
        dim_g=_require(sd, "blocks.0.att.g1", 2).shape[1],
        dim_v=dim_v,
        dim_ffn=_require(sd, "blocks.0.ffn.key.weight", 2).shape[0],
    )


def load_state_dict_official(model: RWKV7, sd: dict[str, torch.Tensor]) -> None:
    """Copy an official state dict into `model`, checking every name and shape."""
    own = dict(model.named_parameters())
    optional = {f"blocks.0.att.{n}" for n in ("v0", "v1", "v2")}
    unknown = sorted(set(sd) - set(own) - optional)
    if unknown:
        raise ValueError(f"unexpected tensors for RWKV-7: {unknown[:5]}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    with torch.no_grad():
        for name, param in own.items():
            t = _require(sd, name)
            if t.shape != param.shape:
                raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, expected "
                                 f"{tuple(param.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"tensor {name!r} has dtype {t.dtype}, expected a float dtype")
            param.copy_(t.to(param.dtype))


def load_checkpoint(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> RWKV7:
    """Build an `RWKV7` from an official `.pth` file."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f"cannot read {os.fspath(path)!r} as a torch checkpoint: {exc}") from exc
    if not isinstance(sd, dict):
        raise ValueError(f"not an RWKV-7 checkpoint: {os.fspath(path)!r} holds a "
                         f"{type(sd).__name__}, expected a dict of tensors")
    model = RWKV7(config_from_state_dict(sd))
    load_state_dict_official(model, sd)
    return model.to(device=device, dtype=dtype)


def save_checkpoint(model: RWKV7, path: str | os.PathLike,
                    dtype: torch.dtype = torch.bfloat16) -> None:
    """Write `model` in the official layout (token mode only), as BlinkDL's trainer does."""
    if not model.config.token_mode:
        raise ValueError("only token-mode models have an official checkpoint layout")
    torch.save({k: v.detach().to(dtype).contiguous() for k, v in model.named_parameters()}, path)
