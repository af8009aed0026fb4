"""Seeds and fitness shaping: the pure functions every strategy shares."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. swarm seed, node, generation), stable everywhere."""
    digest = hashlib.blake2b(b",".join(str(int(k)).encode() for k in keys), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def centered_ranks(f: np.ndarray) -> np.ndarray:
    """Ranks mapped to [-0.5, 0.5]; non-finite values rank worst.

    Tied values share their average rank. Episode returns tie often (every early CartPole
    episode lasts 8-12 steps), and breaking ties by position would give every tied antithetic
    pair a spurious difference, all pointing the same way relative to their noise.
    """
    f = np.where(np.isfinite(f), f, -np.inf)
    values, inverse, counts = np.unique(f, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    average = first + (counts - 1) / 2.0  # mean of the ranks first .. first + count - 1
    return average[inverse] / (len(f) - 1) - 0.5


def zscore(f: np.ndarray) -> np.ndarray:
    """(f - mean) / std over the finite values; non-finite values get the worst finite score."""
    ok = np.isfinite(f)
    if not ok.any():
        return np.zeros(len(f))
    mu, sd = f[ok].mean(), f[ok].std()
    z = np.where(ok, (f - mu) / (sd if sd > 0 else 1.0), 0.0)
    return np.where(ok, z, z[ok].min())


SHAPINGS = {"centered_ranks": centered_ranks, "zscore": zscore}


def pair_means(f: np.ndarray) -> np.ndarray:
    """Means of the antithetic pairs (2p, 2p+1) whose members are both finite.

    The two members of a pair meet the same episodes, so pairs, not members, are the
    independent samples of the population's fitness."""
    a, b = f[0::2], f[1::2]
    ok = np.isfinite(a) & np.isfinite(b)
    return 0.5 * (a[ok] + b[ok])
