"""Honest evaluation of version control from weights on a zoo's snapshots.

Members [0, S) are indexed and others are never seen; epochs 0..E are the known trajectories.
Per space (full, SVD-k fitted on the index):
  hold-out: index the even epochs 0, 2, .., E; identify the odd ones -> model accuracy, mean
    |epoch error|, and how often an interior checkpoint is wrongly flagged beyond the end (all
    odd epochs, and E-1, the one nearest the end);
  beyond the end: epochs E+1..E+extra of the indexed members (the exact continuation), against
    the even index and against the index of every epoch 0..E -> per extra-epoch count: model
    accuracy, accepted, flagged, estimated extra epochs; the last indexed epoch itself must not
    be flagged;
  unseen: snapshots (epochs 1..E) of never-indexed members -> false-accept rate.
Ordering: per indexed member shuffle epochs 0..E, reconstruct with each method, and report mean
Kendall tau, Spearman and adjacent-pair accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsjax.identify import ORDER_METHODS, build_index, identify, order_agreement, order_checkpoints
from wsjax.store import load_zoo, read_json, trajectory_points

__all__ = ["evaluate", "evaluate_order", "run_members", "summary_lines", "tree_identify",
           "upper_bound"]


def run_members(run: str | Path, need: int, partial: bool = False):
    """(snapshots [S, T, P] memory-mapped, indices of the members whose first `need`
    snapshots are usable, config) of a zoo run; with `partial`, a run still in training on the
    epochs it has completed."""
    progress = read_json(Path(run) / "progress.json")
    if progress.get("complete") or not partial:
        zoo = load_zoo(run)
        return zoo.snapshots, np.flatnonzero(zoo.healthy()), zoo.config
    done = int(progress.get("completed_epochs", 0))
    snaps = np.load(Path(run) / "snapshots.npy", mmap_mode="r", allow_pickle=False)
    snaps = snaps[:, :done + 1]
    usable = [np.isfinite(snaps[i, :need]).all() for i in range(len(snaps))]
    return snaps, np.flatnonzero(usable), read_json(Path(run) / "config.json")


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen k times in n trials (with k = 0:
    1 - (1 - level)^(1/n), about 3 / n at 95%)."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


def _index(snaps: np.ndarray, epochs: np.ndarray, svd: int | None, **kw):
    """The index of snaps [S, T, P]'s epochs, member i named str(i)."""
    return build_index(*trajectory_points(snaps, np.arange(snaps.shape[0]), epochs), svd=svd,
                       **kw)


def _flag_rate(res) -> float:
    return float(np.mean([r.beyond_end for r in res]))


def _beyond(index, snaps: np.ndarray, epochs: int, extra: int) -> list[dict]:
    """Per extra-epoch count k: identify epoch E+k of every indexed member."""
    rows = []
    for k in range(1, extra + 1):
        res = identify(index, snaps[:, epochs + k])
        rows.append(dict(
            extra=k,
            model_acc=float(np.mean([r.nearest_model == str(i) for i, r in enumerate(res)])),
            accepted=float(np.mean([not r.unknown for r in res])),
            flagged=_flag_rate(res),
            extra_estimate_median=float(np.median([r.extra_epochs for r in res])),
            extra_mae=float(np.mean([abs(r.epoch - epochs - k) for r in res]))))
    return rows


def evaluate(snaps: np.ndarray, unseen: np.ndarray, epochs: int, extra: int,
             svd: int | None, beyond_back: float | None = None) -> dict:
    """snaps [S, >=E+1+extra, P] indexed members, unseen [U, >=E+1, P] -> metrics dict.

    beyond_back: a fixed beyond-the-end cutoff (default: each index calibrates its own)."""
    s, p = snaps.shape[0], snaps.shape[-1]
    even = np.arange(0, epochs + 1, 2)
    odd = np.arange(1, epochs + 1, 2)
    index = _index(snaps, even, svd, beyond_back=beyond_back)
    res = identify(index, snaps[:, odd].reshape(-1, p))
    truth = np.repeat(np.arange(s), len(odd)).astype(str)
    got = np.array([r.nearest_model for r in res])
    out = dict(svd=svd, threshold=index.threshold, calibration=index.calibration,
               holdout_model_acc=float(np.mean(got == truth)),
               holdout_accepted=float(np.mean([not r.unknown for r in res])),
               holdout_epoch_mae=float(np.mean(np.abs(
                   np.array([r.epoch for r in res]) - np.tile(odd, s)))),
               holdout_flagged=_flag_rate(res),
               holdout_flagged_last_odd=_flag_rate(res[len(odd) - 1::len(odd)]),
               even_last_flagged=_flag_rate(identify(index, snaps[:, even[-1]])))
    full = _index(snaps, np.arange(epochs + 1), svd, beyond_back=beyond_back)
    out["full_calibration"] = full.calibration
    out["full_last_flagged"] = _flag_rate(identify(full, snaps[:, epochs]))
    if extra:
        out["beyond_even"] = _beyond(index, snaps, epochs, extra)
        out["beyond_full"] = _beyond(full, snaps, epochs, extra)
    res = identify(full, unseen[:, 1:epochs + 1].reshape(-1, p))
    accepted = np.array([not r.unknown for r in res]).reshape(len(unseen), epochs)
    out["unseen_false_accept"] = float(np.mean(accepted))
    out["unseen_n"] = len(res)
    # models, not checkpoints, are the independent trials: a model counts as falsely accepted
    # when any of its checkpoints is
    k = int(accepted.any(axis=1).sum())
    out.update(unseen_models=len(unseen), unseen_models_accepted=k,
               unseen_model_fa_upper95=upper_bound(k, len(unseen)))
    return out


