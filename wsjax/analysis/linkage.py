"""Exact single-linkage clustering (Euclidean) via a minimum spanning tree.

Single linkage equals Kruskal's merging of a minimum spanning tree's edges in increasing order.
We build the tree with Boruvka's algorithm on top of ONE pass of float32 matrix products:

1. Points are laid out in groups of up to 8 consecutive points (a group ends early at a jump in
   the data, where one zoo member's snapshots end and the next one's begin).
2. One blocked pass over the upper triangle of the distance matrix (BLAS matrix products,
   ||a||^2 + ||b||^2 - 2 a.b on centred float32 data) keeps, for every point and group, the
   squared distance to the group's nearest point: a table of n x n/8 values, never n x n.
3. Each Boruvka round finds every component's shortest outgoing edge. A group none of whose
   points is in the component gives an exact (float32) candidate; a group that holds some of
   the component's points gives only a lower bound. Every (point, group) pair whose bound
   could beat the best candidate, within the float32 error allowed for (`tol`), is rechecked
   in float64 against the group's points, so near-ties are decided in float64.
4. The tree's edge lengths are recomputed as ||x_a - x_b|| in float64.

Memory: the data in float32 and float64, the n x n/8 table and one block of distances.
The result uses scipy's linkage-matrix layout.
"""

from __future__ import annotations

import functools

import numpy as np

from wsjax.errors import ConfigError

__all__ = ["mst", "single_linkage", "merge_heights", "cut"]


def _steps(x: np.ndarray) -> np.ndarray:
    """Distances between consecutive points, float [n - 1] (in blocks: little memory)."""
    return np.concatenate([np.linalg.norm(np.diff(x[i:i + 1025], axis=0), axis=1)
                           for i in range(0, x.shape[0] - 1, 1024)] or [np.zeros(0)])


def _locality_order(x: np.ndarray, leaf: int, head: np.ndarray) -> np.ndarray | None:
    """A permutation that puts near points next to each other, or None if x already does.

    x counts as ordered when consecutive points (`head`: the first steps, `_steps`) are on
    median less than half as far apart as random pairs (a zoo's snapshots, model by model).
    Otherwise the points are sorted into the leaves of a principal-direction tree (each cell
    split at the median of its points' projection on their leading direction), computed on a
    64-dimensional random projection.
    """
    n = x.shape[0]
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, n, size=(2, min(2048, 4 * n)))
    if np.median(head) < 0.5 * np.median(np.linalg.norm(x[i] - x[j], axis=1)):
        return None
    z = x @ rng.normal(size=(x.shape[1], min(64, x.shape[1])))
    order = np.arange(n)
    cells = [(0, n)]
    while cells:
        lo, hi = cells.pop()
        if hi - lo <= leaf:
            continue
        idx = order[lo:hi]
        zc = z[idx] - z[idx].mean(axis=0)
        v = zc[int(np.argmax(np.einsum("ij,ij->i", zc, zc)))]
        for _ in range(4):  # power iteration for the leading direction
            v = zc.T @ (zc @ v)
            v /= np.linalg.norm(v) or 1.0
        mid = (hi - lo) // 2
        order[lo:hi] = idx[np.argsort(zc @ v, kind="stable")]
        cells += [(lo, lo + mid), (lo + mid, hi)]
    return order


def _layout(step: np.ndarray, g: int) -> tuple[np.ndarray, int]:
    """Slot of each point in a padded layout of groups of g slots: int [n], number of groups.
    `step`: the distances between consecutive points [n - 1] (`_steps`).

    A group holds up to g consecutive points and ends early at a jump: a step to the next
    point more than 4x as long as a neighbouring step (where one zoo member's snapshots end
    and the next one's begin), so that groups rarely straddle two trajectories. If that would
    leave more than a quarter of the slots empty, groups are plain runs of g points.
    """
    n = step.shape[0] + 1
    idx = np.arange(n)
    near = np.minimum(np.r_[np.inf, step[:-1]], np.r_[step[1:], np.inf])
    jump = np.r_[True, step > 4.0 * near]
    run_start = np.flatnonzero(jump)
    new = (idx - run_start[np.cumsum(jump) - 1]) % g == 0
    if np.count_nonzero(new) * g > 1.25 * n:
        new = idx % g == 0
    group = np.cumsum(new) - 1
    return group * g + (idx - np.flatnonzero(new)[group]), int(group[-1]) + 1


