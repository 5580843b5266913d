"""The paper's Figures 3-9 drawn from one zoo: weight statistics, UMAP trajectories, dendrograms.

Every plot function takes arrays and returns `(figure, info)`, where `info` holds what a test
needs to check the drawing (how many trajectories were drawn, which models were coloured).
`make_figures` runs them all on a `Zoo` and writes PNG and PDF files atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from wsjax.analysis.linkage import cut, single_linkage  # noqa: E402
from wsjax.analysis.svd import fit_svd, project  # noqa: E402
from wsjax.store import Zoo, atomic_write_bytes  # noqa: E402

__all__ = ["select_points", "plot_weight_stats", "plot_umap", "plot_dendrogram",
           "plot_training_curves", "save_figure", "make_figures", "FIGURES"]

GREY = "#b0b0b0"
# (file stem, caption) in the order the report shows them.
FIGURES = {
    "fig3_weight_stats": "Fig. 3: mean vs standard deviation of each model's weights at the last "
                         "epoch, coloured by test accuracy.",
    "fig4_umap_full": "Fig. 4: UMAP of the full weight space; one colour per model, consecutive "
                      "epochs joined.",
    "fig5_umap_svd50": "Fig. 5: UMAP of the truncated SVD-50 space.",
    "fig6_dendrogram_full": "Fig. 6: single-linkage dendrogram, full weight space (5 models).",
    "fig7_dendrogram_svd50": "Fig. 7: single-linkage dendrogram, SVD-50 (5 models).",
    "fig8_dendrogram_svd5": "Fig. 8: single-linkage dendrogram, SVD-5 (5 models).",
    "fig9_dendrogram_detail": "Fig. 9: one model's cluster in detail (full space), leaves "
                              "labelled by epoch.",
}


def _svd_project(x: np.ndarray, k: int) -> np.ndarray:
    """[n, d] -> [n, k] truncated SVD (no centering)."""
    return np.asarray(project(fit_svd(x, rank=k), k))


def _single_linkage(x: np.ndarray) -> np.ndarray:
    """[n, d] -> scipy-layout linkage matrix [(n-1), 4]."""
    return np.asarray(single_linkage(x), np.float64)


def _cut(z: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(cut(z, k))


def select_points(snapshots: np.ndarray, include_init: bool = False,
                  models: np.ndarray | None = None):
    """Flattens a zoo's snapshots into points.

    Args:
        snapshots: [S, E+1, P].
        include_init: keep epoch 0 (the initialization); the paper's analysis leaves it out.
        models: optional int indices of the models to keep (default all).

    Returns:
        (x [n, P] float32, model [n] int, epoch [n] int), n = S' * E' (model-major order).
    """
    snaps = np.asarray(snapshots)
    s, e1, _ = snaps.shape
    models = np.arange(s) if models is None else np.asarray(models)
    first = 0 if include_init else 1
    sub = snaps[models, first:]
    epochs = np.arange(first, e1)
    x = sub.reshape(-1, sub.shape[-1]).astype(np.float32)
    return x, np.repeat(models, len(epochs)), np.tile(epochs, len(models))


def _model_colours(n: int) -> np.ndarray:
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return np.array([cmap(i % cmap.N) for i in range(n)])


def plot_weight_stats(last: np.ndarray, accuracy: np.ndarray, title: str = "") -> tuple:
    """Fig. 3. last: [S, P] weights at the last epoch; accuracy: [S] test accuracy (0-1)."""
    last = np.asarray(last, np.float64)
    mean, std = last.mean(axis=1), last.std(axis=1)
    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    pts = ax.scatter(mean, std, c=np.asarray(accuracy), cmap="viridis", s=22,
                     edgecolors="k", linewidths=0.3)
    fig.colorbar(pts, ax=ax, label="test accuracy")
    ax.set(xlabel="mean of weights", ylabel="standard deviation of weights",
           title=title or "Weight statistics per model (last epoch)")
    ax.grid(alpha=0.3)
    return fig, {"n_points": len(mean)}


def plot_umap(x: np.ndarray, model: np.ndarray, epoch: np.ndarray, title: str = "",
              random_state: int = 0, n_neighbors: int = 3, min_dist: float = 0.3) -> tuple:
    """Figs. 4-5: UMAP of the points x [n, d]; one colour per model, epochs joined in order.

    Returns (figure, {"n_lines": trajectories drawn, "embedding": [n, 2]}).
    """
    import umap  # lazy: umap-learn pulls in numba

    emb = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=random_state,
                    n_jobs=1).fit_transform(np.asarray(x, np.float32))
    models = np.unique(model)
    colours = _model_colours(len(models))
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    n_lines = 0
    for i, m in enumerate(models):
        sel = np.flatnonzero(model == m)
        sel = sel[np.argsort(epoch[sel])]
        ax.plot(emb[sel, 0], emb[sel, 1], "-", color=colours[i], lw=0.6, alpha=0.7,
                gid=f"trajectory-{m}")
        ax.scatter(emb[sel, 0], emb[sel, 1], color=colours[i], s=8)
        ax.scatter(emb[sel[:1], 0], emb[sel[:1], 1], color=colours[i], s=30, marker="^",
                   edgecolors="k", linewidths=0.4)
        n_lines += 1
    ax.set(title=title, xticks=[], yticks=[], xlabel="UMAP 1", ylabel="UMAP 2")
    ax.text(0.01, 0.01, f"{len(models)} models, {len(x)} snapshots; ▲ = first epoch shown",
            transform=ax.transAxes, fontsize=8, color="0.3")
    return fig, {"n_lines": n_lines, "embedding": emb}


def choose_models(model: np.ndarray, n_show: int = 5) -> np.ndarray:
    """Up to n_show model indices spread over the zoo (evenly spaced by model index)."""
    models = np.unique(model)
    idx = np.linspace(0, len(models) - 1, min(n_show, len(models))).round().astype(int)
    return models[np.unique(idx)]


def plot_dendrogram(x: np.ndarray, model: np.ndarray, epoch: np.ndarray, title: str = "",
                    shown: np.ndarray | None = None, n_show: int = 5,
                    detail: bool = False) -> tuple:
    """Figs. 6-9: single-linkage dendrogram of the snapshots of a few models.

    The whole zoo is clustered (cut into as many clusters as models); a snapshot is coloured
    with its model's colour when its cluster's dominant model is its own, grey otherwise. The
    drawing shows only the `shown` models' snapshots (clustered among themselves with the same
    linkage), so that 5 of 250 trajectories stay readable. With detail=True only the first
    shown model is drawn and its leaves are labelled by epoch.

    Args:
        x: [n, d] points; model, epoch: [n] ints.
        shown: models to draw (default: n_show spread over the zoo).

    Returns:
        (figure, {"models": drawn model ids, "n_coloured": coloured leaves, "n_leaves": leaves}).
    """
    from scipy.cluster.hierarchy import dendrogram

    model, epoch = np.asarray(model), np.asarray(epoch)
    n_models = len(np.unique(model))
    labels = _cut(_single_linkage(x), n_models)
    dominant = {}
    for c in np.unique(labels):
        ms, counts = np.unique(model[labels == c], return_counts=True)
        dominant[c] = ms[np.argmax(counts)]
    correct = np.array([dominant[c] == m for c, m in zip(labels, model, strict=True)])
    shown = choose_models(model, n_show) if shown is None else np.asarray(shown)
    if detail:
        shown = shown[:1]
    sel = np.flatnonzero(np.isin(model, shown))
    z = _single_linkage(x[sel])
    colours = dict(zip(shown, _model_colours(max(len(shown), 5))[:len(shown)], strict=True))
    leaf_colour = [matplotlib.colors.to_hex(colours[model[i]]) if correct[i] else GREY
                   for i in sel]
    n_leaves = len(sel)
    # A link takes the colour of its leaves when they all share one; mixed links are grey.
    node_colour = leaf_colour + [None] * (n_leaves - 1)
    for j, (a, b, _, _) in enumerate(z):
        ca, cb = node_colour[int(a)], node_colour[int(b)]
        node_colour[n_leaves + j] = ca if ca == cb else GREY
    width = 7 if detail else min(18, 6 + n_leaves * 0.04)
    fig, ax = plt.subplots(figsize=(width, 4.5), layout="constrained")
    leaf_labels = [str(epoch[i]) for i in sel] if detail else None
    dendrogram(z, ax=ax, labels=leaf_labels, no_labels=not detail,
               link_color_func=lambda k: node_colour[k], leaf_font_size=7)
    if detail:
        ax.set_xlabel(f"epoch (model {shown[0]})")
    else:
        handles = [plt.Line2D([], [], color=colours[m], lw=2, label=f"model {m}") for m in shown]
        handles.append(plt.Line2D([], [], color=GREY, lw=2, label="mixed / misassigned"))
        ax.legend(handles=handles, fontsize=8, loc="upper right", frameon=True)
        ax.set_xlabel(f"{n_leaves} snapshots of {len(shown)} models")
    ax.set(ylabel="merge distance (single linkage)", title=title)
    return fig, {"models": [int(m) for m in shown], "n_leaves": n_leaves,
                 "n_coloured": int(sum(c != GREY for c in leaf_colour))}


def plot_training_curves(test_accuracy: np.ndarray, title: str = "") -> tuple:
    """Test accuracy per epoch [S, E+1]: median over seeds, 10-90% and min-max bands."""
    acc = np.asarray(test_accuracy, np.float64)
    ep = np.arange(acc.shape[1])
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.fill_between(ep, np.nanmin(acc, 0), np.nanmax(acc, 0), color="C0", alpha=0.15,
                    label="min-max")
    ax.fill_between(ep, *np.nanpercentile(acc, [10, 90], 0), color="C0", alpha=0.3,
                    label="10-90%")
    ax.plot(ep, np.nanmedian(acc, 0), color="C0", lw=2, label="median")
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1),
           title=title or f"Test accuracy over {acc.shape[0]} seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig, {"n_seeds": acc.shape[0]}


def save_figure(fig: Figure, stem: str | Path, formats=("png", "pdf"), dpi: int = 130) -> list:
    """Writes fig as stem.png / stem.pdf atomically, closes it, returns the paths."""
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi)
        path = Path(f"{stem}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def make_figures(zoo: Zoo, out_dir: str | Path, include_init: bool = False,
                 random_state: int = 0, progress: bool = True, umap: bool = True,
                 log=print) -> dict:
    """Draws Figs. 3-9 for one zoo into out_dir (PNG and PDF).

    Returns:
        {figure stem: PNG path} for the figures written; a skipped one maps to its reason (str).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    healthy = np.flatnonzero(zoo.healthy())
    name = f"{zoo.arch} ({len(healthy)} models)"
    x, model, epoch = select_points(zoo.snapshots, include_init, models=healthy)
    p = x.shape[1]
    steps = ["fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9"]
    written: dict = {}
    bar = tqdm(steps, desc="figures", disable=not progress)
    svd50 = _svd_project(x, 50) if min(x.shape) > 50 else None
    why = f"skipped: SVD-50 needs more than 50 snapshots and weights (have {x.shape[0]}, {p})"
    for step in bar:
        bar.set_postfix_str(step)
        if step == "fig3":
            fig, _ = plot_weight_stats(zoo.snapshots[healthy, -1],
                                       zoo.test_accuracy[healthy, -1], f"Weight statistics, {name}")
            stem = "fig3_weight_stats"
        elif step == "fig4":
            if not umap:
                continue
            fig, _ = plot_umap(x, model, epoch, f"UMAP of the weight space (P={p}), {name}",
                               random_state)
            stem = "fig4_umap_full"
        elif step == "fig5":
            if not umap:
                continue
            if svd50 is None:
                written["fig5_umap_svd50"] = why
                continue
            fig, _ = plot_umap(svd50, model, epoch, f"UMAP of SVD-50, {name}", random_state)
            stem = "fig5_umap_svd50"
        elif step == "fig6":
            fig, _ = plot_dendrogram(x, model, epoch, f"Single linkage, weight space, {name}")
            stem = "fig6_dendrogram_full"
        elif step == "fig7":
            if svd50 is None:
                written["fig7_dendrogram_svd50"] = why
                continue
            fig, _ = plot_dendrogram(svd50, model, epoch, f"Single linkage, SVD-50, {name}")
            stem = "fig7_dendrogram_svd50"
        elif step == "fig8":
            fig, _ = plot_dendrogram(_svd_project(x, 5), model, epoch,
                                     f"Single linkage, SVD-5, {name}")
            stem = "fig8_dendrogram_svd5"
        else:
            fig, info = plot_dendrogram(x, model, epoch, "", detail=True)
            fig.axes[0].set_title(f"One cluster in detail, weight space, {name}")
            stem = "fig9_dendrogram_detail"
        written[stem] = save_figure(fig, out / stem)[0]
    return written
