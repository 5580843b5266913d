"""Honest evaluation of version control from weights on a trained zoo run directory.

Uses members [0, seeds) for the index and [S - unseen, S) as never-seen models, and epochs
0..E as the known trajectories. Per space (full, SVD-k fitted on the index):
  hold-out: index the even epochs 0, 2, .., E; identify the odd ones -> model accuracy, mean
    |epoch error|, and how often an interior checkpoint is wrongly flagged beyond the end (all
    odd epochs, and E-1, the one nearest the end);
  beyond the end: epochs E+1..E+extra of the indexed members (the zoo trained them further with
    the same keys: the exact continuation), against the even index and against the index of
    every epoch 0..E -> per extra-epoch count: model accuracy, accepted, flagged, estimated
    extra epochs; the last indexed epoch itself must not be flagged;
  unseen: snapshots (epochs 1..E) of never-indexed members -> false-accept rate.
Then ordering: per indexed member shuffle epochs 0..E, reconstruct with each method, report
mean Kendall tau, Spearman and adjacent-pair accuracy.

    python -m experiments.identify_eval --run RUN_DIR --seeds 32 --epochs 20 --extra 8 \\
        --svd 50,10 --json OUT

`--partial` evaluates a run that is still training, on the epochs it has completed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.identify import ORDER_METHODS, build_index, identify, order_agreement, order_checkpoints
from wsjax.store import atomic_write_json, load_zoo, read_json


def _index(snaps: np.ndarray, epochs: np.ndarray, svd: int | None, **kw):
    s, p = snaps.shape[0], snaps.shape[-1]
    return build_index(snaps[:, epochs].reshape(-1, p), np.repeat(np.arange(s), len(epochs)),
                       np.tile(epochs, s), svd=svd, **kw)


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
    out["unseen_false_accept"] = float(np.mean([not r.unknown for r in res]))
    out["unseen_n"] = len(res)
    return out


def evaluate_order(snaps: np.ndarray, epochs: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    agg = {m: [] for m in ORDER_METHODS}
    for traj in snaps[:, :epochs + 1]:
        perm = rng.permutation(epochs + 1)
        for m in ORDER_METHODS:
            agg[m].append(order_agreement(order_checkpoints(traj[perm], m), perm))
    return {m: {k: float(np.mean([a[k] for a in v])) for k in v[0]} for m, v in agg.items()}


def _load(run: str, partial: bool):
    """(snapshots [S, T, P] mmap, healthy [S] or None, config): a complete run, or with
    `partial` the epochs a run still in training has completed (healthy: None, check finite)."""
    progress = read_json(Path(run) / "progress.json")
    if progress.get("complete") or not partial:
        zoo = load_zoo(run)
        return zoo.snapshots, zoo.healthy(), zoo.config
    done = int(progress.get("completed_epochs", 0))
    snaps = np.load(Path(run) / "snapshots.npy", mmap_mode="r", allow_pickle=False)
    return snaps[:, :done + 1], None, read_json(Path(run) / "config.json")


def _fmt_rows(rows: list[dict]) -> str:
    return " ".join(f"+{r['extra']}:{r['flagged']:.2f}" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m experiments.identify_eval", description=__doc__)
    ap.add_argument("--run", required=True, help="a zoo run directory")
    ap.add_argument("--partial", action="store_true",
                    help="allow a run still in training (uses its completed epochs)")
    ap.add_argument("--seeds", type=int, default=32, help="members indexed")
    ap.add_argument("--unseen", type=int, default=32, help="members never indexed (last ones)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs the index knows (even)")
    ap.add_argument("--extra", type=int, default=5, help="epochs past the end to identify")
    ap.add_argument("--svd", default="50,10", help="comma list of SVD ranks (plus full space)")
    ap.add_argument("--beyond-back", type=float, default=None,
                    help="fixed beyond-the-end cutoff (default: calibrated per index)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.epochs < 2 or args.epochs % 2:
        raise ConfigError(f"--epochs must be even and >= 2 (the index keeps 0, 2, .., E), "
                          f"got {args.epochs}")
    t_all = time.perf_counter()
    snapshots, healthy, config = _load(args.run, args.partial)
    total, have = snapshots.shape[0], snapshots.shape[1] - 1
    if args.epochs + args.extra > have or args.seeds + args.unseen > total:
        raise ConfigError(f"the run has {total} members x {have} epochs; ask for less")
    need = args.epochs + args.extra + 1
    if healthy is None:
        healthy = np.array([np.isfinite(snapshots[i, :need]).all() for i in range(total)])
    ids = np.flatnonzero(healthy)
    known = ids[ids < args.seeds]
    new = ids[ids >= total - args.unseen]
    snaps = np.asarray(snapshots[known, :need], dtype=np.float64)
    unseen = np.asarray(snapshots[new, :args.epochs + 1], dtype=np.float64)
    ranks = [None] + [int(k) for k in args.svd.split(",") if k]
    result = dict(run=str(args.run), arch=config["arch"], data=config["data"]["name"],
                  run_members=total, run_epochs_used=have, indexed=len(known),
                  unseen=len(new), epochs=args.epochs, extra=args.extra,
                  beyond_back=args.beyond_back, spaces=[])
    for k in ranks:
        t = time.perf_counter()
        r = evaluate(snaps, unseen, args.epochs, args.extra, k, args.beyond_back)
        r["seconds"] = round(time.perf_counter() - t, 1)
        result["spaces"].append(r)
        cal = r["calibration"]["beyond"]
        print(f"{'full' if k is None else f'svd-{k}':8s} holdout acc {r['holdout_model_acc']:.3f} "
              f"accepted {r['holdout_accepted']:.3f} epoch MAE {r['holdout_epoch_mae']:.2f} "
              f"beyond-FP {r['holdout_flagged']:.3f} (E-1: {r['holdout_flagged_last_odd']:.3f}, "
              f"E: {r['even_last_flagged']:.3f}) | unseen false-accept "
              f"{r['unseen_false_accept']:.3f} | cutoff {cal['back']:.2f} "
              f"(LLO TPR {cal['llo_tpr']:.2f}, LOO FPR {cal['loo_fpr']:.3f}) "
              f"[{r['seconds']} s]", flush=True)
        if args.extra:
            for name in ("even", "full"):
                rows = r[f"beyond_{name}"]
                print(f"    beyond ({name} index) flagged {_fmt_rows(rows)} | model acc "
                      f"{np.mean([x['model_acc'] for x in rows]):.3f} accepted "
                      f"{np.mean([x['accepted'] for x in rows]):.3f} | extra-epoch MAE "
                      f"{np.mean([x['extra_mae'] for x in rows]):.2f}", flush=True)
    result["order"] = evaluate_order(snaps, args.epochs)
    for m, v in result["order"].items():
        print(f"order {m:9s} kendall tau {v['kendall_tau']:.3f} spearman {v['spearman']:.3f} "
              f"adjacent {v['adjacent']:.3f}")
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
