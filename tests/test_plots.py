"""Figures 3-9 on a tiny digits zoo: files written, pixels not blank, right number of drawings."""

from __future__ import annotations

import dataclasses

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_hex
from scipy.cluster.hierarchy import fcluster, linkage

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


def test_dendrogram_colours_match_scipy_clustering(tiny_zoo, tmp_path):
    x, model, epoch = tiny_zoo.points()
    fig, info = plots.plot_dendrogram(x, model, epoch, "dendrogram")
    assert info["models"] == list(plots.choose_models(model, 5)) and len(info["models"]) == 5
    assert info["n_leaves"] == 5 * EPOCHS
    # Independent reference: scipy's clustering cut into as many clusters as models.
    labels = fcluster(linkage(x.astype(np.float64), "single"), SEEDS, "maxclust")
    correct = 0
    for i in np.flatnonzero(np.isin(model, info["models"])):
        ms, counts = np.unique(model[labels == labels[i]], return_counts=True)
        correct += ms[np.argmax(counts)] == model[i]
    assert info["n_coloured"] == correct
    assert_not_blank(plots.save_figure(fig, tmp_path / "fig6")[0])


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
    for stem in stems:
        assert_not_blank(written[stem])
        assert (tmp_path / f"{stem}.pdf").stat().st_size > 1000


def test_make_figures_skips_svd50_with_a_note_when_too_few_snapshots(tiny_zoo, tmp_path):
    small = dataclasses.replace(tiny_zoo, snapshots=np.asarray(tiny_zoo.snapshots[:, :3]),
                                test_accuracy=tiny_zoo.test_accuracy[:, :3])
    written = plots.make_figures(small, tmp_path, umap=False, progress=False)
    assert "skipped" in written["fig7_dendrogram_svd50"]
    assert not (tmp_path / "fig7_dendrogram_svd50.png").exists()
    assert_not_blank(written["fig8_dendrogram_svd5"])
