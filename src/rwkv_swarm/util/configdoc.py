"""Reference tables for config dataclasses, read from their source: every field's type, default
and meaning, where the meaning is whatever the source says next to the field.

A field's meaning is, first found: its `metadata["doc"]`; the comments around it in the class
body; an entry `name: text` of the class docstring; else "see `other`" for the field whose
entry mentions it. Comments are read as they are written in this project:

    rate: float = 0.1  # a comment on the field's own line, which may go on
    # on the lines below it
    # while comment lines right above a field whose line carries no comment of its own
    steps: int = 3

A comment block between a commented field and an uncommented one goes on the first field
while its lines end mid-phrase ("... or", "... of", a comma), and opens the second after that.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import types
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

_CONTINUES = re.compile(r"(\b(or|and|the|a|an|of|to|by|with|per|in|at|from|for|than|as|on)|"
                        r"[,:;(\-])$")


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """{line: comment text} and the lines holding nothing but a comment."""
    texts, alone = {}, set()
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            texts[line] = tok.string.lstrip("#").strip()
            if not lines[line - 1][: tok.start[1]].strip():
                alone.add(line)
    return texts, alone


def _split_block(block: list[str], own: str, next_commented: bool) -> int:
    """How many lines of `block` continue the comment `own` of the field above (the rest lead
    the field below)."""
    if not own or next_commented:
        return len(block) if own else 0
    n, last = 0, own
    for text in block:
        if not _CONTINUES.search(last):
            break
        n, last = n + 1, text
    return n


@cache
def _comment_docs(cls: type) -> dict[str, str]:
    """Meanings of the fields that `cls`'s own body defines, from the comments around them."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    texts, alone = _comments(source)
    stmts = [(s.target.id if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
              else None, s.lineno, s.end_lineno or s.lineno) for s in body]
    own = {i: " ".join(texts[n] for n in range(a, b + 1) if n in texts and n not in alone)
           for i, (_, a, b) in enumerate(stmts)}
    parts: dict[int, list[str]] = {i: [own[i]] if own[i] else [] for i in range(len(stmts))}
    for i, (name, _, end) in enumerate(stmts):
        nxt = stmts[i + 1] if i + 1 < len(stmts) else None
        stop = nxt[1] if nxt else max(texts, default=end) + 1
        block = [texts[n] for n in range(end + 1, stop) if n in alone]
        if not block:
            continue
        next_field = nxt is not None and nxt[0] is not None
        k = _split_block(block, own[i] if name is not None else "",
                         not next_field or bool(own[i + 1]))
        parts[i].extend(block[:k])
        if next_field:
            parts[i + 1][:0] = block[k:]
    return {name: " ".join(parts[i]) for i, (name, _, _) in enumerate(stmts) if name}


def _docstring_docs(cls: type) -> dict[str, str]:
    """Entries `name: text` (continued on deeper-indented lines) of `cls`'s own docstring."""
    doc = cls.__dict__.get("__doc__") or ""
    out: dict[str, str] = {}
    name = None
    for line in inspect.cleandoc(doc).splitlines():
        m = re.match(r"^(\w+): (.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name and line.startswith(" ") and line.strip():
            out[name] += " " + line.strip()
        else:
            name = None
    return out


def field_docs(cls: type) -> dict[str, str]:
    """{field name: meaning} for every field of dataclass `cls` ("" where the source says
    nothing); inherited fields are read from the class that defines them."""
    out = {}
    for f in dataclasses.fields(cls):
        text = f.metadata.get("doc", "")
        for owner in type.mro(cls):
            if text or f.name not in inspect.get_annotations(owner):
                continue
            text = _comment_docs(owner).get(f.name) or _docstring_docs(owner).get(f.name, "")
        out[f.name] = text
    entries = {k: v for owner in type.mro(cls) for k, v in _docstring_docs(owner).items()}
    for name, text in out.items():
        if not text:
            mention = [k for k, v in entries.items() if re.search(rf"\b{name}\b", v)]
            out[name] = f"see `{mention[0]}`" if mention else ""
    return out


def type_name(tp: Any) -> str:
    """A short name for an annotation, in TOML's words."""
    if dataclasses.is_dataclass(tp):
        return "table"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" (or absent)" if type(None) in args else "")
    if origin in (tuple, list):
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return f"list of {type_name(args[0]) if args else 'values'}"
        return f"list of {len(args)} {type_name(args[0]) if len(set(args)) == 1 else 'values'}"
    if origin is dict or tp is dict:
        return "table"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        tp, "any" if tp is Any else getattr(tp, "__name__", str(tp)))


def value_text(value: Any) -> str:
    """`value` as it would be written in TOML (absent for None)."""
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {value_text(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value):
        return "see below"
    return repr(value)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def rows(cls: type, *, keys: dict[str, str] | None = None, skip: tuple[str, ...] = (),
         accepted: dict[str, str] | None = None, meanings: dict[str, str] | None = None,
         types_: dict[str, Any] | None = None) -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, accepted, meaning) per field of `cls`, in order. `keys` renames
    fields (a field's TOML key), `accepted` gives the accepted values of fields whose type does
    not say them, `meanings` and `types_` supply what the source does not."""
    keys, accepted, meanings, types_ = keys or {}, accepted or {}, meanings or {}, types_ or {}
    hints, docs = get_type_hints(cls), field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        default = default_of(f)
        shown = "required" if default is dataclasses.MISSING else value_text(default)
        meaning = meanings.get(f.name) or docs[f.name]
        out.append((keys.get(f.name, f.name), type_name(types_.get(f.name, hints[f.name])),
                    shown, accepted.get(f.name, ""), meaning))
    return out


def table(rows_: list[tuple[str, ...]], header: tuple[str, ...] = (
        "key", "type", "default", "accepted", "meaning")) -> str:
    """A markdown table (pipes in cells escaped)."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows_]
    return "\n".join(lines)
