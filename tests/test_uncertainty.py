"""Other readings of the tables' measures, and their intervals, on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from wsjax.analysis.metrics import cluster_metrics
from wsjax.analysis.uncertainty import bootstrap_intervals, per_model_purity, random_tie_orders


def test_random_tie_breaking_averages_the_two_orders_of_a_tie():
    """One model, epochs 1..4 merging at heights 5, 2, 1, 1: epoch order gives 1, 2, 3, 4
    (4 ordered initial, fraction 1); the tie the other way 1, 2, 4, 3 (2, fraction 1/3).
    At random each half the time: 3 and 2/3."""
    zeros = np.zeros(4, int)
    got = random_tie_orders(zeros, zeros, np.arange(1, 5), np.array([5.0, 2.0, 1.0, 1.0]),
                            draws=4000, seed=1)
    mean, sd = got["ordered_initial"]
    assert mean == pytest.approx(3.0, abs=0.05) and sd == pytest.approx(1.0, abs=0.01)
    assert got["ordered_fraction"][0] == pytest.approx(2 / 3, abs=0.02)
    untied = random_tie_orders(zeros, zeros, np.arange(1, 5), np.array([5.0, 2.0, 1.5, 1.0]),
                               draws=20)
    assert untied["ordered_initial"] == [4.0, 0.0]


def test_three_purities_of_a_hand_worked_clustering():
    # clusters: 0 = {a, a, b}, 1 = {a}, 2 = {b, b}
    labels = np.array([0, 0, 0, 1, 2, 2])
    models = np.array([7, 7, 9, 7, 9, 9])
    m = cluster_metrics(labels, models, np.array([1, 2, 1, 3, 2, 3]), np.zeros(6))
    assert m.mean_purity == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert m.overall_purity == pytest.approx(5 / 6)
    # model 7: 2 of its 3 snapshots in cluster 0; model 9: 2 of 3 in cluster 2
    assert per_model_purity(labels, models) == pytest.approx(2 / 3)


def test_bootstrap_interval_of_a_constant_measure_is_a_point():
    labels = np.repeat(np.arange(5), 4)
    models = np.repeat(np.arange(5), 4)
    epochs = np.tile(np.arange(1, 5), 5)
    heights = np.tile([4.0, 3.0, 2.0, 1.0], 5)
    ci = bootstrap_intervals(cluster_metrics(labels, models, epochs, heights), draws=200)
    assert ci["mean_purity"] == [1.0, 1.0] and ci["overall_purity"] == [1.0, 1.0]
    assert ci["ordered_initial"] == [4.0, 4.0] and ci["ordered_fraction"] == [1.0, 1.0]


def test_bootstrap_interval_brackets_the_estimate_within_the_cluster_range():
    rng = np.random.default_rng(0)
    models = np.repeat(np.arange(30), 5)
    labels = np.where(rng.random(150) < 0.2, rng.integers(0, 30, 150), models)
    m = cluster_metrics(labels, models, np.tile(np.arange(1, 6), 30), rng.random(150))
    lo, hi = bootstrap_intervals(m, draws=2000)["mean_purity"]
    assert m.purity.min() <= lo < m.mean_purity < hi <= m.purity.max()
