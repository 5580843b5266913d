"""Version control from weights: which model and epoch a checkpoint is, and checkpoint order.

An index holds known trajectories (each model's snapshots in epoch order), optionally in a
truncated-SVD space (no centering) fitted on them. `identify` projects a checkpoint onto every
trajectory's segments, names the nearest trajectory and a fractional epoch, and answers
"unknown" when the distance exceeds a threshold calibrated on the index itself: the
leave-one-epoch-out distances of known snapshots to their own trajectory (every snapshot but
each model's first), times a safety factor. A checkpoint trained further than its trajectory
is flagged "beyond the end" by where its offset from the last snapshot points (see `identify`),
with the cutoff calibrated by leaving each trajectory's last snapshot out. `order` reconstructs
the order of one lineage's checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsjax.checkpoints import Layout, LayoutMismatchError
from wsjax.errors import ConfigError, DataError, RunDirError
from wsjax.store import atomic_save_npz, atomic_write_json, check_file, read_json

__all__ = ["TrajectoryIndex", "Identification", "DimensionMismatchError", "build_index",
           "add_to_index", "index_from_zoos", "index_from_folders", "add_folders", "collect",
           "Collection", "zoo_layout", "save_index", "load_index", "identify",
           "order_checkpoints", "order_agreement", "ORDER_METHODS", "load_checkpoints"]

ORDER_METHODS = ("endpoint", "merge", "kurtosis")


class DimensionMismatchError(LayoutMismatchError):
    """A checkpoint's length is not the index's weight-space dimension (another architecture)."""


@dataclass(frozen=True)
class TrajectoryIndex:
    """Known trajectories.

    Attributes:
        points: float64 [N, D] snapshots in index space (D = P, or k with an SVD basis).
        model: int [N] trajectory id per point, 0..M-1.
        epoch: float [N] epoch per point.
        labels: M trajectory names.
        num_params: P, the weight-space dimension checkpoints must have.
        basis: float64 [k, P] SVD right singular vectors, or None (full space).
        threshold: distance above which a checkpoint is "unknown".
        calibration: how the threshold was set (JSON-able).
        layout: names, shapes and dtypes of the checkpoints (`wsjax.checkpoints.Layout`).
        origins: per model label, where it came from and how its order was found.
        stats: the leave-out statistics the calibration came from (for `add_to_index`), or
            None for an index written before they were kept.
    """

    points: np.ndarray
    model: np.ndarray
    epoch: np.ndarray
    labels: tuple[str, ...]
    num_params: int
    basis: np.ndarray | None
    threshold: float
    calibration: dict
    layout: Layout | None = None
    stats: _Stats | None = None
    origins: dict | None = None

    def project(self, x: np.ndarray) -> np.ndarray:
        """[n, P] -> [n, D]; refuses another dimension with DimensionMismatchError."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.num_params:
            raise DimensionMismatchError(
                f"checkpoint has {x.shape[-1]} weights but the index holds "
                f"{self.num_params}-weight models (a different architecture); "
                "build an index from a zoo of this architecture")
        return x if self.basis is None else x @ self.basis.T

    @functools.cached_property
    def segment_table(self):
        """(trajectories [(points [T, D], epochs [T])], segment starts a [K], ends b [K], first
        segment of each trajectory [M], `_segment_constants`): what `identify` measures
        against, derived once per index."""
        ids = _trajectories(self.model, self.epoch)
        trajs = [(self.points[ids[m]], self.epoch[ids[m]]) for m in range(len(self.labels))]
        a, b, owner = _segments(ids, range(len(trajs)))
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        return trajs, a, b, starts, _segment_constants(self.points, a, b)

    def trajectory(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Points [T, D] and epochs [T] of trajectory m, in epoch order."""
        sel = np.flatnonzero(self.model == m)
        sel = sel[np.argsort(self.epoch[sel], kind="stable")]
        return self.points[sel], self.epoch[sel]


@dataclass(frozen=True)
class Identification:
    """The answer for one checkpoint (see `identify`)."""

    model: str | None
    nearest_model: str
    epoch: float
    segment: tuple[float, float]
    nearest_epoch: float
    distance: float
    second_model: str | None
    second_distance: float
    confidence: float
    unknown: bool
    beyond_end: bool
    end_distance: float
    beyond_score: float
    extra_epochs: float

    def to_json(self) -> dict:
        """Plain JSON (non-finite numbers, such as the score of the end itself, become null)."""
        d = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
             for k, v in self.__dict__.items()}
        d["segment"] = list(self.segment)
        return d


def _segment_distance(q: np.ndarray, pts: np.ndarray, eps: np.ndarray):
    """Distance of q [D] to the polyline pts [T, D]; returns (dist, frac epoch, seg, j, t_raw).

    j is the nearest segment (pts[j] -> pts[j+1]) and t_raw the unclipped projection on it.
    """
    if len(pts) == 1:
        return float(np.linalg.norm(q - pts[0])), float(eps[0]), (eps[0], eps[0]), 0, 0.0
    a, b = pts[:-1], pts[1:]
    ab = b - a
    denom = np.maximum((ab * ab).sum(1), 1e-300)
    t_raw = ((q - a) * ab).sum(1) / denom
    t = np.clip(t_raw, 0.0, 1.0)
    d = np.linalg.norm(a + t[:, None] * ab - q, axis=1)
    j = int(np.argmin(d))
    e0, e1 = float(eps[j]), float(eps[j + 1])
    return float(d[j]), e0 + float(t[j]) * (e1 - e0), (e0, e1), j, float(t_raw[j])


def _end_geometry(q: np.ndarray, pts: np.ndarray, j: int, dist: float):
    """How q [D] sits against the end of the polyline pts [T, D] (T >= 2) it is nearest to.

    Returns (back, reach, ratio): back = -<q - end, end - pts[j]> / |q - end|^2, the share of
    q's offset from the end that runs back along the trajectory (about 1 for a point between
    snapshots, about 0 or below for one trained further: its new steps are nearly orthogonal
    to the old ones in weight space, or continue their direction); reach = |q - end| / |last
    step|; ratio = |q - end| / dist (1 when the end is the nearest point of the trajectory).
    """
    off = q - pts[-1]
    r2 = float(off @ off)
    step = float(np.linalg.norm(pts[-1] - pts[-2]))
    if r2 == 0.0:
        return float("inf"), 0.0, 1.0
    r = np.sqrt(r2)
    back = -float(off @ (pts[-1] - pts[j])) / r2
    return back, r / max(step, 1e-300), r / max(dist, 1e-300)


def _is_beyond(geom, rule: dict) -> bool:
    back, reach, ratio = geom
    return bool(reach > rule["reach"] and ratio <= rule["guard"] and back < rule["back"])


def _extra_epochs(r_end: float, pts: np.ndarray, eps: np.ndarray) -> float:
    """Epochs past the end that distance r_end from the end stands for, read off the
    trajectory's own end stretch (distance from the last snapshot to earlier ones vs their lag,
    made monotone); linear past its start."""
    dist = np.maximum.accumulate(np.linalg.norm(pts[::-1] - pts[-1], axis=1))
    lag = eps[-1] - eps[::-1]
    if r_end >= dist[-1]:
        return float(lag[-1] * r_end / max(dist[-1], 1e-300))
    return float(np.interp(r_end, dist, lag))


BEYOND_DEFAULTS = dict(back=0.5, reach=0.25, guard=2.0)


def _trajectories(model: np.ndarray, epoch: np.ndarray) -> dict[int, np.ndarray]:
    """Trajectory id -> its point indices in epoch order."""
    out = {}
    for m in np.unique(model):
        sel = np.flatnonzero(model == m)
        out[int(m)] = sel[np.argsort(epoch[sel], kind="stable")]
    return out


def _own_stats(points: np.ndarray, epoch: np.ndarray, sel: np.ndarray):
    """Leave-out statistics of one trajectory (point indices `sel` in epoch order).

    Returns (loo {point: distance to the trajectory without it}, for every point but the
    first; pos, neg: the end geometry (see `_end_geometry`) of the last and the second-to-last
    snapshot against the trajectory without it, or None for fewer than 3 snapshots).
    """
    loo = {}
    for i in range(1, len(sel)):
        rest = np.delete(sel, i)
        loo[int(sel[i])] = _segment_distance(points[sel[i]], points[rest], epoch[rest])[0]
    pos = neg = None
    if len(sel) >= 3:
        pts, eps = points[sel], epoch[sel]
        for i in (len(sel) - 2, len(sel) - 1):
            rest = np.delete(pts, i, axis=0)
            d, _, _, j, _ = _segment_distance(pts[i], rest, np.delete(eps, i))
            geom = _end_geometry(pts[i], rest, j, d)
            if i == len(sel) - 1:
                pos = geom
            else:
                neg = geom
    return loo, pos, neg


_BLOCK_FLOATS = 1 << 23  # float64 distances per block of rows (64 MiB)


def _segments(trajs: dict, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, owner) int [K]: the segments points[a_k] -> points[b_k] of trajectories `ids`,
    trajectory after trajectory in epoch order (a one-snapshot trajectory is the point a = b)."""
    a, b, owner = [], [], []
    for t in ids:
        sel = trajs[int(t)]
        a.append(sel[:-1] if len(sel) > 1 else sel)
        b.append(sel[1:] if len(sel) > 1 else sel)
        owner.append(np.full(len(a[-1]), int(t)))
    empty = [np.zeros(0, np.int64)]
    return np.concatenate(a or empty), np.concatenate(b or empty), np.concatenate(owner or empty)


