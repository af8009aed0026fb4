"""Wire protocol: typed messages as ZeroMQ multipart frames, validated before use.

Frame 0 is a msgpack map (the header) declaring the arrays as ``[name, dtype, shape]``, in
order; their raw little-endian bytes follow. Frame 1 holds the first arrays back to back, each
at a multiple of 8 bytes (zero bytes between them), and each later frame holds one array: so
small arrays travel as one frame, and large ones each in their own, sent without a copy.
`decode` returns arrays as read-only `numpy.ndarray` views on the received frames.

Every check that can fail on hostile input runs before a payload byte is looked at, and every
failure is a `ProtocolError` whose ``reason`` is one of `REASONS` (the transport counts by it).
Nothing received is ever repr'd whole or walked recursively: error messages show a bounded
preview, and msgpack's own unpacking is bounded by `WireLimits.max_header_bytes`.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import numpy as np
import torch

from ..kernels import RWKV7Config, RWKV7State
from .wire_fast import FastHeaders
from .wire_schema import (
    _FIELDS,
    _SHOW_CHARS,
    _SHOW_ITEMS,
    _WIRE_NAMES,
    BFLOAT16,
    DTYPES,
    FLOAT_DTYPES,
    MAX_ID_CHARS,
    MAX_NDIM,
    PROTOCOL_VERSION,
    REASONS,
    SCHEMAS,
    Message,
    ProtocolError,
    Schema,
    _cut,
    _preview,
    _show,
)

__all__ = ["BFLOAT16", "DEFAULT_LIMITS", "DTYPES", "FLOAT_DTYPES", "MAX_ID_CHARS", "MAX_NDIM",
           "PACK_BYTES",
           "PROTOCOL_VERSION", "REASONS", "SCHEMAS", "Message", "ProtocolError", "WireLimits",
           "decode", "encode", "encode_sized", "message", "state_from_message", "state_message"]

@dataclass(frozen=True)
class WireLimits:
    """Size limits checked on declared sizes, before any payload is touched."""

    max_header_bytes: int = 64 * 1024  # msgpack header frame
    max_frames: int = 16  # header + arrays
    max_total_bytes: int = 64 * 2**20  # all frames of one message together
    max_array_elements: int = 16 * 2**20  # elements of any one array


DEFAULT_LIMITS = WireLimits()


# -- header validation, shared by encode and decode -------------------------------------------

_ArrayDecl = tuple[str, str, tuple[int, ...], int, int]  # name, dtype, shape, frame, offset
_ALIGN = 8  # bytes: an array packed in frame 1 starts at a multiple of it, so every dtype is
#             aligned (a misaligned numpy array takes slow paths in every later operation)
PACK_BYTES = 128 * 1024  # encode packs arrays into frame 1 while it stays within this size:
#                         each frame costs both ends, and lending an array to ZeroMQ costs a
#                         notification to pyzmq's releasing thread (see docs/wire.md)


_ITEMSIZES = {name: dtype.itemsize for name, dtype in DTYPES.items()}
_HEADER_BYTES_PER_ITEM = 64  # a header list may hold one item per 64 bytes of header limit


def _max_list(limits: WireLimits) -> int:
    """Items a list in a header may hold: 1024 in 64 KiB; room for every array and shape."""
    return max(limits.max_frames, MAX_NDIM, limits.max_header_bytes // _HEADER_BYTES_PER_ITEM)


_FAST = FastHeaders(_max_list(DEFAULT_LIMITS))  # compiled checks; the Python ones decide


def _unpack_header(buf: memoryview, limits: WireLimits, what: str = "frame 0") -> Any:
    """Frame 0 (or `what`) as Python objects: msgpack with every length bounded, map keys
    unique.

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
        raise ProtocolError("header", f"{what} nests deeper than msgpack allows") from None
    except Exception as e:  # msgpack reports malformed input with many exception types
        raise ProtocolError("header", f"{what} must be msgpack with str map keys and lists of "
                                      f"<= {max_list} items ({type(e).__name__}: "
                                      f"{_cut(str(e), 2 * _SHOW_CHARS)})") from None


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A msgpack map as a dict, refusing repeated keys (a dict would keep the last silently)."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[Any] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ProtocolError("header", f"a map repeats the key {_cut(_preview(key, 0))}: "
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


