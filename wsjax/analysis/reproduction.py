"""The reproduction study's measures: several readings of the epoch-order measure, how the
training steps shrink and jump, and the study's tables (see wsjax.variants, docs/reproduction.md).
"""

from __future__ import annotations

import time

import numpy as np

from wsjax.analysis.linkage import cut, merge_heights, single_linkage
from wsjax.analysis.metrics import cluster_metrics, dominant_epoch_orders, dominant_models
from wsjax.analysis.tables import PAPER_TABLES, zoo_tables_detail
from wsjax.models import ARCHS
from wsjax.store import Zoo

__all__ = ["READINGS", "readings", "step_ratio", "jump_count", "dead_features", "variant_row",
           "comparison_markdown", "readings_markdown"]


def _rank_key(order: np.ndarray) -> np.ndarray:
    """float [n]: a key whose decreasing sort (stable) is `order` (indices, first = largest)."""
    key = np.empty(order.shape[0])
    key[order] = np.arange(order.shape[0], 0, -1)
    return key


def _order_metrics(labels, model_ids, epochs, key) -> dict:
    m = cluster_metrics(labels, model_ids, epochs, key)
    return {"purity": m.mean_purity, "ordered_initial": m.mean_ordered_initial,
            "ordered_fraction": m.mean_ordered_fraction}


def _extra_measures(labels, model_ids, epochs, key) -> dict:
    """Other readings of the two measures, on the merge-height order.

    in_place: epochs at their true position anywhere in the order (not only a prefix);
    increasing: adjacent pairs in increasing epoch order (not necessarily consecutive).
    """
    orders = dominant_epoch_orders(labels, epochs, key, dominant_models(labels, model_ids))
    in_place = [int(np.sum(got == np.sort(got))) for got in orders]
    increasing = [float(np.mean(np.diff(got) > 0)) for got in orders if got.shape[0] > 1]
    return {"in_place": float(np.mean(in_place)), "increasing_pairs": float(np.mean(increasing))}


def _cluster_centroid_distance(x, labels, model_ids) -> np.ndarray:
    """float [n]: each snapshot's distance to the centroid of its cluster's dominant model."""
    dom = dominant_models(labels, model_ids)
    d = np.empty(x.shape[0])
    for cl in dom.clusters:
        members = labels == cl
        d[members] = np.linalg.norm(x[members] - x[members & dom.own].mean(axis=0), axis=1)
    return d


