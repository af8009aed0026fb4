"""One organism: model + estimator + evolution step; wire messages; ZeroMQ transport."""

from .environment import Environment
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

__all__ = ["ESConfig", "Environment", "KalmanES", "KalmanESConfig", "LowRankES", "Mutants",
           "Node", "NodeConfig", "Rollout", "StepInfo", "Strategy", "centered_ranks",
           "derive_seed", "rollout", "zscore"]
