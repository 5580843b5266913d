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
from typing import NamedTuple

import numpy as np

from wsjax.errors import ConfigError

__all__ = ["ClusterMetrics", "cluster_metrics", "Dominance", "dominant_models"]


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


class Dominance(NamedTuple):
    """Each cluster's dominant model.

    Attributes:
        clusters: [C] the cluster labels, sorted.
        model: [C] each cluster's dominant model id (ties: the smallest id).
        count: int [C] its snapshots in the cluster.
        size: int [C] the cluster's snapshots.
        own: bool [n] whether each snapshot belongs to its cluster's dominant model.
    """

    clusters: np.ndarray
    model: np.ndarray
    count: np.ndarray
    size: np.ndarray
    own: np.ndarray


def dominant_models(labels: np.ndarray, model_ids: np.ndarray) -> Dominance:
    """The dominant model of every cluster of `labels` [n], with model_ids [n]."""
    labels, model_ids = np.asarray(labels), np.asarray(model_ids)
    clusters, cluster_of = np.unique(labels, return_inverse=True)
    models, model_of = np.unique(model_ids, return_inverse=True)
    counts = np.zeros((clusters.shape[0], models.shape[0]), np.int64)
    np.add.at(counts, (cluster_of, model_of), 1)
    best = counts.argmax(axis=1)  # the first maximum: the smallest model id
    return Dominance(clusters=clusters, model=models[best],
                     count=counts[np.arange(clusters.shape[0]), best],
                     size=counts.sum(axis=1), own=best[cluster_of] == model_of)


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
    dom = dominant_models(labels, model_ids)
    c = dom.clusters.shape[0]
    initial = np.empty(c, dtype=np.int64)
    fraction = np.full(c, np.nan)
    for i, got in enumerate(dominant_epoch_orders(labels, epochs, heights, dom)):
        want = np.sort(got)
        wrong = np.flatnonzero(got != want)
        initial[i] = wrong[0] if wrong.size else got.shape[0]
        if got.shape[0] > 1:
            fraction[i] = float(np.mean(np.diff(got) == 1))
    count, size = dom.count, dom.size
    purity = count / size
    valid = ~np.isnan(fraction)
    return ClusterMetrics(
        dominant=dom.model, size=size, purity=purity, ordered_initial=initial,
        ordered_fraction=fraction, mean_purity=float(purity.mean()),
        overall_purity=float(count.sum() / n), mean_ordered_initial=float(initial.mean()),
        mean_ordered_fraction=float(fraction[valid].mean()) if valid.any() else float("nan"))


def dominant_epoch_orders(labels: np.ndarray, epochs: np.ndarray, key: np.ndarray,
                          dom: Dominance) -> list[np.ndarray]:
    """Per cluster (in dom.clusters order): the epochs of its dominant model's snapshots,
    sorted by decreasing `key` [n] (ties keep index order)."""
    orders = []
    for cl in dom.clusters:
        own = np.flatnonzero((labels == cl) & dom.own)
        orders.append(epochs[own[np.argsort(-key[own], kind="stable")]])
    return orders
