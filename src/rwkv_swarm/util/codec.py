"""Exact, msgpack-friendly encodings shared by every `state_dict` in the package.

An array becomes {"dtype": str, "shape": [ints], "data": bytes (little endian)}: plain types
only, bit-exact, and compact for d = 10^6 (a list of floats would be ~10x larger). A numpy
generator becomes a string (PCG64's 128-bit integers do not fit msgpack's ints).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

_DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}


def encode_array(a: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """A float32/float64 array or CPU tensor as a dict of plain values."""
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    name = arr.dtype.name
    if name not in _DTYPES:
        raise ValueError(f"only float32/float64 arrays are encoded, got {arr.dtype}")
    return {
        "dtype": name,
        "shape": list(arr.shape),
        "data": np.ascontiguousarray(arr, dtype=_DTYPES[name]).tobytes(),
    }


def decode_array(d: dict[str, Any]) -> np.ndarray:
    """The array `encode_array` encoded (a fresh, writable copy)."""
    try:
        dtype = _DTYPES[d["dtype"]]
        shape = tuple(int(s) for s in d["shape"])
        data = d["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not an encoded array (need dtype float32/float64, shape, data): "
                         f"{e!r}") from None
    try:
        flat = np.frombuffer(bytes(data), dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"encoded array data is not {dtype} bytes: {e}") from None
    if flat.size != math.prod(shape):
        raise ValueError(f"encoded array holds {flat.size} values, shape {shape} needs "
                         f"{math.prod(shape)}")
    return flat.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def decode_tensor(d: dict[str, Any]) -> torch.Tensor:
    return torch.from_numpy(decode_array(d))


def encode_rng(rng: np.random.Generator) -> str:
    """A PCG64 generator's full state as a string."""
    return json.dumps(rng.bit_generator.state)


def decode_rng(s: str) -> np.random.Generator:
    """The generator `encode_rng` encoded."""
    try:
        state = json.loads(s)
        name = state.get("bit_generator")
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"not an encoded generator state: {e}") from None
    if name != "PCG64":
        raise ValueError(f"expected a PCG64 generator state, got bit_generator {name!r}")
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"not a valid PCG64 state: {e!r}") from None
    return rng
