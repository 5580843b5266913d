"""Weight-space analysis against independent references: numpy, scikit-learn, scipy, by hand."""

import numpy as np
import pytest
from scipy.cluster import hierarchy
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics import adjusted_rand_score

from wsjax.analysis.linkage import _mst_in_order, cut, merge_heights, mst, single_linkage
from wsjax.analysis.svd import fit_svd, project
from wsjax.errors import ConfigError


def _trajectories(rng, models=6, steps=15, d=12):
    """Random walks whose steps shrink, like training trajectories; [models * steps, d]."""
    starts = rng.normal(size=(models, 1, d)) * 10.0
    scale = 0.7 ** np.arange(steps)[None, :, None]
    walk = np.cumsum(rng.normal(size=(models, steps, d)) * scale, axis=1)
    return (starts + walk).reshape(models * steps, d)


def test_svd_matches_numpy_and_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 25)) + 3.0  # off-centre: centering would change the answer
    svd = fit_svd(x.astype(np.float32))
    np.testing.assert_allclose(svd.s, np.linalg.svd(x, compute_uv=False), rtol=1e-5)
    ref = TruncatedSVD(n_components=5, algorithm="arpack").fit_transform(x)
    ours = project(svd, 5)
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours * signs, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError):
        project(svd, 26)


@pytest.mark.parametrize("kind", ["random", "trajectory", "duplicates"])
def test_single_linkage_matches_scipy(kind):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 30)) if kind == "random" else _trajectories(rng)
    if kind == "duplicates":
        x[3] = x[4]
        x[10] = x[50]
    z = single_linkage(x)
    ref = hierarchy.linkage(x, method="single")
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(z[:, 3][-1], x.shape[0])
    assert hierarchy.is_valid_linkage(z)
    hierarchy.dendrogram(z, no_plot=True)
    nn = np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, 1]
    np.testing.assert_allclose(merge_heights(z, x.shape[0]), nn, rtol=1e-6, atol=1e-9)
    for k in (1, 2, 6, 17):
        labels = cut(z, k)
        assert len(np.unique(labels)) == k
        if kind != "duplicates":
            want = hierarchy.fcluster(ref, k, "maxclust")
            assert adjusted_rand_score(labels, want) == 1.0


def _scipy_heights(x):
    return hierarchy.linkage(x, method="single")[:, 2]