def _numpy_block(xi, xj, si, sj, diagonal: bool, g: int):
    """(min over row groups [bi/g, bj], min over column groups [bj/g, bi]) of one block of
    float32 squared distances (numpy: the CPU's BLAS)."""
    dist = xi @ xj.T
    dist *= -2.0
    dist += si[:, None]
    dist += sj[None, :]
    if diagonal:
        np.fill_diagonal(dist, np.inf)
    rows = dist.reshape(-1, g, dist.shape[1]).min(axis=1)
    if diagonal:
        return rows, None
    cols = np.ascontiguousarray(dist.T).reshape(-1, g, dist.shape[0]).min(axis=1)
    return rows, cols


def _jax_block():
    """The same block kernel as one jitted JAX function (for accelerators)."""
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnames=("diagonal", "g"))
    def block(xi, xj, si, sj, diagonal: bool, g: int):
        # Full float32 products: TF32 or bfloat16 passes would break the error bound.
        dot = jnp.matmul(xi, xj.T, precision=jax.lax.Precision.HIGHEST)
        dist = si[:, None] + sj[None, :] - 2.0 * dot
        if diagonal:
            dist = jnp.where(jnp.eye(dist.shape[0], dtype=bool), jnp.inf, dist)
        rows = dist.reshape(-1, g, dist.shape[1]).min(axis=1)
        cols = dist.T.reshape(-1, g, dist.shape[0]).min(axis=1)
        return rows, cols

    def run(xi, xj, si, sj, diagonal, g):
        rows, cols = block(xi, xj, si, sj, diagonal=diagonal, g=g)
        return np.asarray(rows), (None if diagonal else np.asarray(cols))

    return run


