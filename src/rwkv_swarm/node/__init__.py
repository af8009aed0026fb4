"""One organism: model + estimator + evolution step; what it tells its neighbours; wire messages;
ZeroMQ transport; the environments it lives in."""

from .config import MODES, STRATEGIES, STRATEGY_CONFIGS, ExchangeConfig, NodeConfig
from .environment import Environment
from .exchange import Report, WeightSketch, fingerprint, perturbation_key, replay
from .fusion import Evidence, Relevance, fuse_estimates, mean_estimates
from .kalman_es import KalmanES, KalmanESConfig
from .keys import NodeKeys, SwarmKeyring
from .node import Node, node_name
from .rollout import Rollout, rollout
from .shaping import centered_ranks, derive_seed, pair_means, zscore
from .strategy import ESConfig, LowRankES, Measurement, Mutants, StepInfo, Strategy
from .transport import Transport, TransportConfig
from .wire import (
    Message,
    ProtocolError,
    WireLimits,
    decode,
    encode,
    message,
    state_from_message,
    state_message,
)

__all__ = ["MODES", "STRATEGIES", "STRATEGY_CONFIGS", "ESConfig", "Environment",
           "Evidence", "ExchangeConfig", "KalmanES", "KalmanESConfig", "LowRankES",
           "Measurement", "Message", "Mutants", "Node", "NodeConfig", "NodeKeys",
           "ProtocolError", "Relevance", "Report", "Rollout", "StepInfo", "Strategy",
           "SwarmKeyring",
           "Transport", "TransportConfig", "WeightSketch", "WireLimits", "centered_ranks",
           "decode", "derive_seed", "encode", "fingerprint", "fuse_estimates", "mean_estimates",
           "message", "node_name", "pair_means", "perturbation_key", "replay", "rollout",
           "state_from_message", "state_message", "zscore"]
