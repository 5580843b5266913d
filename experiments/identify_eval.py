"""Honest evaluation of version control from weights on a trained zoo run directory.

Indexes members [0, seeds) and holds out the last `unseen` members as never-seen models; the
measures (hold-out epochs, beyond the end, unseen models, ordering) are wsjax.evaluation's.

    python -m experiments.identify_eval --run RUN_DIR --seeds 32 --epochs 20 --extra 8 \\
        --svd 50,10 --json OUT

`--partial` evaluates a run that is still training, on the epochs it has completed.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.evaluation import evaluate, evaluate_order, run_members, summary_lines
from wsjax.store import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m experiments.identify_eval", description=__doc__)
    ap.add_argument("--run", required=True, help="a zoo run directory")
    ap.add_argument("--partial", action="store_true",
                    help="allow a run still in training (uses its completed epochs)")
    ap.add_argument("--seeds", type=int, default=32, help="members indexed")
    ap.add_argument("--unseen", type=int, default=32, help="members never indexed (last ones)")
    ap.add_argument("--unseen-run", default=None,
                    help="take the never-indexed members from this run (its first --unseen)")
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
    need = args.epochs + args.extra + 1
    snapshots, known, config = run_members(args.run, need, args.partial)
    total, have = snapshots.shape[0], snapshots.shape[1] - 1
    apart = args.unseen_run is not None
    if args.epochs + args.extra > have or args.seeds + (0 if apart else args.unseen) > total:
        raise ConfigError(f"the run has {total} members x {have} epochs; ask for less")
    if apart:
        other, new, _ = run_members(args.unseen_run, args.epochs + 1, args.partial)
        if other.shape[0] < args.unseen or other.shape[1] <= args.epochs:
            raise ConfigError(f"--unseen-run has {other.shape[0]} members x "
                              f"{other.shape[1] - 1} epochs; ask for less")
        unseen = np.asarray(other[new[new < args.unseen], :args.epochs + 1], dtype=np.float64)
    else:
        new = known[known >= total - args.unseen]
        unseen = np.asarray(snapshots[new, :args.epochs + 1], dtype=np.float64)
    known = known[known < args.seeds]
    snaps = np.asarray(snapshots[known, :need], dtype=np.float64)
    ranks = [None] + [int(k) for k in args.svd.split(",") if k]
    result = dict(run=str(args.run), arch=config["arch"], data=config["data"]["name"],
                  run_members=total, run_epochs_used=have, indexed=len(known),
                  unseen=len(unseen), unseen_run=args.unseen_run, epochs=args.epochs,
                  extra=args.extra, beyond_back=args.beyond_back, spaces=[])
    for k in ranks:
        t = time.perf_counter()
        r = evaluate(snaps, unseen, args.epochs, args.extra, k, args.beyond_back)
        r["seconds"] = round(time.perf_counter() - t, 1)
        result["spaces"].append(r)
        print("\n".join(summary_lines(f"svd-{k}" if k else "full", r)), flush=True)
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
