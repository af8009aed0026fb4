"""What a `Policy` does around its model: the observation and action maps of the world it was
evolved in, as plain values a policy file holds (layout: `node.policy`'s docstring).

The maps are the environments' own (`ObsMap`, the obs_mask indices, `RunningNorm`,
`ActionMap`), rebuilt from their description, so a policy turns an observation into the very
float32 row the node's model saw, and its outputs into the very action, bit for bit. Noise is
left out: it is a training condition of the world, not part of the policy.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from .envs import GymEnv, RunningNorm, SignalEnv, env_spec
from .envs._gym_backends import ActionMap, ObsMap, resolve_env_id

KINDS = ("gym", "signal")
_WORLD_KEYS = ("kind", "env", "observation", "keep", "normalize", "action")
_NORM_KEYS = ("count", "mean", "m2", "eps", "clip")


def describe_env(env: Any) -> dict[str, Any]:
    """The world description of a `GymEnv` or `SignalEnv` (committed statistics only: the
    ones its node's model acts on); ValueError for any other environment."""
    if isinstance(env, GymEnv):
        return _describe_gym(env)
    if isinstance(env, SignalEnv):
        dim = env.observation_dim
        return {"kind": "signal", "env": env_spec(env),
                "observation": {"space": "box", "shape": [dim]}, "keep": list(range(dim)),
                "normalize": None, "action": {"space": "value"}}
    raise ValueError(f"a policy needs a GymEnv or SignalEnv world (whose observation and "
                     f"action maps it can carry), got {type(env).__name__}")


def _describe_gym(env: GymEnv) -> dict[str, Any]:
    # the spaces live in GymEnv's backend; they decide the observation and action maps
    backend = env._backend
    if backend is None:
        raise ValueError("the GymEnv was closed: describe the world before closing it")
    norm = env.norm if env.config.normalize_obs else None
    stats = None if norm is None else {
        "count": float(norm.count), "mean": torch.from_numpy(np.array(norm.mean, np.float64)),
        "m2": torch.from_numpy(np.array(norm.m2, np.float64)), "eps": float(norm.eps),
        "clip": float(norm.clip)}
    return {"kind": "gym", "env": env_spec(env),
            "observation": _space(backend.observation_space, bounds=False),
            "keep": [int(i) for i in env._keep], "normalize": stats,
            "action": _space(backend.action_space, bounds=True)}


def _space(space: spaces.Space, bounds: bool) -> dict[str, Any]:
    if isinstance(space, spaces.Discrete):
        return {"space": "discrete", "n": int(space.n), "start": int(space.start)}
    d: dict[str, Any] = {"space": "box", "shape": [int(s) for s in space.shape]}
    if bounds:
        d.update(low=torch.from_numpy(np.array(space.low, np.float64).reshape(-1)),
                 high=torch.from_numpy(np.array(space.high, np.float64).reshape(-1)),
                 dtype=np.dtype(space.dtype).name)
    return d


class _Bad(ValueError):
    pass


def _get(d: Any, key: str, types: type | tuple[type, ...], what: str) -> Any:
    """d[key], refused (naming `what`) unless present and of `types` (a bool is no number)."""
    if not isinstance(d, dict) or key not in d:
        raise _Bad(f"{what} lacks {key!r}")
    v, allowed = d[key], types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        names = " or ".join(t.__name__ for t in allowed)
        raise _Bad(f"{what}[{key!r}] must be {names}, got {v!r}")
    return v


def _vector(d: dict[str, Any], key: str, size: int, what: str) -> np.ndarray:
    t = _get(d, key, torch.Tensor, what)
    if t.dtype != torch.float64 or tuple(t.shape) != (size,):
        raise _Bad(f"{what}[{key!r}] must be a float64 tensor of shape ({size},), got "
                   f"{t.dtype} {tuple(t.shape)}")
    return t.numpy().copy()


class Pipeline:
    """A world description made executable: observations -> model rows, outputs -> actions."""

    def __init__(self, world: Any, input_dim: int, output_dim: int, where: str) -> None:
        try:
            self._build(world, input_dim, output_dim)
        except (ValueError, TypeError) as e:  # _Bad, and what the maps refuse themselves
            raise ValueError(f"{where}: bad 'world': {e}") from None
        self._world = copy.deepcopy(world)

    def _build(self, world: Any, input_dim: int, output_dim: int) -> None:
        if not isinstance(world, dict):
            raise _Bad(f"expected a dict with keys {list(_WORLD_KEYS)}, got "
                       f"{type(world).__name__}")
        missing = [k for k in _WORLD_KEYS if k not in world]
        if missing:
            raise _Bad(f"keys {missing} missing (expected {list(_WORLD_KEYS)})")
        self.kind = _get(world, "kind", str, "world")
        if self.kind not in KINDS:
            raise _Bad(f"kind {self.kind!r} is not one of {KINDS}")
        env = _get(world, "env", dict, "world")
        if self.kind == "gym":
            _get(env, "id", str, "world['env']")
        self._observation(world["observation"])
        keep = _get(world, "keep", list, "world")
        if (len(keep) != input_dim or len(set(keep)) != len(keep)
                or not all(type(i) is int and 0 <= i < self._obs_map.dim for i in keep)):
            raise _Bad(f"keep must be {input_dim} distinct indices (the model's input_dim) in "
                       f"[0, {self._obs_map.dim}), got {keep}")
        self._keep = np.asarray(keep, dtype=np.int64)
        self._norm = self._normaliser(world["normalize"], input_dim)
        self._action(world["action"], output_dim)

    def _observation(self, obs: Any) -> None:
        space = obs.get("space") if isinstance(obs, dict) else None
        if space == "discrete":
            n, start = _get(obs, "n", int, "observation"), _get(obs, "start", int, "observation")
            if n < 1:
                raise _Bad(f"observation n must be >= 1, got {n}")
            self._obs_space: spaces.Space = spaces.Discrete(n, start=start)
            self._shape: tuple[int, ...] = ()
        elif space == "box":
            shape = _get(obs, "shape", list, "observation")
            if not all(type(s) is int and s >= 1 for s in shape):
                raise _Bad(f"observation shape must be positive ints, got {shape}")
            self._shape = tuple(shape)
            self._obs_space = spaces.Box(-np.inf, np.inf, self._shape)
        else:
            raise _Bad(f"observation space must be 'box' or 'discrete', got {obs!r}")
        self._obs_map = ObsMap(self._obs_space)

    def _normaliser(self, stats: Any, dim: int) -> RunningNorm | None:
        if stats is None:
            return None
        what = "world['normalize']"
        if not isinstance(stats, dict) or set(stats) != set(_NORM_KEYS):
            raise _Bad(f"{what} must be None or a dict with keys {list(_NORM_KEYS)}, got "
                       f"{stats if not isinstance(stats, dict) else sorted(stats)}")
        count = float(_get(stats, "count", (int, float), what))
        if not count >= 0:
            raise _Bad(f"{what}['count'] must be >= 0, got {count}")
        norm = RunningNorm(dim, clip=_get(stats, "clip", (int, float), what),
                           eps=_get(stats, "eps", (int, float), what))
        # pending -> committed through the normaliser's own merge: exactly the stored values
        norm.replace_pending([(count, _vector(stats, "mean", dim, what),
                               _vector(stats, "m2", dim, what))])
        norm.commit()
        return norm

    def _action(self, action: Any, output_dim: int) -> None:
        space = action.get("space") if isinstance(action, dict) else None
        if (space == "value") != (self.kind == "signal"):
            raise _Bad(f"a {self.kind} world's action space cannot be {space!r}")
        if space == "value":
            size = 1
            self._action_map: ActionMap | None = None
        elif space == "discrete":
            size = _get(action, "n", int, "action")
            if size < 1:
                raise _Bad(f"action n must be >= 1, got {size}")
            self._action_map = ActionMap(spaces.Discrete(size, start=_get(action, "start", int,
                                                                          "action")))
        elif space == "box":
            shape = tuple(_get(action, "shape", list, "action"))
            if not all(type(s) is int and s >= 1 for s in shape):
                raise _Bad(f"action shape must be positive ints, got {list(shape)}")
            size = int(np.prod(shape))
            dtype = np.dtype(_get(action, "dtype", str, "action"))
            low = _vector(action, "low", size, "action").reshape(shape).astype(dtype)
            high = _vector(action, "high", size, "action").reshape(shape).astype(dtype)
            self._action_map = ActionMap(spaces.Box(low, high, shape, dtype))
        else:
            raise _Bad(f"action space must be 'discrete', 'box' or 'value', got {space!r}")
        if size != output_dim:
            raise _Bad(f"the action space takes {size} outputs, the model gives {output_dim}")

    # -- running -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return copy.deepcopy(self._world)

    def _expect(self, batch: bool) -> str:
        if isinstance(self._obs_space, spaces.Discrete):
            what = "ints" if batch else "an int"
            return (f"{what} in [{self._obs_space.start}, "
                    f"{self._obs_space.start + self._obs_space.n})")
        return f"shape {('n', *self._shape) if batch else self._shape}"

    def batch_of(self, obs: Any) -> np.ndarray:
        """One observation as a batch of one, refused unless it has the world's shape."""
        x = np.asarray(obs)
        if x.shape != self._shape:
            raise ValueError(f"an observation must be {self._expect(False)}, got shape "
                             f"{x.shape}")
        return x[None]

    def inputs(self, obs: Any) -> np.ndarray:
        """n observations -> the model's float32 rows (n, input_dim), as the world makes them."""
        x = np.asarray(obs)
        discrete = isinstance(self._obs_space, spaces.Discrete)
        numeric = np.issubdtype(x.dtype, np.integer if discrete else np.number)
        if x.ndim != len(self._shape) + 1 or x.shape[1:] != self._shape or not numeric \
                or np.issubdtype(x.dtype, np.complexfloating) or len(x) == 0:
            raise ValueError(f"observations must be {self._expect(True)}, got {x.dtype} "
                             f"{x.shape}")
        if discrete and not ((x >= self._obs_space.start).all()
                             and (x < self._obs_space.start + self._obs_space.n).all()):
            raise ValueError(f"observations must be {self._expect(True)}, got {x.tolist()}")
        rows = self._obs_map.rows(x)[:, self._keep]
        if self._norm is not None:
            rows = self._norm.normalize(rows)
        rows = rows.astype(np.float32)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise ValueError(f"observation rows {np.flatnonzero(bad)[:8].tolist()} hold NaN or "
                             "inf")
        return np.ascontiguousarray(rows)

    def actions(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs (n, output_dim) float64 -> n actions (no noise)."""
        if self._action_map is None:
            return outputs[:, 0].copy()
        return self._action_map(outputs, 0.0, None)

    def one(self, actions: np.ndarray) -> Any:
        """The single action of a batch of one, as gymnasium's env.step takes it."""
        if self._action_map is None:
            return float(actions[0])
        return int(actions[0]) if self._action_map.discrete else actions[0]

    def make_gym_env(self, **kwargs: Any) -> Any:
        if self.kind != "gym":
            raise ValueError("a signal world is a stream, not a gymnasium env: feed act() "
                             "[y_t, y_t-1, ...] at every step and read the next value's "
                             "prediction")
        import gymnasium

        env = self._world["env"]
        options = dict(env.get("env_kwargs") or {})
        if env.get("max_steps") is not None:
            options["max_episode_steps"] = env["max_steps"]
        spec = resolve_env_id(env["id"], env.get("module"))  # the module registers the id
        return gymnasium.make(spec.id, **{**options, **kwargs})

    def summary(self) -> str:
        env = self._world["env"]
        name = env.get("id") if self.kind == "gym" else f"signal lags={env.get('lags')}"
        return f"{self.kind}:{name}, inputs={len(self._keep)}, normalised={self._norm is not None}"
