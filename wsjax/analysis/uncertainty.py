"""How sure the tables are: other readings of the paper's measures, and intervals.

- Ties. Many snapshots share their merge height (mutual nearest neighbours merge at one
  height), and the order measures break such ties by epoch. `random_tie_orders` breaks them at
  random instead and reports the mean and standard deviation over draws.
- Purity. The paper's "cluster purity" can be read as the mean over clusters (inflated by
  single-snapshot clusters), over all snapshots (overall), or per model: the share of each
  model's snapshots in its most common cluster, averaged over models (`per_model_purity`).
- Intervals. `bootstrap_intervals` resamples the models with replacement: each cluster counts
  as often as its dominant model is drawn. The clustering itself is not redone.
"""

from __future__ import annotations

import numpy as np

from wsjax.analysis.metrics import ClusterMetrics, cluster_metrics, dominant_models

__all__ = ["per_model_purity", "random_tie_orders", "bootstrap_intervals"]


def per_model_purity(labels: np.ndarray, model_ids: np.ndarray) -> float:
    """Mean over models of the share of a model's snapshots in its most common cluster."""
    by_model = dominant_models(model_ids, labels)  # each model's dominant cluster
    return float(np.mean(by_model.count / by_model.size))


def random_tie_orders(labels: np.ndarray, model_ids: np.ndarray, epochs: np.ndarray,
                      heights: np.ndarray, draws: int = 100, seed: int = 0) -> dict:
    """The order measures with merge-height ties broken at random, `draws` times.

    Returns {"ordered_initial": [mean, sd], "ordered_fraction": [mean, sd]} over the draws.
    """
    rng = np.random.default_rng(seed)
    heights = np.asarray(heights)
    n = heights.shape[0]
    initial, fraction = [], []
    for _ in range(draws):
        order = np.lexsort((rng.permutation(n), -heights))  # decreasing height, ties at random
        key = np.empty(n)
        key[order] = np.arange(n, 0, -1)
        m = cluster_metrics(labels, model_ids, epochs, key)
        initial.append(m.mean_ordered_initial)
        fraction.append(m.mean_ordered_fraction)
    return {"ordered_initial": [float(np.mean(initial)), float(np.std(initial))],
            "ordered_fraction": [float(np.nanmean(fraction)), float(np.nanstd(fraction))]}


def bootstrap_intervals(m: ClusterMetrics, draws: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict:
    """Percentile intervals of the table's four cells under resampling of the models.

    Args:
        m: the clustering's metrics (per-cluster values and each cluster's dominant model).

    Returns:
        {"mean_purity", "overall_purity", "ordered_initial", "ordered_fraction"} -> [lo, hi].
    """
    models, cluster_model = np.unique(m.dominant, return_inverse=True)
    rng = np.random.default_rng(seed)
    # how often each model is drawn, per draw: [draws, M]; a cluster weighs its model's count
    drawn = rng.multinomial(models.shape[0], np.full(models.shape[0], 1 / models.shape[0]),
                            size=draws)
    w = drawn[:, cluster_model].astype(np.float64)                     # [draws, C]
    count = m.purity * m.size

    def mean_of(values):
        ok = ~np.isnan(values)
        return (w[:, ok] @ values[ok]) / w[:, ok].sum(axis=1)

    stats = {"mean_purity": mean_of(m.purity),
             "overall_purity": (w @ count) / (w @ m.size),
             "ordered_initial": mean_of(m.ordered_initial.astype(np.float64)),
             "ordered_fraction": mean_of(m.ordered_fraction)}
    tail = 100 * (1 - level) / 2
    return {k: [float(q) for q in np.nanpercentile(v, [tail, 100 - tail])]
            for k, v in stats.items()}