_Span = tuple[str, int, int, int, tuple[str, ...]]  # dtype, frame, offset, elements, arrays
_Layout = tuple[list[_ArrayDecl], list[_Span]]  # the arrays, and the spans the finite check reads


_RECEIVED: dict[tuple, _Layout] = {}  # checked layouts, by the bytes that declared them
_MAX_LAYOUTS = 256


def _remember(cache: dict, key: tuple, value: Any) -> Any:
    """Store a checked layout; a full cache starts over (a node sees few layouts)."""
    if len(cache) >= _MAX_LAYOUTS:
        cache.clear()
    cache[key] = value
    return value


def _received_layout(declared: Any, schema: Schema, sizes: Sequence[int],
                     limits: WireLimits) -> _Layout:
    """The arrays declared by the `arrays` bin, checked once per distinct layout.

    A node receives messages of few layouts; checking one cost about 2 us of a 16 KiB state's
    12 us decode. The key holds everything the check depends on: the schema, the declaring
    bytes (bytes compare exactly, where the decoded lists would not: 1.0 and True equal 1), the
    array frames' sizes, and the limits that bound the check.
    """
    if type(declared) is not bytes:
        raise ProtocolError("array_spec", f"arrays must be bin (the msgpack of a list of [name, "
                                          f"dtype, shape]), got {_show(declared)}")
    key = (schema, declared, limits.max_array_elements, limits.max_header_bytes, *sizes[1:])
    placed = _RECEIVED.get(key)
    if placed is None:
        try:
            entries = _unpack_header(memoryview(declared), limits, "the arrays bin")
        except ProtocolError as e:
            raise ProtocolError("array_spec", e.detail) from None
        decls = _parse_arrays(entries, schema, sizes, limits)
        placed = _remember(_RECEIVED, key, (decls, _finite_spans(decls)))
    return placed


def _parse_fields(header: Any) -> tuple[Schema, dict[str, Any], Any]:
    """The schema of a header's type, its checked field values, and its `arrays` entry."""
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
    return schema, values, entries


def _parse_arrays(
    entries: Any, schema: Schema, sizes: Sequence[int], limits: WireLimits
) -> list[_ArrayDecl]:
    if type(entries) is not list:
        raise ProtocolError("array_spec", f"arrays must be a list, got {_show(entries)}")
    packed = len(entries) - (len(sizes) - 2)  # arrays in frame 1; one frame each after it
    if not 1 <= packed <= len(entries) if entries else len(sizes) != 1:
        raise ProtocolError("frames", f"header declares {len(entries)} arrays but "
                                      f"{len(sizes) - 1} array frames follow: frame 1 holds the "
                                      f"first arrays, each further frame one")
    specs = schema.arrays
    decls: list[_ArrayDecl] = []
    names: set[str] = set()
    end = 0  # of the arrays placed in frame 1 so far
    max_elements = limits.max_array_elements
    for i, entry in enumerate(entries):
        if type(entry) is not list or len(entry) != 3:
            raise ProtocolError("array_spec", f"arrays[{i}] must be [name, dtype, shape], got "
                                              f"{_show(entry)}")
        name, dtype, shape = entry
        spec = specs.get(name) if type(name) is str else None
        if spec is None or name in names:
            raise ProtocolError("array_spec", f"arrays[{i}] name {_show(name)} is not a new one "
                                              f"of {sorted(specs)}")
        if type(dtype) is not str or dtype not in spec.dtypes:
            raise ProtocolError("array_spec", f"array {name} dtype {_show(dtype)} not one of "
                                              f"{sorted(spec.dtypes)}")
        count = _element_count(shape, spec.ndim)
        if count is None:
            raise ProtocolError("array_spec", f"array {name} shape {_show(shape)} must be a list "
                                              f"of {spec.ndim or f'<= {MAX_NDIM}'} ints >= 0")
        # an empty array's other dimensions count too: numpy refuses them if they overflow
        if count > max_elements or not count and math.prod([d for d in shape if d]) > \
                max_elements:
            raise ProtocolError("too_large", f"array {name} shape {_show(shape)} spans over "
                                             f"{max_elements} elements")
        nbytes = count * _ITEMSIZES[dtype]
        if i < packed:  # frame 1: each array at the next multiple of _ALIGN bytes
            frame, offset = 1, end + -end % _ALIGN if i else 0
            end = offset + nbytes
        else:
            frame, offset = i - packed + 2, 0
            if nbytes != sizes[frame]:
                raise ProtocolError("size_mismatch", f"array {name} {dtype}{shape} needs "
                                                     f"{nbytes} bytes, frame {frame} has "
                                                     f"{sizes[frame]}")
        names.add(name)
        decls.append((name, dtype, tuple(shape), frame, offset))
    if entries and end != sizes[1]:
        what = (f"array {decls[0][0]} {decls[0][1]}{list(decls[0][2])}" if packed == 1 else
                f"arrays {', '.join(d[0] for d in decls[:packed])} (each {_ALIGN}-byte aligned)")
        raise ProtocolError("size_mismatch", f"{what} need{'s' * (packed == 1)} {end} bytes, "
                                             f"frame 1 has {sizes[1]}")
    if len(names) != len(specs):  # only optional arrays may be left out
        missing = [n for n, spec in specs.items() if not spec.optional and n not in names]
        if missing:
            raise ProtocolError("array_spec", f"arrays {missing} missing; expected "
                                              f"{sorted(specs)}")
    if schema.check_layout is not None:
        schema.check_layout({name: (dtype, shape) for name, dtype, shape, _, _ in decls})
    return decls


