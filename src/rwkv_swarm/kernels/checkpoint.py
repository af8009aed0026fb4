"""RWKV-7 checkpoints to and from `RWKV7`: BlinkDL's official `.pth` layout for token-mode
models, and this package's own layout for control-mode models (which the official one cannot
hold: it has no encoder and reads the vocabulary size from `emb.weight`).

Official (token mode): a dict of tensors. Shapes are read from the tensors: C and V from
`emb.weight`, H and N from `blocks.0.att.r_k`, LoRA ranks from `w1/a1/g1` and
`blocks.1.att.v1`, the FFN size from `ffn.key.weight`. Layer 0's `v0/v1/v2` are optional
(unused by the official code). Any stored float dtype loads; the model is float32 unless
`dtype` says otherwise.

Control mode: one torch file holding {"format": "rwkv-swarm/control-model", "version": 1,
"config": RWKV7Config.to_dict(), "weights": {parameter name: tensor}}, float32 by default, so
that a save and load round-trips bitwise. Both load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import re
from typing import Any

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


CONTROL_FORMAT = "rwkv-swarm/control-model"
CONTROL_VERSION = 1
_CONTROL_KEYS = ("format", "version", "config", "weights")


def control_checkpoint(model: RWKV7, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A control-mode model as the dict its checkpoint file holds (see the module docstring)."""
    if model.config.token_mode:
        raise ValueError("control_checkpoint takes a control-mode model (input_dim/output_dim); "
                         "token-mode models use the official layout (save_checkpoint)")
    return {
        "format": CONTROL_FORMAT, "version": CONTROL_VERSION, "config": model.config.to_dict(),
        "weights": {k: v.detach().to("cpu", dtype).clone().contiguous()
                    for k, v in model.named_parameters()},
    }


def _control_config(raw: Any, where: str) -> RWKV7Config:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: 'config' must be a dict of RWKV7Config fields, got "
                         f"{type(raw).__name__}")
    names = set(RWKV7Config.__dataclass_fields__)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where}: unknown RWKV7Config fields {unknown}; accepted: "
                         f"{sorted(names)}")
    try:
        config = RWKV7Config(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad config: {exc}") from exc
    if config.token_mode:
        raise ValueError(f"{where}: the config is token-mode (vocab_size={config.vocab_size}); "
                         "this layout holds control-mode models")
    return config


def model_from_control_checkpoint(d: Any, where: str = "checkpoint") -> RWKV7:
    """The `RWKV7` that `control_checkpoint` described, checking every field, name and shape;
    ValueError("<where>: <what is wrong>") otherwise."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a dict, got {type(d).__name__}")
    missing = [k for k in _CONTROL_KEYS if k not in d]
    if missing:
        raise ValueError(f"{where}: fields {missing} missing (expected {list(_CONTROL_KEYS)})")
    if d["format"] != CONTROL_FORMAT or d["version"] != CONTROL_VERSION:
        raise ValueError(f"{where}: format {d['format']!r} version {d['version']!r}, expected "
                         f"{CONTROL_FORMAT!r} version {CONTROL_VERSION}")
    if not isinstance(d["weights"], dict):
        raise ValueError(f"{where}: 'weights' must be a dict of tensors, got "
                         f"{type(d['weights']).__name__}")
    model = RWKV7(_control_config(d["config"], where))
    try:
        load_state_dict_official(model, d["weights"])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return model


def load_checkpoint(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> RWKV7:
    """Build an `RWKV7` from an official `.pth` file or a control-mode checkpoint."""
    where = repr(os.fspath(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f"cannot read {where} as a torch checkpoint: {exc}") from exc
    if not isinstance(sd, dict):
        raise ValueError(f"not an RWKV-7 checkpoint: {where} holds a "
                         f"{type(sd).__name__}, expected a dict of tensors")
    if "format" in sd:  # never an official tensor name
        model = model_from_control_checkpoint(sd, f"control-mode checkpoint {where}")
    else:
        model = RWKV7(config_from_state_dict(sd))
        load_state_dict_official(model, sd)
    return model.to(device=device, dtype=dtype)


def save_checkpoint(model: RWKV7, path: str | os.PathLike,
                    dtype: torch.dtype | None = None) -> None:
    """Write `model`: a token-mode model in the official layout (bfloat16 unless `dtype` says
    otherwise, as BlinkDL's trainer does), a control-mode one in this package's layout
    (float32 unless told otherwise: a round trip is then exact)."""
    if model.config.token_mode:
        dtype = torch.bfloat16 if dtype is None else dtype
        torch.save({k: v.detach().to("cpu", dtype).contiguous()
                    for k, v in model.named_parameters()}, path)
    else:
        torch.save(control_checkpoint(model, torch.float32 if dtype is None else dtype), path)
