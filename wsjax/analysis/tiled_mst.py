"""Exact Euclidean minimum spanning tree in JAX: Boruvka rounds over distance tiles on devices.

Each Boruvka round finds, for every component, its shortest edge to another component, and
adds them all. A round is one pass over the distance matrix, in tiles that never leave the
devices:

1. The centred points live on the devices in float32, split into equal blocks of rows over a
   1-D mesh (`point_mesh`). Every device computes its rows against one block of columns at a
   time, tile by tile (||a||^2 + ||b||^2 - 2 a.b, full float32 products), masks pairs inside
   one component, and keeps each row's k nearest columns. The column blocks travel round the
   ring of devices (`ppermute`), so a device holds n/D points, not n, and n can grow with the
   number of devices (and hosts, under `jax.distributed`).
2. The host gets each row's two nearest outside columns (O(n) numbers). A float32 squared
   distance can be off by `slack` (a bound in units of the largest squared norm), so every
   pair within `slack` of its component's best is a candidate; rows with more than one such
   pair are searched again on the devices for their 16, then 128 nearest; rows with more
   still are searched in float64 on the host.
3. The candidates' lengths are recomputed in float64 as ||x_a - x_b|| from the input, and
   each component takes its shortest, ties broken by the point indices. That is a strict
   order on edges, so the chosen edges never close a cycle, and the tree is an exact minimum
   spanning tree: its lengths equal scipy's merge heights.

The same code runs on a CPU, a GPU or several of either. Memory is in `memory_estimate`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import numpy as np

from wsjax.errors import ConfigError

__all__ = ["POINT_AXIS", "point_mesh", "tiled_mst", "memory_estimate", "MemoryEstimate",
           "device_memory_bytes", "host_memory_bytes"]

POINT_AXIS = "points"
# Each row's nearest columns kept by the full pass, then by the searches for near ties.
_FIRST_K, _TIE_KS = 2, (16, 128)


def point_mesh(devices=None):
    """A 1-D mesh named "points" over `devices` (default: every device JAX sees)."""
    import jax
    from jax.sharding import Mesh

    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ConfigError("no devices to build a point mesh on")
    return Mesh(np.array(devs), (POINT_AXIS,))


def _shard_map(f, mesh, in_specs, out_specs):
    import jax

    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    from jax.experimental.shard_map import shard_map  # older JAX

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def _smallest(d2, col_ids, k: int):
    """(values, column ids) [T, k] of the k smallest entries of each row of d2 [T, C]."""
    import jax
    import jax.numpy as jnp

    if k > d2.shape[1]:  # fewer columns than wanted: the rest are infinitely far
        extra = k - d2.shape[1]
        d2 = jnp.pad(d2, ((0, 0), (0, extra)), constant_values=jnp.inf)
        col_ids = jnp.pad(col_ids, (0, extra))
    if k > 4:
        vals, pos = jax.lax.top_k(-d2, k)
        return -vals, col_ids[pos]
    # A few rounds of min-and-mask are cheaper than a general top-k over the long rows.
    vals, ids = [], []
    cols = jnp.arange(d2.shape[1])
    for _ in range(k):
        pos = jnp.argmin(d2, axis=1)
        vals.append(jnp.min(d2, axis=1))
        ids.append(col_ids[pos])
        d2 = jnp.where(cols[None, :] == pos[:, None], jnp.inf, d2)
    return jnp.stack(vals, axis=1), jnp.stack(ids, axis=1)


@functools.lru_cache(maxsize=64)
def _nearest_outside(mesh, k: int, tile: int):
    """Two jitted functions. The first: (rows, row sq. norms, row components, cols, col sq.
    norms, col components), each split over the mesh along axis 0 -> (float32 [R, k] squared
    distances, int32 [R, k] column indices) of each row's k nearest columns in other
    components (ascending; inf where fewer exist). rows [R, d], cols [C, d] float32; R and C
    divisible by the device count, R / devices by `tile`. The second: the same for the rows
    `take` [R] of the columns: (take, cols, col sq. norms, col components)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    devices = mesh.size
    ring = [(i, (i + 1) % devices) for i in range(devices)]

    def local(rows, row_sq, row_comp, cols, col_sq, col_comp):
        n_rows, n_cols = rows.shape[0], cols.shape[0]
        me = jax.lax.axis_index(POINT_AXIS)
        tiles = (rows.reshape(n_rows // tile, tile, rows.shape[1]),
                 row_sq.reshape(n_rows // tile, tile), row_comp.reshape(n_rows // tile, tile))

        def ring_step(step, carry):
            cols, col_sq, col_comp, best_vals, best_ids = carry
            # After `step` hops the column block held here started on device me - step.
            col_ids = ((me - step) % devices) * n_cols + jnp.arange(n_cols, dtype=jnp.int32)

            def tile_nearest(t):
                x, sq, comp = t
                # Full float32 products: TF32 or bfloat16 passes would break the error bound.
                dot = jax.lax.dot_general(x, cols, (((1,), (1,)), ((), ())),
                                          precision=jax.lax.Precision.HIGHEST)
                d2 = sq[:, None] + col_sq[None, :] - 2.0 * dot
                d2 = jnp.where(comp[:, None] == col_comp[None, :], jnp.inf, d2)
                return _smallest(d2, col_ids, k)

            vals, ids = jax.lax.map(tile_nearest, tiles)
            vals = jnp.concatenate([best_vals, vals.reshape(n_rows, k)], axis=1)
            ids = jnp.concatenate([best_ids, ids.reshape(n_rows, k)], axis=1)
            neg, pos = jax.lax.top_k(-vals, k)
            if devices > 1:
                cols, col_sq, col_comp = (jax.lax.ppermute(a, POINT_AXIS, ring)
                                          for a in (cols, col_sq, col_comp))
            return cols, col_sq, col_comp, -neg, jnp.take_along_axis(ids, pos, axis=1)

        # Built from this device's rows, so that the loop's carry varies over the mesh.
        start = (cols, col_sq, col_comp,
                 jnp.full((n_rows, k), jnp.inf, rows.dtype) + jnp.zeros_like(row_sq)[:, None],
                 jnp.zeros((n_rows, k), jnp.int32) + jnp.zeros_like(row_comp)[:, None])
        return jax.lax.fori_loop(0, devices, ring_step, start)[3:]

    split = PartitionSpec(POINT_AXIS)
    nearest = _shard_map(local, mesh, (split,) * 6, (split, split))

    def search(take, points, point_sq, comp):
        """The rows `take` [R] (split over the mesh) against every point."""
        return nearest(points[take], point_sq[take], comp[take], points, point_sq, comp)

    return jax.jit(nearest), jax.jit(search)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a tiled_mst run needs: per device and on the host (the input included)."""

    device_bytes: int
    host_bytes: int
    tile: int


def _tile_rows(rows_per_device: int, cols_per_device: int, accelerator: bool) -> int:
    """Rows per distance tile: a power of two whose [tile, cols] float32 tile fits a budget
    (small on a CPU, where it should stay near the caches; large on an accelerator), and at
    most an eighth of the rows, so that padding the rows to whole tiles wastes little."""
    budget = (256 if accelerator else 16) * 2 ** 20
    tile = 8
    while tile * 2 * cols_per_device * 4 <= budget and tile * 16 <= rows_per_device:
        tile *= 2
    return tile


def memory_estimate(n: int, d: int, devices: int = 1, tile: int | None = None,
                    accelerator: bool = False) -> MemoryEstimate:
    """Memory of `tiled_mst` on n points in d dimensions over `devices` devices.

    Per device, with m = ceil(n / devices) padded to a multiple of the tile T:
        4 m d (its rows) + 8 m d (two column blocks while one travels) + 16 T m (a tile of
        float32 distances and its temporaries) + 64 m (norms, components, nearest columns).
    On the host: 8 n d (the float64 input) + 4 n d (its float32 copy) + 100 n (bookkeeping).
    On a CPU the "devices" share the host's memory, and both terms count against it.
    """
    per = -(-n // devices)
    tile = tile or _tile_rows(per, per, accelerator)
    per = -(-per // tile) * tile
    device = 12 * per * d + 16 * tile * per + 64 * per
    host = 12 * n * d + 100 * n
    return MemoryEstimate(device_bytes=int(device), host_bytes=int(host), tile=int(tile))


def device_memory_bytes(device) -> int | None:
    """Memory a device may use (an accelerator's limit; a CPU's: the host's available memory),
    or None where it is unknown."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return host_memory_bytes() if device.platform == "cpu" else None


def host_memory_bytes() -> int | None:
    """The host's available memory in bytes (free and reclaimable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _check_memory(n: int, d: int, mesh, tile: int | None, memory_limit: int | None) -> int:
    devices = mesh.devices.ravel()
    accelerator = devices[0].platform != "cpu"
    est = memory_estimate(n, d, len(devices), tile, accelerator)
    # CPU "devices" share the host's memory with the input.
    need = est.device_bytes if accelerator else est.device_bytes * len(devices) + est.host_bytes
    limit = memory_limit if memory_limit is not None else device_memory_bytes(devices[0])
    if limit is not None and need > limit:
        gib = 2.0 ** 30
        raise ConfigError(
            f"single linkage of {n} x {d} needs about {need / gib:.1f} GiB per device, more "
            f"than the {limit / gib:.1f} GiB available; use more devices, a smaller block, or "
            f"fewer dimensions (an SVD)")
    return est.tile


def _edge_lengths(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [k]: ||x[a] - x[b]||, computed directly from the float64 points, in chunks."""
    out = np.empty(a.shape[0])
    step = max(1, 2 ** 24 // max(1, x.shape[1]))
    for lo in range(0, a.shape[0], step):
        diff = x[a[lo:lo + step]] - x[b[lo:lo + step]]
        out[lo:lo + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _nearest_exact(x: np.ndarray, comp: np.ndarray, row: int) -> np.ndarray:
    """int [m]: every point outside row's component at exactly its least float64 distance."""
    outside = np.flatnonzero(comp != comp[row])
    dist = _edge_lengths(x, np.full(outside.shape[0], row), outside)
    return outside[dist == dist.min()]


def tiled_mst(x: np.ndarray, mesh=None, tile: int | None = None, tol: float = 2.0 ** -15,
              memory_limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum spanning tree of x [n, d] (float, finite, n >= 2) under Euclidean distance.

    Args:
        x: [n, d] points in any order.
        mesh: a 1-D `point_mesh` to split the points over (default: one device, JAX's first).
        tile: rows per distance tile (default: chosen from the memory budget of a tile).
        tol: relative float32 error allowed for, in units of the largest squared norm.
        memory_limit: bytes one device may use (default: what the device reports).

    Returns:
        (a, b, w): int [n-1], int [n-1], float64 [n-1]; edge i joins points a[i] and b[i] with
        length w[i] = ||x_a - x_b|| in float64.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    x = np.asarray(x, np.float64)
    n, d = x.shape
    mesh = mesh if mesh is not None else point_mesh(jax.devices()[:1])
    devices = mesh.size
    tile = _check_memory(n, d, mesh, tile, memory_limit)
    padded = -(-n // (devices * tile)) * devices * tile
    centred = x - x.mean(axis=0)
    sq = np.einsum("ij,ij->i", centred, centred)
    # A float32 squared distance may be off by this much; pairs within it are rechecked.
    slack = 4.0 * tol * float(sq.max())
    split = NamedSharding(mesh, PartitionSpec(POINT_AXIS))

    def put(a: np.ndarray, fill):
        full = np.full((padded,) + a.shape[1:], fill, a.dtype)
        full[:a.shape[0]] = a
        return jax.device_put(full, split)

    points = put(centred.astype(np.float32), 0.0)
    # Padding points are infinitely far from everything, so no row ever picks one.
    point_sq = put(sq.astype(np.float32), np.float32(np.inf))

    comp = np.arange(n)
    tree_a, tree_b = [], []
    n_comp = n
    while n_comp > 1:
        comp_dev = put(comp.astype(np.int32), np.int32(-1))
        # In the first round every point is its own component and a candidate, so near ties
        # are searched for in the same pass; later rounds keep two columns per row.
        first_k = _TIE_KS[0] if n_comp == n else _FIRST_K
        full_pass = _nearest_outside(mesh, first_k, tile)[0]
        vals, ids = (np.asarray(a)[:n] for a in full_pass(points, point_sq, comp_dev,
                                                            points, point_sq, comp_dev))
        best_of_comp = np.full(n_comp, np.inf, np.float32)
        np.minimum.at(best_of_comp, comp, vals[:, 0])
        threshold = best_of_comp[comp] + np.float32(slack)
        tied = np.flatnonzero(vals[:, 0] <= threshold)
        tied_vals, tied_ids = vals[tied], ids[tied]
        wider = [k for k in _TIE_KS if k > first_k]
        pair_rows, pair_cols = [], []
        while True:
            # A row is settled when the last column it kept is beyond the threshold: every
            # candidate column is then among those kept.
            within = tied_vals <= threshold[tied][:, None]
            settled = ~within[:, -1]
            r, c = np.nonzero(within[settled])
            pair_rows.append(tied[settled][r])
            pair_cols.append(tied_ids[settled][r, c])
            tied = tied[~settled]
            if tied.size == 0 or not wider:
                break
            tied_vals, tied_ids = _search_rows(tied, points, point_sq, comp_dev, mesh,
                                               wider.pop(0), tile)
        for row in tied:  # more near ties than the devices' search keeps
            cols = _nearest_exact(x, comp, int(row))
            pair_rows.append(np.full(cols.shape[0], row))
            pair_cols.append(cols)
        u = np.concatenate(pair_rows).astype(np.int64)
        v = np.concatenate(pair_cols).astype(np.int64)
        lo, hi = np.minimum(u, v), np.maximum(u, v)
        length = _edge_lengths(x, lo, hi)
        # Each component's shortest candidate, ties broken by (lower, higher) point index.
        order = np.lexsort((hi, lo, length, comp[u]))
        first = order[np.r_[True, comp[u][order][1:] != comp[u][order][:-1]]]
        edges = np.unique(np.stack([lo[first], hi[first]], axis=1), axis=0)
        comp, n_comp = _merge(comp, n_comp, edges)
        tree_a.append(edges[:, 0])
        tree_b.append(edges[:, 1])
    a = np.concatenate(tree_a) if tree_a else np.zeros(0, np.int64)
    b = np.concatenate(tree_b) if tree_b else np.zeros(0, np.int64)
    return a, b, _edge_lengths(x, a, b)


def _search_rows(rows: np.ndarray, points, point_sq, comp_dev, mesh, k: int, tile: int):
    """The k nearest outside columns of a few rows (by index), on the devices."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    devices = mesh.size
    # Row counts rounded up to a power of two (at least 64): few shapes, few compilations.
    per = max(64, 2 ** math.ceil(math.log2(-(-rows.shape[0] // devices))))
    tile = 1 << int(math.log2(min(tile, per)))
    take = np.zeros(per * devices, np.int64)
    take[:rows.shape[0]] = rows
    # The rows are gathered on the devices; the padding repeats row 0 (discarded).
    take = jax.device_put(take.astype(np.int32), NamedSharding(mesh, PartitionSpec(POINT_AXIS)))
    vals, ids = _nearest_outside(mesh, k, tile)[1](take, points, point_sq, comp_dev)
    return np.asarray(vals)[:rows.shape[0]], np.asarray(ids)[:rows.shape[0]]


def _merge(comp: np.ndarray, n_comp: int, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Component labels after joining the components of each edge's ends (a forest)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(edges.shape[0]), (comp[edges[:, 0]], comp[edges[:, 1]])),
                       shape=(n_comp, n_comp))
    merged, labels = connected_components(graph, directed=False)
    if merged != n_comp - edges.shape[0]:
        raise RuntimeError("Boruvka round closed a cycle; this is a bug in tiled_mst")
    return labels[comp], merged