def readings(zoo: Zoo, log=print) -> list[dict]:
    """Epoch-order measures of the full weight space under several readings of the paper.

    Each row: reading, what it does, purity, ordered_initial, ordered_fraction (and for the
    baseline reading also in_place and increasing_pairs).
    """
    from scipy.cluster.hierarchy import leaves_list

    s = int(zoo.healthy().sum())
    rows = []
    for first in (1, 0):
        x, model_ids, epochs = zoo.points(epochs=np.arange(first, zoo.num_epochs + 1))
        t0 = time.perf_counter()
        z = single_linkage(x)
        log(f"single linkage of {x.shape[0]} points: {time.perf_counter() - t0:.0f} s")
        labels = cut(z, s)
        h = merge_heights(z, x.shape[0])
        if first == 0:
            rows.append({"reading": "epoch0_in", "doc": "merge height, initialization "
                         "snapshots clustered too", **_order_metrics(labels, model_ids, epochs, h)})
            continue
        rows.append({"reading": "merge_height", "doc": "decreasing merge height, ties in "
                     "epoch order (ours)", **_order_metrics(labels, model_ids, epochs, h),
                     **_extra_measures(labels, model_ids, epochs, h)})
        late = _rank_key(np.lexsort((-epochs, -h)))
        rows.append({"reading": "ties_late_first", "doc": "decreasing merge height, ties in "
                     "reverse epoch order", **_order_metrics(labels, model_ids, epochs, late)})
        mutual = np.mean([np.sum(h == h[i]) > 1 for i in range(0, len(h), max(1, len(h) // 2000))])
        rows[-1]["doc"] += f" (~{mutual:.0%} of snapshots share their height)"
        leaves = _rank_key(leaves_list(z))
        rows.append({"reading": "dendrogram_leaves", "doc": "left-to-right leaf order of the "
                     "dendrogram (scipy leaves_list)",
                     **_order_metrics(labels, model_ids, epochs, leaves)})
        rows.append({"reading": "centroid_distance", "doc": "decreasing distance to the "
                     "centroid of the cluster's dominant model",
                     **_order_metrics(labels, model_ids, epochs,
                                      _cluster_centroid_distance(x, labels, model_ids))})
        rows.append({"reading": "weight_norm", "doc": "decreasing distance to the origin "
                     "(weight norm)", **_order_metrics(labels, model_ids, epochs,
                                                       np.linalg.norm(x, axis=1))})
    return rows


READINGS = ("merge_height", "ties_late_first", "dendrogram_leaves", "centroid_distance",
            "weight_norm", "epoch0_in")


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def step_ratio(zoo: Zoo) -> float:
    """Mean over healthy models of |w_E - w_(E-1)| / |w_2 - w_1|: how far the epoch steps
    have shrunk by the last epoch (small: still relaxing; near 1: a noise floor early on)."""
    w = np.asarray(zoo.snapshots[zoo.healthy()], dtype=np.float64)
    steps = np.linalg.norm(np.diff(w[:, 1:], axis=1), axis=2)  # [S, E-1], epochs 2..E
    return float(np.mean(steps[:, -1] / steps[:, 0]))


def jump_count(zoo: Zoo) -> float:
    """Mean per healthy model of epochs e >= 3 whose step |w_e - w_(e-1)| exceeds 1.5x the
    previous one: the jumps that break the decreasing-step pattern merge heights rely on."""
    w = np.asarray(zoo.snapshots[zoo.healthy()], dtype=np.float64)
    steps = np.linalg.norm(np.diff(w, axis=1), axis=2)  # [S, E], epochs 1..E
    return float(np.mean(np.sum(steps[:, 2:] > 1.5 * steps[:, 1:-1], axis=1)))


def dead_features(zoo: Zoo) -> float | None:
    """Mean per healthy model of the CNN's 8 bottleneck features whose 10 outgoing dense
    weights have norm < 0.05 at the last epoch (the dense kernel is the last 80 entries of
    the 1,376); None for another layout."""
    if zoo.snapshots.shape[2] != ARCHS["cnn"].num_params:
        return None
    dense = np.asarray(zoo.snapshots[zoo.healthy(), -1, -80:], dtype=np.float64)
    return float(np.mean(np.sum(np.linalg.norm(dense.reshape(-1, 8, 10), axis=2) < 0.05,
                                axis=1)))


def variant_row(name: str, doc: str, zoo: Zoo, ks=(50, 10)) -> dict:
    """One row of the variants' comparison: training, step measures and the tables' values."""
    t = zoo_tables_detail(zoo, ks=ks)
    acc = np.asarray(zoo.test_accuracy)[zoo.healthy()]
    row = {"variant": name, "doc": doc, "seeds": int(zoo.snapshots.shape[0]),
           "epochs": zoo.num_epochs, "healthy": int(zoo.healthy().sum()),
           "test_accuracy": float(acc[:, -1].mean()) if acc.size else None,
           "test_accuracy_epoch5": float(acc[:, min(5, zoo.num_epochs)].mean())
           if acc.size else None,
           "final_norm": float(np.linalg.norm(zoo.snapshots[:, -1], axis=1).mean()),
           "step_ratio": step_ratio(zoo)}
    row["jumps"], row["dead_features"] = jump_count(zoo), dead_features(zoo)
    for r in t["rows"]:
        key = "full" if r["space"].endswith("(weight space)") else r["space"].replace(" ", "")
        row[key] = {k: r[k] for k in ("mean_purity", "overall_purity", "ordered_initial",
                                      "ordered_fraction")}
    return row


def comparison_markdown(rows: list[dict]) -> str:
    paper = PAPER_TABLES["cnn"]["rows"]["full"]
    lines = ["| variant | test acc (ep 5 / last) | final norm | last/first step | jumps "
             "| dead features | purity | # ordered initial | % ordered | SVD-50 # / % "
             "| SVD-10 purity |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| paper (250 seeds, 50 epochs) | – | – | – | – | – | {paper[0]:.3f} | "
             f"{paper[1]:.3f} | "
             f"{paper[2]:.3f} | 17.728 / 0.675 | 0.896 |"]
    for r in rows:
        full, s50, s10 = r.get("full", {}), r.get("SVD50", {}), r.get("SVD10", {})
        lines.append(
            f"| {r['variant']} | {_f(r['test_accuracy_epoch5'])} / {_f(r['test_accuracy'])} | "
            f"{r['final_norm']:.2f} | {_f(r.get('step_ratio'))} | {r['jumps']:.2f} | "
            f"{_f(r['dead_features'])} | {_f(full.get('mean_purity'))} | "
            f"{_f(full.get('ordered_initial'))} | {_f(full.get('ordered_fraction'))} | "
            f"{_f(s50.get('ordered_initial'))} / {_f(s50.get('ordered_fraction'))} | "
            f"{_f(s10.get('mean_purity'))} |")
    return "\n".join(lines) + "\n"


def readings_markdown(name: str, rows: list[dict]) -> str:
    lines = [f"Readings of the epoch-order measure, full weight space, {name}:", "",
             "| reading | purity | # ordered initial | % ordered | what it does |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['reading']} | {_f(r['purity'])} | {_f(r['ordered_initial'])} | "
                     f"{_f(r['ordered_fraction'])} | {r['doc']} |")
    base = rows[0]
    if "in_place" in base:
        lines.append(f"\nOn the merge-height order: epochs at their true position "
                     f"{base['in_place']:.3f} per cluster; adjacent pairs increasing "
                     f"{base['increasing_pairs']:.3f}.")
    return "\n".join(lines) + "\n"
