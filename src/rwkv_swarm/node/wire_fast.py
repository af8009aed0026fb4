"""Received headers checked in compiled code: msgspec types derived from `SCHEMAS`.

The Python checks in wire.py stay the reference. This module only answers "valid, and these
are its values" for the message types whose every field kind it can express; whenever msgspec
refuses a header, or a check it cannot express fails, it answers None and the reference path
decides (and words the error). Unpacking and checking a 16 KiB state's header took 2.3 us in
Python and takes 0.2 us here.

What msgspec checks differently, and how each is covered:
- a repeated map key (it keeps the last): the map's declared length must equal its number of
  fields, all required and no others allowed, so a repeat shows as one entry too many;
- NaN and infinities in float fields: each float field still goes through its Python kind;
- list lengths: capped as `_max_list(DEFAULT_LIMITS)`, so other limits take the Python path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

import msgspec

from .wire_schema import (
    _FIELDS,
    MAX_ID_CHARS,
    PROTOCOL_VERSION,
    SCHEMAS,
    Schema,
    _count,
    _fingerprint,
    _float,
    _id,
    _names,
    _nonneg,
    _positive,
    _uint,
)

_FLOAT_KINDS = (_float, _nonneg, _positive)  # checked again in Python: finite, sign


def _types(max_list: int) -> dict[Callable[[str, Any], Any], Any]:
    ident = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
    return {
        _id: ident,
        _uint: Annotated[int, msgspec.Meta(ge=0)],  # msgpack holds no int of 2**64 or more
        _count: Annotated[int, msgspec.Meta(ge=1, lt=2**31)],
        _float: float, _nonneg: float, _positive: float,
        _fingerprint: Annotated[bytes, msgspec.Meta(min_length=1, max_length=64)],
        _names: Annotated[list[ident], msgspec.Meta(min_length=1, max_length=max_list)],
    }


class FastHeaders:
    """Decodes frame 0 of the types it covers; `fields` returns None where Python decides."""

    def __init__(self, max_list: int) -> None:
        types = _types(max_list)
        structs = [self._struct(name, types) for name in SCHEMAS]
        covered = [s for s in structs if s is not None]
        self._decoder = msgspec.msgpack.Decoder(Union[tuple(covered)])  # noqa: UP007
        self._info: dict[type, tuple[str, Schema, int, tuple[tuple[str, Any], ...]]] = {}
        for struct in covered:
            msg_type = struct.__struct_config__.tag
            floats = tuple((n, kind) for n, kind in _FIELDS[msg_type].items()
                           if kind in _FLOAT_KINDS)
            # entries of the map: every field, and the tag
            self._info[struct] = (msg_type, SCHEMAS[msg_type], len(struct.__struct_fields__) + 1,
                                  floats)

    @staticmethod
    def _struct(msg_type: str, types: dict) -> type | None:
        fields: list[tuple[str, Any]] = [("v", Literal[PROTOCOL_VERSION])]
        for name, kind in _FIELDS[msg_type].items():
            if kind not in types:
                return None  # a kind msgspec cannot express: this type takes the Python path
            fields.append((name, types[kind]))
        fields.append(("arrays", bytes))
        return msgspec.defstruct(f"_{msg_type}_header", fields, tag_field="type", tag=msg_type,
                                 forbid_unknown_fields=True)

    def fields(self, buf: memoryview) -> tuple[Schema, dict[str, Any], bytes] | None:
        """(schema, field values, the arrays bin) as wire._parse_fields gives them, or None."""
        try:
            header = self._decoder.decode(buf)
        except Exception:  # noqa: BLE001 - any refusal: the reference path words it
            return None
        msg_type, schema, entries, floats = self._info[type(header)]
        if _map_length(buf) != entries:  # a key given twice
            return None
        values = msgspec.structs.asdict(header)
        try:
            for name, kind in floats:
                values[name] = kind(name, values[name])
        except ValueError:
            return None
        del values["v"]
        declared = values.pop("arrays")
        values["type"] = msg_type
        return schema, values, declared


def _map_length(buf: memoryview) -> int:
    """Entries declared by the msgpack map that starts `buf` (-1 if it starts no map)."""
    first = buf[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE and len(buf) >= 3:
        return int.from_bytes(buf[1:3], "big")
    if first == 0xDF and len(buf) >= 5:
        return int.from_bytes(buf[1:5], "big")
    return -1