def evaluate_order(snaps: np.ndarray, epochs: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    agg = {m: [] for m in ORDER_METHODS}
    for traj in snaps[:, :epochs + 1]:
        perm = rng.permutation(epochs + 1)
        for m in ORDER_METHODS:
            agg[m].append(order_agreement(order_checkpoints(traj[perm], m), perm))
    return {m: {k: float(np.mean([a[k] for a in v])) for k in v[0]} for m, v in agg.items()}


def summary_lines(space: str, r: dict) -> list[str]:
    """One space's results of `evaluate` as short lines of text."""
    cal = r["calibration"]["beyond"]
    lines = [f"{space:8s} holdout acc {r['holdout_model_acc']:.3f} "
             f"accepted {r['holdout_accepted']:.3f} epoch MAE {r['holdout_epoch_mae']:.2f} "
             f"beyond-FP {r['holdout_flagged']:.3f} (E-1: {r['holdout_flagged_last_odd']:.3f}, "
             f"E: {r['even_last_flagged']:.3f}) | unseen false-accept "
             f"{r['unseen_false_accept']:.3f}, models {r['unseen_models_accepted']}/"
             f"{r['unseen_models']} (95% upper {r['unseen_model_fa_upper95']:.3f}) | "
             f"cutoff {cal['back']:.2f} "
             f"(LLO TPR {cal['llo_tpr']:.2f}, LOO FPR {cal['loo_fpr']:.3f}) "
             f"[{r.get('seconds', 0)} s]"]
    for name in ("even", "full"):
        rows = r.get(f"beyond_{name}")
        if rows:
            flagged = " ".join(f"+{x['extra']}:{x['flagged']:.2f}" for x in rows)
            lines.append(f"    beyond ({name} index) flagged {flagged} | model acc "
                         f"{np.mean([x['model_acc'] for x in rows]):.3f} accepted "
                         f"{np.mean([x['accepted'] for x in rows]):.3f} | extra-epoch MAE "
                         f"{np.mean([x['extra_mae'] for x in rows]):.2f}")
    return lines


def tree_identify(design: list, held: list) -> dict:
    """Identify on a zoo with a known tree (`wsjax.lineage.Model`s): the held-out families as
    never-seen models against an index of the design families (a model counts as accepted if
    any of its checkpoints is), and the held-out models' odd steps against an index of their
    even ones (relatives included: parents and siblings pass close)."""

    def stack(models, keep):
        rows = [(m.x[keep(m)], i, m.steps[keep(m)]) for i, m in enumerate(models)]
        return (np.concatenate([r[0] for r in rows]),
                np.concatenate([np.full(len(r[0]), r[1]) for r in rows]),
                np.concatenate([r[2] for r in rows]))

    index = build_index(*stack(design, lambda m: np.ones(len(m.steps), bool)))
    k = sum(any(not r.unknown for r in identify(index, m.x)) for m in held)
    index = build_index(*stack(held, lambda m: m.steps % 2 == 0))
    q, truth, epoch = stack(held, lambda m: m.steps % 2 == 1)
    res = identify(index, q)
    return dict(unseen_models=len(held), unseen_accepted=int(k),
                unseen_fa_upper95=upper_bound(int(k), len(held)), holdout_n=len(res),
                holdout_model_acc=float(np.mean([r.nearest_model == str(t)
                                                 for r, t in zip(res, truth, strict=True)])),
                holdout_epoch_mae=float(np.mean([abs(r.epoch - e)
                                                 for r, e in zip(res, epoch, strict=True)])))