def _element_count(shape: Any, ndim: int | None) -> int | None:
    """Elements of a declared shape: a list of `ndim` (or <= MAX_NDIM) ints >= 0; else None."""
    if type(shape) is not list or (len(shape) != ndim if ndim is not None
                                   else len(shape) > MAX_NDIM):
        return None
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return None
        count *= d
    return count


_FAST_SUM_MIN = 1 << 16  # elements; below, one isfinite pass is cheaper than a sum first


def _finite(arr: np.ndarray, dtype: str) -> bool:
    """Whether every element of the float array `arr` (of wire dtype `dtype`) is finite.

    Neither `isfinite` nor einsum's sum warns, whatever the values (overflow, NaN, signalling
    NaN: tested under warnings-as-errors), so no `np.errstate` (1 us) is needed around them.
    """
    if dtype == "bfloat16":
        return not ((arr.view(np.uint16) & 0x7F80) == 0x7F80).any()  # exponent all ones
    if arr.size < _FAST_SUM_MIN or dtype == "float16":
        return bool(np.isfinite(arr).all())
    # A sum is finite only if every term is (inf and NaN never add up to a finite value), and
    # einsum's sum runs at memory speed, a third faster than isfinite().all() on a 4 MiB
    # frame. A finite overflow makes the sum inf: only then is the exact check run.
    return math.isfinite(np.einsum("i->", arr.reshape(-1))) or bool(np.isfinite(arr).all())


