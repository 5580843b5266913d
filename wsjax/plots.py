"""The paper's Figures 3-9 drawn from one zoo: weight statistics, UMAP trajectories, dendrograms.

Every plot function takes arrays and returns `(figure, info)`, where `info` holds what a test
needs to check the drawing (how many trajectories were drawn, which models were coloured).
`make_figures` runs them all on a `Zoo` and writes PNG and PDF files atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from wsjax.analysis.linkage import cut, single_linkage  # noqa: E402
from wsjax.analysis.svd import fit_svd, project  # noqa: E402
from wsjax.store import Zoo, atomic_write_bytes, atomic_write_json  # noqa: E402

__all__ = ["plot_weight_stats", "plot_umap", "plot_dendrogram",
           "plot_cluster_values", "plot_training_curves", "save_figure", "make_figures",
           "FIGURES", "FIGURE_SPACES", "FIGURES_VERSION", "Caption"]

BETWEEN = "#8c8c8c"  # links that join snapshots of different models
MIXED = "#d62728"  # marks a snapshot whose cluster holds more than one model


class Caption(NamedTuple):
    """A figure's caption: what it shows (also the image's alt text), and what to look for in it,
    next to what the paper's figure shows."""

    title: str
    look_for: str

    def __str__(self) -> str:
        return f"{self.title} {self.look_for}"


# Bump when a drawing changes, so that reports redraw figures made by an older wsjax.
FIGURES_VERSION = 2
# file stem -> caption, in the order the report shows them.
FIGURES = {
    "fig3_weight_stats": Caption(
        "Fig. 3: mean against standard deviation of each model's weights after the last epoch, "
        "coloured by test accuracy.",
        "Look for whether accuracy follows these statistics. In the paper's Fig. 3 it does not "
        "(accurate models over the whole range); its CNN points form a structured band and its "
        "FFNN points a broad cloud."),
    "fig4_umap_full": Caption(
        "Fig. 4: UMAP of the full weight space, one colour per model, its epochs joined in "
        "order (▲ = first epoch shown).",
        "Look for one separate strand per model, long steps early and short ones late. The "
        "paper's CNN strands are smooth (and bunched), its FFNN strands noisier but "
        "recognisable."),
    "fig5_umap_svd50": Caption(
        "Fig. 5: the same UMAP of the truncated SVD-50 space.",
        "In the paper the CNN strands are cleanly separated here and the FFNN's are noisier; "
        "strands that cross or merge here are models the reduction brings together."),
    "fig6_dendrogram_full": Caption(
        "Fig. 6: single-linkage dendrogram of 5 models' snapshots, full weight space, on a log "
        "distance axis.",
        "Each model should be one subtree in its own colour: a staircase of merges inside the "
        "model (late epochs join first, low down; early epochs last, higher up), joined to the "
        "other models only by the grey links above it. The paper's Fig. 6 shows 5 of its 250 "
        "models this way, each cluster pure."),
    "fig7_dendrogram_svd50": Caption(
        "Fig. 7: the same dendrogram in the truncated SVD-50 space.",
        "In the paper's appendix SVD-50 still keeps every snapshot with its model: expect the "
        "same picture as Fig. 6."),
    "fig8_dendrogram_svd5": Caption(
        "Fig. 8: the same dendrogram in the truncated SVD-5 space.",
        "Here the paper's purity falls below 1 for both of its zoos: expect red marks under "
        "snapshots whose cluster mixes models, and staircases broken up."),
    "fig9_dendrogram_detail": Caption(
        "Fig. 9: one model's cluster in detail (full weight space), leaves labelled by epoch.",
        "On a perfect trajectory the epochs join in order from the top: epoch 1 last and "
        "highest, then 2, 3, ... The paper's CNN detail keeps long ordered runs, its FFNN "
        "detail short ones."),
}
# The space each dendrogram clusters in ("full" or an SVD dimension): the report compares it
# with that space's row of the tables.
FIGURE_SPACES = {"fig6_dendrogram_full": "full", "fig7_dendrogram_svd50": 50,
                 "fig8_dendrogram_svd5": 5, "fig9_dendrogram_detail": "full"}


