"""RunningNorm: exact batch merging, freezing until commit, state."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from rwkv_swarm.node.envs import RunningNorm


@pytest.mark.parametrize("splits", [[1], [1, 1, 1], [7, 1, 30, 2], [100]])
def test_merged_batches_equal_numpy_on_all_rows(splits):
    rng = np.random.default_rng(len(splits))
    data = rng.normal(3.0, [0.5, 20.0, 1e-3], size=(sum(splits), 3))
    norm = RunningNorm(3)
    chunks = np.split(data, np.cumsum(splits)[:-1])
    for i, chunk in enumerate(chunks):
        norm.observe(chunk)
        if i % 2:  # commits interleaved with observing: same result
            norm.commit()
    norm.commit()
    assert norm.count == len(data)
    np.testing.assert_allclose(norm.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.var, data.var(axis=0), rtol=1e-9)


def test_statistics_are_frozen_until_commit():
    norm = RunningNorm(2, clip=100.0)
    x = np.array([[1.0, -2.0]])
    before = norm.normalize(x)
    np.testing.assert_allclose(before, x, atol=1e-7)  # no data yet: identity
    norm.observe(np.random.default_rng(0).normal(10.0, 2.0, (50, 2)))
    np.testing.assert_array_equal(norm.normalize(x), before)
    assert norm.pending_count == 50
    norm.commit()
    assert norm.pending_count == 0
    assert (norm.normalize(x) < -3).all()


def test_normalize_clips_and_survives_constant_features():
    norm = RunningNorm(2, clip=5.0)
    norm.observe(np.array([[1.0, 0.0], [1.0, 1.0]]))
    norm.commit()
    out = norm.normalize(np.array([[1.0, 100.0], [2.0, -100.0]]))
    assert np.isfinite(out).all() and np.abs(out).max() == 5.0
    assert out[0, 0] == 0.0


def test_bad_shapes_and_parameters_are_rejected():
    norm = RunningNorm(3)
    with pytest.raises(ValueError, match=r"\(k, 3\)"):
        norm.observe(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="dim"):
        RunningNorm(0)
    with pytest.raises(ValueError, match="clip"):
        RunningNorm(2, clip=0.0)


def test_state_round_trip_keeps_pending_and_committed_statistics():
    rng = np.random.default_rng(1)
    norm = RunningNorm(2)
    norm.observe(rng.normal(size=(20, 2)))
    norm.commit()
    norm.observe(rng.normal(5.0, 1.0, size=(7, 2)))
    twin = RunningNorm(2)
    twin.load_state_dict(msgpack.unpackb(msgpack.packb(norm.state_dict())))
    x = rng.normal(size=(4, 2))
    assert norm.normalize(x).tobytes() == twin.normalize(x).tobytes()
    norm.commit()
    twin.commit()
    assert norm.normalize(x).tobytes() == twin.normalize(x).tobytes()
    with pytest.raises(ValueError, match="dim"):
        RunningNorm(3).load_state_dict(norm.state_dict())


@pytest.mark.parametrize("rows", [2, 3, 17, 64, 257])
def test_statistics_and_normalisation_have_the_bits_of_numpys_mean_and_clip(rows):
    """The per-step forms are numpy's mean, sum and clip without their wrappers: same bits."""
    rng = np.random.default_rng(rows)
    norm = RunningNorm(4, clip=2.0)
    norm.observe(rng.normal(0.5, 3.0, (40, 4)))
    norm.commit()
    x = rng.normal(0.0, 4.0, (rows, 4))[:, [0, 2, 1, 3]]  # a gathered (copied) batch
    x[0, :2] = [np.nan, -0.0]
    shift, inv = norm.mean.copy(), 1.0 / np.sqrt(norm.var + norm.eps)
    np.testing.assert_array_equal(norm.normalize(x), np.clip((x - shift) * inv, -2.0, 2.0))
    before, y = norm.pending, x[1:]
    norm.observe(y)
    mb = y.mean(axis=0)
    assert before[0] == 0 and norm.pending[0] == len(y)
    np.testing.assert_array_equal(norm.pending[1], mb)
    np.testing.assert_array_equal(norm.pending[2], np.square(y - mb).sum(axis=0))