def _group_minima(xp: np.ndarray, sqp: np.ndarray, g: int, block: int,
                  engine: str = "numpy") -> np.ndarray:
    """float32 [groups, slots]: squared distance from each slot's point to the nearest point of
    each group (itself excluded), from float32 matrix products over the padded layout.

    Empty slots have an infinite squared norm, so they are never anyone's nearest point. Only
    blocks on and above the diagonal are multiplied; each block's transpose serves the other.
    engine: "numpy" (the CPU's BLAS, fastest on a CPU) or "jax" (XLA, for an accelerator).
    """
    kernel = _numpy_block if engine == "numpy" else _jax_block()
    if engine == "jax":
        import jax.numpy as jnp

        xp, sqp = jnp.asarray(xp), jnp.asarray(sqp)
    slots = xp.shape[0]
    pt = np.empty((slots // g, slots), np.float32)
    for i0 in range(0, slots, block):
        i1 = min(i0 + block, slots)
        for j0 in range(i0, slots, block):
            j1 = min(j0 + block, slots)
            rows, cols = kernel(xp[i0:i1], xp[j0:j1], sqp[i0:i1], sqp[j0:j1], i0 == j0, g)
            pt[i0 // g:i1 // g, j0:j1] = rows
            if cols is not None:
                pt[j0 // g:j1 // g, i0:i1] = cols
    np.maximum(pt, 0.0, out=pt)
    return pt


def _nearest_outside(xp: np.ndarray, sqp: np.ndarray, comp_slot: np.ndarray, u: np.ndarray,
                     grp: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """For pairs (slot u[i], group grp[i]): the group's nearest point outside u's component.

    Float64 matrix products, one per distinct group (its slots are contiguous).

    Returns (slot v [k], squared distance [k] float64; inf where every point is inside).
    """
    v = np.zeros(u.shape[0], np.int64)
    d2 = np.full(u.shape[0], np.inf)
    o = np.argsort(grp, kind="stable")
    bounds = np.flatnonzero(np.r_[True, grp[o][1:] != grp[o][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        sel = o[lo:hi]
        g0 = int(grp[sel[0]]) * g
        us = u[sel]
        dd = (sqp[us][:, None] + sqp[None, g0:g0 + g]) - 2.0 * (xp[us] @ xp[g0:g0 + g].T)
        dd[comp_slot[us][:, None] == comp_slot[None, g0:g0 + g]] = np.inf
        j = np.argmin(dd, axis=1)
        v[sel] = g0 + j
        d2[sel] = dd[np.arange(len(us)), j]
    return v, d2


def _ragged(start: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated ranges start[p] .. start[p] + size[p] - 1, each entry's p)."""
    pair = np.repeat(np.arange(size.shape[0]), size)
    offs = np.arange(pair.shape[0]) - np.repeat(np.cumsum(size) - size, size)
    return start[pair] + offs, pair


def _accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def _component_minima(pt: np.ndarray, grp_min: np.ndarray, slot: np.ndarray,
                       group_of: np.ndarray, comp: np.ndarray, comp_slot: np.ndarray,
                       m: int) -> np.ndarray:
    """float32 [groups, m]: the float32 distance from each group to each of m components.

    Groups whose points all belong to one component enter as one column of grp_min [G, G],
    the others point by point from pt [G, slots].
    """
    ng = grp_min.shape[0]
    lo = np.full(ng, m)
    hi = np.full(ng, -1)
    np.minimum.at(lo, group_of, comp)
    np.maximum.at(hi, group_of, comp)
    whole = np.flatnonzero(lo == hi)
    split = slot[lo[group_of] != hi[group_of]]
    col_comp = np.concatenate([lo[whole], comp_slot[split]])
    o = np.argsort(col_comp, kind="stable")
    cols = np.concatenate([grp_min[:, whole], pt[:, split]], axis=1)[:, o]
    q = np.minimum.reduceat(cols, np.flatnonzero(np.r_[True, np.diff(col_comp[o]) != 0]),
                            axis=1)
    return q


def mst(x: np.ndarray, group: int = 8, block: int = 2048, tol: float = 2.0 ** -15,
        engine: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum spanning tree of the points x [n, d] under Euclidean distance (exact).

    Args:
        x: [n, d] points, in any order; fastest when near points have near indices (a zoo's
            snapshots, model by model), otherwise they are first sorted so that they do.
        group: points per group of the group-minimum table (memory: n^2 / group float32).
        block: rows per matrix-product block (memory: block^2 float32 values).
        tol: relative float32 error allowed for, in units of the largest squared norm.
        engine: where the distance pass runs: "numpy" (BLAS), "jax" (XLA), or "auto" (jax when
            JAX's default backend is an accelerator, else numpy).

    Returns:
        (a, b, w): int [n-1], int [n-1], float64 [n-1]; edge i joins points a[i] and b[i] with
        length w[i] (recomputed directly as ||x_a - x_b|| in float64).
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"single linkage needs at least 2 points as an [n, d] array, "
                          f"got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ConfigError("single linkage got non-finite coordinates; drop diverged snapshots")
    if engine == "auto":
        engine = "jax" if _accelerator() else "numpy"
    if engine not in ("numpy", "jax"):
        raise ConfigError(f"unknown linkage engine {engine!r}; choose auto, numpy or jax")
    head = _steps(x[:2049])
    perm = _locality_order(x, int(group), head)
    if perm is None:
        step = np.concatenate([head, _steps(x[2048:])]) if x.shape[0] > 2049 else head
        return _mst_in_order(x, int(group), block, tol, engine, step)
    a, b, w = _mst_in_order(x[perm], int(group), block, tol, engine)
    return perm[a], perm[b], w


def _mst_in_order(x: np.ndarray, g: int, block: int, tol: float, engine: str,
                  step: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mst() for points whose order already puts near points next to each other; `step`:
    their `_steps`, if known."""
    n = x.shape[0]
    slot, ng = _layout(_steps(x) if step is None else step, g)
    point_of = np.full(ng * g, -1)
    point_of[slot] = np.arange(n)
    # Centering keeps squared norms small, so ||a||^2 + ||b||^2 - 2 a.b loses little precision.
    xp = np.zeros((ng * g, x.shape[1]))
    xp[slot] = x - x.mean(axis=0, dtype=np.float64)
    sqp = np.einsum("ij,ij->i", xp, xp)
    sqp[point_of < 0] = np.inf
    pt = _group_minima(xp.astype(np.float32), sqp.astype(np.float32), g,
                       max(g, block // g * g), engine)
    grp_min = pt.reshape(ng, ng, g).min(axis=2)  # [G, H]: float32 distance between groups
    # A float32 squared distance may be off by this much; candidates within it are rechecked.
    slack = 4.0 * tol * float(sqp[slot].max())
    group_of = slot // g
    real = np.bincount(group_of, minlength=ng)
    comp = np.arange(n)
    a, b = [], []
    while True:
        _, comp = np.unique(comp, return_inverse=True)
        m = int(comp.max()) + 1
        if m == 1:
            break
        comp_slot = np.full(ng * g, -1)
        comp_slot[slot] = comp
        order = np.argsort(comp, kind="stable")
        csize = np.bincount(comp, minlength=m)
        cstart = np.cumsum(csize) - csize
        # q[G, C]: the float32 distance from group G to component C, a lower bound only where
        # G holds points of C (it may be the distance to one of them).
        if m == n:
            # Every point alone (the first round): q is pt's columns.
            q = pt[:, slot]
        else:
            q = _component_minima(pt, grp_min, slot, group_of, comp, comp_slot, m)
        keys, counts = np.unique(comp * ng + group_of, return_counts=True)
        sc, sg = keys // ng, keys % ng
        pure = q.copy()
        pure[sg, sc] = np.inf
        thr = pure.min(axis=0) + slack
        # Boruvka: each component's shortest outgoing edge, among the (point, group) pairs whose
        # float32 bound could beat the best exact group minimum leaving the component.
        # The largest component is left to the others: its edge is the shortest of theirs that
        # reach it, or comes in a later round, and searching it is the costly part when it is
        # spread over every group.
        cand_g, cand_c = np.nonzero(q <= thr[None, :])
        skip = np.isin(cand_c * ng + cand_g, keys[counts == real[sg]])
        skip |= cand_c == np.argmax(csize)
        cand_g, cand_c = cand_g[~skip], cand_c[~skip]
        members, pair = _ragged(cstart[cand_c], csize[cand_c])
        eu = slot[order[members]]
        eg = cand_g[pair]
        keep = pt[eg, eu] <= thr[cand_c[pair]]
        eu, eg = eu[keep], eg[keep]
        ev, ed = _nearest_outside(xp, sqp, comp_slot, eu, eg, g)
        pu, pv = point_of[eu], point_of[ev]
        ce = comp[pu]
        o = np.lexsort((np.maximum(pu, pv), np.minimum(pu, pv), ed, ce))
        o = o[np.r_[True, ce[o][1:] != ce[o][:-1]]]
        uf = np.arange(m)
        for e in o:
            ra, rb = _find(uf, int(ce[e])), _find(uf, int(comp[pv[e]]))
            if ra != rb:
                uf[rb] = ra
                a.append(int(pu[e]))
                b.append(int(pv[e]))
        comp = np.array([_find(uf, c) for c in range(m)])[comp]
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    w = np.linalg.norm(xp[slot[a]] - xp[slot[b]], axis=1)
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