def _segment_constants(points: np.ndarray, a: np.ndarray, b: np.ndarray):
    """(|a|^2, <a, b - a>, |b - a|^2) float [K] of the segments points[a] -> points[b], in
    blocks of segments so that no [K, D] copy is made."""
    out = np.empty((3, len(a)))
    step = max(1, _BLOCK_FLOATS // (4 * max(1, points.shape[1])))
    for lo in range(0, len(a), step):
        pa = points[a[lo: lo + step]]
        ab = points[b[lo: lo + step]] - pa
        out[:, lo: lo + len(pa)] = (pa * pa).sum(1), (pa * ab).sum(1), (ab * ab).sum(1)
    a2, aab, ab2 = out
    return a2, aab, np.maximum(ab2, 1e-300)


def _segment_distances(q: np.ndarray, points: np.ndarray, a: np.ndarray, b: np.ndarray,
                       constants=None):
    """Distances of queries q [n, D] to the segments points[a] -> points[b]: yields (row
    slice, float [rows, K]) block by block of rows.

    One matrix product per block (q against the segments' end points) instead of a loop per
    query and trajectory: |q - a - t (b - a)|^2 expanded in dot products. Accurate to about
    1e-12 of the squared norms; callers that need the exact distance of a near point recompute
    it with `_segment_distance`. `constants`: `_segment_constants(points, a, b)`, if known.
    """
    used, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    if len(used) == len(points):
        p, ia, ib = points, a, b
    else:
        p, ia, ib = points[used], inv[: len(a)], inv[len(a):]
    a2, aab, ab2 = _segment_constants(points, a, b) if constants is None else constants
    rows = max(1, _BLOCK_FLOATS // max(1, len(p) + len(a)))
    for lo in range(0, len(q), rows):
        qc = q[lo: lo + rows]
        g = qc @ p.T
        qa = g[:, ia]
        along = g[:, ib] - qa - aab                       # <q - a, b - a>
        t = np.clip(along / ab2, 0.0, 1.0)
        d2 = (qc * qc).sum(1)[:, None] - 2 * qa + a2 - 2 * t * along + t * t * ab2
        yield slice(lo, lo + len(qc)), np.sqrt(np.maximum(d2, 0.0))


def _nearest_other(points: np.ndarray, trajs: dict, rows: np.ndarray, row_owner: np.ndarray,
                   against) -> np.ndarray:
    """Distance of each point in `rows` to the nearest trajectory among `against` (ids) other
    than its own (`row_owner`); inf when there is none."""
    out = np.full(len(rows), np.inf)
    a, b, owner = _segments(trajs, against)
    if not len(rows) or not len(a):
        return out
    for sl, d in _segment_distances(points[rows], points, a, b):
        d[row_owner[sl, None] == owner[None, :]] = np.inf
        out[sl] = d.min(axis=1)
    return out


@dataclass(frozen=True)
class _Stats:
    """Per-point and per-trajectory leave-out statistics, kept in the index so that adding
    models recalibrates without recomputing the old ones.

    loo, other: float [N], NaN for each trajectory's first snapshot (skipped); other is inf
    with a single trajectory. pos, neg: float [M, 3] end geometry (back, reach, ratio) of
    each trajectory's last / second-to-last snapshot, NaN rows for short trajectories.
    """

    loo: np.ndarray
    other: np.ndarray
    pos: np.ndarray
    neg: np.ndarray


def _compute_stats(points: np.ndarray, model: np.ndarray, epoch: np.ndarray,
                   new: range, old: _Stats | None = None) -> _Stats:
    """Statistics of trajectories `new` (ids), and the old trajectories' nearest-other
    distances updated against the new ones (`old` holds the rest)."""
    trajs = _trajectories(model, epoch)
    n, m = len(points), max(trajs) + 1
    loo, other = np.full(n, np.nan), np.full(n, np.nan)
    pos, neg = np.full((m, 3), np.nan), np.full((m, 3), np.nan)
    if old is not None:
        k = len(old.loo)
        loo[:k], other[:k] = old.loo, old.other
        pos[: len(old.pos)], neg[: len(old.neg)] = old.pos, old.neg
    fresh = [t for t in trajs if t in new]
    for t in fresh:
        own, p, q = _own_stats(points, epoch, trajs[t])
        loo[list(own)] = list(own.values())
        pos[t] = np.nan if p is None else p
        neg[t] = np.nan if q is None else q
    rows, owner = _rows_of(trajs, fresh)
    other[rows] = _nearest_other(points, trajs, rows, owner, list(trajs))
    rows, owner = _rows_of(trajs, [t for t in trajs if t not in new])
    other[rows] = np.minimum(other[rows], _nearest_other(points, trajs, rows, owner, fresh))
    return _Stats(loo, other, pos, neg)


def _rows_of(trajs: dict, ids: list) -> tuple[np.ndarray, np.ndarray]:
    """(rows, owner) int [n]: the points of trajectories `ids` but each one's first snapshot
    (skipped by the statistics), and the trajectory of each."""
    rows = [trajs[t][1:] for t in ids]
    owner = [np.full(len(r), t) for r, t in zip(rows, ids, strict=True)]
    empty = [np.zeros(0, np.int64)]
    return np.concatenate(rows or empty).astype(np.int64), np.concatenate(owner or empty)


def _beyond_calibration(stats: _Stats, back: float | None, reach: float,
                        guard: float) -> dict:
    """The beyond-the-end rule, calibrated on the index by leaving points out.

    Positives (leave-last-out): each trajectory's last snapshot against the trajectory without
    it, i.e. one indexed step beyond a shorter end. Negatives (leave-one-out near the end):
    each trajectory's second-to-last snapshot against the trajectory without it, the interior
    point most like a positive (points farther back are mostly kept out by the guard, and
    counting them would let easy negatives outvote the hard ones). Unless `back` is given, the
    cutoff on `back`
    maximises TPR - FPR over 0.25..0.75 (the value of the best set nearest 0.5, the midpoint
    between the ideal 1 for interior and 0 for beyond points; the range keeps a few stray
    calibration points from pushing it to an extreme).
    """
    pos = [tuple(g) for g in stats.pos if np.isfinite(g[1])]
    neg = [tuple(g) for g in stats.neg if np.isfinite(g[1])]
    rule = dict(BEYOND_DEFAULTS, reach=reach, guard=guard)

    def rates(b):
        r = dict(rule, back=b)
        tpr = float(np.mean([_is_beyond(g, r) for g in pos])) if pos else None
        fpr = float(np.mean([_is_beyond(g, r) for g in neg])) if neg else None
        return tpr, fpr

    calibrated = back is None
    if calibrated:
        back = BEYOND_DEFAULTS["back"]
        if pos and neg:
            grid = np.round(np.arange(0.25, 0.751, 0.01), 2)
            score = np.array([np.subtract(*rates(b)) for b in grid])
            best = grid[score >= score.max() - 1e-12]
            back = float(best[np.argmin(np.abs(best - 0.5))])
    tpr, fpr = rates(back)
    return dict(rule, back=float(back), calibrated=calibrated, llo_tpr=tpr, loo_fpr=fpr,
                llo_n=len(pos), loo_n=len(neg))


def _calibrate(stats: _Stats, threshold: float | None, factor: float, quantile: float,
               beyond_back: float | None, beyond_reach: float,
               beyond_guard: float) -> tuple[float, dict]:
    """(threshold, calibration) from the leave-out statistics (see `build_index`)."""
    loo = stats.loo[np.isfinite(stats.loo)]
    other = stats.other[np.isfinite(stats.other)]
    own = float(np.quantile(loo, quantile)) if len(loo) else None
    nearest_other = float(other.min()) if len(other) else None
    fixed = threshold is not None
    if threshold is None:
        if own is None:
            raise ConfigError("cannot calibrate a threshold: every trajectory has one snapshot")
        mid = 2 * own if nearest_other is None else float(np.sqrt(own * nearest_other))
        threshold = factor * mid
    if beyond_back is not None and not 0.0 < beyond_back < 1.0:
        raise ConfigError(f"--beyond-back {beyond_back} must be between 0 and 1 (default 0.5)")
    if beyond_reach < 0 or beyond_guard < 1:
        raise ConfigError("--beyond-reach must be >= 0 and --beyond-guard >= 1")
    calibration = dict(factor=factor, quantile=quantile, own=own, nearest_other=nearest_other,
                       loo_median=float(np.median(loo)) if len(loo) else None,
                       other_median=float(np.median(other)) if len(other) else None,
                       fixed_threshold=float(threshold) if fixed else None,
                       beyond=_beyond_calibration(stats, beyond_back, beyond_reach,
                                                  beyond_guard))
    return float(threshold), calibration


def build_index(snapshots: np.ndarray, model: np.ndarray, epoch: np.ndarray,
                labels: list[str] | None = None, svd: int | None = None,
                threshold: float | None = None, factor: float = 1.0,
                quantile: float = 1.0, beyond_back: float | None = None,
                beyond_reach: float = BEYOND_DEFAULTS["reach"],
                beyond_guard: float = BEYOND_DEFAULTS["guard"],
                layout: Layout | None = None) -> TrajectoryIndex:
    """Builds an index from snapshots [N, P] with trajectory ids model [N] and epochs [N].

    The unknown threshold (unless `threshold` is given) is calibrated on the index itself:
    own = quantile(leave-one-epoch-out distance of each snapshot to its own trajectory),
    other = min(distance of each snapshot to the nearest other trajectory), and
    threshold = factor * sqrt(own * other), the geometric midpoint between how far a member can
    stray from its own trajectory and how close a different model comes (with one trajectory:
    factor * 2 * own). `svd=k` stores the points in a rank-k truncated SVD (no centering).

    The beyond-the-end rule (see `identify`) is stored in calibration["beyond"]: its cutoff on
    `back` is calibrated by leave-last-out / leave-one-out on the index unless `beyond_back`
    is given; `beyond_reach` and `beyond_guard` are fixed. `layout`: the checkpoints' layout
    (default: a flat vector of P weights).
    """
    x = np.asarray(snapshots, dtype=np.float64)
    model = np.asarray(model)
    epoch = np.asarray(epoch, dtype=np.float64)
    if x.ndim != 2 or model.shape != (len(x),) or epoch.shape != (len(x),):
        raise ConfigError("build_index needs snapshots [N, P], model [N] and epoch [N]")
    uniq, model = np.unique(model, return_inverse=True)
    labels = tuple(labels) if labels is not None else tuple(str(u) for u in uniq)
    if len(labels) != len(uniq):
        raise ConfigError(f"{len(labels)} labels for {len(uniq)} trajectories")
    layout = Layout.flat_of(x.shape[1]) if layout is None else layout
    if layout.size != x.shape[1]:
        raise ConfigError(f"layout of {layout.size} weights for {x.shape[1]}-weight snapshots")
    basis = None
    if svd is not None:
        if not 1 <= svd <= min(x.shape):
            raise ConfigError(f"--svd {svd} must be between 1 and {min(x.shape)}")
        from wsjax.analysis.svd import fit_svd

        basis = np.asarray(fit_svd(x, rank=svd).vt)
        points = x @ basis.T
    else:
        points = x
    stats = _compute_stats(points, model, epoch, range(len(uniq)))
    threshold, calibration = _calibrate(stats, threshold, factor, quantile, beyond_back,
                                        beyond_reach, beyond_guard)
    return TrajectoryIndex(points=points, model=model.astype(np.int64), epoch=epoch,
                           labels=labels, num_params=x.shape[1], basis=basis,
                           threshold=threshold, calibration=calibration, layout=layout,
                           stats=stats)


def add_to_index(index: TrajectoryIndex, snapshots: np.ndarray, model: np.ndarray,
                 epoch: np.ndarray, labels: list[str], layout: Layout | None = None,
                 where: str = "checkpoints") -> TrajectoryIndex:
    """The index with more models added, equal to rebuilding it from all the models.

    snapshots [n, P], model [n] ids of the new trajectories (named by `labels`), epoch [n].
    Only the new trajectories' leave-out statistics and the old ones' distances to the new
    ones are computed; the threshold and beyond-the-end cutoff are recalibrated with the
    index's own settings. An index in an SVD space cannot grow (its basis was fitted to its
    points): rebuild it.
    """
    if index.basis is not None:
        raise ConfigError("this index lives in an SVD space fitted to its models; rebuild it "
                          "with `python -m wsjax index` instead of adding")
    if index.stats is None:
        raise ConfigError("this index was written without its calibration statistics; "
                          "rebuild it with `python -m wsjax index`")
    x = np.asarray(snapshots, dtype=np.float64)
    index.layout.check(Layout.flat_of(x.shape[1]) if layout is None else layout, where)
    uniq, inv = np.unique(np.asarray(model), return_inverse=True)
    if len(labels) != len(uniq):
        raise ConfigError(f"{len(labels)} labels for {len(uniq)} trajectories")
    clash = sorted(set(labels) & set(index.labels))
    if clash:
        raise ConfigError(f"model {clash[0]} is already in the index; give it another folder "
                          "name or rebuild the index")
    m0 = len(index.labels)
    points = np.concatenate([index.points, x])
    models = np.concatenate([index.model, m0 + inv.astype(np.int64)])
    epochs = np.concatenate([index.epoch, np.asarray(epoch, dtype=np.float64)])
    stats = _compute_stats(points, models, epochs, range(m0, m0 + len(uniq)), index.stats)
    cal, beyond = index.calibration, index.calibration["beyond"]
    threshold, calibration = _calibrate(
        stats, cal.get("fixed_threshold"), cal["factor"], cal["quantile"],
        None if beyond["calibrated"] else beyond["back"], beyond["reach"], beyond["guard"])
    return TrajectoryIndex(points=points, model=models, epoch=epochs,
                           labels=index.labels + tuple(labels), num_params=index.num_params,
                           basis=None, threshold=threshold, calibration=calibration,
                           layout=index.layout, stats=stats)


def zoo_layout(config: dict, num_params: int) -> Layout:
    """The layout of a zoo run's snapshots: its architecture's parameters, in the order the
    run flattened them (kernels only for a kernels-only zoo); flat if it cannot be rebuilt."""
    from wsjax.models import example_input, get_arch
    from wsjax.params import param_layout
    from wsjax.zoo import ZooConfig

    try:
        cfg = ZooConfig(**{k: v for k, v in config["config"].items()
                           if k in ZooConfig.__dataclass_fields__})
        spec = get_arch(cfg.arch)
        import jax

        params = spec.make_module(**cfg.module_options()).init(
            jax.random.key(0), example_input(spec))["params"]
    except (KeyError, TypeError, ValueError):
        return Layout.flat_of(num_params)
    rows = [(n, s) for n, s, _ in param_layout(params)
            if not cfg.kernels_only or n.endswith("kernel")]
    layout = Layout(tuple(n for n, _ in rows), tuple(s for _, s in rows),
                    ("float32",) * len(rows))
    return layout if layout.size == num_params else Layout.flat_of(num_params)


@dataclass(frozen=True)
class Collection:
    """Checkpoints gathered for an index: x float64 [N, P], model [N] ids into labels,
    epoch [N] (a step, or a rank recovered from the weights), their layout, and per model
    where it came from and how its order was found."""

    x: np.ndarray
    model: np.ndarray
    epoch: np.ndarray
    labels: list[str]
    layout: Layout
    origins: dict


def _is_zoo_run(path: Path) -> bool:
    """A run directory, whole or damaged: any of its own files marks it (reading it then names
    what is missing), so a damaged run is never taken for a folder of checkpoints."""
    own = ("progress.json", "sharded.json", "shards")
    return any((path / name).exists() for name in own) or (
        (path / "config.json").is_file() and (path / "snapshots.npy").is_file())


def collect(sources: list[str | os.PathLike], epochs: list[int] | None = None,
            order_method: str = "endpoint") -> Collection:
    """Every checkpoint of `sources`: zoo run directories (each healthy member a model,
    `epochs` the snapshots kept) and folders of checkpoints (`wsjax.checkpoints.scan_folder`:
    a model per sub-folder). A model's checkpoints are ordered by their steps (recorded, or
    the numbers in their names) when each has a distinct one, else by `order_checkpoints`
    with `order_method`, their rank then standing for the epoch. Every checkpoint is read
    and checked before anything is returned: one unreadable file or one other layout fails
    the whole collection (DataError / LayoutMismatchError)."""
    from wsjax.checkpoints import read_checkpoint, scan_folder
    from wsjax.store import load_zoo

    xs, ms, es, labels, origins = [], [], [], [], {}
    layout, first = None, None

    def admit(lay: Layout, where: str):
        nonlocal layout, first
        if layout is None:
            layout, first = lay, where
        else:
            diff = layout.difference(lay)
            if diff is not None:
                raise LayoutMismatchError(f"{where}: {diff.replace('the index', first)}")

    for src in map(Path, sources):
        if _is_zoo_run(src):
            zoo = load_zoo(src)
            if not zoo.healthy().any():
                continue
            admit(zoo_layout(zoo.config, zoo.snapshots.shape[-1]), str(src))
            keep = np.arange(zoo.snapshots.shape[1]) if epochs is None else np.asarray(epochs)
            x, seed, epoch = zoo.points(epochs=keep)
            seeds = np.unique(seed)
            xs.append(x)
            ms.append(len(labels) + np.searchsorted(seeds, seed))
            es.append(np.asarray(epoch, dtype=np.float64))
            for s in seeds:
                labels.append(f"{src.name}:seed{int(s)}")
                origins[labels[-1]] = dict(source=str(src), order="epochs")
            continue
        found = scan_folder(src)
        if not found:
            raise DataError(f"{src}: no checkpoints found (files ending in "
                            ".msgpack/.safetensors/.npz/.npy, or Orbax folders)")
        by_model: dict[str, list] = {}
        for ck in found:
            x, lay, step = read_checkpoint(ck.path)
            if len(x) != 1:
                raise DataError(f"{ck.path}: holds {len(x)} checkpoints; in a folder, save "
                                "one checkpoint per file")
            admit(lay, str(ck.path))
            by_model.setdefault(ck.model, []).append((x[0], ck.step if step is None else step))
        for name, items in by_model.items():
            if name in labels:
                raise ConfigError(f"model {name} appears in two sources; give the folders "
                                  "distinct names")
            x = np.stack([v for v, _ in items])
            steps = [s for _, s in items]
            if all(s is not None for s in steps) and len(set(steps)) == len(steps):
                epoch, how = np.asarray(steps, dtype=np.float64), "steps"
            else:
                rank = np.empty(len(x))
                rank[order_checkpoints(x, order_method)] = np.arange(len(x))
                epoch, how = rank, f"weights:{order_method}"
            xs.append(x)
            ms.append(np.full(len(x), len(labels)))
            es.append(epoch)
            labels.append(name)
            origins[name] = dict(source=str(src), order=how)
    if not xs:
        raise ConfigError("no healthy members or checkpoints in the given sources")
    return Collection(np.concatenate(xs), np.concatenate(ms), np.concatenate(es), labels,
                      layout, origins)


def index_from_folders(sources: list[str | os.PathLike], epochs: list[int] | None = None,
                       svd: int | None = None, order_method: str = "endpoint",
                       **kw) -> TrajectoryIndex:
    """An index of the checkpoints in `sources` (zoo runs and folders; see `collect`)."""
    c = collect(sources, epochs=epochs, order_method=order_method)
    index = build_index(c.x, c.model, c.epoch, c.labels, svd=svd, layout=c.layout, **kw)
    return dataclasses.replace(index, origins=c.origins)


def index_from_zoos(run_dirs: list[str | os.PathLike], epochs: list[int] | None = None,
                    svd: int | None = None, **kw) -> TrajectoryIndex:
    """An index of every healthy member of the zoos in `run_dirs` (epochs: which to keep)."""
    return index_from_folders(run_dirs, epochs=epochs, svd=svd, **kw)


def add_folders(index: TrajectoryIndex, sources: list[str | os.PathLike],
                order_method: str = "endpoint") -> TrajectoryIndex:
    """`add_to_index` with the checkpoints of `sources` (see `collect`)."""
    c = collect(sources, order_method=order_method)
    grown = add_to_index(index, c.x, c.model, c.epoch, c.labels, layout=c.layout,
                         where=", ".join(map(str, sources)))
    return dataclasses.replace(grown, origins={**(index.origins or {}), **c.origins})


_STAT_ARRAYS = ("loo", "other", "pos", "neg")


def save_index(index: TrajectoryIndex, out: str | os.PathLike) -> Path:
    """Writes DIR/index.npz and then DIR/index.json (with index.npz's integrity record)
    atomically; returns DIR."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = dict(points=index.points, model=index.model, epoch=index.epoch)
    if index.basis is not None:
        arrays["basis"] = index.basis
    if index.stats is not None:
        arrays.update({f"stats_{k}": getattr(index.stats, k) for k in _STAT_ARRAYS})
    record = atomic_save_npz(out / "index.npz", **arrays)
    layout = index.layout or Layout.flat_of(index.num_params)
    atomic_write_json(out / "index.json", dict(
        format=1, labels=list(index.labels), num_params=index.num_params,
        threshold=index.threshold, calibration=index.calibration,
        svd=None if index.basis is None else int(index.basis.shape[0]),
        layout=layout.to_json(), origins=index.origins, files={"index.npz": record}))
    return out


def load_index(path: str | os.PathLike) -> TrajectoryIndex:
    """Reads an index written by `save_index`, index.npz checked against its record.

    Raises:
        ConfigError: not an index folder. RunDirError: a damaged or missing file, named.
    """
    path = Path(path)
    if not path.is_dir() or not any((path / n).exists() for n in ("index.json", "index.npz")):
        raise ConfigError(f"{path}: not an index; build one with `python -m wsjax index`")
    fix = "rebuild it with `python -m wsjax index --run ... --out DIR`"
    meta = read_json(path / "index.json", fix)
    npz = path / "index.npz"
    try:
        check_file(npz, meta.get("files", {}).get("index.npz"), fix)
        with np.load(npz, allow_pickle=False) as z:
            basis = z["basis"] if "basis" in z.files else None
            stats = (_Stats(*(z[f"stats_{k}"] for k in _STAT_ARRAYS))
                     if "stats_loo" in z.files else None)
            layout = (Layout.from_json(meta["layout"]) if meta.get("layout")
                      else Layout.flat_of(int(meta["num_params"])))
            return TrajectoryIndex(z["points"], z["model"], z["epoch"], tuple(meta["labels"]),
                                   int(meta["num_params"]), basis, float(meta["threshold"]),
                                   meta["calibration"], layout=layout, stats=stats,
                                   origins=meta.get("origins"))
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        raise RunDirError(f"{path} is damaged ({type(e).__name__}: {e}); {fix}") from None


def identify(index: TrajectoryIndex, checkpoints: np.ndarray,
             threshold: float | None = None,
             beyond_back: float | None = None) -> list[Identification]:
    """Identifies checkpoints [P] or [n, P]: trajectory, fractional epoch, distances, confidence.

    confidence = 1 - d_best / d_second (0: a tie, 1: on the trajectory, nothing else near).
    beyond_end: on the nearest trajectory, with end = its last snapshot and a = the start of the
    nearest segment, the checkpoint is past the end when |q - end| > reach * last step (not
    the end itself), |q - end| <= guard * distance to the trajectory (the end region is the
    nearest part) and back = -<q - end, end - a> / |q - end|^2 < the calibrated cutoff (its
    offset from the end does not run back along the trajectory). Then `epoch` = last epoch +
    `extra_epochs`, read off the trajectory's own distance-vs-lag curve from its end.
    """
    q = index.project(checkpoints)
    thr = index.threshold if threshold is None else float(threshold)
    rule = dict(BEYOND_DEFAULTS, **{k: v for k, v in index.calibration.get("beyond", {}).items()
                                     if k in BEYOND_DEFAULTS})
    if beyond_back is not None:
        rule["back"] = float(beyond_back)
    trajs, a, b, starts, constants = index.segment_table
    out = []
    for sl, d in _segment_distances(q, index.points, a, b, constants):
        screen = np.minimum.reduceat(d, starts, axis=1)      # [rows, models]
        for row, near_d in zip(q[sl], screen, strict=True):
            out.append(_answer(row, near_d, trajs, index.labels, thr, rule))
    return out


def _answer(row: np.ndarray, screen: np.ndarray, trajs: list, labels: tuple, thr: float,
            rule: dict) -> Identification:
    """The identification of one projected checkpoint row [D], given its screened distance to
    every trajectory [M]: the nearest few are measured exactly and ranked (ties: lower id)."""
    cand = np.sort(np.argsort(screen, kind="stable")[:_EXACT_CANDIDATES])
    res = {int(c): _segment_distance(row, *trajs[c]) for c in cand}
    rank = sorted(res, key=lambda c: (res[c][0], c))
    b = rank[0]
    s = rank[1] if len(rank) > 1 else None
    dist, frac, seg, j, _ = res[b]
    d2 = float(res[s][0]) if s is not None else float("inf")
    conf = 1.0 - dist / d2 if d2 > 0 else 0.0
    pts, eps = trajs[b]
    near = float(eps[int(np.argmin(np.linalg.norm(pts - row, axis=1)))])
    r_end = float(np.linalg.norm(row - pts[-1]))
    geom = _end_geometry(row, pts, j, dist) if len(pts) > 1 else (float("inf"), 0.0, 1.0)
    beyond = _is_beyond(geom, rule)
    extra = _extra_epochs(r_end, pts, eps) if beyond else 0.0
    if beyond:
        frac = float(eps[-1]) + extra
    unknown = dist > thr
    return Identification(
        model=None if unknown else labels[b], nearest_model=labels[b],
        epoch=frac, segment=seg, nearest_epoch=near, distance=dist,
        second_model=None if s is None else labels[s], second_distance=d2,
        confidence=float(conf), unknown=bool(unknown), beyond_end=beyond,
        end_distance=r_end, beyond_score=float(geom[0]), extra_epochs=extra)


_EXACT_CANDIDATES = 4  # trajectories measured exactly per checkpoint, nearest screened first


def load_checkpoints(paths: list[str | os.PathLike],
                     layout: Layout | None = None) -> tuple[np.ndarray, list[str], Layout]:
    """Checkpoints of any format (`wsjax.checkpoints`) -> (x float64 [n, P], names [n], layout).

    Each checkpoint's layout must fit `layout` (an index's) or, without one, the first
    checkpoint's: else LayoutMismatchError naming the first differing parameter. A .npy of
    [n, P] gives n checkpoints named PATH[i].
    """
    from wsjax.checkpoints import read_checkpoint

    xs, names = [], []
    for path in paths:
        x, lay, _ = read_checkpoint(path)
        if layout is None:
            layout = lay
        else:
            layout.check(lay, str(path))
        xs.append(x)
        names += [str(path)] if len(x) == 1 else [f"{path}[{i}]" for i in range(len(x))]
    if not xs:
        raise ConfigError("no checkpoints given")
    return np.concatenate(xs), names, layout


def order_checkpoints(x: np.ndarray, method: str = "merge") -> np.ndarray:
    """Reconstructed order (indices, earliest first) of one lineage's checkpoints x [n, P].

    merge: the paper's rule, decreasing merge height (= nearest-neighbour distance in the set).
    kurtosis: increasing excess kurtosis of the weights (MoTHer's direction rule).
    endpoint (ours): the two farthest-apart checkpoints are the ends; the end whose nearest
    neighbour is farther is the start (early steps are large); order by distance from it.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 1:
        raise ConfigError("order needs checkpoints [n, P]")
    if method == "kurtosis":
        import scipy.stats  # on first use: the identify command starts without it

        return np.argsort(scipy.stats.kurtosis(x, axis=1), kind="stable")
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0.0))
    np.fill_diagonal(d, np.inf)
    nn = d.min(1) if len(x) > 1 else np.zeros(1)
    if method == "merge":
        return np.argsort(-nn, kind="stable")
    if method != "endpoint":
        raise ConfigError(
            f"unknown order method {method!r}; choose from {', '.join(ORDER_METHODS)}")
    if len(x) < 2:
        return np.zeros(1, dtype=np.int64)
    np.fill_diagonal(d, 0.0)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    start = i if nn[i] >= nn[j] else j
    return np.argsort(d[start], kind="stable")


def order_agreement(order: np.ndarray, true_position: np.ndarray) -> dict:
    """Agreement of a reconstructed order with the true positions [n] of the checkpoints.

    kendall_tau / spearman: rank correlation of reconstructed vs true position (scipy.stats);
    adjacent: fraction of adjacent pairs in the order that are consecutive, in the right direction.
    """
    import scipy.stats  # on first use: the identify command starts without it

    order = np.asarray(order)
    truth = np.asarray(true_position)[order]
    rank_true = np.argsort(np.argsort(truth, kind="stable"), kind="stable")
    pos = np.arange(len(order))
    tau = scipy.stats.kendalltau(pos, truth).statistic if len(order) > 1 else 1.0
    rho = scipy.stats.spearmanr(pos, truth).statistic if len(order) > 1 else 1.0
    adj = float(np.mean(np.diff(rank_true) == 1)) if len(order) > 1 else 1.0
    return dict(kendall_tau=float(tau), spearman=float(rho), adjacent=adj)
