"""`python -m wsjax index|identify|order|linkage`: version control from weights on the command
line, and exact single linkage of any set of weight vectors."""

from __future__ import annotations

import json
import sys

import numpy as np

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m wsjax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ix = sub.add_parser("index", help="index the trajectories of zoo runs")
    ix.add_argument("--run", action="append", required=True, help="zoo run directory (repeat)")
    ix.add_argument("--svd", type=int, default=None, help="store a rank-K SVD space")
    ix.add_argument("--epochs", default=None, help="comma list of epochs to index (default all)")
    ix.add_argument("--factor", type=float, default=1.0,
                    help="unknown threshold = factor * sqrt(own quantile * nearest other)")
    ix.add_argument("--quantile", type=float, default=1.0)
    ix.add_argument("--beyond-back", type=float, default=None,
                    help="beyond-the-end cutoff on the back share (default: calibrated)")
    ix.add_argument("--beyond-reach", type=float, default=0.25,
                    help="beyond the end only farther than this many last steps from the end")
    ix.add_argument("--out", required=True)
    idf = sub.add_parser("identify", help="name the model and epoch of checkpoints")
    idf.add_argument("--index", required=True)
    idf.add_argument("--threshold", type=float, default=None, help="override the unknown cutoff")
    idf.add_argument("--beyond-back", type=float, default=None,
                     help="override the index's beyond-the-end cutoff")
    idf.add_argument("--json", action="store_true")
    idf.add_argument("checkpoints", nargs="+", help=".npy [P] or [n, P], or .npz of params")
    od = sub.add_parser("order", help="reconstruct the order of one lineage's checkpoints")
    od.add_argument("--method", default="merge", choices=["endpoint", "merge", "kurtosis"])
    od.add_argument("--json", action="store_true")
    od.add_argument("checkpoints", nargs="+")
    lk = sub.add_parser("linkage", help="exact single linkage of checkpoints (scipy's layout)")
    lk.add_argument("--out", required=True, help="the linkage matrix [n-1, 4] as .npy")
    lk.add_argument("--engine", default="auto", choices=["auto", "numpy", "jax"])
    lk.add_argument("--memory-limit-gib", type=float, default=None,
                    help="refuse a run whose memory estimate exceeds this")
    lk.add_argument("checkpoints", nargs="+", help=".npy [P] or [n, P], or .npz of params")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsjax import identify as vc

    args = _parser().parse_args(argv)
    if args.command == "index":
        epochs = None if args.epochs is None else [int(e) for e in args.epochs.split(",")]
        index = vc.index_from_zoos(args.run, epochs=epochs, svd=args.svd, factor=args.factor,
                                   quantile=args.quantile, beyond_back=args.beyond_back,
                                   beyond_reach=args.beyond_reach)
        vc.save_index(index, args.out)
        b = index.calibration["beyond"]
        rates = "" if b["llo_tpr"] is None or b["loo_fpr"] is None else (
            f" (leave-last-out TPR {b['llo_tpr']:.2f}, leave-one-out FPR {b['loo_fpr']:.3f})")
        print(f"indexed {len(index.labels)} trajectories, {len(index.points)} snapshots, "
              f"threshold {index.threshold:.4g}, beyond-end cutoff {b['back']:.2f}{rates} "
              f"-> {args.out}")
        return 0
    names, xs = [], []
    for path in args.checkpoints:
        x = vc.load_checkpoints(path)
        xs.append(x)
        names += [path] if len(x) == 1 else [f"{path}[{i}]" for i in range(len(x))]
    if len({x.shape[1] for x in xs}) > 1:
        raise vc.DimensionMismatchError("checkpoints of different sizes (architectures) given")
    x = np.concatenate(xs)
    if args.command == "identify":
        index = vc.load_index(args.index)
        res = vc.identify(index, x, threshold=args.threshold, beyond_back=args.beyond_back)
        if args.json:
            rows = [dict(checkpoint=n, **r.to_json()) for n, r in zip(names, res, strict=True)]
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'checkpoint':30s} {'model':22s} {'epoch':>7s} {'between':>11s} "
              f"{'distance':>10s} {'conf':>5s}  flags")
        for n, r in zip(names, res, strict=True):
            flags = ("unknown " if r.unknown else "") + (
                f"beyond-end (+{r.extra_epochs:.1f})" if r.beyond_end else "")
            print(f"{n[-30:]:30s} {(r.model or '?'):22s} {r.epoch:7.2f} "
                  f"{r.segment[0]:5.0f}-{r.segment[1]:<5.0f} {r.distance:10.4g} "
                  f"{r.confidence:5.2f}  {flags}")
        return 0
    if args.command == "linkage":
        import io

        from wsjax.analysis.linkage import single_linkage
        from wsjax.store import atomic_write_bytes

        limit = None if args.memory_limit_gib is None else int(args.memory_limit_gib * 2 ** 30)
        z = single_linkage(x, engine=args.engine, memory_limit=limit)
        buf = io.BytesIO()
        np.save(buf, z, allow_pickle=False)
        atomic_write_bytes(args.out, buf.getvalue())
        print(f"single linkage of {x.shape[0]} checkpoints -> {args.out}")
        return 0
    if args.command == "order":
        if len(x) < 2:
            raise ConfigError("order needs at least two checkpoints")
        order = vc.order_checkpoints(x, args.method)
        if args.json:
            print(json.dumps(dict(method=args.method, order=[names[i] for i in order],
                                  indices=order.tolist()), indent=2))
        else:
            for rank, i in enumerate(order):
                print(f"{rank:4d}  {names[i]}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(run_cli(main))
