"""`Policy`: an evolved node's controller as one file, usable without the swarm (no Ray).

A policy is a node's centre weights plus exactly what its world does between an observation
and the model, and between the model's outputs and an action:

    gym world     raw observation -> flattened (Box) or one-hot (Discrete) -> the obs_mask
                  entries -> normalised with the world's frozen statistics and clipped to
                  +-obs_clip (when normalize_obs) -> float32 -> RWKV7.step, state carried
                  -> Discrete: start + argmax; Box: low + (tanh(out) + 1) / 2 * (high - low)
    signal world  [y_t, y_t-1, ..., y_t-lags] (newest first, as SignalEnv shows it) -> float32
                  -> RWKV7.step, state carried -> the prediction of y_t+1 (a float)

The world's noise (the obs_noise / action_noise options and signals) is a training condition,
not part of the policy: a policy acts deterministically.

File layout (one torch file; `torch.load(path, weights_only=True)` reads it):
    {"format": "rwkv-swarm/policy", "version": 1,
     "model": the control-mode checkpoint dict (kernels.checkpoint.control_checkpoint),
     "world": {"kind": "gym" | "signal", "env": the world's table (envs.env_spec),
               "observation": {"space": "box", "shape": [...]}
                              | {"space": "discrete", "n": int, "start": int},
               "keep": [indices of the flattened observation the model sees],
               "normalize": None | {"count": float, "mean": float64 tensor,
                                    "m2": float64 tensor, "eps": float, "clip": float},
               "action": {"space": "discrete", "n": int, "start": int}
                         | {"space": "box", "low": float64 tensor, "high": float64 tensor,
                            "shape": [...], "dtype": str}
                         | {"space": "value"}},
     "origin": {"node": name, "generation": int} or {}}
normalised = clip((x - mean) / sqrt(m2 / count + eps), -clip, clip) (variance 1 while count
is 0), computed in float64.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import torch

from ..kernels import RWKV7, RWKV7State
from ..kernels.checkpoint import CONTROL_FORMAT, control_checkpoint, model_from_control_checkpoint
from . import checkpoint as ckpt
from .config import NodeConfig
from .envs import make_env
from .node import node_name
from .policy_io import Pipeline, describe_env

if TYPE_CHECKING:
    from .node import Node

FORMAT = "rwkv-swarm/policy"
VERSION = 1
POLICY_FILE = "policy.pt"  # what save/load use inside a directory
_KEYS = ("format", "version", "model", "world", "origin")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


class Policy:
    """An evolved controller: `act(obs) -> action`, carrying its RWKV state between calls.

    Make one with `Policy.from_node(node)`, `Policy.from_snapshot(bytes)` (a node checkpoint)
    or `Policy.load(path)`; `save(path)` writes it. See the module docstring for what `act`
    does in gym and signal worlds and for the file layout.
    """

    def __init__(self, model: RWKV7, world: dict[str, Any], origin: dict[str, Any] | None = None,
                 where: str = "policy") -> None:
        if model.config.token_mode:
            raise ValueError(f"{where}: a policy's model is control-mode "
                             "(input_dim/output_dim), got a token-mode model")
        self.model = model
        self._pipeline = Pipeline(world, model.config.input_dim, model.config.output_dim, where)
        self.origin = dict(origin or {})
        self._state: RWKV7State | None = None

    # -- making one ----------------------------------------------------------------------------

    @classmethod
    def from_node(cls, node: Node) -> Policy:
        """The node's current centre weights in its world, with the world's committed (frozen)
        observation statistics; the node is not changed."""
        return cls.from_dict(node_policy(node), "node policy")

    @classmethod
    def from_snapshot(cls, blob: bytes) -> Policy:
        """The policy of a node checkpoint: `Node.checkpoint()` bytes, or a run's
        `checkpoints/node-<i>/gen-<G>.snap` file's bytes (which wrap them). Malformed bytes
        raise ValueError("not a node checkpoint: <what is wrong>")."""
        d = ckpt._unpack(_unwrap(blob))
        config = ckpt._part("config", lambda: NodeConfig.from_dict(d["config"]))
        if d["env_spec"] is None:
            raise ValueError(f"the checkpoint's world is a {d['env_kind']} that no config "
                             "describes; a policy needs a gym or signal world")
        env = ckpt._part("environment", lambda: make_env(d["env_spec"]))
        try:
            ckpt._part("environment state", lambda: env.load_state_dict(d["env"]))
            world = describe_env(env)
        finally:
            getattr(env, "close", lambda: None)()
        weights = ckpt._part("weights", lambda: torch.load(io.BytesIO(d["weights"]),
                                                          map_location="cpu", weights_only=True))
        model = RWKV7(config.model)
        ckpt._part("weights", lambda: model.load_state_dict(weights))
        origin = {"node": node_name(config.node_id), "generation": d["generation"]}
        return cls(model, world, origin)

    # -- files ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """What the policy file holds (see the module docstring)."""
        return _policy_dict(self.model, self._pipeline.describe(), self.origin)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy to `path`, or to `path/policy.pt` when `path` is a directory;
        returns the file written (atomically: a file that exists is complete)."""
        target = Path(path)
        if target.is_dir():
            target = target / POLICY_FILE
        if not target.parent.is_dir():
            raise FileNotFoundError(f"cannot save a policy to {os.fspath(path)!r}: directory "
                                    f"{str(target.parent)!r} does not exist")
        tmp = target.with_name(f".{target.name}.tmp")
        torch.save(self.to_dict(), tmp)
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        """A policy from a file `save` wrote (or a directory holding `policy.pt`); a node
        checkpoint file (a run's `.snap`) loads as `from_snapshot` would."""
        file = Path(path)
        if file.is_dir():
            file = file / POLICY_FILE
        if not file.is_file():
            raise FileNotFoundError(f"no policy at {os.fspath(path)!r}: expected a policy file "
                                    f"or a directory holding {POLICY_FILE}")
        where = f"policy file {str(file)!r}"
        with file.open("rb") as f:
            head = f.read(4)
        if head != _ZIP_MAGIC:
            try:
                return cls.from_snapshot(file.read_bytes())
            except ValueError as e:
                raise ValueError(f"{where} is neither a policy (a torch file) nor a node "
                                 f"checkpoint: {e}") from e
        return cls.from_bytes(file.read_bytes(), where)

    @classmethod
    def from_bytes(cls, blob: bytes, where: str = "policy bytes") -> Policy:
        """A policy from a policy file's bytes (what `save` writes, or `node_policy_file`);
        ValueError("cannot read <where>: ...") for bytes that are not a torch file."""
        try:
            d = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a file that is not its own
            raise ValueError(f"cannot read {where}: {exc}") from exc
        return cls.from_dict(d, where)

    @classmethod
    def from_dict(cls, d: Any, where: str = "policy") -> Policy:
        """The policy `to_dict` described; ValueError("<where>: <what is wrong>") otherwise."""
        _check_layout(d, where)
        model = model_from_control_checkpoint(d["model"], f"{where}, 'model'")
        if not isinstance(d["origin"], dict):
            raise ValueError(f"{where}: 'origin' must be a dict, got {d['origin']!r}")
        return cls(model, d["world"], d["origin"], where)

    # -- acting --------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """"gym" or "signal": the kind of world the policy was evolved in."""
        return self._pipeline.kind

    @property
    def env(self) -> dict[str, Any]:
        """The table of the world the policy was evolved in (as `envs.make_env` takes it)."""
        return self._pipeline.describe()["env"]

    def reset(self) -> None:
        """Recurrent state back to zero: call it at the start of every episode."""
        self._state = None

    def act(self, obs: Any) -> Any:
        """One observation as the world gives it -> one action: an int (Discrete), an array of
        the action space's shape and dtype (Box), or the predicted next value (signal)."""
        return self._pipeline.one(self.act_batch(self._pipeline.batch_of(obs)))

    def preprocess(self, obs: Any) -> np.ndarray:
        """n observations (n, *observation shape) -> the float32 rows (n, input_dim) the model
        sees: what the world would feed it, without noise."""
        return self._pipeline.inputs(obs)

    def act_batch(self, obs: Any) -> np.ndarray:
        """n observations (n, *observation shape) -> n actions; the state holds n rows until
        `reset` (every call of one state must have the same n)."""
        x = torch.from_numpy(self.preprocess(obs))
        n = x.shape[0]
        if self._state is not None and self._state.batch != n:
            raise ValueError(f"the policy's recurrent state holds {self._state.batch} rows, "
                             f"this call has {n} observations: call reset() first")
        state = self.model.zero_state(n) if self._state is None else self._state
        out, state = self.model.step(x, state)
        outputs = out.detach().cpu().numpy().astype(np.float64)
        if not np.isfinite(outputs).all():
            raise FloatingPointError("the policy's outputs are not finite on this input (its "
                                     "state is left as it was)")
        self._state = state
        return self._pipeline.actions(outputs)

    # -- convenience for gym worlds ------------------------------------------------------------

    def make_gym_env(self, **kwargs: Any) -> Any:
        """A gymnasium env of the policy's world (its id, env_kwargs and max_steps), with extra
        gymnasium.make `kwargs` (e.g. render_mode="human")."""
        return self._pipeline.make_gym_env(**kwargs)

    def play(self, episodes: int = 1, seed: int = 0, env: Any = None) -> list[float]:
        """Returns of `episodes` whole episodes in `env` (default: `make_gym_env()`), episode
        k reset with seed + k, the state reset before each."""
        own = env is None
        env = self.make_gym_env() if own else env
        returns = []
        try:
            for k in range(episodes):
                obs, _ = env.reset(seed=seed + k)
                self.reset()
                total, done = 0.0, False
                while not done:
                    obs, reward, term, trunc, _ = env.step(self.act(obs))
                    total, done = total + float(reward), bool(term or trunc)
                returns.append(total)
        finally:
            if own:
                env.close()
        return returns

    def __repr__(self) -> str:
        c = self.model.config
        return (f"Policy({self._pipeline.summary()}, model C={c.n_embd} L={c.n_layer}, "
                f"origin={self.origin})")


