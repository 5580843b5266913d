"""Figures 3-9 on a tiny digits zoo: files written, pixels not blank, right number of drawings."""

from __future__ import annotations

import dataclasses
import json

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_hex
from scipy.cluster.hierarchy import fcluster, linkage, to_tree

from wsjax import plots
from wsjax.store import load_zoo
from wsjax.zoo import ZooConfig, run_zoo

SEEDS, EPOCHS = 6, 9  # 54 snapshots: enough for SVD-50


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("plots") / "cnn"
    run_zoo(ZooConfig(arch="cnn", dataset="digits", seeds=SEEDS, epochs=EPOCHS), out,
            dataset=digits, progress=False, log=lambda *_: None)
    return load_zoo(out)


def assert_not_blank(png_path):
    img = mpimg.imread(png_path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    colours = np.unique(img.reshape(-1, img.shape[-1]).round(3), axis=0)
    assert len(colours) > 20 and img.std() > 0.02


def test_weight_stats_points_match_numpy(tiny_zoo, tmp_path):
    last = np.asarray(tiny_zoo.snapshots[:, -1])
    fig, info = plots.plot_weight_stats(last, tiny_zoo.test_accuracy[:, -1])
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], last.astype(np.float64).mean(1), rtol=1e-6)
    np.testing.assert_allclose(offsets[:, 1], last.astype(np.float64).std(1), rtol=1e-6)
    assert info["n_points"] == SEEDS and len(fig.axes) == 2  # the colour bar
    png, pdf = plots.save_figure(fig, tmp_path / "fig3")
    assert_not_blank(png)
    assert pdf.read_bytes().startswith(b"%PDF")


def test_umap_draws_one_trajectory_per_model(tiny_zoo, tmp_path):
    x, model, epoch = tiny_zoo.points()
    fig, info = plots.plot_umap(x, model, epoch, "umap", random_state=0)
    lines = [ln for ln in fig.axes[0].get_lines() if str(ln.get_gid()).startswith("trajectory")]
    assert info["n_lines"] == SEEDS == len(lines)
    assert len({to_hex(ln.get_color()) for ln in lines}) == SEEDS
    assert all(len(ln.get_xdata()) == EPOCHS for ln in lines)
    assert info["embedding"].shape == (SEEDS * EPOCHS, 2)
    assert_not_blank(plots.save_figure(fig, tmp_path / "fig4")[0])


def _scipy_reference(x, model, shown):
    """(drawn snapshots whose zoo cluster holds more than one model, drawn links joining
    different models), from scipy's own linkage, cut and tree."""
    labels = fcluster(linkage(x.astype(np.float64), "single"), len(np.unique(model)),
                      "maxclust")
    sel = np.flatnonzero(np.isin(model, shown))
    n_mixed = sum(len(np.unique(model[labels == labels[i]])) > 1 for i in sel)
    _, nodes = to_tree(linkage(x[sel].astype(np.float64), "single"), rd=True)
    n_between = sum(len(np.unique(model[sel][n.pre_order()])) > 1 for n in nodes
                    if not n.is_leaf())
    return n_mixed, n_between


def test_dendrogram_marks_mixed_clusters_and_links_between_models_as_scipy(tiny_zoo, tmp_path):
    x, model, epoch = tiny_zoo.points()
    fig, info = plots.plot_dendrogram(x, model, epoch, "dendrogram")
    assert info["models"] == list(plots.choose_models(model, 5)) and len(info["models"]) == 5
    assert info["n_leaves"] == 5 * EPOCHS
    assert (info["n_mixed"], info["n_between"]) == _scipy_reference(x, model, info["models"])
    assert info["n_between"] >= 4  # 5 models need at least 4 links between them
    assert fig.axes[0].get_yscale() == "log"  # the merges inside a model stay visible
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "link between models" in legend and not any("misassigned" in t for t in legend)
    assert_not_blank(plots.save_figure(fig, tmp_path / "fig6")[0])


