"""Wire protocol: typed messages as ZeroMQ multipart frames, validated before use.

Frame 0 is a msgpack map (the header); each further frame is the raw little-endian bytes of
one array declared in the header's ``arrays`` list as ``[name, dtype, shape]``, in order.
`decode` returns arrays as read-only `numpy.frombuffer` views on the received frames.

Every check that can fail on hostile input runs before a payload byte is looked at, and every
failure is a `ProtocolError` whose ``reason`` is one of `REASONS` (the transport counts by it).
Nothing received is ever repr'd whole or walked recursively: error messages show a bounded
preview, and msgpack's own unpacking is bounded by `WireLimits.max_header_bytes`.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import msgpack
import numpy as np
import torch

from ..kernels import RWKV7Config, RWKV7State

PROTOCOL_VERSION = 1
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


@dataclass(frozen=True)
class WireLimits:
    """Size limits checked on declared sizes, before any payload is touched."""

    max_header_bytes: int = 64 * 1024  # msgpack header frame
    max_frames: int = 16  # header + arrays
    max_total_bytes: int = 64 * 2**20  # all frames of one message together
    max_array_elements: int = 16 * 2**20  # elements of any one array


DEFAULT_LIMITS = WireLimits()


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


FieldKind = Callable[[str, Any], Any]
COMMON_FIELDS: dict[str, FieldKind] = {"swarm": _id, "node": _id, "gen": _uint, "ts": _float}


# -- schemas: one table drives validation ------------------------------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """What one named array of a message type may be."""

    dtypes: frozenset[str]  # accepted wire dtypes
    ndim: int | None = None  # required number of dimensions; None: any up to MAX_NDIM


@dataclass(frozen=True, eq=False)
class Schema:
    """Per-type header fields and arrays (all required), and a cross-check run after decoding."""

    fields: dict[str, FieldKind] = field(default_factory=dict)
    arrays: dict[str, ArraySpec] = field(default_factory=dict)
    check: Callable[[Message], None] | None = None


def _check_state(msg: Message) -> None:
    att, ffn, wkv = (msg.arrays[k] for k in ("att_x_prev", "ffn_x_prev", "wkv"))
    L, B, C = att.shape
    if ffn.shape != att.shape or ffn.dtype != att.dtype:
        raise ProtocolError("inconsistent", f"ffn_x_prev {ffn.shape} {ffn.dtype} must match "
                                            f"att_x_prev {att.shape} {att.dtype}")
    if wkv.shape[:2] != (L, B) or wkv.shape[3] != wkv.shape[4] or wkv.shape[2] * wkv.shape[3] != C:
        raise ProtocolError("inconsistent", f"wkv {wkv.shape} must be (L={L}, B={B}, H, N, N) "
                                            f"with H*N = C = {C}")


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
        check=_check_state),
    "fitness": Schema(
        fields={"seed": _uint, "sigma": _nonneg, "belief_mean": _float, "belief_var": _nonneg},
        arrays={"shaped": ArraySpec(frozenset({"float32"}), 1)}),  # one per mutant
    "belief": Schema(fields={"name": _id},
                     arrays={"mean": ArraySpec(_FLOATS), "var": ArraySpec(_FLOATS)},
                     check=_check_belief),
    "signal": Schema(fields={"name": _id, "params": _params, "targets": _ids}),
    "control": Schema(fields={"command": _id, "args": _params}),
    "heartbeat": Schema(),
}

_FIELDS = {t: {**COMMON_FIELDS, **schema.fields} for t, schema in SCHEMAS.items()}


# -- header validation, shared by encode and decode -------------------------------------------

_ArrayDecl = tuple[str, str, tuple[int, ...]]


_HEADER_BYTES_PER_ITEM = 64  # a header list may hold one item per 64 bytes of header limit


def _max_list(limits: WireLimits) -> int:
    """Items a list in a header may hold: 1024 in 64 KiB; room for every array and shape."""
    return max(limits.max_frames, MAX_NDIM, limits.max_header_bytes // _HEADER_BYTES_PER_ITEM)


def _unpack_header(buf: memoryview, limits: WireLimits) -> Any:
    """Frame 0 as Python objects: msgpack with every length bounded and map keys unique.

    msgpack allocates a list as long as declared before reading its items, and nests up to
    1024 deep, so lists of 65535 items declared in 3 KiB took 78 MiB and 30 ms to refuse;
    capping list lengths at 1024 bounds that to 8 MiB. Maps, strings and bytes are allocated
    as read, so they are bounded by the header size only.
    """
    n, max_list = limits.max_header_bytes, _max_list(limits)
    try:
        return msgpack.unpackb(
            buf, raw=False, strict_map_key=True, timestamp=0, object_pairs_hook=_unique_keys,
            max_str_len=n, max_bin_len=n, max_ext_len=n, max_map_len=n // 2,
            max_array_len=max_list)
    except ProtocolError:
        raise
    except msgpack.StackError:  # its message is empty
        raise ProtocolError("header", "frame 0 nests deeper than msgpack allows") from None
    except Exception as e:  # msgpack reports malformed input with many exception types
        raise ProtocolError("header", f"frame 0 must be msgpack with str map keys and lists of "
                                      f"<= {max_list} items ({type(e).__name__}: "
                                      f"{_cut(str(e), 2 * _SHOW_CHARS)})") from None


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A msgpack map as a dict, refusing repeated keys (a dict would keep the last silently)."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[Any] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ProtocolError("header", f"frame 0 repeats the key {_cut(_preview(key, 0))}: "
                                      f"each key of a map must appear once")
    return d


def _check_sizes(sizes: Sequence[int], limits: WireLimits) -> None:
    if not 0 < len(sizes) <= limits.max_frames:
        raise ProtocolError("frames", f"{len(sizes)} frames, expected 1..{limits.max_frames}")
    if sizes[0] > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header of {sizes[0]} bytes, limit "
                                         f"{limits.max_header_bytes}")
    total = sum(sizes)
    if total > limits.max_total_bytes:
        raise ProtocolError("too_large", f"message of {total} bytes, limit "
                                         f"{limits.max_total_bytes}")


def _parse_header(
    header: Any, sizes: Sequence[int], limits: WireLimits
) -> tuple[Schema, dict[str, Any], list[_ArrayDecl]]:
    """Check a header against its schema; returns the schema, the field values, the arrays."""
    if type(header) is not dict:
        raise ProtocolError("header", f"header must be a msgpack map, got {_show(header)}")
    v = header.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError("version", f"v must be {PROTOCOL_VERSION}, got {_show(v)}")
    msg_type = header.get("type")
    schema = SCHEMAS.get(msg_type) if type(msg_type) is str else None
    if schema is None:
        raise ProtocolError("type", f"type must be one of {sorted(SCHEMAS)}, got {_show(msg_type)}")
    kinds = _FIELDS[msg_type]
    try:
        values = {name: kind(name, header[name]) for name, kind in kinds.items()}
        entries = header["arrays"]
    except KeyError as e:
        raise ProtocolError("field", f"{msg_type} message lacks field {e.args[0]!r}") from None
    if len(header) != len(kinds) + 3:  # + v, type, arrays
        unknown = sorted(header.keys() - kinds.keys() - {"v", "type", "arrays"}, key=repr)
        shown = ", ".join(_cut(_preview(k, 0)) for k in unknown[:_SHOW_ITEMS])
        more = f" and {len(unknown) - _SHOW_ITEMS} more" if len(unknown) > _SHOW_ITEMS else ""
        raise ProtocolError("field", f"unknown fields {shown}{more} in {msg_type} message")
    values["type"] = msg_type
    return schema, values, _parse_arrays(entries, schema, sizes, limits)


def _parse_arrays(
    entries: Any, schema: Schema, sizes: Sequence[int], limits: WireLimits
) -> list[_ArrayDecl]:
    if type(entries) is not list:
        raise ProtocolError("array_spec", f"arrays must be a list, got {_show(entries)}")
    if len(entries) != len(sizes) - 1:
        raise ProtocolError("frames", f"header declares {len(entries)} arrays but "
                                      f"{len(sizes) - 1} array frames follow")
    decls: list[_ArrayDecl] = []
    for i, entry in enumerate(entries):
        if type(entry) is not list or len(entry) != 3:
            raise ProtocolError("array_spec", f"arrays[{i}] must be [name, dtype, shape], got "
                                              f"{_show(entry)}")
        name, dtype, shape = entry
        spec = schema.arrays.get(name) if type(name) is str else None
        if spec is None or any(d[0] == name for d in decls):
            raise ProtocolError("array_spec", f"arrays[{i}] name {_show(name)} is not a new one "
                                              f"of {sorted(schema.arrays)}")
        if type(dtype) is not str or dtype not in spec.dtypes:
            raise ProtocolError("array_spec", f"array {name} dtype {_show(dtype)} not one of "
                                              f"{sorted(spec.dtypes)}")
        if type(shape) is not list or not _shape_fits(shape, spec.ndim):
            raise ProtocolError("array_spec", f"array {name} shape {_show(shape)} must be a list "
                                              f"of {spec.ndim or f'<= {MAX_NDIM}'} ints >= 0")
        # zeros left out: numpy refuses an empty array whose other dimensions overflow
        span = math.prod(d for d in shape if d)
        if span > limits.max_array_elements:
            raise ProtocolError("too_large", f"array {name} shape {_show(shape)} spans over "
                                             f"{limits.max_array_elements} elements")
        count = math.prod(shape)
        nbytes = count * DTYPES[dtype].itemsize
        if nbytes != sizes[i + 1]:
            raise ProtocolError("size_mismatch", f"array {name} {dtype}{shape} needs {nbytes} "
                                                 f"bytes, frame {i + 1} has {sizes[i + 1]}")
        decls.append((name, dtype, tuple(shape)))
    if len(decls) != len(schema.arrays):
        raise ProtocolError("array_spec", f"{len(decls)} arrays declared, expected "
                                          f"{sorted(schema.arrays)}")
    return decls


def _shape_fits(shape: list[Any], ndim: int | None) -> bool:
    if len(shape) != ndim if ndim is not None else len(shape) > MAX_NDIM:
        return False
    return all(type(d) is int and d >= 0 for d in shape)


_FAST_SUM_MIN = 1 << 16  # elements; below, one isfinite pass is cheaper than a sum first


def _require_finite(name: str, arr: np.ndarray, dtype: str) -> None:
    if dtype == "bfloat16":
        finite = not ((arr.view(np.uint16) & 0x7F80) == 0x7F80).any()  # exponent all ones
    elif arr.size >= _FAST_SUM_MIN and dtype != "float16":
        # A sum is finite only if every term is (inf and NaN never add up to a finite value),
        # and einsum's sum runs at memory speed, a third faster than isfinite().all() on a
        # 4 MiB frame. A finite overflow makes the sum inf: only then is the exact check run.
        with np.errstate(over="ignore", invalid="ignore"):
            finite = bool(np.isfinite(np.einsum("i->", arr.reshape(-1))))
        finite = finite or bool(np.isfinite(arr).all())
    else:
        finite = bool(np.isfinite(arr).all())
    if not finite:
        raise ProtocolError("non_finite", f"array {name} holds NaN or inf")


def _build(schema: Schema, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> Message:
    common = [values.pop(k) for k in ("type", "swarm", "node", "gen", "ts")]
    msg = Message(*common, fields=values, arrays=arrays)
    if schema.check is not None:
        schema.check(msg)
    return msg


# -- codec -------------------------------------------------------------------------------------


def decode(frames: Sequence[Any], limits: WireLimits = DEFAULT_LIMITS) -> Message:
    """Validate and decode multipart frames; arrays are read-only views on the frames.

    Raises ProtocolError (and nothing else) on any malformed, oversized or non-finite input.
    Pauses the (process-wide) cyclic garbage collector while it runs.
    """
    if not gc.isenabled():
        return _decode(frames, limits)
    # Collections set off by a header of 61,000 empty lists (63 KB) traversed them and moved
    # them to the oldest generation, so every such message collected the whole heap: 39 ms
    # instead of 1.8 ms. Received objects are freed by reference counting before it resumes.
    gc.disable()
    try:
        return _decode(frames, limits)
    except ProtocolError as e:  # its traceback's frames hold the received objects: drop them
        raise e.with_traceback(None) from None
    finally:
        gc.enable()


def _decode(frames: Sequence[Any], limits: WireLimits) -> Message:
    try:
        views = [memoryview(f) for f in frames]
    except TypeError as e:
        raise ProtocolError("frames", f"frames must be a sequence of buffers: {e}") from None
    if not all(v.c_contiguous for v in views):  # numpy cannot view a strided buffer
        raise ProtocolError("frames", "frames must be contiguous buffers")
    sizes = [v.nbytes for v in views]
    _check_sizes(sizes, limits)
    schema, values, decls = _parse_header(_unpack_header(views[0], limits), sizes, limits)
    arrays: dict[str, np.ndarray] = {}
    for (name, dtype, shape), view in zip(decls, views[1:], strict=True):
        arr = np.ndarray(shape, DTYPES[dtype], view)  # a view, sizes checked above
        arr.flags.writeable = False  # a view on a received frame: copy before changing it
        if dtype in FLOAT_DTYPES:
            _require_finite(name, arr, dtype)
        arrays[name] = arr
    return _build(schema, values, arrays)


def encode(
    msg: Message, limits: WireLimits = DEFAULT_LIMITS, *, check_finite: bool = False
) -> list[bytes | memoryview]:
    """Frames for `msg`: a msgpack header, then each array's bytes (no copy when contiguous).

    Runs the receiver's checks of the header, dtypes, shapes and sizes, raising ProtocolError.
    Finiteness, a pass over every float, is the receiver's check unless `check_finite`.
    """
    schema = SCHEMAS.get(msg.type)
    if schema is None:
        raise ProtocolError("type", f"type must be one of {sorted(SCHEMAS)}, got {msg.type!r}")
    if not msg.fields.keys() <= schema.fields.keys():
        extra = sorted(msg.fields.keys() - schema.fields.keys())
        raise ProtocolError("field", f"unknown fields {extra} in {msg.type} message")
    decls, payloads = [], []
    for name, arr in msg.arrays.items():
        wire_dtype, arr = _wire_array(name, arr)
        decls.append([name, wire_dtype, list(arr.shape)])
        payloads.append(arr)
    header = {"v": PROTOCOL_VERSION, "type": msg.type, "swarm": msg.swarm, "node": msg.node,
              "gen": msg.gen, "ts": msg.ts, **msg.fields, "arrays": decls}
    try:
        packed = msgpack.packb(header)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError("field", f"{msg.type} header cannot be packed: {e}") from None
    frames: list[bytes | memoryview] = [packed]
    frames += [a.data for a in payloads]
    sizes = [len(packed)] + [a.nbytes for a in payloads]
    _check_sizes(sizes, limits)
    if len(packed) > _max_list(limits):  # only so long a header can hold too long a list
        _unpack_header(memoryview(packed), limits)
    schema, values, _ = _parse_header(header, sizes, limits)
    if check_finite:
        for (name, dtype, _), arr in zip(decls, payloads, strict=True):
            if dtype in FLOAT_DTYPES:
                _require_finite(name, arr, dtype)
    _build(schema, values, dict(zip(msg.arrays, payloads, strict=True)))
    return frames


def _wire_array(name: str, arr: Any) -> tuple[str, np.ndarray]:
    if not isinstance(arr, np.ndarray):
        raise ProtocolError("array_spec", f"array {name} must be a numpy array, got {_show(arr)}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    wire_dtype = _WIRE_NAMES.get(arr.dtype)
    if wire_dtype is None:
        raise ProtocolError("array_spec", f"array {name} dtype {arr.dtype} not one of "
                                          f"{sorted(DTYPES)}")
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    return wire_dtype, arr


def message(
    msg_type: str,
    *,
    swarm: str,
    node: str,
    gen: int = 0,
    ts: float | None = None,
    arrays: Mapping[str, Any] | None = None,
    **fields: Any,
) -> Message:
    """A message of `msg_type` (see SCHEMAS for its fields and arrays); ts defaults to now."""
    arrs = {k: np.asarray(v) for k, v in (arrays or {}).items()}
    return Message(msg_type, swarm, node, gen, time.time() if ts is None else ts, fields, arrs)


# -- RWKV-7 states -----------------------------------------------------------------------------


def state_message(
    state: RWKV7State,
    fingerprint: bytes,
    *,
    swarm: str,
    node: str,
    gen: int,
    ts: float | None = None,
    copy: bool = True,
) -> Message:
    """A `state` message for `state`, which belongs to the weights hashed as `fingerprint`.

    With copy=False the arrays alias the state's (CPU) tensors: the state must then not change
    until the message has been sent, since sending hands the memory to ZeroMQ without copying.
    """

    def array(t: torch.Tensor) -> np.ndarray:
        t = t.detach().cpu()
        t = t.clone(memory_format=torch.contiguous_format) if copy else t.contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(BFLOAT16)
        return t.numpy()

    arrays = {"att_x_prev": array(state.att_x_prev), "ffn_x_prev": array(state.ffn_x_prev),
              "wkv": array(state.wkv)}
    return message("state", swarm=swarm, node=node, gen=gen, ts=ts, arrays=arrays,
                   fingerprint=fingerprint)


def state_from_message(
    msg: Message, config: RWKV7Config, *, fingerprint: bytes | None = None
) -> RWKV7State:
    """The state a (decoded) `state` message carries, as tensors of its own memory.

    Raises ProtocolError (reason "mismatch") when it does not fit a model of `config`, or was
    made with other weights than `fingerprint` (when given).
    """
    if msg.type != "state":
        raise ProtocolError("type", f"expected a state message, got {msg.type!r}")
    if fingerprint is not None and msg.fields["fingerprint"] != fingerprint:
        raise ProtocolError("mismatch", f"state of weights {msg.fields['fingerprint'].hex()}, "
                                        f"expected {fingerprint.hex()}")
    att, ffn, wkv = (msg.arrays[k] for k in ("att_x_prev", "ffn_x_prev", "wkv"))
    got = (att.shape[0], att.shape[2], wkv.shape[3])
    expected = (config.n_layer, config.n_embd, config.head_size)
    if got != expected:
        raise ProtocolError("mismatch", f"state (n_layer, n_embd, head_size) = {got} does not "
                                        f"fit the model's {expected}")
    return RWKV7State(att_x_prev=_tensor(att), wkv=_tensor(wkv), ffn_x_prev=_tensor(ffn))


def _tensor(arr: np.ndarray) -> torch.Tensor:
    # a copy: received frames are read-only and the model updates its state in place
    if arr.dtype == BFLOAT16:
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(arr.copy())
