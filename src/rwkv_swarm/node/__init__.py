"""One organism: model + estimator + evolution step; wire messages; ZeroMQ transport."""

from .environment import Environment
from .keys import NodeKeys, SwarmKeyring
from .node import Node, NodeConfig
from .rollout import Rollout, rollout
from .strategy import (
    ESConfig,
    KalmanES,
    KalmanESConfig,
    LowRankES,
    Mutants,
    StepInfo,
    Strategy,
    centered_ranks,
    derive_seed,
    zscore,
)
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

__all__ = ["ESConfig", "Environment", "KalmanES", "KalmanESConfig", "LowRankES", "Message",
           "Mutants", "Node", "NodeConfig", "NodeKeys", "ProtocolError", "Rollout", "StepInfo",
           "Strategy", "SwarmKeyring", "Transport", "TransportConfig", "WireLimits",
           "centered_ranks", "decode", "derive_seed", "encode", "message", "rollout",
           "state_from_message", "state_message", "zscore"]