def test_dendrogram_marks_the_snapshots_of_a_cluster_that_mixes_models():
    """Two models that interleave along one line and a third far away: cut into 3 clusters,
    the interleaved pair shares clusters, and every one of their snapshots is marked."""
    t = np.arange(10, dtype=np.float64)
    a = np.stack([t, np.zeros(10)], 1)
    b = a + [0.1, 0.0]
    c = np.stack([0.5 * t, np.full(10, 100.0)], 1)
    x = np.concatenate([a, b, c]).astype(np.float32)
    model = np.repeat([0, 1, 2], 10)
    epoch = np.tile(np.arange(1, 11), 3)
    _, info = plots.plot_dendrogram(x, model, epoch, shown=np.array([0, 1, 2]))
    assert info["n_mixed"] == 20
    assert (info["n_mixed"], info["n_between"]) == _scipy_reference(x, model, [0, 1, 2])


def test_cluster_values_draw_every_cluster_and_the_means():
    per = {"full": {"purity": [1.0, 0.5, 1.0], "ordered_initial": [3, 0, 1],
                    "ordered_fraction": [0.5, None, 1.0]},
           "5": {"purity": [0.25, 1.0, 1.0], "ordered_initial": [1, 1, 2],
                 "ordered_fraction": [0.0, 0.2, 0.4]}}
    fig, info = plots.plot_cluster_values(per, {"full": (1.0, 4.5, 0.357)})
    for ax, (key, _) in zip(fig.axes, plots.CLUSTER_METRICS, strict=True):
        for i, space in enumerate(per):
            dots = [c for c in ax.collections if c.get_gid() == f"clusters-{key}-{i}"]
            want = sorted(v for v in per[space][key] if v is not None)
            assert sorted(dots[0].get_offsets()[:, 1]) == pytest.approx(want)
            means = [ln.get_ydata()[0] for ln in ax.get_lines()]
            assert np.mean(want) == pytest.approx(means[i])
    assert [len(v) for v in info["values"]["ordered_fraction"]] == [2, 3]


def test_dendrogram_detail_labels_leaves_by_epoch(tiny_zoo, tmp_path):
    x, model, epoch = tiny_zoo.points()
    fig, info = plots.plot_dendrogram(x, model, epoch, detail=True)
    ticks = sorted(int(t.get_text()) for t in fig.axes[0].get_xticklabels())
    assert ticks == list(range(1, EPOCHS + 1)) and len(info["models"]) == 1
    assert_not_blank(plots.save_figure(fig, tmp_path / "fig9")[0])


def test_make_figures_without_umap_writes_png_and_pdf(tiny_zoo, tmp_path):
    written = plots.make_figures(tiny_zoo, tmp_path, umap=False, progress=False)
    stems = [s for s in plots.FIGURES if "umap" not in s]
    assert sorted(written) == sorted(stems)
    index = json.loads((tmp_path / "figures.json").read_text())
    assert index["version"] == plots.FIGURES_VERSION and index["skipped"] == {}
    for stem in stems:
        assert_not_blank(written[stem])
        assert (tmp_path / f"{stem}.pdf").stat().st_size > 1000


def test_make_figures_skips_svd50_with_a_note_when_too_few_snapshots(tiny_zoo, tmp_path):
    small = dataclasses.replace(tiny_zoo, snapshots=np.asarray(tiny_zoo.snapshots[:, :3]),
                                test_accuracy=tiny_zoo.test_accuracy[:, :3])
    written = plots.make_figures(small, tmp_path, umap=False, progress=False)
    assert "skipped" in written["fig7_dendrogram_svd50"]
    index = json.loads((tmp_path / "figures.json").read_text())
    assert index["skipped"]["fig7_dendrogram_svd50"] == written["fig7_dendrogram_svd50"]
    assert not (tmp_path / "fig7_dendrogram_svd50.png").exists()
    assert_not_blank(written["fig8_dendrogram_svd5"])