def _single_linkage(x: np.ndarray) -> np.ndarray:
    """[n, d] -> scipy-layout linkage matrix [(n-1), 4]."""
    return np.asarray(single_linkage(x), np.float64)


def _cut(z: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(cut(z, k))


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
    """Figs. 6-9: single-linkage dendrogram of the snapshots of a few models, log distance axis.

    The whole zoo is clustered and cut into as many clusters as models; a snapshot whose cluster
    holds snapshots of more than one model is marked (red, under its leaf). The drawing shows
    only the `shown` models' snapshots (clustered among themselves with the same linkage), so
    that 5 of 250 trajectories stay readable: a link inside one model takes that model's colour,
    a link joining different models is grey. The distance axis is logarithmic because the merges
    inside a model are orders of magnitude shorter than those between models. With detail=True
    only the first shown model is drawn and its leaves are labelled by epoch.

    Args:
        x: [n, d] points; model, epoch: [n] ints.
        shown: models to draw (default: n_show spread over the zoo).

    Returns:
        (figure, {"models": drawn model ids, "n_leaves": leaves drawn, "n_mixed": drawn
        snapshots whose zoo cluster holds more than one model, "n_between": links drawn that
        join different models}).
    """
    from scipy.cluster.hierarchy import dendrogram

    model, epoch = np.asarray(model), np.asarray(epoch)
    n_models = len(np.unique(model))
    labels = _cut(_single_linkage(x), n_models)
    models_in = {c: len(np.unique(model[labels == c])) for c in np.unique(labels)}
    mixed = np.array([models_in[c] > 1 for c in labels])
    shown = choose_models(model, n_show) if shown is None else np.asarray(shown)
    if detail:
        shown = shown[:1]
    sel = np.flatnonzero(np.isin(model, shown))
    z = _single_linkage(x[sel])
    colours = dict(zip(shown, _model_colours(max(len(shown), 5))[:len(shown)], strict=True))
    n_leaves = len(sel)
    # A link takes its model's colour when everything below it is that one model's snapshots.
    node_model = [int(model[i]) for i in sel] + [-1] * (n_leaves - 1)
    for j, (a, b, _, _) in enumerate(z):
        ma, mb = node_model[int(a)], node_model[int(b)]
        node_model[n_leaves + j] = ma if ma == mb else -1
    node_colour = [matplotlib.colors.to_hex(colours[m]) if m >= 0 else BETWEEN
                   for m in node_model]
    width = 7 if detail else min(11, 6 + n_leaves * 0.03)
    fig, ax = plt.subplots(figsize=(width, 4.2), layout="constrained")
    leaf_labels = [str(epoch[i]) for i in sel] if detail else None
    d = dendrogram(z, ax=ax, labels=leaf_labels, no_labels=not detail,
                   link_color_func=lambda k: node_colour[k], leaf_font_size=7)
    heights = z[:, 2][z[:, 2] > 0]
    if len(heights):
        ax.set_yscale("log")
        ax.set_ylim(heights.min() / 1.5, heights.max() * 1.5)
    leaf_x = 10 * np.arange(n_leaves) + 5  # where scipy draws the leaves, in leaf order
    marked = mixed[sel][d["leaves"]]
    ax.scatter(leaf_x[marked], np.zeros(int(marked.sum())), marker="^", s=18, color=MIXED,
               transform=ax.get_xaxis_transform(), clip_on=False, zorder=3)
    n_mixed = int(mixed[sel].sum())
    if detail:
        ax.set_xlabel(f"epoch (model {shown[0]})")
    else:
        handles = [plt.Line2D([], [], color=colours[m], lw=2, label=f"model {m}") for m in shown]
        handles.append(plt.Line2D([], [], color=BETWEEN, lw=2, label="link between models"))
        handles.append(plt.Line2D([], [], color=MIXED, marker="^", ls="", ms=6,
                                  label=f"in a mixed cluster ({n_mixed} of {n_leaves})"))
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
                  frameon=False)
        ax.set_xlabel(f"{n_leaves} snapshots of {len(shown)} models (whole zoo cut into "
                      f"{n_models} clusters)")
    ax.set(ylabel="merge distance (log scale)", title=title)
    return fig, {"models": [int(m) for m in shown], "n_leaves": n_leaves, "n_mixed": n_mixed,
                 "n_between": int(sum(m < 0 for m in node_model[n_leaves:]))}


