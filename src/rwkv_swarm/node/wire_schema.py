"""The wire protocol's vocabulary: message types, their header fields and arrays, and the
errors a received message can raise. One table (`SCHEMAS`) drives validation; wire.py holds
the codec that applies it.

Every field kind validates a received header value and returns it normalised, raising a
`ProtocolError` whose reason is one of `REASONS`. Nothing received is repr'd whole: error
messages show a bounded preview.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 3  # 2: fitness messages carry everything a neighbour replays an update
#                       from; 3: arrays may share frame 1
MAX_NDIM = 8  # arrays of more dimensions are refused
MAX_ID_CHARS = 128  # swarm and node ids, names, commands

# numpy has no bfloat16: carry it as a 2-byte structured dtype whose field name marks it
BFLOAT16 = np.dtype([("bfloat16", "<u2")])
DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "bfloat16": BFLOAT16,
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
}
FLOAT_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16"})
_WIRE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

REASONS = (
    "frames",  # no frames, too many, a frame not a buffer, or not one frame per array
    "too_large",  # header, total size or an array's element count over `WireLimits`
    "header",  # frame 0 is not one msgpack map of str keys, each key once, within msgpack's bounds
    "version",  # `v` is not PROTOCOL_VERSION
    "type",  # unknown message type
    "field",  # a field missing, unknown, of the wrong type or out of range
    "array_spec",  # an `arrays` entry malformed, misnamed, of a refused dtype or ndim
    "size_mismatch",  # declared shape x itemsize differs from the frame's length
    "non_finite",  # NaN or inf where a float is expected
    "inconsistent",  # arrays that must agree with each other do not
    "mismatch",  # a state that does not fit the receiver's model or weights
)


class ProtocolError(ValueError):
    """A message that does not follow the wire protocol; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail




@dataclass(frozen=True, eq=False)
class Message:
    """One wire message. `fields` holds the per-type header fields, `arrays` the raw frames."""

    type: str
    swarm: str
    node: str
    gen: int
    ts: float
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


# -- previews of received values for error messages: bounded however big or deep the value --

_SHOW_CHARS = 40  # of a preview
_SHOW_ITEMS = 3  # items of a list or map shown
_SHOW_DEPTH = 2  # container levels shown; deeper ones are elided as [...] or {...}


def _show(v: Any) -> str:
    """Type name and a short preview of `v`, for an error message."""
    return f"{type(v).__name__} {_cut(_preview(v, _SHOW_DEPTH))}"


def _cut(text: str, chars: int = _SHOW_CHARS) -> str:
    return text[:chars] + ("..." if len(text) > chars else "")


def _preview(v: Any, depth: int) -> str:
    """A repr of `v` cut short: at most _SHOW_ITEMS items per container, `depth` levels deep.

    Never calls repr on a container (it recurses without bound: a RecursionError on 1000
    nested lists), nor on an object of a type not listed here.
    """
    t = type(v)
    if v is None or t in (bool, float):
        return repr(v)
    if t is int:  # int -> str is quadratic in the digits, and refused beyond 4300 of them
        return repr(v) if v.bit_length() <= 64 else f"<int of {v.bit_length()} bits>"
    if t in (str, bytes):
        return repr(v[: _SHOW_CHARS + 1])  # one more than shown: _cut marks the cut
    if t in (list, tuple, dict):
        ends = "{}" if t is dict else "[]" if t is list else "()"
        if not v:
            return ends
        if depth == 0:
            return f"{ends[0]}...{ends[1]}"
        first = islice(v.items() if t is dict else v, _SHOW_ITEMS)
        items = [f"{_preview(x[0], 0)}: {_preview(x[1], depth - 1)}" if t is dict
                 else _preview(x, depth - 1) for x in first]
        more = ", ..." if len(v) > _SHOW_ITEMS else ""
        return f"{ends[0]}{', '.join(items)}{more}{ends[1]}"
    if t is msgpack.ExtType:
        return f"ExtType(code={v.code}, {len(v.data)} bytes)"
    if t is msgpack.Timestamp:
        return f"Timestamp({v.seconds}, {v.nanoseconds})"
    return f"<{t.__name__}>"


# -- field kinds: each validates a header value and returns it normalised --------------------


