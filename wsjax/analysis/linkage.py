"""Exact single-linkage clustering (Euclidean) via a minimum spanning tree.

Single linkage equals Kruskal's merging of a minimum spanning tree's edges in increasing order.
Two engines build the tree, both exact (every near tie decided in float64, every edge length a
float64 distance), and `mst(engine="auto")` takes the one that measures faster on the machine:

* "jax" (wsjax.analysis.tiled_mst): Boruvka rounds over float32 distance tiles that stay on
  the devices, split over a 1-D mesh of devices; the same code on a CPU, a GPU or several.
  The default where JAX's backend is an accelerator.
* "numpy": one pass of float32 BLAS products over the upper triangle of the distance matrix
  that keeps a table of group minima, then Boruvka rounds on the host. It does half the
  arithmetic of a tiled round and only one pass, and numpy's BLAS multiplies faster than XLA
  on a CPU, so it is the default there. Its steps:

  1. Points are laid out in groups of up to 8 consecutive points (a group ends early at a jump
     in the data, where one zoo member's snapshots end and the next one's begin).
  2. One blocked pass over the upper triangle (||a||^2 + ||b||^2 - 2 a.b on centred float32
     data) keeps, for every point and group, the squared distance to the group's nearest
     point: a table of n x n/8 values, never n x n.
  3. Each Boruvka round finds every component's shortest outgoing edge. A group none of whose
     points is in the component gives an exact (float32) candidate; a group that holds some
     of the component's points gives only a lower bound. Every (point, group) pair whose bound
     could beat the best candidate, within the float32 error allowed for (`tol`), is
     rechecked in float64 against the group's points.
  4. The tree's edge lengths are recomputed as ||x_a - x_b|| in float64.

Memory of either engine: `memory_needed`; a run that would not fit is refused before it
starts. The result uses scipy's linkage-matrix layout.
"""

from __future__ import annotations

import numpy as np

from wsjax.errors import ConfigError

__all__ = ["ENGINES", "default_engine", "memory_needed", "mst", "single_linkage",
           "merge_heights", "cut"]

ENGINES = ("numpy", "jax")


def _steps(x: np.ndarray) -> np.ndarray:
    """Distances between consecutive points, float [n - 1] (in blocks: little memory)."""
    return np.concatenate([np.linalg.norm(np.diff(x[i:i + 1025], axis=0), axis=1)
                           for i in range(0, x.shape[0] - 1, 1024)] or [np.zeros(0)])


def _locality_order(x: np.ndarray, leaf: int, head_steps: np.ndarray) -> np.ndarray | None:
    """A permutation that puts near points next to each other, or None if x already does.

    x counts as ordered when consecutive points (`head_steps`: the first steps, `_steps`) are
    on median less than half as far apart as random pairs (a zoo's snapshots, model by model).
    Otherwise the points are sorted into the leaves of a principal-direction tree (each cell
    split at the median of its points' projection on their leading direction), computed on a
    64-dimensional random projection.
    """
    n = x.shape[0]
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, n, size=(2, min(2048, 4 * n)))
    if np.median(head_steps) < 0.5 * np.median(np.linalg.norm(x[i] - x[j], axis=1)):
        return None
    projected = x @ rng.normal(size=(x.shape[1], min(64, x.shape[1])))
    order = np.arange(n)
    cells = [(0, n)]
    while cells:
        lo, hi = cells.pop()
        if hi - lo <= leaf:
            continue
        members = order[lo:hi]
        centred = projected[members] - projected[members].mean(axis=0)
        direction = centred[int(np.argmax(np.einsum("ij,ij->i", centred, centred)))]
        for _ in range(4):  # power iteration for the leading direction
            direction = centred.T @ (centred @ direction)
            direction /= np.linalg.norm(direction) or 1.0
        mid = (hi - lo) // 2
        order[lo:hi] = members[np.argsort(centred @ direction, kind="stable")]
        cells += [(lo, lo + mid), (lo + mid, hi)]
    return order


