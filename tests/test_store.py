"""A zoo as points of a weight space: one helper, one model-id convention."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist

from wsjax.store import Zoo, trajectory_points


def _zoo(tmp_path, snaps, seeds, diverged) -> Zoo:
    s, t, _ = snaps.shape
    z = np.zeros((s, t), np.float32)
    return Zoo(path=tmp_path, config={"arch": "cnn"}, snapshots=snaps, test_accuracy=z,
               test_loss=z, train_loss=z[:, 1:], diverged_epoch=np.asarray(diverged),
               seeds=np.asarray(seeds))


def test_points_are_member_major_named_by_seed_and_skip_init_and_diverged(tmp_path):
    snaps = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)
    zoo = _zoo(tmp_path, snaps, seeds=[10, 11, 12], diverged=[-1, 2, -1])
    x, model, epoch = zoo.points()
    assert x.dtype == np.float64 and x.shape == (6, 2)
    assert list(model) == [10, 10, 10, 12, 12, 12] and list(epoch) == [1, 2, 3, 1, 2, 3]
    np.testing.assert_array_equal(x[4], snaps[2, 2])
    x0, model0, epoch0 = zoo.points(epochs=[0, 3], members=[1])
    assert list(model0) == [11, 11] and list(epoch0) == [0, 3]
    np.testing.assert_array_equal(x0, snaps[1, [0, 3]])


def test_points_in_an_svd_space_keep_the_distances_of_a_numpy_projection(tmp_path):
    rng = np.random.default_rng(0)
    zoo = _zoo(tmp_path, rng.normal(size=(4, 6, 9)).astype(np.float32), seeds=range(4),
               diverged=[-1] * 4)
    full, model, _ = zoo.points()
    x, model_k, _ = zoo.points(space=3)
    vt = np.linalg.svd(full, full_matrices=False)[2]
    assert x.shape == (20, 3) and np.array_equal(model, model_k)
    # singular directions are defined up to sign: compare what does not depend on it
    np.testing.assert_allclose(pdist(x), pdist(full @ vt[:3].T), rtol=1e-9)


def test_trajectory_points_of_plain_arrays():
    snaps = np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1)
    x, model, epoch = trajectory_points(snaps, np.array([7, 9]), np.array([0, 2]))
    assert list(x[:, 0]) == [0, 2, 3, 5] and list(model) == [7, 7, 9, 9]
    assert list(epoch) == [0, 2, 0, 2]