def _id(name: str, v: Any) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_ID_CHARS:
        raise ProtocolError("field", f"{name} must be a str of 1..{MAX_ID_CHARS} chars, got "
                                     f"{_show(v)}")
    return v


def _uint(name: str, v: Any) -> int:
    if type(v) is not int or not 0 <= v < 2**64:
        raise ProtocolError("field", f"{name} must be an int in [0, 2**64), got {_show(v)}")
    return v


def _float(name: str, v: Any) -> float:
    # an int is taken as its float; only a sender's own Python int can be too big to convert
    ok = math.isfinite(v) if type(v) is float else type(v) is int and abs(v) < 2**64
    if not ok:
        raise ProtocolError("field", f"{name} must be a finite float, got {_show(v)}")
    return float(v)


def _nonneg(name: str, v: Any) -> float:
    x = _float(name, v)
    if x < 0:
        raise ProtocolError("field", f"{name} must be >= 0, got {x}")
    return x


def _fingerprint(name: str, v: Any) -> bytes:
    if type(v) is not bytes or not 0 < len(v) <= 64:
        raise ProtocolError("field", f"{name} must be 1..64 bytes, got {_show(v)}")
    return v


def _scalar_ok(v: Any) -> bool:
    return type(v) in (str, int, bool) or (type(v) is float and math.isfinite(v))


def _params(name: str, v: Any) -> dict[str, Any]:
    """A flat dict: str keys, values scalars (str, int, bool, finite float) or lists of them."""
    if type(v) is not dict:
        raise ProtocolError("field", f"{name} must be a dict, got {_show(v)}")
    for key, val in v.items():
        ok = _scalar_ok(val) or (type(val) is list and all(_scalar_ok(x) for x in val))
        if type(key) is not str or not ok:
            raise ProtocolError("field", f"{name}[{_cut(_preview(key, 0))}] must map a str to a "
                                         f"scalar or a list of scalars, got {_show(val)}")
    return v


def _ids(name: str, v: Any) -> list[str]:
    if type(v) is not list:
        raise ProtocolError("field", f"{name} must be a list of node ids, got {_show(v)}")
    return [_id(f"{name}[{i}]", x) for i, x in enumerate(v)]


def _names(name: str, v: Any) -> list[str]:
    if type(v) is not list or not v:
        raise ProtocolError("field", f"{name} must be a non-empty list of names, got {_show(v)}")
    return [_id(f"{name}[{i}]", x) for i, x in enumerate(v)]


def _positive(name: str, v: Any) -> float:
    x = _float(name, v)
    if x <= 0:
        raise ProtocolError("field", f"{name} must be > 0, got {x}")
    return x


def _count(name: str, v: Any) -> int:
    if type(v) is not int or not 1 <= v < 2**31:
        raise ProtocolError("field", f"{name} must be an int in [1, 2**31), got {_show(v)}")
    return v


FieldKind = Callable[[str, Any], Any]
COMMON_FIELDS: dict[str, FieldKind] = {"swarm": _id, "node": _id, "gen": _uint, "ts": _float}


# -- schemas: one table drives validation ------------------------------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """What one named array of a message type may be."""

    dtypes: frozenset[str]  # accepted wire dtypes
    ndim: int | None = None  # required number of dimensions; None: any up to MAX_NDIM
    optional: bool = False  # a message may leave it out


Layout = dict[str, tuple[str, tuple[int, ...]]]  # array name -> (wire dtype, shape)


@dataclass(frozen=True, eq=False)
class Schema:
    """Per-type header fields (all required) and arrays, and cross-array checks: on the
    layout alone (run once per distinct layout: the codec remembers layouts it checked), and
    on the decoded message (run on every message)."""

    fields: dict[str, FieldKind] = field(default_factory=dict)
    arrays: dict[str, ArraySpec] = field(default_factory=dict)
    check: Callable[[Message], None] | None = None
    check_layout: Callable[[Layout], None] | None = None


