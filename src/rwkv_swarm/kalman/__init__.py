"""Kalman filters, fitness and search-direction beliefs, belief fusion (pure compute).

filter:    KalmanFilter and pure predict/update (Joseph form), filterpy-compatible names
diagonal:  DiagonalKalmanFilter and diag_predict/diag_update, d independent coordinates in torch
fitness:   FitnessBelief, the node's belief about the true fitness of its current weights
direction: DirectionBelief, a diagonal filter over the ES gradient, and gradient helpers
fusion:    fuse_information (independent beliefs), covariance_intersection (unknown correlation)
"""

from ._stats import chi2_quantile
from .diagonal import DiagonalKalmanFilter, DiagonalUpdate, diag_predict, diag_update
from .direction import (
    DirectionBelief,
    DirectionConfig,
    DirectionUpdate,
    antithetic_gradient,
    population_gradient,
)
from .filter import KalmanFilter, UpdateResult, predict, update
from .fitness import FitnessBelief, FitnessConfig, FitnessUpdate
from .fusion import ci_weights, covariance_intersection, fuse_information
from .gaussian import Gaussian

__all__ = [
    "DiagonalKalmanFilter",
    "DiagonalUpdate",
    "DirectionBelief",
    "DirectionConfig",
    "DirectionUpdate",
    "FitnessBelief",
    "FitnessConfig",
    "FitnessUpdate",
    "Gaussian",
    "KalmanFilter",
    "UpdateResult",
    "antithetic_gradient",
    "chi2_quantile",
    "ci_weights",
    "covariance_intersection",
    "diag_predict",
    "diag_update",
    "fuse_information",
    "population_gradient",
    "predict",
    "update",
]
