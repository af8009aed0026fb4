"""Exact, msgpack-friendly encoding of arrays for the beliefs' `to_dict`/`from_dict`.

An array becomes {"dtype": str, "shape": [ints], "data": bytes (little endian)}: plain types
only, bit-exact, and compact for d = 10^6 (a list of floats would be ~10x larger).
"""

from __future__ import annotations

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
    except (KeyError, TypeError) as e:
        raise ValueError(f"not an encoded array (need dtype, shape, data): {e}") from None
    flat = np.frombuffer(bytes(data), dtype=dtype)
    if flat.size != int(np.prod(shape)):
        raise ValueError(f"encoded array holds {flat.size} values, shape {shape} needs more/less")
    return flat.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def decode_tensor(d: dict[str, Any]) -> torch.Tensor:
    return torch.from_numpy(decode_array(d))
