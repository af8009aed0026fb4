"""How `GymEnv` drives gymnasium: space mappings, per-copy noise, vectorised and list paths."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ._imports import import_user_module
from ._util import copy_int_seed, copy_seed
from .cartpole import CartPoleVector

_CARTPOLE_VECTOR = "gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv"
NOISE_BLOCK = 64  # steps of noise drawn per copy at a time (amortises per-copy generator calls)


GYMNASIUM_ENTRY = "gymnasium."  # entry points of the ids gymnasium registers on import


def resolve_env_id(env_id: str, module: str | None = None) -> gym.envs.registration.EnvSpec:
    """The registered spec for `env_id` after importing `module` (and, for "module:Id", that
    module) from the Python path or the working directory, or a one-line ValueError naming
    close matches and how to register an id of one's own."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty gymnasium id string, got {env_id!r}")
    name = env_id
    modules = [module] if module is not None else []
    if ":" in env_id:
        prefix, name = env_id.split(":", 1)
        modules.append(prefix)
    for m in modules:
        import_user_module(m)
    if name not in gym.registry:
        close = difflib.get_close_matches(name, list(gym.registry), n=5, cutoff=0.5)
        hint = f"close matches: {close}; " if close else ""
        raise ValueError(f"unknown gymnasium env id {name!r}; {hint}an id of your own needs the "
                         "module that registers it (gymnasium.register) named: "
                         f"module = \"mytasks\" or id = \"mytasks:{name}\"; "
                         "sorted(gymnasium.registry) lists the ids")
    return gym.registry[name]


def registered_by_gymnasium(spec: gym.envs.registration.EnvSpec) -> bool:
    """Whether importing gymnasium registers `spec` (any other process then knows its id)."""
    return isinstance(spec.entry_point, str) and spec.entry_point.startswith(GYMNASIUM_ENTRY)


class ObsMap:
    """Flattens a single observation space to float64 rows: Box -> its values, Discrete ->
    one-hot."""

    def __init__(self, space: spaces.Space) -> None:
        if isinstance(space, spaces.Box):
            self.dim = int(np.prod(space.shape))
            self._start: int | None = None
        elif isinstance(space, spaces.Discrete):
            self.dim, self._start = int(space.n), int(space.start)
        else:
            raise ValueError(f"unsupported observation space {space}; supported: Box "
                             "(flattened) and Discrete (one-hot)")

    def rows(self, batch: np.ndarray) -> np.ndarray:
        """A batch of n observations as (n, dim) float64."""
        if self._start is None:
            return np.asarray(batch, dtype=np.float64).reshape(len(batch), self.dim)
        idx = np.asarray(batch, dtype=np.int64) - self._start
        out = np.zeros((len(idx), self.dim))
        out[np.arange(len(idx)), idx] = 1.0
        return out


class ActionMap:
    """Maps policy outputs (n, action_dim) to a batch of actions.

    Discrete(k): action_dim = k, action = start + argmax; noise = probability of a uniformly
    random action instead. Box (finite bounds): action_dim = prod(shape),
    action = low + (tanh(out) + 1) / 2 * (high - low); noise = Gaussian std added, then clipped.
    """

    def __init__(self, space: spaces.Space) -> None:
        if isinstance(space, spaces.Discrete):
            self.discrete = True
            self.action_dim, self._start = int(space.n), int(space.start)
        elif isinstance(space, spaces.Box):
            if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
                raise ValueError(f"Box action space {space} has infinite bounds; tanh scaling "
                                 "needs finite low and high")
            self.discrete = False
            self.action_dim = int(np.prod(space.shape))
            self._shape, self._dtype = space.shape, space.dtype
            self._low = space.low.astype(np.float64).reshape(-1)
            self._high = space.high.astype(np.float64).reshape(-1)
        else:
            raise ValueError(f"unsupported action space {space}; supported: Discrete (argmax) "
                             "and Box with finite bounds (tanh-scaled)")

    def noise_dim(self) -> int:
        """Noise values a copy needs per step: (replace?, which action) or one per dimension."""
        return 2 if self.discrete else self.action_dim

    def __call__(self, out: np.ndarray, level: float, noise: np.ndarray | None) -> np.ndarray:
        if self.discrete:
            act = np.argmax(out, axis=1)
            if noise is not None:
                replace = noise[:, 0] < level
                random = np.minimum((noise[:, 1] * self.action_dim).astype(np.int64),
                                    self.action_dim - 1)
                act = np.where(replace, random, act)
            if self._start == 0 and act.dtype == np.int64:  # argmax's own indices
                return act
            return (act + self._start).astype(np.int64)
        act = self._low + (np.tanh(out) + 1.0) * 0.5 * (self._high - self._low)
        if noise is not None:
            act = np.clip(act + level * noise, self._low, self._high)
        return act.reshape(len(out), *self._shape).astype(self._dtype)