def _finite_spans(decls: list[_ArrayDecl]) -> list[_Span]:
    """What the finite check reads: each float array, except that consecutive arrays of one
    float dtype packed in frame 1 are one span (the zero bytes between them are finite), so
    a 16 KiB state's three float32 arrays cost one pass and one call, not three."""
    spans: list[_Span] = []
    extends = False  # whether the array before this one ended the last span
    for name, dtype, shape, frame, offset in decls:
        if dtype not in FLOAT_DTYPES:
            extends = False
            continue
        nbytes = math.prod(shape) * _ITEMSIZES[dtype]
        if extends and frame == 1 and spans[-1][:2] == (dtype, 1):
            _, _, start, _, names = spans.pop()
            spans.append((dtype, 1, start, (offset + nbytes - start) // _ITEMSIZES[dtype],
                          (*names, name)))
        else:
            spans.append((dtype, frame, offset, nbytes // _ITEMSIZES[dtype], (name,)))
        extends = True
    return spans


def _require_finite(spans: list[_Span], arrays: dict[str, np.ndarray],
                    frames: Sequence[Any]) -> None:
    """Raise non_finite naming the first float array that holds NaN or inf."""
    for dtype, frame, start, count, names in spans:
        if len(names) == 1:
            view = arrays[names[0]]
        else:
            view = np.ndarray((count,), DTYPES[dtype], frames[frame], start)
        if not _finite(view, dtype):
            for name in names:  # which one: the error names it
                if not _finite(arrays[name], dtype):
                    raise ProtocolError("non_finite", f"array {name} holds NaN or inf")


_new = object.__new__


def _build(schema: Schema, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> Message:
    pop = values.pop
    # Message.__init__, frozen, sets each field through object.__setattr__: 0.6 us a message;
    # filling the new instance's __dict__ at once gives the same object in 0.2
    msg = _new(Message)
    msg.__dict__.update(type=pop("type"), swarm=pop("swarm"), node=pop("node"), gen=pop("gen"),
                        ts=pop("ts"), fields=values, arrays=arrays)
    if schema.check is not None:
        schema.check(msg)
    return msg


# -- codec -------------------------------------------------------------------------------------


def decode(frames: Sequence[Any], limits: WireLimits = DEFAULT_LIMITS) -> Message:
    """Validate and decode multipart frames; arrays are read-only views on the frames.

    Raises ProtocolError (and nothing else) on any malformed, oversized or non-finite input.
    Pauses the (process-wide) cyclic garbage collector while it runs.
    """
    with receiving():
        try:
            return decode_received(frames, limits)
        except ProtocolError as e:  # its traceback's frames hold the received objects
            raise e.with_traceback(None) from None


class receiving:  # noqa: N801 - used like a function: `with receiving():`
    """Context for `decode_received`: the cyclic GC paused (unless it already is).

    Collections set off by a header of 61,000 empty lists (63 KB) traversed them and moved
    them to the oldest generation, so every such message collected the whole heap: 39 ms
    instead of 1.8 ms. Received objects are freed by reference counting before it resumes.
    A transport holds it once around a batch of messages.
    """

    __slots__ = ("_gc",)

    def __enter__(self) -> None:
        self._gc = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._gc:
            gc.enable()


def decode_received(frames: Sequence[Any], limits: WireLimits = DEFAULT_LIMITS) -> Message:
    """`decode` for a caller that holds `receiving()` open around a batch of messages."""
    try:
        views = [memoryview(f) for f in frames]
    except TypeError as e:
        raise ProtocolError("frames", f"frames must be a sequence of buffers: {e}") from None
    sizes = []
    for v in views:
        if not v.c_contiguous:  # numpy cannot view a strided buffer
            raise ProtocolError("frames", "frames must be contiguous buffers")
        sizes.append(v.nbytes)
    _check_sizes(sizes, limits)
    fast = _FAST.fields(views[0]) if limits is DEFAULT_LIMITS else None
    schema, values, declared = fast or _parse_fields(_unpack_header(views[0], limits))
    decls, spans = _received_layout(declared, schema, sizes, limits)
    # views (sizes checked above), read-only through their buffers: copy before changing them
    frames_ro = [v.toreadonly() for v in views]
    arrays: dict[str, np.ndarray] = {}
    end = 0
    for name, dtype, shape, frame, offset in decls:
        if frame == 1 and offset != end and np.frombuffer(
                frames_ro[1], np.uint8, offset - end, end).any():
            raise ProtocolError("size_mismatch", f"the {offset - end} bytes before array "
                                                 f"{name} in frame 1 must be zero")
        arr = np.ndarray(shape, DTYPES[dtype], frames_ro[frame], offset)
        end = offset + arr.nbytes
        arrays[name] = arr
    _require_finite(spans, arrays, frames_ro)
    return _build(schema, values, arrays)


def encode(
    msg: Message, limits: WireLimits = DEFAULT_LIMITS, *, check_finite: bool = False,
    pack_bytes: int = PACK_BYTES,
) -> list[bytes | memoryview]:
    """Frames for `msg`: a msgpack header, then the arrays' bytes.

    Frame 1 packs the first arrays (a copy) while it stays within `pack_bytes` (0: one frame
    per array); every further array is a frame of its own, a view of its memory (no copy
    here; the transport copies or lends it to ZeroMQ).
    Runs the receiver's checks of the header, dtypes, shapes and sizes, raising ProtocolError.
    Finiteness, a pass over every float, is the receiver's check unless `check_finite`.
    """
    return encode_sized(msg, limits, check_finite=check_finite, pack_bytes=pack_bytes)[0]


def encode_sized(
    msg: Message, limits: WireLimits = DEFAULT_LIMITS, *, check_finite: bool = False,
    pack_bytes: int = PACK_BYTES,
) -> tuple[list[bytes | memoryview], int]:
    """`encode`, and the frames' total size in bytes."""
    schema = SCHEMAS.get(msg.type)
    if schema is None:
        raise ProtocolError("type", f"type must be one of {sorted(SCHEMAS)}, got {msg.type!r}")
    if not msg.fields.keys() <= schema.fields.keys():
        extra = sorted(msg.fields.keys() - schema.fields.keys())
        raise ProtocolError("field", f"unknown fields {extra} in {msg.type} message")
    specs, payloads, converted = [], [], False
    for name, arr in msg.arrays.items():
        wire_dtype = _WIRE_NAMES.get(arr.dtype) if type(arr) is np.ndarray else None
        if wire_dtype is None or not arr.flags.c_contiguous:  # convert it, or refuse it
            wire_dtype, wire = _wire_array(name, arr)
            converted = converted or wire is not arr
            arr = wire
        specs.append((name, wire_dtype, arr.shape))
        payloads.append(arr)
    array_frames = _pack(payloads, pack_bytes)
    sizes = [0, *[len(f) if type(f) is bytes else f.nbytes for f in array_frames]]
    placed, declared = _layout(schema, specs, sizes, limits, pack_bytes)
    header = {"v": PROTOCOL_VERSION, "type": msg.type, "swarm": msg.swarm, "node": msg.node,
              "gen": msg.gen, "ts": msg.ts, **msg.fields, "arrays": declared}
    try:
        packed = msgpack.packb(header)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError("field", f"{msg.type} header cannot be packed: {e}") from None
    frames = [packed, *array_frames]
    sizes[0] = len(packed)
    _check_sizes(sizes, limits)
    if len(packed) > _max_list(limits):  # only so long a header can hold too long a list
        _unpack_header(memoryview(packed), limits)
    for name, kind in _FIELDS[msg.type].items():  # the receiver's field checks
        if name not in header:
            raise ProtocolError("field", f"{msg.type} message lacks field {name!r}")
        kind(name, header[name])
    if check_finite:
        for (name, dtype, *_), arr in zip(placed, payloads, strict=True):
            if dtype in FLOAT_DTYPES and not _finite(arr, dtype):
                raise ProtocolError("non_finite", f"array {name} holds NaN or inf")
    if schema.check is not None:  # the cross-array checks, on the arrays as sent
        schema.check(msg if not converted else
                     replace(msg, arrays=dict(zip(msg.arrays, payloads, strict=True))))
    return frames, sum(sizes)


_ZEROS = bytes(_ALIGN)
_LAYOUTS: dict[tuple, tuple[list[_ArrayDecl], bytes]] = {}  # encode's checked layouts


def _layout(schema: Schema, specs: list[tuple[str, str, tuple[int, ...]]], sizes: list[int],
            limits: WireLimits, pack_bytes: int) -> tuple[list[_ArrayDecl], bytes]:
    """The placed arrays encode is sending and the `arrays` bin declaring them, remembered: a
    node sends messages of few layouts. The key is what the check depends on: the schema, the
    names, dtypes and shapes (which fix the frame sizes, given pack_bytes) and the limit."""
    key = (schema, pack_bytes, limits.max_array_elements, limits.max_header_bytes, *specs)
    known = _LAYOUTS.get(key)
    if known is None:
        entries = [[n, d, list(shape)] for n, d, shape in specs]
        known = _remember(_LAYOUTS, key, (_parse_arrays(entries, schema, sizes, limits),
                                          msgpack.packb(entries)))
    return known


def _pack(payloads: list[np.ndarray], pack_bytes: int) -> list[bytes | memoryview]:
    """The array frames: frame 1 packs the first arrays while it stays within `pack_bytes`."""
    parts: list[Any] = []  # the arrays themselves: join reads their buffers (0.2 us, not 1)
    packed = end = 0
    for a in payloads:
        pad = -end % _ALIGN
        if packed and end + pad + a.nbytes > pack_bytes:
            break
        if pad:
            parts.append(_ZEROS[:pad])
        parts.append(a)
        packed, end = packed + 1, end + pad + a.nbytes
    if packed <= 1:  # no arrays, or the first alone: each lent to ZeroMQ as it is
        return [a.data for a in payloads]
    return [b"".join(parts), *[a.data for a in payloads[packed:]]]


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
