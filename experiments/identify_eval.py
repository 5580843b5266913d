"""Honest evaluation of version control from weights on a trained zoo run directory.

Uses members [0, seeds) for the index and [S - unseen, S) as never-seen models, and the first
`epochs` epochs as the known trajectories. Three questions per space (full, SVD-k):
  hold-out: index even epochs 0..E, identify odd epochs -> model accuracy, mean |epoch error|;
  beyond the end: identify epochs E+1..E+extra of indexed members (the zoo trained them further
  with the same keys, so they are the exact continuation) -> model accuracy, fraction flagged;
  unseen: snapshots (epochs 1..E) of never-indexed members -> false-accept rate.
Then ordering: per indexed member shuffle epochs 0..E, reconstruct with each method, report
mean Kendall tau and adjacent-pair accuracy.

    python -m experiments.identify_eval --run RUN_DIR --seeds 32 --epochs 20 --svd 50,10 --json OUT
"""

from __future__ import annotations

import sys
import time

import numpy as np

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.identify import ORDER_METHODS, build_index, identify, order_agreement, order_checkpoints
from wsjax.store import atomic_write_json, load_zoo


def evaluate(snaps: np.ndarray, unseen: np.ndarray, epochs: int, extra: int,
             svd: int | None) -> dict:
    """snaps [S, >=E+1+extra, P] indexed members, unseen [U, >=E+1, P] -> metrics dict."""
    s, p = snaps.shape[0], snaps.shape[-1]
    even = np.arange(0, epochs + 1, 2)
    odd = np.arange(1, epochs + 1, 2)
    index = build_index(snaps[:, even].reshape(-1, p), np.repeat(np.arange(s), len(even)),
                        np.tile(even, s), svd=svd)
    res = identify(index, snaps[:, odd].reshape(-1, p))
    truth = np.repeat(np.arange(s), len(odd)).astype(str)
    got = np.array([r.nearest_model for r in res])
    out = dict(svd=svd, threshold=index.threshold, calibration=index.calibration,
               holdout_model_acc=float(np.mean(got == truth)),
               holdout_accepted=float(np.mean([not r.unknown for r in res])),
               holdout_epoch_mae=float(np.mean(np.abs(
                   np.array([r.epoch for r in res]) - np.tile(odd, s)))))
    full = build_index(snaps[:, :epochs + 1].reshape(-1, p),
                       np.repeat(np.arange(s), epochs + 1), np.tile(np.arange(epochs + 1), s),
                       svd=svd)
    if extra:
        ext = np.arange(epochs + 1, epochs + 1 + extra)
        res = identify(full, snaps[:, ext].reshape(-1, p))
        truth = np.repeat(np.arange(s), extra).astype(str)
        out.update(beyond_model_acc=float(np.mean(np.array([r.nearest_model for r in res])
                                                   == truth)),
                   beyond_flagged=float(np.mean([r.beyond_end for r in res])),
                   beyond_accepted=float(np.mean([not r.unknown for r in res])))
    res = identify(full, unseen[:, 1:epochs + 1].reshape(-1, p))
    out["unseen_false_accept"] = float(np.mean([not r.unknown for r in res]))
    return out


def evaluate_order(snaps: np.ndarray, epochs: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    agg = {m: [] for m in ORDER_METHODS}
    for traj in snaps[:, :epochs + 1]:
        perm = rng.permutation(epochs + 1)
        for m in ORDER_METHODS:
            agg[m].append(order_agreement(order_checkpoints(traj[perm], m), perm))
    return {m: {k: float(np.mean([a[k] for a in v])) for k in v[0]} for m, v in agg.items()}


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m experiments.identify_eval", description=__doc__)
    ap.add_argument("--run", required=True, help="a complete zoo run directory")
    ap.add_argument("--seeds", type=int, default=32, help="members indexed")
    ap.add_argument("--unseen", type=int, default=32, help="members never indexed (last ones)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs the index knows")
    ap.add_argument("--extra", type=int, default=5, help="epochs past the end to identify")
    ap.add_argument("--svd", default="50,10", help="comma list of SVD ranks (plus full space)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    zoo = load_zoo(args.run)
    total = zoo.snapshots.shape[0]
    if args.epochs + args.extra > zoo.num_epochs or args.seeds + args.unseen > total:
        raise ConfigError(f"the run has {total} members x {zoo.num_epochs} epochs; ask for less")
    healthy = np.flatnonzero(zoo.healthy())
    known = healthy[healthy < args.seeds]
    new = healthy[healthy >= total - args.unseen]
    snaps = np.asarray(zoo.snapshots[known, :args.epochs + args.extra + 1], dtype=np.float64)
    unseen = np.asarray(zoo.snapshots[new, :args.epochs + 1], dtype=np.float64)
    ranks = [None] + [int(k) for k in args.svd.split(",") if k]
    result = dict(run=str(args.run), arch=zoo.arch, data=zoo.config["data"]["name"],
                  indexed=len(known), unseen=len(new), epochs=args.epochs, extra=args.extra,
                  spaces=[])
    for k in ranks:
        t = time.perf_counter()
        r = evaluate(snaps, unseen, args.epochs, args.extra, k)
        r["seconds"] = round(time.perf_counter() - t, 1)
        result["spaces"].append(r)
        print(f"{'full' if k is None else f'svd-{k}':8s} holdout acc {r['holdout_model_acc']:.3f} "
              f"accepted {r['holdout_accepted']:.3f} epoch MAE {r['holdout_epoch_mae']:.2f} | "
              f"beyond acc {r.get('beyond_model_acc', float('nan')):.3f} "
              f"flagged {r.get('beyond_flagged', float('nan')):.3f} "
              f"accepted {r.get('beyond_accepted', float('nan')):.3f} | "
              f"unseen false-accept {r['unseen_false_accept']:.3f}", flush=True)
    result["order"] = evaluate_order(snaps, args.epochs)
    for m, v in result["order"].items():
        print(f"order {m:9s} kendall tau {v['kendall_tau']:.3f} spearman {v['spearman']:.3f} "
              f"adjacent {v['adjacent']:.3f}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
