"""`GymEnv`: n copies of a registered gymnasium environment, one per mutant.

Each reset(n, seed) starts n episodes; copy i is seeded from (seed, i) only, so it is the same
episode whatever n is. A copy that ends stays done (reward 0, its last observation repeated)
until the next reset. Observations are optionally masked (entries dropped), perturbed with
Gaussian noise, and normalised with running statistics that change only in `end_generation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._gym_backends import (
    ActionMap,
    CopyNoise,
    ListBackend,
    ObsMap,
    VectorBackend,
    resolve_env_id,
    vector_supported,
)
from ._util import (
    check_count,
    check_keys,
    check_outputs,
    check_seed,
    check_state_keys,
    config_with,
    finite,
)
from .cartpole import CartPoleVector
from .normalize import RunningNorm

VECTORIZE_MODES = ("auto", "vector", "list")
GYM_SIGNALS = {
    "obs_noise": {"std": "Gaussian std added to raw observations (>= 0)"},
    "action_noise": {"level": "discrete: probability of a random action in [0, 1]; "
                              "continuous: Gaussian std added before clipping (>= 0)"},
}
_OBS_STREAM, _ACTION_STREAM = 1, 2  # noise stream tags (stream 0 seeds the env itself)
_STATE_KEYS = ("kind", "env_id", "observation_dim", "norm", "obs_noise", "action_noise",
               "pending")


@dataclass(frozen=True)
class GymConfig:
    """A gymnasium task as the swarm sees it."""

    # registered gymnasium id; "module:Id" imports `module` first (an id of your own)
    env_id: str = "CartPole-v1"
    # a module to import first, from the Python path or the working directory: the one that
    # registers env_id with gymnasium.register (every node imports it too)
    module: str | None = None
    # episode step limit (passed to gymnasium as max_episode_steps); None: the id's own limit
    max_steps: int | None = None
    # normalise observations with running mean/var, frozen within a generation
    normalize_obs: bool = True
    # normalised observations are clipped to [-obs_clip, obs_clip]
    obs_clip: float = 5.0
    # observation entries to KEEP: either indices into the flattened observation (e.g. (0, 2)
    # keeps CartPole's position and angle, dropping the velocities) or one bool per entry
    # (True = keep); None keeps everything
    obs_mask: tuple[int, ...] | tuple[bool, ...] | None = None
    # Gaussian std added to the raw (kept) observations before normalisation
    obs_noise: float = 0.0
    # discrete actions: probability of replacing the action with a uniformly random one;
    # continuous actions: Gaussian std (in action units) added before clipping to the bounds
    action_noise: float = 0.0
    # extra keyword arguments for gymnasium.make (e.g. {"sutton_barto_reward": True})
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # "auto": all copies in one numpy world where the id has one (CartPole: gymnasium's
    # vector env's arithmetic), else one gymnasium env per copy; "vector" / "list": force a
    # path ("vector" fails where none exists)
    vectorize: str = "auto"

    def __post_init__(self) -> None:
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
            or self.max_steps < 1
        ):
            raise ValueError(f"max_steps must be a positive int or None, got {self.max_steps!r}")
        finite("obs_clip", self.obs_clip, low=0.0, strict=True)
        finite("obs_noise", self.obs_noise, low=0.0)
        finite("action_noise", self.action_noise, low=0.0)
        if self.vectorize not in VECTORIZE_MODES:
            raise ValueError(f"vectorize must be one of {VECTORIZE_MODES}, "
                             f"got {self.vectorize!r}")
        if self.module is not None and not isinstance(self.module, str):
            raise ValueError(f"module must be a module name, got {self.module!r}")
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a dict, got {self.env_kwargs!r}")
        if self.obs_mask is not None:
            object.__setattr__(self, "obs_mask", tuple(self.obs_mask))
        object.__setattr__(self, "env_kwargs", dict(self.env_kwargs))


def _mask_indices(mask: tuple[Any, ...] | None, dim: int) -> np.ndarray:
    """The kept observation indices for `mask` (indices or booleans) over `dim` entries."""
    if mask is None:
        return np.arange(dim)
    if not mask:
        raise ValueError("obs_mask keeps no observation entries; give indices or booleans to keep")
    if all(isinstance(m, (bool, np.bool_)) for m in mask):
        if len(mask) != dim:
            raise ValueError(f"boolean obs_mask needs one entry per observation entry ({dim}), "
                             f"got {len(mask)}")
        keep = np.flatnonzero(np.asarray(mask, dtype=bool))
        if keep.size == 0:
            raise ValueError("obs_mask keeps no observation entries (all False)")
        return keep
    if not all(isinstance(m, (int, np.integer)) and not isinstance(m, bool) for m in mask):
        raise ValueError(f"obs_mask must be indices to keep or one bool per entry, got {mask}")
    keep = np.asarray(mask, dtype=np.int64)
    if keep.min() < 0 or keep.max() >= dim or len(set(keep.tolist())) != len(keep):
        raise ValueError(f"obs_mask indices must be distinct and in [0, {dim}), got {mask}")
    return keep


class GymEnv:
    """n copies of a gymnasium env; see `GymConfig` for the options.

    GymEnv("CartPole-v1", obs_mask=(0, 2)) or GymEnv(GymConfig(...), **overrides).
    persistent = False: every reset starts fresh episodes (and the policy a fresh state).
    state_dict() holds what decides future evaluations (normalisation statistics, including
    those pending since the last end_generation, and signalled noise levels), not an episode
    in flight: after load_state_dict, call reset.
    """

    persistent = False

    def __init__(self, config: GymConfig | str | None = None, **overrides: Any) -> None:
        if isinstance(config, str):
            overrides = {"env_id": config, **overrides}
            config = None
        self.config = cfg = config_with(GymConfig, config, overrides)
        self._spec = resolve_env_id(cfg.env_id, cfg.module)
        self._kwargs = dict(cfg.env_kwargs)
        if cfg.max_steps is not None:
            self._kwargs["max_episode_steps"] = cfg.max_steps
        self._use_vector = self._choose_path()
        self._backend: VectorBackend | ListBackend | None = None
        self._make_backend(1)
        assert self._backend is not None
        self._obs_map = ObsMap(self._backend.observation_space)
        self._action_map = ActionMap(self._backend.action_space)
        self._keep = _mask_indices(cfg.obs_mask, self._obs_map.dim)
        self.observation_dim = int(self._keep.size)
        self.action_dim = self._action_map.action_dim
        self._noise = {"obs_noise": cfg.obs_noise, "action_noise": cfg.action_noise}
        self._check_action_noise(cfg.action_noise)
        self._pending: dict[str, float] = {}
        self.norm = RunningNorm(self.observation_dim, clip=cfg.obs_clip)
        self._done: np.ndarray | None = None

    def _choose_path(self) -> bool:
        mode = self.config.vectorize
        ok = vector_supported(self._spec, self._kwargs)
        if mode == "vector" and not ok:
            raise ValueError(f"no per-copy-seedable vectorised implementation for "
                             f"{self._spec.id!r} with kwargs {sorted(self._kwargs)}; use "
                             "vectorize='auto' or 'list'")
        return ok and mode != "list"

    def _make_backend(self, n: int) -> None:
        if self._backend is not None and self._backend.n == n:
            return
        if isinstance(self._backend, ListBackend):
            self._backend.resize(n)
            return
        if self._backend is not None:
            self._backend.close()
        cls = VectorBackend if self._use_vector else ListBackend
        try:
            self._backend = cls(self._spec, n, self._kwargs)
        except TypeError as e:  # gymnasium passes unknown kwargs to the env's constructor
            raise ValueError(f"env_kwargs {sorted(self.config.env_kwargs)} not accepted by "
                             f"{self._spec.id!r}: {e}") from e

    def _check_action_noise(self, level: float) -> None:
        if self._action_map.discrete and level > 1.0:
            raise ValueError(f"action_noise for a discrete action space is a probability in "
                             f"[0, 1], got {level}")

    @property
    def vectorized(self) -> bool:
        """Whether copies run in one vectorised numpy world (not one gymnasium env each)."""
        return self._use_vector

    def reset(self, n: int, seed: int, keys: Sequence[int] | None = None) -> np.ndarray:
        """Start n episodes, copy i seeded from (seed, keys[i]) (keys default to 0..n-1: copies
        with equal keys start alike and draw the same noise); returns obs (n, observation_dim).
        """
        n, seed = check_count(n), check_seed(seed)
        keys = check_keys(keys, n)
        self._noise.update(self._pending)
        self._pending = {}
        self._make_backend(n)
        assert self._backend is not None
        self._n = n
        self._obs_rng = (CopyNoise(seed, keys, self.observation_dim, _OBS_STREAM, uniform=False)
                         if self._noise["obs_noise"] > 0 else None)
        self._act_rng = (CopyNoise(seed, keys, self._action_map.noise_dim(), _ACTION_STREAM,
                                   uniform=self._action_map.discrete)
                         if self._noise["action_noise"] > 0 else None)
        self._done = np.zeros(n, dtype=bool)
        self._obs = self._observe(self._backend.reset(seed, keys), np.ones(n, dtype=bool))
        return self._obs.copy()

    def step(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Act with outputs (n, action_dim); returns (obs float32, reward float64, done)."""
        if self._done is None:
            raise RuntimeError("call reset(n, seed) before step (also after load_state_dict)")
        out = check_outputs(outputs, self._n, self.action_dim)
        noise = self._act_rng.next() if self._act_rng is not None else None
        actions = self._action_map(out, self._noise["action_noise"], noise)
        live = ~self._done
        assert self._backend is not None
        raw, reward, ended = self._backend.step(actions, live)
        obs = self._observe(raw, live)
        self._obs = np.where(live[:, None], obs, self._obs)
        reward = np.where(live, reward, 0.0)
        self._done = self._done | ended
        return self._obs.copy(), reward, self._done.copy()

    def _observe(self, raw: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Raw observations -> kept entries (+ noise) -> pending stats (live rows) -> float32."""
        x = self._obs_map.rows(raw)[:, self._keep]
        if self._obs_rng is not None:
            x = x + self._noise["obs_noise"] * self._obs_rng.next()
        if self.config.normalize_obs:
            self.norm.observe(x[live])
            x = self.norm.normalize(x)
        return x.astype(np.float32)

    def native_cartpole(self) -> dict[str, Any] | None:
        """What a native rollout needs to step these copies itself (node/native_rollout.py),
        or None where only `step` can: copies in the numpy CartPole world (cartpole.py) with
        no observation or action noise, set or pending. "cart": that world (the last reset's),
        "keep": the kept entries, "norm": the RunningNorm (None: observations not normalised).
        """
        backend = self._backend
        if not (isinstance(backend, VectorBackend) and isinstance(backend.env, CartPoleVector)):
            return None
        if any({**self._noise, **self._pending}.values()):
            return None
        return {"cart": backend.env, "keep": self._keep,
                "norm": self.norm if self.config.normalize_obs else None}

    def finish_native(self, obs: np.ndarray, done: np.ndarray, pending: np.ndarray,
                      steps: int) -> None:
        """Take the copies back from a native rollout: their last observations (n, d), which
        are done, the pending statistics (count, mean (d,), m2 (d,) in one array) and the
        steps taken since the reset."""
        self._obs, self._done = obs, done
        if self.config.normalize_obs:
            d = self.observation_dim
            self.norm.replace_pending([(float(pending[0]), pending[1:1 + d], pending[1 + d:])])
        assert isinstance(self._backend, VectorBackend)
        self._backend.env.steps[:] = steps

    def end_generation(self) -> None:
        """Fold the observations seen since the last call into the normalisation statistics."""
        self.norm.commit()

    def observation_stats(self) -> tuple[float, np.ndarray, np.ndarray] | None:
        """The observation statistics gathered since the last end_generation (None when
        observations are not normalised): what a consensus group's members share."""
        return self.norm.pending if self.config.normalize_obs else None

    def merge_observation_stats(self, parts: list[tuple[float, np.ndarray, np.ndarray]]) -> None:
        """Replace this generation's gathered statistics by `parts` merged in order."""
        if self.config.normalize_obs:
            self.norm.replace_pending(parts)

    def apply_signal(self, name: str, params: dict[str, Any]) -> None:
        """Change a noise level (see GYM_SIGNALS); takes effect at the next reset."""
        if name not in GYM_SIGNALS:
            raise ValueError(f"unknown GymEnv signal {name!r}; accepted: {GYM_SIGNALS}")
        accepted = GYM_SIGNALS[name]
        if not isinstance(params, dict) or set(params) != set(accepted):
            raise ValueError(f"signal {name!r} takes exactly the parameters {accepted}, "
                             f"got {params!r}")
        (key,) = accepted
        level = finite(f"{name}.{key}", params[key], low=0.0)
        if name == "action_noise":
            self._check_action_noise(level)
        self._pending[name] = level

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "gym",
            "env_id": self._spec.id,
            "observation_dim": self.observation_dim,
            "norm": self.norm.state_dict(),
            "obs_noise": self._noise["obs_noise"],
            "action_noise": self._noise["action_noise"],
            "pending": dict(self._pending),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys("GymEnv", state, _STATE_KEYS)
        if (state["kind"], state["env_id"], state["observation_dim"]) != (
            "gym", self._spec.id, self.observation_dim
        ):
            raise ValueError(f"state is for {state['kind']}:{state['env_id']} with "
                             f"observation_dim {state['observation_dim']}, this env is "
                             f"gym:{self._spec.id} with {self.observation_dim}")
        unknown = sorted(set(state["pending"]) - set(GYM_SIGNALS))
        if unknown:
            raise ValueError(f"state holds unknown pending signals {unknown}; accepted: "
                             f"{sorted(GYM_SIGNALS)}")
        self.norm.load_state_dict(state["norm"])
        self._noise = {k: float(state[k]) for k in ("obs_noise", "action_noise")}
        self._pending = {str(k): float(v) for k, v in state["pending"].items()}
        self._done = None  # an episode in flight is not part of the state

    def close(self) -> None:
        """Close the underlying gymnasium envs."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __repr__(self) -> str:
        path = "vector" if self._use_vector else "list"
        return (f"GymEnv({self._spec.id!r}, observation_dim={self.observation_dim}, "
                f"action_dim={self.action_dim}, path={path})")

