"""A node's checkpoint: msgpack bytes of everything that decides its future, and a loader that
says what is wrong with bytes that are not one.

Layout (version 2): {"version", "config" (NodeConfig.to_dict), "env_kind" (the environment's
class), "env_spec" (its canonical table, or None), "weights" (torch.save of the state dict),
"live_state" (RWKV7State bytes), "strategy", "env" (their state dicts), "generation",
"episodes", "env_steps"}.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
import torch

from ..kernels import RWKV7State
from .config import NodeConfig
from .environment import Environment
from .envs import env_spec, make_env

if TYPE_CHECKING:
    from .node import Node

VERSION = 2
KEYS = ("version", "config", "env_kind", "env_spec", "weights", "live_state", "strategy", "env",
        "generation", "episodes", "env_steps")
T = TypeVar("T")


def dump(node: Node) -> bytes:
    weights = io.BytesIO()
    # host copies: a checkpoint leaves the node and may be restored on another device
    torch.save({k: v.cpu() for k, v in node.model.state_dict().items()}, weights)
    return msgpack.packb({
        "version": VERSION, "config": node.config.to_dict(),
        "env_kind": type(node.env).__name__, "env_spec": env_spec(node.env),
        "weights": weights.getvalue(), "live_state": node.live_state.to_bytes(),
        "strategy": node.strategy.state_dict(), "env": node.env.state_dict(),
        "generation": node.generation_count, "episodes": node.episodes_used,
        "env_steps": node.env_steps,
    }, use_bin_type=True)


def _part(what: str, fn: Callable[[], T]) -> T:
    """fn(), or ValueError("not a node checkpoint: <what>: <why>"): whatever a malformed
    part makes the loaders raise (KeyError, struct.error, RuntimeError, ...) is named."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure here means a malformed checkpoint
        why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"not a node checkpoint: {what}: {why}") from e


def _unpack(blob: bytes) -> dict[str, Any]:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"not a node checkpoint: expected bytes, got {type(blob).__name__}")
    d = _part("msgpack", lambda: msgpack.unpackb(blob, raw=False, strict_map_key=False))
    if not isinstance(d, dict):
        raise ValueError(f"not a node checkpoint: expected a msgpack map, got "
                         f"{type(d).__name__}")
    if d.get("version") != VERSION:
        raise ValueError(f"not a node checkpoint of version {VERSION}: version "
                         f"{d.get('version')!r}")
    missing = [k for k in KEYS if k not in d]
    if missing:
        raise ValueError(f"not a node checkpoint: fields {missing} missing (expected {list(KEYS)})")
    for key in ("generation", "episodes", "env_steps"):
        if type(d[key]) is not int or d[key] < 0:
            raise ValueError(f"not a node checkpoint: {key} must be an int >= 0, got "
                             f"{d[key]!r}")
    return d


def _environment(d: dict[str, Any], config: NodeConfig, env: Environment | None) -> Environment:
    """`env`, or the saved one's, refused unless it is of the saved kind and options."""
    env = _part("environment", lambda: make_env(config.env)) if env is None else env
    kind, spec = type(env).__name__, env_spec(env)
    if kind != d["env_kind"] or spec != d["env_spec"]:
        raise ValueError(f"checkpoint was made in {d['env_kind']} {d['env_spec']}, refused for "
                         f"{kind} {spec}: restore into an environment of the same kind and "
                         "options")
    return env


def load(cls: type[Node], blob: bytes, env: Environment | None = None,
         device: str | None = None) -> Node:
    d = _unpack(blob)
    config = _part("config", lambda: NodeConfig.from_dict(d["config"]))
    if device is not None:  # a checkpoint holds host tensors: any device may take it up
        config = replace(config, device=device)
    env = _environment(d, config, env)
    node = cls(config, env)
    state = _part("weights", lambda: torch.load(io.BytesIO(d["weights"]), map_location="cpu",
                                                weights_only=True))
    _part("weights", lambda: node.model.load_state_dict(state))  # copied onto the node's device
    node.live_state = _part("live_state", lambda: RWKV7State.from_bytes(
        d["live_state"], node.config.model).to(node.device))
    _part("strategy state", lambda: node.strategy.load_state_dict(d["strategy"]))
    _part("environment state", lambda: env.load_state_dict(d["env"]))
    node.generation_count, node.episodes_used = d["generation"], d["episodes"]
    node.env_steps = d["env_steps"]
    return node
