"""Exact single-linkage clustering (Euclidean) via a minimum spanning tree, without n x n memory.

Single linkage equals Kruskal's merging of a minimum spanning tree's edges in increasing order,
so we build the MST with Prim's algorithm: keep each outside point's distance to the tree, add
the closest point, and update the distances with one matrix-vector product against the new
point. Memory is O(n * d); the result uses scipy's linkage-matrix layout.
"""

from __future__ import annotations

import numpy as np

from wsjax.errors import ConfigError

__all__ = ["mst", "single_linkage", "merge_heights", "cut"]


def mst(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum spanning tree of the points x [n, d] under Euclidean distance.

    Returns:
        (a, b, w): int [n-1], int [n-1], float64 [n-1]; edge i joins points a[i] and b[i] with
        length w[i] (recomputed directly as ||x_a - x_b|| in float64).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"single linkage needs at least 2 points as an [n, d] array, "
                          f"got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ConfigError("single linkage got non-finite coordinates; drop diverged snapshots")
    n = x.shape[0]
    # Centering keeps squared norms small, so ||a||^2 + ||b||^2 - 2 a.b loses little precision.
    x = x - x.mean(axis=0)
    sq = np.einsum("ij,ij->i", x, x)
    rem = np.arange(1, n)  # points outside the tree
    xr = x[rem]
    sqr = sq[rem]
    best = np.full(n - 1, np.inf)  # squared distance of rem[j] to the tree
    parent = np.zeros(n - 1, dtype=np.int64)
    a = np.empty(n - 1, dtype=np.int64)
    b = np.empty(n - 1, dtype=np.int64)
    new = 0
    alive = np.ones(n - 1, dtype=bool)
    count = n - 1
    for step in range(n - 1):
        d2 = sqr - 2.0 * (xr @ x[new]) + sq[new]
        closer = d2 < best
        best = np.where(closer, d2, best)
        parent = np.where(closer, new, parent)
        j = int(np.argmin(best))
        new = int(rem[j])
        a[step], b[step] = parent[j], new
        best[j] = np.inf
        sqr[j] = np.inf  # a point in the tree never gets closer again
        alive[j] = False
        count -= 1
        # Drop finished rows once half are dead, so later steps read only live points.
        if count and count * 2 <= alive.shape[0]:
            rem, xr, sqr = rem[alive], xr[alive], sqr[alive]
            best, parent = best[alive], parent[alive]
            alive = np.ones(rem.shape[0], dtype=bool)
    w = np.linalg.norm(x[a] - x[b], axis=1)
    return a, b, w


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def single_linkage(x: np.ndarray) -> np.ndarray:
    """Single-linkage tree of x [n, d]: float64 [n-1, 4] in scipy.cluster.hierarchy's layout.

    Row i merges clusters Z[i, 0] < Z[i, 1] (ids < n are points, n + j is the cluster made
    by row j) at height Z[i, 2] into a cluster of Z[i, 3] points.
    """
    a, b, w = mst(x)
    n = a.shape[0] + 1
    order = np.argsort(w, kind="stable")
    uf = np.arange(n)
    cluster_id = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    z = np.empty((n - 1, 4))
    for row, e in enumerate(order):
        ra, rb = _find(uf, int(a[e])), _find(uf, int(b[e]))
        ia, ib = cluster_id[ra], cluster_id[rb]
        uf[rb] = ra
        size[ra] += size[rb]
        cluster_id[ra] = n + row
        z[row] = (min(ia, ib), max(ia, ib), w[e], size[ra])
    return z


def merge_heights(z: np.ndarray, n: int) -> np.ndarray:
    """float64 [n]: the height at which each point first joins another cluster.

    In single linkage this is the point's nearest-neighbour distance.
    """
    z = np.asarray(z)
    h = np.full(n, np.nan)
    for col in (0, 1):
        ids = z[:, col].astype(np.int64)
        single = ids < n
        h[ids[single]] = z[single, 2]
    return h


def cut(z: np.ndarray, k: int) -> np.ndarray:
    """int [n] labels 0..k-1: the k clusters left after undoing the k-1 highest merges.

    Matches scipy's fcluster(z, k, 'maxclust') up to relabelling when merge heights are distinct.
    """
    z = np.asarray(z)
    n = z.shape[0] + 1
    if not 1 <= k <= n:
        raise ConfigError(f"cannot cut {n} points into {k} clusters; choose 1..{n}")
    uf = np.arange(2 * n - 1)
    for row in range(n - k):
        uf[int(z[row, 0])] = n + row
        uf[int(z[row, 1])] = n + row
    roots = np.array([_find(uf, i) for i in range(n)])
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64)
