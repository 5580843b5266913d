"""The paper's Tables 2 and 3 for a zoo: purity and epoch order of single-linkage clusters.

For each space (the full weight space, then truncated SVD to each k, no centering) the chosen
snapshots of the healthy members are clustered by exact single linkage, the tree is cut into as
many clusters as there are members, and the metrics of wsjax.analysis.metrics are reported beside
the paper's values.
"""

from __future__ import annotations

import jax
import numpy as np

from wsjax.analysis.linkage import choose_engine, cut, merge_heights, single_linkage
from wsjax.analysis.metrics import cluster_metrics
from wsjax.analysis.svd import fit_svd, project
from wsjax.analysis.uncertainty import bootstrap_intervals, per_model_purity, random_tie_orders
from wsjax.errors import ConfigError
from wsjax.store import Zoo

__all__ = ["PAPER_TABLES", "DEFAULT_KS", "zoo_tables", "zoo_tables_detail", "tables_markdown"]

DEFAULT_KS = (500, 100, 50, 25, 10, 5)

# space -> (mean cluster purity, # ordered initial epochs, % ordered epochs); "full" is the
# whole weight space (1376 for the CNN, 2160 for the FFNN).
PAPER_TABLES = {
    "cnn": {"table": "Table 2", "rows": {
        "full": (1.0, 20.184, 0.693), 500: (1.0, 21.848, 0.732), 100: (1.0, 18.632, 0.689),
        50: (1.0, 17.728, 0.675), 25: (1.0, 15.852, 0.643), 10: (0.896, 12.094, 0.568),
        5: (0.465, 8.175, 0.471)}},
    "ffnn": {"table": "Table 3", "rows": {
        "full": (1.0, 4.512, 0.357), 500: (1.0, 4.632, 0.339), 100: (1.0, 4.532, 0.325),
        50: (1.0, 4.212, 0.303), 25: (1.0, 3.684, 0.273), 10: (1.0, 2.916, 0.227),
        5: (0.843, 2.038, 0.177)}},
}


def _paper_row(arch: str, space) -> dict:
    vals = PAPER_TABLES.get(arch, {}).get("rows", {}).get(space)
    keys = ("paper_purity", "paper_ordered_initial", "paper_ordered_fraction")
    return dict(zip(keys, vals if vals else (None, None, None), strict=True))


def zoo_tables(zoo: Zoo, ks=DEFAULT_KS, include_epoch0: bool = False,
               progress: bool = False, engine: str = "auto") -> list[dict]:
    """The rows of Table 2/3 for one zoo (flat dicts); see zoo_tables_detail for the rest."""
    return zoo_tables_detail(zoo, ks, include_epoch0, progress, engine)["rows"]