def _layout(step: np.ndarray, group: int) -> tuple[np.ndarray, int]:
    """Slot of each point in a padded layout of groups of `group` slots: int [n], and the
    number of groups. `step`: the distances between consecutive points [n - 1] (`_steps`).

    A group holds up to `group` consecutive points and ends early at a jump: a step to the next
    point more than 4x as long as a neighbouring step (where one zoo member's snapshots end
    and the next one's begin), so that groups rarely straddle two trajectories. If that would
    leave more than a quarter of the slots empty, groups are plain runs of `group` points.
    """
    n = step.shape[0] + 1
    idx = np.arange(n)
    near = np.minimum(np.r_[np.inf, step[:-1]], np.r_[step[1:], np.inf])
    jump = np.r_[True, step > 4.0 * near]
    run_start = np.flatnonzero(jump)
    opens = (idx - run_start[np.cumsum(jump) - 1]) % group == 0
    if np.count_nonzero(opens) * group > 1.25 * n:
        opens = idx % group == 0
    group_of = np.cumsum(opens) - 1
    return group_of * group + (idx - np.flatnonzero(opens)[group_of]), int(group_of[-1]) + 1


def _block_group_minima(rows, cols, row_sq, col_sq, diagonal: bool, group: int):
    """(min over row groups [rows/group, cols], min over column groups [cols/group, rows]) of
    one block of float32 squared distances (None for the second on the diagonal)."""
    dist = rows @ cols.T
    dist *= -2.0
    dist += row_sq[:, None]
    dist += col_sq[None, :]
    if diagonal:
        np.fill_diagonal(dist, np.inf)
    by_row_group = dist.reshape(-1, group, dist.shape[1]).min(axis=1)
    if diagonal:
        return by_row_group, None
    by_col_group = np.ascontiguousarray(dist.T).reshape(-1, group, dist.shape[0]).min(axis=1)
    return by_row_group, by_col_group


