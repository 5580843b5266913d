"""Weight-space analysis against independent references: numpy, scikit-learn, scipy, by hand."""

import numpy as np
import pytest
from scipy.cluster import hierarchy
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics import adjusted_rand_score

from wsjax.analysis.linkage import cut, merge_heights, single_linkage
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


def test_single_linkage_rejects_bad_input():
    with pytest.raises(ConfigError):
        single_linkage(np.zeros((1, 3)))
    with pytest.raises(ConfigError):
        single_linkage(np.array([[0.0], [np.nan]]))
