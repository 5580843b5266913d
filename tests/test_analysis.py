"""Weight-space analysis against independent references: numpy, scikit-learn, scipy, by hand."""

import numpy as np
import pytest
from scipy.cluster import hierarchy
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics import adjusted_rand_score

from wsjax.analysis.linkage import _grouped_mst, cut, merge_heights, mst, single_linkage
from wsjax.analysis.svd import fit_svd, project
from wsjax.errors import ConfigError


def _trajectories(rng, models=6, steps=15, d=12):
    """Random walks whose steps shrink, like training trajectories; [models * steps, d]."""
    starts = rng.normal(size=(models, 1, d)) * 10.0
    scale = 0.7 ** np.arange(steps)[None, :, None]
    walk = np.cumsum(rng.normal(size=(models, steps, d)) * scale, axis=1)
    return (starts + walk).reshape(models * steps, d)


@pytest.mark.parametrize("shape", [(60, 25), (25, 60)])
def test_svd_matches_numpy_and_sklearn(shape):
    rng = np.random.default_rng(0)
    # Off-centre (centering would change the answer), and float32 input computed in float64.
    x = (rng.normal(size=shape) + 3.0).astype(np.float32)
    u, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    svd = fit_svd(x, rank=10)
    np.testing.assert_allclose(svd.s, s[:10], rtol=1e-10)
    signs = np.sign(np.sum(svd.vt * vt[:10], axis=1))
    np.testing.assert_allclose(svd.vt * signs[:, None], vt[:10], atol=1e-9)
    np.testing.assert_allclose(svd.u * signs, u[:, :10], atol=1e-9)
    np.testing.assert_allclose(project(svd, 5) * signs[:5], u[:, :5] * s[:5], atol=1e-9 * s[0])
    ref = TruncatedSVD(n_components=5, algorithm="arpack").fit_transform(x)  # float32 inside
    ref_signs = np.sign(np.sum(project(svd, 5) * ref, axis=0))
    np.testing.assert_allclose(project(svd, 5) * ref_signs, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError):
        project(svd, 11)
    with pytest.raises(ConfigError):
        fit_svd(x, rank=26)


def _points(kind: str) -> np.ndarray:
    """Test sets built to trap an exact single linkage, all [n <= 128, 16] so that the jax
    engine compiles once for them: random points; trajectories; trajectories with duplicated
    points; a lattice (exact ties everywhere); steps down to 1e-5 beside norms of ~100 (float32
    cannot tell them apart, so the float64 recheck must)."""
    rng = np.random.default_rng(1)
    if kind == "random":
        return rng.normal(size=(100, 16))
    if kind in ("trajectory", "duplicates"):
        x = _trajectories(rng, d=16)
        if kind == "duplicates":
            x[3] = x[4]
            x[10] = x[50]
            x[60:63] = x[20]
        return x
    if kind == "lattice":
        grid = np.stack(np.meshgrid(np.arange(6), np.arange(6), [0, 1, 3]), -1).reshape(-1, 3)
        return np.pad(grid * 1.0, ((0, 0), (0, 13)))
    starts = rng.normal(size=(4, 1, 16)) * 100.0
    steps = rng.normal(size=(4, 20, 16)) * (0.5 ** np.arange(20))[None, :, None]
    return (starts + np.cumsum(steps, axis=1)).reshape(80, 16)


def _assert_spanning_tree(a, b, w, x):
    n = x.shape[0]
    assert len(a) == n - 1
    np.testing.assert_allclose(w, np.linalg.norm(x[a] - x[b], axis=1), rtol=1e-12)
    graph = coo_matrix((np.ones(n - 1), (a, b)), shape=(n, n))
    assert connected_components(graph, directed=False)[0] == 1