class CopyNoise:
    """Per-copy noise streams: copy i's values depend only on (seed, keys[i], stream), never on
    n. Drawn NOISE_BLOCK steps at a time so that the per-copy generators cost little per step."""

    def __init__(self, seed: int, keys: list[int], dim: int, stream: int, uniform: bool) -> None:
        self._rngs = [np.random.default_rng(copy_seed(seed, k, stream)) for k in keys]
        self._buf = np.empty((len(keys), NOISE_BLOCK, dim))
        self._uniform = uniform
        self._t = NOISE_BLOCK

    def next(self) -> np.ndarray:
        """The next step's (n, dim) values: U[0, 1) or standard normal."""
        if self._t == NOISE_BLOCK:
            shape = self._buf.shape[1:]
            for i, rng in enumerate(self._rngs):
                self._buf[i] = rng.random(shape) if self._uniform else rng.standard_normal(shape)
            self._t = 0
        self._t += 1
        return self._buf[:, self._t - 1]


def _cartpole_starts(seeds: list[int]) -> np.ndarray:
    # CartPoleEnv.reset(seed=s) draws its state as default_rng(s).uniform(-0.05, 0.05, 4):
    # replaying that per copy makes copy i identical to a single env seeded with seeds[i]
    return np.stack([np.random.default_rng(s).uniform(-0.05, 0.05, 4) for s in seeds], 1)


# Vector entry points we step with a world of our own, seedable copy by copy (gymnasium seeds a
# vector env with one generator for all copies, so copy i would depend on n): entry point ->
# (the numpy world, doing the entry point's arithmetic; the copies' start states from seeds).
_VECTOR_WORLDS: dict[str, tuple[type, Callable[[list[int]], np.ndarray]]] = {
    _CARTPOLE_VECTOR: (CartPoleVector, _cartpole_starts),
}


def vector_supported(spec: gym.envs.registration.EnvSpec, kwargs: dict[str, Any]) -> bool:
    """Whether `spec` has a vector entry point we step ourselves that accepts `kwargs`."""
    entry = spec.vector_entry_point
    if not isinstance(entry, str) or entry not in _VECTOR_WORLDS:
        return False
    params = inspect.signature(_VECTOR_WORLDS[entry][0]).parameters
    return set(spec.kwargs) | set(kwargs) <= set(params)


class VectorBackend:
    """All n copies in one numpy world doing the arithmetic of the id's gymnasium vector env
    (an ended copy is masked by the caller)."""

    def __init__(self, spec: gym.envs.registration.EnvSpec, n: int, kwargs: dict[str, Any]):
        self.n = n
        world, self._starts = _VECTOR_WORLDS[spec.vector_entry_point]  # type: ignore[index]
        kw = {**spec.kwargs, **kwargs}
        if spec.max_episode_steps is not None:  # as gymnasium.make_vec passes it
            kw.setdefault("max_episode_steps", spec.max_episode_steps)
        self.env = world(n, **kw)
        self.observation_space = self.env.single_observation_space
        self.action_space = self.env.single_action_space

    def reset(self, seed: int, keys: list[int]) -> np.ndarray:
        # copies with one key (a pair's two members) start alike: draw each start once
        unique = list(dict.fromkeys(keys))
        starts = self._starts([copy_int_seed(seed, k) for k in unique])
        if len(unique) < len(keys):
            column = {k: i for i, k in enumerate(unique)}
            starts = starts[:, [column[k] for k in keys]]
        return self.env.reset_to(starts)

    def step(self, actions: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.env.step(actions, live)

    def close(self) -> None:
        pass


class ListBackend:
    """One single gymnasium env per copy; only live copies are stepped."""

    def __init__(self, spec: gym.envs.registration.EnvSpec, n: int, kwargs: dict[str, Any]):
        self._spec, self._kwargs = spec, kwargs
        self.envs: list[gym.Env] = []
        self.resize(n)
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space

    def resize(self, n: int) -> None:
        """Keep the existing envs (creating them is slow), add or close the difference."""
        while len(self.envs) > n:
            self.envs.pop().close()
        while len(self.envs) < n:
            # the passive checker only warns (errors under strict warning filters) and costs
            # time per step; the adapter validates the spaces itself
            self.envs.append(gym.make(self._spec.id, disable_env_checker=True, **self._kwargs))
        self.n = n
        self._last: list[Any] = [None] * n

    def reset(self, seed: int, keys: list[int]) -> np.ndarray:
        self._last = [env.reset(seed=copy_int_seed(seed, k))[0] for k, env in
                      zip(keys, self.envs, strict=True)]
        return np.stack([np.asarray(o) for o in self._last])

    def step(self, actions: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, ...]:
        reward, ended = np.zeros(self.n), np.zeros(self.n, dtype=bool)
        discrete = isinstance(self.action_space, spaces.Discrete)
        for i in np.flatnonzero(live):
            a = int(actions[i]) if discrete else actions[i]
            self._last[i], r, term, trunc, _ = self.envs[i].step(a)
            reward[i], ended[i] = float(r), bool(term or trunc)
        return np.stack([np.asarray(o) for o in self._last]), reward, ended

    def close(self) -> None:
        for env in self.envs:
            env.close()
