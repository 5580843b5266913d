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
from pathlib import Path

import numpy as np

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.evaluation import evaluate, evaluate_order, summary_lines
from wsjax.store import atomic_write_json, load_zoo, read_json


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