# (per-cluster key in tables.json, axis label), in the paper's column order.
CLUSTER_METRICS = (("purity", "cluster purity"), ("ordered_initial", "# ordered initial epochs"),
                   ("ordered_fraction", "% ordered epochs"))


def plot_cluster_values(per_cluster: dict, paper: dict | None = None, title: str = "") -> tuple:
    """Per-cluster purity and epoch order in each space: one dot per cluster, the mean as a bar.

    Args:
        per_cluster: {space label: {"purity": [C], "ordered_initial": [C],
            "ordered_fraction": [C] (None where a cluster has a single snapshot)}}, in the
            order to draw.
        paper: {space label: (purity, ordered initial, ordered fraction)}: the paper's means,
            drawn as open diamonds where known.

    Returns:
        (figure, {"values": {metric: [array of the finite values drawn, one per space]}}).
    """
    spaces = list(per_cluster)
    rng = np.random.default_rng(0)  # fixed jitter: the same page every time
    fig, axes = plt.subplots(1, len(CLUSTER_METRICS), figsize=(11, 2.9), layout="constrained")
    drawn: dict = {}
    for j, (ax, (key, label)) in enumerate(zip(axes, CLUSTER_METRICS, strict=True)):
        drawn[key] = []
        for i, space in enumerate(spaces):
            v = np.array([np.nan if u is None else u for u in per_cluster[space][key]], float)
            v = v[np.isfinite(v)]
            drawn[key].append(v)
            ax.scatter(i + rng.uniform(-0.28, 0.28, len(v)), v, s=7, color="C0", alpha=0.45,
                       linewidths=0, gid=f"clusters-{key}-{i}")
            if len(v):
                ax.plot([i - 0.34, i + 0.34], [v.mean()] * 2, color="k", lw=2)
            ref = (paper or {}).get(space)
            if ref is not None and ref[j] is not None:
                ax.scatter([i], [ref[j]], marker="D", s=34, facecolors="none",
                           edgecolors="C3", linewidths=1.5, zorder=3)
        ax.set_xticks(range(len(spaces)), spaces, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Line2D([], [], color="C0", marker="o", ls="", ms=4, alpha=0.6,
                          label="one cluster"),
               plt.Line2D([], [], color="k", lw=2, label="our mean"),
               plt.Line2D([], [], color="C3", marker="D", ls="", ms=6, mfc="none",
                          label="paper's mean")]
    axes[-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
                    frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, {"values": drawn}


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
        The same reasons, and the version of the drawings, go to out_dir/figures.json.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    healthy = np.flatnonzero(zoo.healthy())
    name = f"{zoo.arch} ({len(healthy)} models)"
    x, model, epoch = zoo.points(epochs=np.arange(0 if include_init else 1, zoo.num_epochs + 1))
    p = x.shape[1]
    steps = ["fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9"]
    written: dict = {}
    bar = tqdm(steps, desc="figures", disable=not progress)
    svd = fit_svd(x, rank=min(50, *x.shape))
    svd50 = np.asarray(project(svd, 50)) if min(x.shape) > 50 else None
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
            fig, _ = plot_dendrogram(np.asarray(project(svd, 5)), model, epoch,
                                     f"Single linkage, SVD-5, {name}")
            stem = "fig8_dendrogram_svd5"
        else:
            fig, info = plot_dendrogram(x, model, epoch, "", detail=True)
            fig.axes[0].set_title(f"One cluster in detail, weight space, {name}")
            stem = "fig9_dendrogram_detail"
        written[stem] = save_figure(fig, out / stem)[0]
    atomic_write_json(out / "figures.json", {
        "version": FIGURES_VERSION, "include_init": include_init, "umap": umap,
        "skipped": {k: v for k, v in written.items() if isinstance(v, str)}})
    return written