@pytest.mark.parametrize("engine", ["numpy", "jax"])
@pytest.mark.parametrize("kind", ["random", "trajectory", "duplicates", "lattice", "tiny_steps"])
def test_single_linkage_matches_scipy(kind, engine):
    x = _points(kind)
    n = x.shape[0]
    a, b, w = mst(x, engine=engine)
    _assert_spanning_tree(a, b, w, x)
    z = single_linkage(x, engine=engine)
    ref = hierarchy.linkage(x, method="single")
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-9, atol=1e-12)
    assert z[-1, 3] == n and hierarchy.is_valid_linkage(z)
    hierarchy.dendrogram(z, no_plot=True)
    nn = np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, 1]
    np.testing.assert_allclose(merge_heights(z, n), nn, rtol=1e-9, atol=1e-12)
    for k in (1, 2, 6, 17):
        labels = cut(z, k)
        assert len(np.unique(labels)) == k
        if kind in ("random", "trajectory", "tiny_steps"):  # no tied heights: one answer
            want = hierarchy.fcluster(ref, k, "maxclust")
            assert adjusted_rand_score(labels, want) == 1.0


@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_cut_into_250_clusters_and_ffnn_shaped_zoo_match_scipy(engine):
    rng = np.random.default_rng(5)
    # 250 members x 4 epochs, as the paper's cut into one cluster per member.
    x = _trajectories(rng, models=250, steps=4, d=6)
    z = single_linkage(x, engine=engine)
    ref = hierarchy.linkage(x, method="single")
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-9)
    assert adjusted_rand_score(cut(z, 250), hierarchy.fcluster(ref, 250, "maxclust")) == 1.0
    # The paper's FFNN shape: 2160 weights per snapshot, init scale, steps shrinking per epoch.
    walk = rng.normal(size=(8, 6, 2160)) * 0.05 * (0.8 ** np.arange(6))[None, :, None]
    x = (rng.normal(size=(8, 1, 2160)) * 0.1 + np.cumsum(walk, axis=1)).reshape(48, 2160)
    a, b, w = mst(x, engine=engine)
    _assert_spanning_tree(a, b, w, x)
    np.testing.assert_allclose(np.sort(w), _scipy_heights(x), rtol=1e-9)


def _scipy_heights(x):
    return hierarchy.linkage(x, method="single")[:, 2]


@pytest.mark.parametrize("kind", ["shuffled", "tiny_steps", "grid_ties", "few_points"])
@pytest.mark.parametrize("group,block", [(8, 2048), (3, 6), (1, 4)])
def test_numpy_engine_blocks_groups_and_float32_traps(kind, group, block):
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
        a, b, w = mst(x[:n], engine="numpy", group=group, block=block)
        # The same without first sorting near points together (groups then mix components).
        w_raw = _grouped_mst(x[:n], group, block, 2.0 ** -15)[2]
        np.testing.assert_allclose(np.sort(w_raw), np.sort(w), rtol=1e-12)
        np.testing.assert_allclose(np.sort(w), _scipy_heights(x[:n]), rtol=1e-9, atol=1e-12)
        _assert_spanning_tree(a, b, w, x[:n])


def test_outside_minima_in_chunks_equals_one_masked_copy():
    from wsjax.analysis.linkage import _outside_minima

    rng = np.random.default_rng(2)
    to_comp = rng.random((6, 11)).astype(np.float32)
    key_group, key_comp = rng.integers(0, 6, 15), rng.integers(0, 11, 15)
    masked = to_comp.copy()
    masked[key_group, key_comp] = np.inf
    np.testing.assert_array_equal(_outside_minima(to_comp, key_group, key_comp, chunk=3),
                                  masked.min(axis=0))


_SHARDED = """
import json, sys
import jax, numpy as np
from wsjax.analysis.tiled_mst import point_mesh, tiled_mst
assert len(jax.devices()) == 4
a, b, w = tiled_mst(np.load(sys.argv[1]), mesh=point_mesh(jax.devices()), tile=8)
print(json.dumps({"a": a.tolist(), "b": b.tolist(), "w": w.tolist()}))
"""


def test_sharded_jax_engine_gives_the_same_tree(tmp_path):
    """Four fake CPU devices (a fresh process: the device count is fixed at JAX's start), with
    tiles smaller than the data (padding rows in the last one), give the tree of one device,
    edge for edge; and 2 points."""
    import json
    import os
    import subprocess
    import sys

    x = _points("trajectory")  # as in the tests above: one device's programs are compiled
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path / "x.npy")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    sharded = json.loads(out.stdout.splitlines()[-1])
    a, b, w = mst(x, engine="jax")
    assert sorted(zip(sharded["a"], sharded["b"], strict=True)) == \
        sorted(zip(a.tolist(), b.tolist(), strict=True))
    np.testing.assert_array_equal(np.sort(sharded["w"]), np.sort(w))
    np.testing.assert_allclose(np.sort(w), _scipy_heights(x), rtol=1e-9)
    np.testing.assert_allclose(mst(x[:2], engine="jax")[2], _scipy_heights(x[:2]), rtol=1e-9)