def node_policy(node: Node) -> dict[str, Any]:
    """The node's policy as its file holds it (`Policy.to_dict`), without a copy of the model;
    the world's description is checked as `Policy` checks it."""
    c = node.model.config
    world = describe_env(node.env)
    Pipeline(world, c.input_dim, c.output_dim, f"{node.node_name}'s world")
    origin = {"node": node.node_name, "generation": node.generation_count}
    return _policy_dict(node.model, world, origin)


def node_policy_file(node: Node) -> bytes:
    """The bytes of the node's policy file: what `Policy.from_node(node).save(path)` writes.
    A swarm exports its best policy this way: a node checkpoint written and parsed again
    cost four times as much (docs/swarm.md, "The best policy")."""
    buf = io.BytesIO()
    torch.save(node_policy(node), buf)
    return buf.getvalue()


def _policy_dict(model: RWKV7, world: dict[str, Any], origin: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model": control_checkpoint(model),
            "world": world, "origin": dict(origin)}


def _unwrap(blob: Any) -> Any:
    """A run's node snapshot ({"version", "node": checkpoint bytes, "signals"}) -> the
    checkpoint bytes it wraps; anything else unchanged (the checkpoint loader judges it)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        return blob
    try:
        d = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - not msgpack: the checkpoint loader names why
        return blob
    if isinstance(d, dict) and "config" not in d and isinstance(d.get("node"), bytes):
        return d["node"]
    return blob


def _check_layout(d: Any, where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: holds a {type(d).__name__}, expected a policy dict")
    if d.get("format") == CONTROL_FORMAT:
        raise ValueError(f"{where}: holds a control-mode model checkpoint, not a policy "
                         "(it has no observation or action handling); load it with "
                         "rwkv_swarm.kernels.load_checkpoint")
    if "format" not in d:
        raise ValueError(f"{where}: holds no 'format' field (an official RWKV-7 state dict?), "
                         f"expected a policy of format {FORMAT!r}")
    if (d["format"], d.get("version")) != (FORMAT, VERSION):
        raise ValueError(f"{where}: format {d['format']!r} version {d.get('version')!r}, "
                         f"expected {FORMAT!r} version {VERSION}")
    missing = [k for k in _KEYS if k not in d]
    if missing:
        raise ValueError(f"{where}: fields {missing} missing (expected {list(_KEYS)})")