def _group_minima(slots: np.ndarray, slot_sq: np.ndarray, group: int,
                  block: int) -> np.ndarray:
    """float32 [groups, slots]: squared distance from each slot's point to the nearest point of
    each group (itself excluded), from float32 matrix products over the padded layout.

    Empty slots have an infinite squared norm, so they are never anyone's nearest point. Only
    blocks on and above the diagonal are multiplied; each block's transpose serves the other.
    """
    n_slots = slots.shape[0]
    table = np.empty((n_slots // group, n_slots), np.float32)
    for i0 in range(0, n_slots, block):
        i1 = min(i0 + block, n_slots)
        for j0 in range(i0, n_slots, block):
            j1 = min(j0 + block, n_slots)
            by_rows, by_cols = _block_group_minima(slots[i0:i1], slots[j0:j1], slot_sq[i0:i1],
                                                   slot_sq[j0:j1], i0 == j0, group)
            table[i0 // group:i1 // group, j0:j1] = by_rows
            if by_cols is not None:
                table[j0 // group:j1 // group, i0:i1] = by_cols
    np.maximum(table, 0.0, out=table)
    return table


def _nearest_outside(slots: np.ndarray, slot_sq: np.ndarray, comp_of_slot: np.ndarray,
                     from_slot: np.ndarray, in_group: np.ndarray,
                     group: int) -> tuple[np.ndarray, np.ndarray]:
    """For pairs (slot from_slot[i], group in_group[i]): the group's nearest point outside the
    component of from_slot[i]. Float64 matrix products, one per distinct group (its slots are
    contiguous).

    Returns (slot [k], squared distance [k] float64; inf where every point is inside).
    """
    nearest = np.zeros(from_slot.shape[0], np.int64)
    dist_sq = np.full(from_slot.shape[0], np.inf)
    by_group = np.argsort(in_group, kind="stable")
    bounds = np.flatnonzero(np.r_[True, in_group[by_group][1:] != in_group[by_group][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        sel = by_group[lo:hi]
        first = int(in_group[sel[0]]) * group
        src = from_slot[sel]
        block_sq = (slot_sq[src][:, None] + slot_sq[None, first:first + group]) \
            - 2.0 * (slots[src] @ slots[first:first + group].T)
        block_sq[comp_of_slot[src][:, None] == comp_of_slot[None, first:first + group]] = np.inf
        j = np.argmin(block_sq, axis=1)
        nearest[sel] = first + j
        dist_sq[sel] = block_sq[np.arange(len(src)), j]
    return nearest, dist_sq


def _ragged(start: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated ranges start[p] .. start[p] + size[p] - 1, each entry's p)."""
    pair = np.repeat(np.arange(size.shape[0]), size)
    offs = np.arange(pair.shape[0]) - np.repeat(np.cumsum(size) - size, size)
    return start[pair] + offs, pair


def choose_engine(n: int, d: int, engine: str = "auto", memory_limit: int | None = None,
                  group: int = 8, block: int = 2048) -> str:
    """The engine `mst` runs for n x d points: `engine` unless it is "auto"; then
    `default_engine()`, except that on a CPU the jax engine is taken where the numpy engine's
    n x n/8 table would not fit in `memory_limit` (default: the host's available memory)."""
    if engine != "auto":
        return engine
    engine = default_engine()
    if engine == "numpy":
        from wsjax.analysis.tiled_mst import host_memory_bytes

        limit = memory_limit if memory_limit is not None else host_memory_bytes()
        if limit is not None and memory_needed(n, d, "numpy", 1, group, block) > limit:
            return "jax"
    return engine


def default_engine() -> str:
    """The engine that measures faster here: "jax" where JAX's default backend is an
    accelerator, "numpy" on a CPU (see the module docstring and docs/analysis.md)."""
    import jax

    return "jax" if jax.default_backend() != "cpu" else "numpy"


def _component_minima(table: np.ndarray, group_min: np.ndarray, slot: np.ndarray,
                      group_of: np.ndarray, comp: np.ndarray, comp_of_slot: np.ndarray,
                      n_comp: int) -> np.ndarray:
    """float32 [groups, n_comp]: the float32 distance from each group to each component.

    Groups whose points all belong to one component enter as one column of group_min [G, G],
    the others point by point from table [G, slots].
    """
    n_groups = group_min.shape[0]
    lowest = np.full(n_groups, n_comp)
    highest = np.full(n_groups, -1)
    np.minimum.at(lowest, group_of, comp)
    np.maximum.at(highest, group_of, comp)
    whole = np.flatnonzero(lowest == highest)
    mixed = slot[lowest[group_of] != highest[group_of]]
    col_comp = np.concatenate([lowest[whole], comp_of_slot[mixed]])
    by_comp = np.argsort(col_comp, kind="stable")
    cols = np.concatenate([group_min[:, whole], table[:, mixed]], axis=1)[:, by_comp]
    starts = np.flatnonzero(np.r_[True, np.diff(col_comp[by_comp]) != 0])
    return np.minimum.reduceat(cols, starts, axis=1)


def _outside_minima(to_comp: np.ndarray, key_group: np.ndarray, key_comp: np.ndarray,
                    chunk: int = 4096) -> np.ndarray:
    """float32 [C]: each column's minimum over the groups that hold none of its component's
    points (the pairs (key_group, key_comp) left out), a chunk of columns at a time, so that
    the first round (as many columns as points) needs no second copy of the table."""
    out = np.empty(to_comp.shape[1], to_comp.dtype)
    for lo in range(0, to_comp.shape[1], chunk):
        cols = to_comp[:, lo:lo + chunk].copy()
        sel = (key_comp >= lo) & (key_comp < lo + chunk)
        cols[key_group[sel], key_comp[sel] - lo] = np.inf
        out[lo:lo + chunk] = cols.min(axis=0)
    return out


def memory_needed(n: int, d: int, engine: str, devices: int = 1,
                  group: int = 8, block: int = 2048) -> int:
    """Bytes an `mst` run needs at most, on the host and a CPU device together, or per
    accelerator (the "jax" engine's per-device bytes; see tiled_mst.memory_estimate).

    numpy engine, with s <= 1.25 n padded slots: 8 n d (the float64 input) + 12 s d (its
    centred float64 and float32 copies) + 8 s^2 / group (the group-minimum table, and its
    columns per component in the first round) + 8 block^2 (one block of distances and its
    transpose) + 200 n.
    """
    if engine == "numpy":
        slots = -(-n // group) * group * 1.25
        return int(8 * n * d + 12 * slots * d + 8 * slots * slots / group + 8 * block * block
                   + 200 * n)
    import jax

    from wsjax.analysis.tiled_mst import memory_estimate

    accelerator = jax.default_backend() != "cpu"
    est = memory_estimate(n, d, devices, accelerator=accelerator)
    return est.device_bytes if accelerator else est.device_bytes * devices + est.host_bytes


def _check_memory(n: int, d: int, engine: str, devices: int, group: int, block: int,
                  memory_limit: int | None) -> None:
    from wsjax.analysis.tiled_mst import device_memory_bytes, host_memory_bytes

    need = memory_needed(n, d, engine, devices, group, block)
    if memory_limit is None and engine == "numpy":
        memory_limit = host_memory_bytes()
    elif memory_limit is None:
        import jax

        memory_limit = device_memory_bytes(jax.local_devices()[0])
    if memory_limit is not None and need > memory_limit:
        gib = 2.0 ** 30
        way_out = ("use the jax engine, fewer dimensions (an SVD) or a larger group"
                   if engine == "numpy" else "use more devices or fewer dimensions (an SVD)")
        raise ConfigError(f"single linkage of {n} x {d} ({engine} engine) needs about "
                          f"{need / gib:.1f} GiB, more than the {memory_limit / gib:.1f} GiB "
                          f"available; {way_out}")


def mst(x: np.ndarray, engine: str = "auto", group: int = 8, block: int = 2048,
        tol: float = 2.0 ** -15, mesh=None,
        memory_limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum spanning tree of the points x [n, d] under Euclidean distance (exact).

    Args:
        x: [n, d] finite points, n >= 2, in any order; the numpy engine is fastest when near
            points have near indices (a zoo's snapshots, model by model), otherwise it first
            sorts them so that they do.
        engine: "numpy", "jax" (see the module docstring) or "auto" (`choose_engine`).
        group: numpy engine: points per group of the group-minimum table.
        block: numpy engine: rows per matrix-product block.
        tol: relative float32 error allowed for, in units of the largest squared norm.
        mesh: jax engine: a 1-D `tiled_mst.point_mesh` (default: every local device).
        memory_limit: bytes the run may use (default: what the device reports); a run whose
            estimate (`memory_needed`) is larger is refused before it starts.

    Returns:
        (a, b, w): int [n-1], int [n-1], float64 [n-1]; edge i joins points a[i] and b[i] with
        length w[i] (recomputed directly as ||x_a - x_b|| in float64).
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"single linkage needs at least 2 points as an [n, d] array, "
                          f"got shape {x.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad.size:
        raise ConfigError(f"single linkage got {bad.size} row(s) with NaN or inf (first: row "
                          f"{bad[0]}); drop diverged snapshots first")
    engine = choose_engine(*x.shape, engine, memory_limit, group, block)
    if engine not in ENGINES:
        raise ConfigError(f"unknown linkage engine {engine!r}; choose auto, numpy or jax")
    if engine == "jax":
        import jax

        from wsjax.analysis.tiled_mst import point_mesh, tiled_mst

        mesh = mesh if mesh is not None else point_mesh(jax.local_devices())
        _check_memory(*x.shape, engine, mesh.size, group, block, memory_limit)
        return tiled_mst(x, mesh=mesh, tol=tol, memory_limit=memory_limit)
    _check_memory(*x.shape, engine, 1, group, block, memory_limit)
    head_steps = _steps(x[:2049])
    perm = _locality_order(x, int(group), head_steps)
    if perm is None:
        step = np.concatenate([head_steps, _steps(x[2048:])]) if x.shape[0] > 2049 \
            else head_steps
        return _grouped_mst(x, int(group), block, tol, step)
    a, b, w = _grouped_mst(x[perm], int(group), block, tol)
    return perm[a], perm[b], w


def _grouped_mst(x: np.ndarray, group: int, block: int, tol: float,
                 step: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numpy engine's mst() for points whose order already puts near points next to each
    other; `step`: their `_steps`, if known."""
    n = x.shape[0]
    slot, n_groups = _layout(_steps(x) if step is None else step, group)
    point_of_slot = np.full(n_groups * group, -1)
    point_of_slot[slot] = np.arange(n)
    # Centering keeps squared norms small, so ||a||^2 + ||b||^2 - 2 a.b loses little precision.
    slots = np.zeros((n_groups * group, x.shape[1]))
    slots[slot] = x - x.mean(axis=0, dtype=np.float64)
    slot_sq = np.einsum("ij,ij->i", slots, slots)
    slot_sq[point_of_slot < 0] = np.inf
    table = _group_minima(slots.astype(np.float32), slot_sq.astype(np.float32), group,
                          max(group, block // group * group))
    # [G, H]: float32 distance between groups
    group_min = table.reshape(n_groups, n_groups, group).min(axis=2)
    # A float32 squared distance may be off by this much; candidates within it are rechecked.
    slack = 4.0 * tol * float(slot_sq[slot].max())
    group_of = slot // group
    points_in_group = np.bincount(group_of, minlength=n_groups)
    comp = np.arange(n)
    tree_a, tree_b = [], []
    while True:
        _, comp = np.unique(comp, return_inverse=True)
        n_comp = int(comp.max()) + 1
        if n_comp == 1:
            break
        comp_of_slot = np.full(n_groups * group, -1)
        comp_of_slot[slot] = comp
        by_comp = np.argsort(comp, kind="stable")
        comp_size = np.bincount(comp, minlength=n_comp)
        comp_start = np.cumsum(comp_size) - comp_size
        # to_comp[G, C]: the float32 distance from group G to component C, a lower bound only
        # where G holds points of C (it may be the distance to one of them).
        if n_comp == n:
            # Every point alone (the first round): to_comp is the table's columns.
            to_comp = table[:, slot]
        else:
            to_comp = _component_minima(table, group_min, slot, group_of, comp, comp_of_slot,
                                        n_comp)
        keys, counts = np.unique(comp * n_groups + group_of, return_counts=True)
        key_comp, key_group = keys // n_groups, keys % n_groups
        threshold = _outside_minima(to_comp, key_group, key_comp) + slack
        # Boruvka: each component's shortest outgoing edge, among the (point, group) pairs whose
        # float32 bound could beat the best exact group minimum leaving the component.
        # The largest component is left to the others: its edge is the shortest of theirs that
        # reach it, or comes in a later round, and searching it is the costly part when it is
        # spread over every group.
        cand_group, cand_comp = np.nonzero(to_comp <= threshold[None, :])
        skip = np.isin(cand_comp * n_groups + cand_group,
                       keys[counts == points_in_group[key_group]])
        skip |= cand_comp == np.argmax(comp_size)
        cand_group, cand_comp = cand_group[~skip], cand_comp[~skip]
        members, pair = _ragged(comp_start[cand_comp], comp_size[cand_comp])
        from_slot = slot[by_comp[members]]
        in_group = cand_group[pair]
        keep = table[in_group, from_slot] <= threshold[cand_comp[pair]]
        from_slot, in_group = from_slot[keep], in_group[keep]
        to_slot, dist_sq = _nearest_outside(slots, slot_sq, comp_of_slot, from_slot, in_group,
                                            group)
        from_point, to_point = point_of_slot[from_slot], point_of_slot[to_slot]
        from_comp = comp[from_point]
        order = np.lexsort((np.maximum(from_point, to_point), np.minimum(from_point, to_point),
                            dist_sq, from_comp))
        order = order[np.r_[True, from_comp[order][1:] != from_comp[order][:-1]]]
        parent = np.arange(n_comp)
        for e in order:
            root_a, root_b = _find(parent, int(from_comp[e])), _find(parent, int(comp[to_point[e]]))
            if root_a != root_b:
                parent[root_b] = root_a
                tree_a.append(int(from_point[e]))
                tree_b.append(int(to_point[e]))
        comp = np.array([_find(parent, c) for c in range(n_comp)])[comp]
    a, b = np.asarray(tree_a, np.int64), np.asarray(tree_b, np.int64)
    return a, b, np.linalg.norm(x[a] - x[b], axis=1)


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def single_linkage(x: np.ndarray, engine: str = "auto", **mst_options) -> np.ndarray:
    """Single-linkage tree of x [n, d]: float64 [n-1, 4] in scipy.cluster.hierarchy's layout.

    Row i merges clusters Z[i, 0] < Z[i, 1] (ids < n are points, n + j is the cluster made
    by row j) at height Z[i, 2] into a cluster of Z[i, 3] points. engine and mst_options: as
    for `mst`.
    """
    a, b, w = mst(x, engine=engine, **mst_options)
    n = a.shape[0] + 1
    order = np.argsort(w, kind="stable")
    parent = np.arange(n)
    cluster_id = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    z = np.empty((n - 1, 4))
    for row, e in enumerate(order):
        root_a, root_b = _find(parent, int(a[e])), _find(parent, int(b[e]))
        id_a, id_b = cluster_id[root_a], cluster_id[root_b]
        parent[root_b] = root_a
        size[root_a] += size[root_b]
        cluster_id[root_a] = n + row
        z[row] = (min(id_a, id_b), max(id_a, id_b), w[e], size[root_a])
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
    parent = np.arange(2 * n - 1)
    for row in range(n - k):
        parent[int(z[row, 0])] = n + row
        parent[int(z[row, 1])] = n + row
    roots = np.array([_find(parent, i) for i in range(n)])
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64)
