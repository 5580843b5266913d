"""Cluster purity and epoch order of a clustering of snapshots (paper Section 4).

The paper defines the epoch-order measures in one sentence; this is our reading of it:

* dominant model of a cluster: its most frequent model id (ties: the smallest id);
* purity: dominant count / cluster size; reported as the mean over clusters and overall
  (sum of dominant counts / number of snapshots);
* epoch order: the cluster's snapshots of its dominant model, sorted by decreasing merge
  height (the single-linkage distance at which a snapshot first joins another cluster; ties
  keep index order). Early epochs take big steps and so join late;
* "# ordered initial epochs": the length of the longest prefix of that order that equals the
  same snapshots sorted by their true epoch;
* "% ordered epochs": the fraction of adjacent pairs in that order whose epoch is the previous
  one + 1. A cluster with a single dominant snapshot has no pairs: its value is NaN and it is
  left out of the mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wsjax.errors import ConfigError

__all__ = ["ClusterMetrics", "cluster_metrics"]


@dataclasses.dataclass(frozen=True)
class ClusterMetrics:
    """Per-cluster arrays ([C], clusters in label order) and their summaries.

    Attributes:
        dominant: int [C] dominant model id; size: int [C]; purity: float [C];
        ordered_initial: int [C]; ordered_fraction: float [C] (NaN without pairs);
        mean_purity, overall_purity, mean_ordered_initial, mean_ordered_fraction: floats.
    """

    dominant: np.ndarray
    size: np.ndarray
    purity: np.ndarray
    ordered_initial: np.ndarray
    ordered_fraction: np.ndarray
    mean_purity: float
    overall_purity: float
    mean_ordered_initial: float
    mean_ordered_fraction: float


def cluster_metrics(labels: np.ndarray, model_ids: np.ndarray, epochs: np.ndarray,
                    heights: np.ndarray) -> ClusterMetrics:
    """Purity and epoch order of the clusters `labels` [n] of snapshots.

    Args:
        labels: int [n] cluster of each snapshot.
        model_ids: int [n] model each snapshot belongs to.
        epochs: int [n] epoch of each snapshot.
        heights: float [n] merge height of each snapshot (see linkage.merge_heights).
    """
    labels, model_ids, epochs, heights = (np.asarray(a) for a in
                                          (labels, model_ids, epochs, heights))
    n = labels.shape[0]
    if any(a.shape != (n,) for a in (model_ids, epochs, heights)) or n == 0:
        raise ConfigError("labels, model_ids, epochs and heights must be 1-D of the same "
                          "non-zero length")
    clusters = np.unique(labels)
    c = clusters.shape[0]
    dominant = np.empty(c, dtype=np.int64)
    size = np.empty(c, dtype=np.int64)
    count = np.empty(c, dtype=np.int64)
    initial = np.empty(c, dtype=np.int64)
    fraction = np.full(c, np.nan)
    for i, cl in enumerate(clusters):
        idx = np.flatnonzero(labels == cl)
        ms, counts = np.unique(model_ids[idx], return_counts=True)
        best = int(np.argmax(counts))
        dominant[i], size[i], count[i] = ms[best], idx.shape[0], counts[best]
        own = idx[model_ids[idx] == ms[best]]
        got = epochs[own[np.argsort(-heights[own], kind="stable")]]
        want = np.sort(epochs[own])
        wrong = np.flatnonzero(got != want)
        initial[i] = wrong[0] if wrong.size else got.shape[0]
        if got.shape[0] > 1:
            fraction[i] = float(np.mean(np.diff(got) == 1))
    purity = count / size
    valid = ~np.isnan(fraction)
    return ClusterMetrics(
        dominant=dominant, size=size, purity=purity, ordered_initial=initial,
        ordered_fraction=fraction, mean_purity=float(purity.mean()),
        overall_purity=float(count.sum() / n), mean_ordered_initial=float(initial.mean()),
        mean_ordered_fraction=float(fraction[valid].mean()) if valid.any() else float("nan"))
