"""`SignalEnv`: streaming next-value prediction on a synthetic process.

The stream y_0, y_1, ... is amplitude * process + Gaussian measurement noise, generated from the
config's seed. It is cut into segments of L = segment_length steps; segment k covers
y_{kL} .. y_{(k+1)L}. An evaluation replays the current segment for all n copies (common random
numbers): reset gives y_{kL}; step t takes the prediction of y_{kL+t+1}, rewards
-(prediction - y_{kL+t+1})^2 and shows that value next; all copies are done after L steps, so a
copy's return is minus its sum of squared errors. `end_generation` moves to the next segment,
whose first observation is the last target of this one: the stream runs on without a gap, and
the organism's recurrent state persists across segments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...util.codec import decode_array, decode_rng, encode_array, encode_rng
from ._util import (
    check_count,
    check_keys,
    check_outputs,
    check_seed,
    check_state_keys,
    config_with,
    finite,
)
from .processes import (
    PROCESSES,
    MackeyGlass,
    Process,
    Sines,
    make_generator,
    make_process,
    process_from_dict,
    process_params,
    process_to_dict,
)

SIGNALS: dict[str, dict[str, str]] = {
    "freq_shift": {
        "factor": "multiplies every frequency (sines) or the time between samples "
                  "(mackey_glass); > 0",
        "freq": "sines only: the new frequencies, one number for all or one per component, "
                "each in (0, 0.5) cycles per step",
    },
    "amplitude": {"scale": "multiplies the output amplitude; > 0"},
    "noise": {"std": "the new measurement-noise std; >= 0"},
    "regime": {"process": f"the new process, one of {sorted(PROCESSES)}",
               "...": "that process's parameters (defaults otherwise); see process_params()"},
}
_STATE_KEYS = ("kind", "segment_length", "lags", "position", "rng", "current", "next",
               "restart", "gen", "history", "segment")


@dataclass(frozen=True)
class SignalConfig:
    """A synthetic stream and how it is cut into segments."""

    # the process behind the clean signal: Sines(), AR() or MackeyGlass() (see processes.py)
    process: Process = Sines()
    # output scale multiplying the process (the `amplitude` signal multiplies it further)
    amplitude: float = 1.0
    # std of the Gaussian measurement noise on every observed value (and hence on targets)
    noise_std: float = 0.05
    # prediction steps per segment; one generation's evaluations all replay one segment
    segment_length: int = 64
    # previous values included in each observation: observation_dim = 1 + lags
    lags: int = 0
    # seeds the stream: measurement noise, AR innovations, Mackey-Glass initial history
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.process, tuple(PROCESSES.values())):
            raise ValueError(f"process must be one of Sines, AR, MackeyGlass (names "
                             f"{sorted(PROCESSES)}), got {self.process!r}")
        finite("amplitude", self.amplitude, low=0.0, strict=True)
        finite("noise_std", self.noise_std, low=0.0)
        for name, low in (("segment_length", 1), ("lags", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        check_seed(self.seed)


@dataclass(frozen=True)
class _Settings:
    process: Process
    amplitude: float
    noise_std: float

    def to_dict(self) -> dict[str, Any]:
        return {"process": process_to_dict(self.process), "amplitude": self.amplitude,
                "noise_std": self.noise_std}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> _Settings:
        return _Settings(process_from_dict(d["process"]), float(d["amplitude"]),
                         float(d["noise_std"]))


class SignalEnv:
    """Next-value prediction on a persistent synthetic stream; see the module docstring.

    observation_dim = 1 + lags (current value first, then older ones); action_dim = 1.
    Signals (`SIGNALS`) never change a segment already started: they apply from the next
    segment, i.e. the first reset after the next end_generation() (or the very first reset).
    state_dict() holds the stream between evaluations; after load_state_dict, call reset.
    """

    persistent = True
    action_dim = 1

    def __init__(self, config: SignalConfig | None = None, **overrides: Any) -> None:
        self.config = cfg = config_with(SignalConfig, config, overrides)
        self.observation_dim = 1 + cfg.lags
        self._rng = np.random.default_rng(cfg.seed)
        self._next = _Settings(cfg.process, float(cfg.amplitude), float(cfg.noise_std))
        self._current = self._next
        self._restart = False  # a regime signal restarts the process at the next segment
        self._gen: Any = None  # started lazily, so signals before the first reset apply
        self._history: np.ndarray | None = None  # the lags + 1 values ending the last segment
        self._segment: np.ndarray | None = None
        self._position = 0
        self._done: np.ndarray | None = None

    @property
    def position(self) -> int:
        """Stream index of the current segment's first observation."""
        return self._position

    @property
    def process(self) -> Process:
        """The process of the current segment (or of the next one, before it starts)."""
        return (self._current if self._segment is not None else self._next).process

    @property
    def segment_values(self) -> np.ndarray:
        """The current segment's observed values y_{kL} .. y_{(k+1)L} (L + 1 of them)."""
        return self._ensure_segment()[self.config.lags:].copy()

    @property
    def segment_mse(self) -> np.ndarray:
        """Each copy's mean squared prediction error over this evaluation's steps so far
        (zeros before the first step)."""
        if self._done is None:
            raise RuntimeError("call reset(n, seed) first")
        return self._sse / max(self._t, 1)

    def _ensure_segment(self) -> np.ndarray:
        if self._segment is None:
            self._segment = self._new_segment()
        return self._segment

    def _new_segment(self) -> np.ndarray:
        nxt, cur, rng = self._next, self._current, self._rng
        if self._gen is None or self._restart:
            self._gen = make_generator(nxt.process, rng)
        elif nxt.process != cur.process:
            self._gen.retune(nxt.process)
        self._current, self._restart = nxt, False
        warm = self.config.lags + 1 if self._history is None else 0
        count = self.config.segment_length + warm
        clean = self._gen.generate(count, rng)
        values = nxt.amplitude * clean + nxt.noise_std * rng.standard_normal(count)
        return values if self._history is None else np.concatenate([self._history, values])

    def _obs(self, t: int) -> np.ndarray:
        assert self._segment is not None
        window = self._segment[t : t + self.config.lags + 1][::-1]  # newest first
        return np.tile(window.astype(np.float32), (self._n, 1))

    def reset(self, n: int, seed: int, keys: Sequence[int] | None = None) -> np.ndarray:
        """Start n copies on the current segment (the same data for all, so `keys` only need
        to be valid; `seed` is only validated: the stream's randomness comes from the config's
        seed)."""
        self._n, _ = check_count(n), check_seed(seed)
        check_keys(keys, self._n)
        self._ensure_segment()
        self._t = 0
        self._sse = np.zeros(self._n)
        self._done = np.zeros(self._n, dtype=bool)
        return self._obs(0)

    def step(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """outputs (n, 1): predictions of the next value; returns (obs, -squared error, done)."""
        if self._done is None or self._segment is None:
            raise RuntimeError("call reset(n, seed) before step (also after load_state_dict "
                               "or end_generation)")
        pred = check_outputs(outputs, self._n, 1)[:, 0]
        length = self.config.segment_length
        if self._t >= length:  # already done: the contract's zero rewards
            return self._obs(length), np.zeros(self._n), self._done.copy()
        err = np.square(pred - self._segment[self.config.lags + self._t + 1])
        self._sse += err
        self._t += 1
        self._done[:] = self._t >= length
        return self._obs(self._t), -err, self._done.copy()

    def end_generation(self) -> None:
        """Move to the next segment (generating this one first if nobody looked at it)."""
        segment = self._ensure_segment()
        self._history = segment[-(self.config.lags + 1):].copy()
        self._position += self.config.segment_length
        self._segment, self._done = None, None

    def apply_signal(self, name: str, params: dict[str, Any]) -> None:
        """Change the process from the next segment on; see `SIGNALS` for names and params.
        Validated now, so a bad signal fails at the call."""
        if name not in SIGNALS:
            raise ValueError(f"unknown signal {name!r}; accepted: {SIGNALS}")
        if not isinstance(params, dict):
            raise ValueError(f"signal params must be a dict, got {params!r}")
        nxt = self._next
        if name == "regime":
            process = dict(params)
            if "process" not in process:
                raise ValueError(f"signal 'regime' needs 'process' (one of {sorted(PROCESSES)}) "
                                 "plus that process's parameters")
            self._next = dataclasses.replace(nxt, process=make_process(process.pop("process"),
                                                                      process))
            self._restart = True
            return
        accepted = SIGNALS[name]
        if not params or set(params) - set(accepted) or len(params) != 1:
            raise ValueError(f"signal {name!r} takes exactly one of {accepted}, got {params!r}")
        ((key, value),) = params.items()
        if name == "freq_shift":
            self._next = dataclasses.replace(nxt, process=_shifted(nxt.process, key, value))
        elif name == "amplitude":
            scale = finite("amplitude.scale", value, low=0.0, strict=True)
            self._next = dataclasses.replace(nxt, amplitude=nxt.amplitude * scale)
        else:
            self._next = dataclasses.replace(nxt, noise_std=finite("noise.std", value, low=0.0))

    def state_dict(self) -> dict[str, Any]:
        def enc(a: np.ndarray | None) -> dict[str, Any] | None:
            return None if a is None else encode_array(a)

        return {
            "kind": "signal",
            "segment_length": self.config.segment_length,
            "lags": self.config.lags,
            "position": self._position,
            "rng": encode_rng(self._rng),
            "current": self._current.to_dict(),
            "next": self._next.to_dict(),
            "restart": self._restart,
            "gen": None if self._gen is None else self._gen.state(),
            "history": enc(self._history),
            "segment": enc(self._segment),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys("SignalEnv", state, _STATE_KEYS)
        ours = ("signal", self.config.segment_length, self.config.lags)
        theirs = (state["kind"], state["segment_length"], state["lags"])
        if theirs != ours:
            raise ValueError(f"state is for (kind, segment_length, lags) = {theirs}, this env "
                             f"has {ours}")
        self._current = _Settings.from_dict(state["current"])
        self._next = _Settings.from_dict(state["next"])
        self._rng = decode_rng(state["rng"])
        self._gen = None
        if state["gen"] is not None:
            # construct with a throwaway generator (start-up draws), then overwrite the state
            self._gen = make_generator(self._current.process, np.random.default_rng(0))
            self._gen.load(state["gen"])
        self._restart, self._position = bool(state["restart"]), int(state["position"])
        dec = decode_array
        self._history = None if state["history"] is None else dec(state["history"])
        self._segment = None if state["segment"] is None else dec(state["segment"])
        self._done = None


def _shifted(process: Process, key: str, value: Any) -> Process:
    """`process` after a freq_shift with `key` = factor or freq."""
    if isinstance(process, Sines):
        if key == "factor":
            factor = finite("freq_shift.factor", value, low=0.0, strict=True)
            return dataclasses.replace(process, freqs=tuple(f * factor for f in process.freqs))
        freqs = value if isinstance(value, (list, tuple)) else [value] * len(process.freqs)
        return dataclasses.replace(process, freqs=tuple(freqs))
    if isinstance(process, MackeyGlass) and key == "factor":
        factor = finite("freq_shift.factor", value, low=0.0, strict=True)
        return dataclasses.replace(process, sample_every=process.sample_every * factor)
    raise ValueError(f"freq_shift with {key!r} does not apply to process {process.name!r}; "
                     f"it applies to sines (factor or freq) and mackey_glass (factor); "
                     f"params of {process.name!r}: {process_params(process.name)}")