def zoo_tables_detail(zoo: Zoo, ks=DEFAULT_KS, include_epoch0: bool = False,
                      progress: bool = False, engine: str = "auto",
                      memory_limit: int | None = None) -> dict:
    """Tables 2/3 for one zoo, with the data it was trained on, notes and per-cluster values.

    Args:
        zoo: a loaded zoo (snapshots [S, E+1, P]).
        ks: SVD dimensions; those >= P (or > the number of snapshots) are skipped with a note.
        include_epoch0: also cluster the initializations (the paper's tables leave them out).
        progress: show a tqdm bar over the spaces.
        engine: single-linkage engine ("auto", "numpy" or "jax"; see wsjax.analysis.linkage).
        memory_limit: bytes a single linkage may use (default: what the device reports).

    Returns:
        {"arch", "paper_table", "data", "n_models", "n_snapshots", "excluded", "epochs", "notes",
        "rows", "per_cluster"}. Each row has space, dims, our mean and overall purity, mean ordered
        initial epochs and ordered fraction, and the paper's three values (None where the
        paper has none); per_cluster maps each space to its per-cluster lists.
    """
    healthy = np.flatnonzero(zoo.healthy())
    notes = []
    excluded = [int(s) for s in np.asarray(zoo.seeds)[~zoo.healthy()]]
    if excluded:
        notes.append(f"{len(excluded)} diverged member(s) left out (seeds {excluded})")
    if healthy.shape[0] < 2:
        raise ConfigError(f"{zoo.path}: fewer than 2 healthy members; train a larger zoo")
    first = 0 if include_epoch0 else 1
    epochs = np.arange(first, zoo.num_epochs + 1)
    if epochs.shape[0] < 1:
        raise ConfigError(f"{zoo.path}: no snapshots after epoch 0; train at least one epoch")
    x, model_ids, epoch_ids = zoo.points(epochs=epochs, members=healthy)
    s, e, p = healthy.shape[0], epochs.shape[0], x.shape[1]
    spaces: list = ["full"]
    for k in ks:
        if k >= p or k > x.shape[0]:
            notes.append(f"skipped SVD {k}: k must be below the {p} parameters and at most "
                         f"the {x.shape[0]} snapshots")
        else:
            spaces.append(int(k))
    svd = fit_svd(x, rank=max(spaces[1:])) if len(spaces) > 1 else None
    engine = choose_engine(*x.shape, engine, memory_limit)
    notes.append(f"single linkage: {engine} engine on {jax.default_backend()}")
    it = spaces
    if progress:
        from tqdm import tqdm
        it = tqdm(spaces, desc="spaces", unit="space")
    rows, per_cluster = [], {}
    for space in it:
        xs = x if space == "full" else project(svd, space)
        z = single_linkage(xs, engine=engine, memory_limit=memory_limit)
        labels = cut(z, s)
        heights = merge_heights(z, x.shape[0])
        m = cluster_metrics(labels, model_ids, epoch_ids, heights)
        name = f"{p} (weight space)" if space == "full" else f"SVD {space}"
        rows.append({
            "space": name,
            "dims": p if space == "full" else space,
            "mean_purity": m.mean_purity, "overall_purity": m.overall_purity,
            "ordered_initial": m.mean_ordered_initial,
            "ordered_fraction": m.mean_ordered_fraction,
            **_paper_row(zoo.arch, space),
            "per_model_purity": per_model_purity(labels, model_ids),
            "random_ties": random_tie_orders(labels, model_ids, epoch_ids, heights),
            "ci95": bootstrap_intervals(m)})
        per_cluster[name] = {"dominant": m.dominant.tolist(), "size": m.size.tolist(),
                             "purity": m.purity.tolist(),
                             "ordered_initial": m.ordered_initial.tolist(),
                             "ordered_fraction": [None if np.isnan(v) else float(v)
                                                  for v in m.ordered_fraction]}
    return {"arch": zoo.arch, "paper_table": PAPER_TABLES.get(zoo.arch, {}).get("table"),
            "data": zoo.config.get("data", {}), "n_models": int(s), "n_snapshots": int(s * e),
            "excluded": excluded,
            "epochs": [int(epochs[0]), int(epochs[-1])], "notes": notes, "rows": rows,
            "per_cluster": per_cluster}


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def tables_markdown(t: dict) -> str:
    """One zoo's table as markdown, ours beside the paper's (paper values in parentheses)."""
    d = t.get("data", {})
    lines = [f"{t['arch']} zoo: {t['n_models']} models, {t['n_snapshots']} snapshots (epochs "
             f"{t['epochs'][0]}-{t['epochs'][1]}), cut into {t['n_models']} clusters; compared "
             f"with the paper's {t['paper_table'] or '(no table for this architecture)'}.",
             "",
             f"Trained on {d.get('name', '?')} ({d.get('source', '?')}, {d.get('n_train', '?')} "
             "training images).",
             "",
             "| space | cluster purity (paper) | overall purity | # ordered initial epochs "
             "(paper) | % ordered epochs (paper) |",
             "| --- | --- | --- | --- | --- |"]
    for r in t["rows"]:
        lines.append(
            f"| {r['space']} | {_fmt(r['mean_purity'])} ({_fmt(r['paper_purity'])}) | "
            f"{_fmt(r['overall_purity'])} | {_fmt(r['ordered_initial'])} "
            f"({_fmt(r['paper_ordered_initial'])}) | {_fmt(r['ordered_fraction'])} "
            f"({_fmt(r['paper_ordered_fraction'])}) |")
    lines += ["", "Other readings and 95% intervals (models resampled; ties: merge-height ties "
              "broken at random, mean ± sd of 100 draws, instead of by epoch):", "",
              "| space | cluster purity | overall purity | per-model purity | # ordered initial "
              "| ... random ties | % ordered | ... random ties |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in t["rows"]:
        if "ci95" not in r:  # tables written before these readings existed
            continue
        ci, ties = r["ci95"], r["random_ties"]
        lines.append(
            f"| {r['space']} | {_interval(ci['mean_purity'])} | "
            f"{_interval(ci['overall_purity'])} | {_fmt(r['per_model_purity'])} | "
            f"{_interval(ci['ordered_initial'])} | {_spread(ties['ordered_initial'])} | "
            f"{_interval(ci['ordered_fraction'])} | {_spread(ties['ordered_fraction'])} |")
    for note in t["notes"]:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def _interval(lo_hi) -> str:
    return f"[{_fmt(lo_hi[0])}, {_fmt(lo_hi[1])}]"


def _spread(mean_sd) -> str:
    return f"{_fmt(mean_sd[0])} ± {_fmt(mean_sd[1])}"