def test_memory_estimate_shrinks_with_devices_and_refuses_up_front():
    from wsjax.analysis.linkage import memory_needed
    from wsjax.analysis.tiled_mst import memory_estimate

    one, four = memory_estimate(100_000, 2160, 1), memory_estimate(100_000, 2160, 4)
    assert four.device_bytes < one.device_bytes / 3
    # The numpy engine's group table grows as n^2: 500,000 points need over 100 GiB.
    assert memory_needed(500_000, 2160, "numpy") > 100 * 2 ** 30
    x = np.random.default_rng(0).normal(size=(50, 4))
    for engine in ("numpy", "jax"):
        with pytest.raises(ConfigError, match=r"needs about .* GiB.*available; use") as err:
            mst(x, engine=engine, memory_limit=1000)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="engine"):
        mst(x, engine="cuda")


def test_auto_engine_takes_the_tiles_where_the_numpy_table_would_not_fit():
    from wsjax.analysis.linkage import choose_engine, default_engine, memory_needed

    n, d = 20_000, 2
    numpy_bytes, jax_bytes = memory_needed(n, d, "numpy"), memory_needed(n, d, "jax")
    assert jax_bytes < numpy_bytes
    between = (numpy_bytes + jax_bytes) // 2
    assert choose_engine(n, d, "numpy", memory_limit=between) == "numpy"  # asked for: kept
    assert choose_engine(n, d, memory_limit=10 * numpy_bytes) == default_engine()
    want = "jax" if default_engine() == "numpy" else default_engine()
    assert choose_engine(n, d, memory_limit=between) == want
    # and mst follows it: under that limit "auto" runs instead of refusing
    x = np.random.default_rng(1).normal(size=(300, 2))
    a, b, w = mst(x, memory_limit=memory_needed(300, 2, "jax") + 1)
    ref = hierarchy.linkage(x, method="single")[:, 2]
    np.testing.assert_allclose(np.sort(w), ref, rtol=1e-9)


@pytest.mark.parametrize("case", ["nan", "inf", "one_point", "memory"])
def test_linkage_cli_rejects_bad_input_in_one_line(case, tmp_path, capsys):
    from wsjax.__main__ import main
    from wsjax.cli import run_cli

    x = np.random.default_rng(0).normal(size=(20, 5))
    extra = []
    if case == "nan":
        x[7, 2] = np.nan
    elif case == "inf":
        x[3, 0] = -np.inf
    elif case == "one_point":
        x = x[:1]
    else:
        extra = ["--memory-limit-gib", "1e-6"]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "z.npy"
    assert run_cli(main, ["linkage", str(tmp_path / "x.npy"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_linkage_cli_writes_scipys_matrix(tmp_path, capsys):
    from wsjax.__main__ import main
    from wsjax.cli import run_cli

    x = _points("random")
    np.save(tmp_path / "x.npy", x)
    args = ["linkage", str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npy")]
    assert run_cli(main, args) == 0
    z = np.load(tmp_path / "z.npy", allow_pickle=False)
    np.testing.assert_allclose(z[:, 2], _scipy_heights(x), rtol=1e-9)


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


def test_tables_end_to_end_on_a_tiny_zoo(tmp_path, capsys, monkeypatch):
    import json

    from experiments.tables import main
    from wsjax.cli import run_cli
    from wsjax.store import load_zoo
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
    assert any(n.startswith("single linkage: numpy engine") for n in table["notes"])
    # The same tables from scipy's linkage (the jax engine's trees equal scipy's above).
    import wsjax.analysis.tables as tables

    monkeypatch.setattr(tables, "single_linkage",
                        lambda x, **_: hierarchy.linkage(x, method="single"))
    ref = tables.zoo_tables_detail(load_zoo(run), ks=(10, 5))
    assert ref["rows"] == table["rows"] and ref["per_cluster"] == table["per_cluster"]
    assert run_cli(main, ["--run", str(tmp_path / "missing")]) == 2