def _check_state(layout: Layout) -> None:
    (att_dtype, att), (ffn_dtype, ffn), (_, wkv) = (
        layout[k] for k in ("att_x_prev", "ffn_x_prev", "wkv"))
    L, B, C = att
    if ffn != att or ffn_dtype != att_dtype:
        raise ProtocolError("inconsistent", f"ffn_x_prev {ffn} {ffn_dtype} must match "
                                            f"att_x_prev {att} {att_dtype}")
    if wkv[:2] != (L, B) or wkv[3] != wkv[4] or wkv[2] * wkv[3] != C:
        raise ProtocolError("inconsistent", f"wkv {wkv} must be (L={L}, B={B}, H, N, N) "
                                            f"with H*N = C = {C}")


def _check_fitness(msg: Message) -> None:
    a = msg.arrays
    n = a["raw"].shape[0]
    if a["valid"].shape != (n,) or a["shaped"].shape != (n,):
        raise ProtocolError("inconsistent", f"valid {a['valid'].shape} and shaped "
                                            f"{a['shaped'].shape} must match raw ({n},)")
    first, size = msg.fields["first"], msg.fields["size"]
    if n == 0 or n % 2 or first % 2 or first + n > size:
        raise ProtocolError("inconsistent", f"first={first} and {n} reported members must be "
                                            f"whole antithetic pairs within size={size}")
    if a["valid"].size and a["valid"].max() > 1:
        raise ProtocolError("inconsistent", "valid must hold 0 or 1 per member")
    stats = [k for k in ("obs_count", "obs_mean", "obs_m2") if k in a]
    if stats and (len(stats) != 3 or a["obs_count"].shape != (1,)
                  or a["obs_mean"].shape != a["obs_m2"].shape or a["obs_count"][0] < 0):
        raise ProtocolError("inconsistent", "observation statistics need obs_count (1,) >= 0 "
                                            "and obs_mean, obs_m2 of one shape")


def _check_belief(msg: Message) -> None:
    mean, var = msg.arrays["mean"], msg.arrays["var"]
    if mean.shape != var.shape:
        raise ProtocolError("inconsistent", f"belief var {var.shape} != mean {mean.shape}")
    if var.size and var.min() < 0:
        raise ProtocolError("inconsistent", "belief var must be >= 0")


_FLOATS = FLOAT_DTYPES - {"bfloat16"}
_STATE_X = frozenset({"float32", "float16", "bfloat16"})
SCHEMAS: dict[str, Schema] = {
    "state": Schema(
        fields={"fingerprint": _fingerprint},  # hash of the weights the state belongs to
        arrays={"att_x_prev": ArraySpec(_STATE_X, 3), "ffn_x_prev": ArraySpec(_STATE_X, 3),
                "wkv": ArraySpec(frozenset({"float32"}), 5)},
        check_layout=_check_state),
    "fitness": Schema(  # one generation's update of one node, replayable from its seed
        fields={"seed": _uint, "sigma": _positive, "size": _count, "first": _uint,
                "rank": _count, "include": _names,  # the population and the members reported
                "perturbation": _fingerprint,  # hash of (architecture, rank, include)
                "fingerprint": _fingerprint,  # of the weights the mutants were drawn around
                "belief_mean": _float, "belief_var": _nonneg},  # belief_var 0: none yet
        arrays={"raw": ArraySpec(frozenset({"float64"}), 1),  # fitness per member (0 if not
                "valid": ArraySpec(frozenset({"uint8"}), 1),  # finite: valid says which)
                "shaped": ArraySpec(frozenset({"float32"}), 1),
                "sketch": ArraySpec(frozenset({"float32"}), 1),  # weight sketch: distances
                # pending observation statistics (consensus groups merge their normalisers)
                "obs_count": ArraySpec(frozenset({"float64"}), 1, optional=True),
                "obs_mean": ArraySpec(frozenset({"float64"}), 1, optional=True),
                "obs_m2": ArraySpec(frozenset({"float64"}), 1, optional=True)},
        check=_check_fitness),
    "belief": Schema(fields={"name": _id},
                     arrays={"mean": ArraySpec(_FLOATS), "var": ArraySpec(_FLOATS)},
                     check=_check_belief),
    "signal": Schema(fields={"name": _id, "params": _params, "targets": _ids}),
    "control": Schema(fields={"command": _id, "args": _params}),
    "heartbeat": Schema(),
}

_FIELDS = {t: {**COMMON_FIELDS, **schema.fields} for t, schema in SCHEMAS.items()}