@pytest.mark.parametrize("kind", ["shuffled", "tiny_steps", "grid_ties", "few_points"])
@pytest.mark.parametrize("group,block", [(8, 2048), (3, 6), (1, 4)])
def test_mst_blocks_groups_and_float32_traps(kind, group, block):
    """Edge lengths equal scipy's merge heights whatever the grouping and blocking; the cases
    are built to trap a float32 distance: points in random order (no group is one
    trajectory), steps down to 1e-5 beside norms of ~100 (float32 cannot tell them apart, so
    the float64 recheck must), exact ties on an integer grid, and 2-5 points."""
    rng = np.random.default_rng(7)
    if kind == "shuffled":
        x = rng.permutation(_trajectories(rng, models=5, steps=13, d=9))
    elif kind == "tiny_steps":
        starts = rng.normal(size=(4, 1, 16)) * 100.0
        steps = rng.normal(size=(4, 20, 16)) * (0.5 ** np.arange(20))[None, :, None]
        x = (starts + np.cumsum(steps, axis=1)).reshape(80, 16)
    elif kind == "grid_ties":
        x = np.stack(np.meshgrid(np.arange(6), np.arange(5), [0, 3]), -1).reshape(-1, 3) * 1.0
    else:
        x = rng.normal(size=(int(rng.integers(2, 6)), 4))
    for n in ([x.shape[0]] if kind != "few_points" else [2, x.shape[0]]):
        a, b, w = mst(x[:n], group=group, block=block)
        # The same without first sorting near points together (groups then mix components).
        w_raw = _mst_in_order(x[:n], group, block, 2.0 ** -15, "numpy")[2]
        np.testing.assert_allclose(np.sort(w_raw), np.sort(w), rtol=1e-12)
        assert len(a) == n - 1
        np.testing.assert_allclose(np.sort(w), _scipy_heights(x[:n]), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(w, np.linalg.norm(x[a] - x[b], axis=1), rtol=1e-6)
        # A spanning tree: n - 1 edges that connect everything.
        labels = np.arange(n)
        for i, j in zip(a, b, strict=True):
            labels[labels == labels[j]] = labels[i]
        assert len(np.unique(labels)) == 1


def test_mst_jax_engine_equals_numpy_engine():
    rng = np.random.default_rng(3)
    x = _trajectories(rng, models=4, steps=11, d=10)
    ours = mst(x, group=4, block=8, engine="jax")
    ref = mst(x, group=4, block=8, engine="numpy")
    np.testing.assert_allclose(np.sort(ours[2]), np.sort(ref[2]), rtol=1e-12)
    np.testing.assert_allclose(np.sort(ours[2]), _scipy_heights(x), rtol=1e-9)
    with pytest.raises(ConfigError, match="engine"):
        mst(x, engine="cuda")


def test_single_linkage_rejects_bad_input():
    with pytest.raises(ConfigError):
        single_linkage(np.zeros((1, 3)))
    with pytest.raises(ConfigError):
        single_linkage(np.array([[0.0], [np.nan]]))


def test_metrics_perfect_chain():
    from wsjax.analysis.metrics import cluster_metrics
    # One model, epochs 1..5, heights decreasing with epoch: order 1,2,3,4,5.
    m = cluster_metrics(np.zeros(5, int), np.zeros(5, int), np.arange(1, 6),
                        np.array([5.0, 4.0, 3.0, 2.0, 1.0]))
    assert m.mean_purity == 1.0 and m.overall_purity == 1.0
    assert m.ordered_initial.tolist() == [5]
    assert m.mean_ordered_fraction == 1.0


def test_metrics_one_swap():
    from wsjax.analysis.metrics import cluster_metrics
    # Epochs 3 and 4 swapped: order 1,2,4,3,5 -> prefix 2; pairs 1-2 ok, 2-4, 4-3, 3-5 not.
    heights = np.array([5.0, 4.0, 2.0, 3.0, 1.0])
    m = cluster_metrics(np.zeros(5, int), np.zeros(5, int), np.arange(1, 6), heights)
    assert m.ordered_initial.tolist() == [2]
    assert m.ordered_fraction.tolist() == [0.25]


def test_metrics_mixed_cluster_and_singleton():
    from wsjax.analysis.metrics import cluster_metrics
    # Cluster 0: model 7 (epochs 1, 2, 3) and one snapshot of model 8; cluster 1: model 8 alone.
    labels = np.array([0, 0, 0, 0, 1])
    models = np.array([7, 8, 7, 7, 8])
    epochs = np.array([1, 1, 3, 2, 2])
    heights = np.array([9.0, 9.5, 1.0, 2.0, 0.5])
    m = cluster_metrics(labels, models, epochs, heights)
    assert m.dominant.tolist() == [7, 8]
    np.testing.assert_allclose(m.purity, [0.75, 1.0])
    assert m.mean_purity == pytest.approx(0.875)
    assert m.overall_purity == pytest.approx(0.8)
    assert m.ordered_initial.tolist() == [3, 1]  # model 7 by height: epochs 1, 2, 3
    assert m.ordered_fraction[0] == 1.0 and np.isnan(m.ordered_fraction[1])
    assert m.mean_ordered_fraction == 1.0  # the singleton has no pairs and is left out
    assert m.mean_ordered_initial == 2.0


def test_dominant_model_of_each_cluster_by_hand():
    from wsjax.analysis.metrics import dominant_models

    labels = np.array([5, 5, 5, 2, 2, 9])
    models = np.array([30, 10, 30, 40, 10, 7])  # cluster 2 ties 10 / 40: the smaller id wins
    dom = dominant_models(labels, models)
    assert list(dom.clusters) == [2, 5, 9] and list(dom.model) == [10, 30, 7]
    assert list(dom.count) == [1, 2, 1] and list(dom.size) == [2, 3, 1]
    assert list(dom.own) == [True, False, True, False, True, True]


def test_tables_end_to_end_on_a_tiny_zoo(tmp_path, capsys):
    import json

    from experiments.tables import main
    from wsjax.cli import run_cli
    from wsjax.zoo import ZooConfig, run_zoo

    run = run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=4, epochs=5), tmp_path / "z",
                  progress=False, log=lambda *_: None)
    assert run_cli(main, ["--run", str(run), "--ks", "10", "5", "99999", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "weight space" in out and "(1.000)" in out  # the paper's FFNN value is beside ours
    table = json.loads((run / "tables.json").read_text())
    assert [r["dims"] for r in table["rows"]][1:] == [10, 5]
    assert any("skipped SVD 99999" in n for n in table["notes"])
    assert table["n_snapshots"] == 4 * 5 and table["n_models"] == 4
    for r in table["rows"]:
        assert 0.0 < r["mean_purity"] <= 1.0 and 0.0 < r["overall_purity"] <= 1.0
        assert 0 <= r["ordered_initial"] <= 5
        lo, hi = r["ci95"]["mean_purity"]
        assert lo <= r["mean_purity"] <= hi and 0.0 < r["per_model_purity"] <= 1.0
        assert 0 <= r["random_ties"]["ordered_initial"][0] <= 5
    assert (run / "tables.md").read_text().startswith("ffnn zoo: 4 models")
    assert "random ties" in out and "±" in out
    assert run_cli(main, ["--run", str(tmp_path / "missing")]) == 2
