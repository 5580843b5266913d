"""`python -m wsjax index|add|identify|order|lineage|linkage`: version control from weights on
the command line, and exact single linkage of any set of weight vectors."""

from __future__ import annotations

import json
import sys

import numpy as np

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.identify import ORDER_METHODS
from wsjax.store import atomic_write_json


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m wsjax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ix = sub.add_parser("index", help="index the checkpoints of folders and zoo runs")
    ix.add_argument("sources", nargs="*", help="folders of checkpoints (a model per "
                    "sub-folder) or zoo run directories")
    ix.add_argument("--run", action="append", default=[], help="zoo run directory (repeat)")
    ix.add_argument("--order-method", default="endpoint", choices=list(ORDER_METHODS),
                    help="how to order a model's checkpoints whose names carry no steps")
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
    ad = sub.add_parser("add", help="add the models of more folders to an index")
    ad.add_argument("index")
    ad.add_argument("sources", nargs="+")
    ad.add_argument("--order-method", default="endpoint", choices=list(ORDER_METHODS))
    idf = sub.add_parser("identify", help="name the model and epoch of checkpoints")
    idf.add_argument("--index", required=True)
    idf.add_argument("--threshold", type=float, default=None, help="override the unknown cutoff")
    idf.add_argument("--beyond-back", type=float, default=None,
                     help="override the index's beyond-the-end cutoff")
    idf.add_argument("--json", action="store_true")
    idf.add_argument("checkpoints", nargs="+", help="checkpoint files (.safetensors, "
                     ".msgpack, .npz, .npy) or Orbax checkpoint folders")
    od = sub.add_parser("order", help="reconstruct the order of one lineage's checkpoints")
    od.add_argument("--method", default="merge", choices=list(ORDER_METHODS))
    od.add_argument("--json", action="store_true")
    od.add_argument("checkpoints", nargs="+")
    ln = sub.add_parser("lineage", help="recover which model was fine-tuned from which")
    ln.add_argument("sources", nargs="+", help="folders of checkpoints (a model per sub-folder)")
    ln.add_argument("--method", default="geometric", choices=["geometric", "trajectory", "mother"],
                    help="geometric (ours), trajectory (its Euclidean form) or the MoTHer-style "
                    "baseline")
    ln.add_argument("--root-cost", type=float, default=None,
                    help="cost of starting a new tree (default: the method's own)")
    ln.add_argument("--order-method", default="endpoint", choices=list(ORDER_METHODS))
    ln.add_argument("--json", default=None, help="write the tree as JSON to this file")
    ln.add_argument("--plot", default=None, help="draw the tree to STEM.png and STEM.pdf")
    lk = sub.add_parser("linkage", help="exact single linkage of checkpoints (scipy's layout)")
    lk.add_argument("--out", required=True, help="the linkage matrix [n-1, 4] as .npy")
    lk.add_argument("--engine", default="auto", choices=["auto", "numpy", "jax"])
    lk.add_argument("--memory-limit-gib", type=float, default=None,
                    help="refuse a run whose memory estimate exceeds this")
    lk.add_argument("checkpoints", nargs="+", help=".npy [P] or [n, P], or .npz of params")
    return p


def _lineage(args) -> int:
    from wsjax import identify as vc
    from wsjax import lineage as lg

    c = vc.collect(args.sources, order_method=args.order_method)
    models = []
    for i, name in enumerate(c.labels):
        sel = np.flatnonzero(c.model == i)
        sel = sel[np.argsort(c.epoch[sel], kind="stable")]
        models.append(lg.Model(name, c.x[sel], c.epoch[sel]))
    kw = {} if args.root_cost is None else dict(root_cost=args.root_cost)
    if args.method == "mother":
        edges = lg.mother_lineage(models, c.layout, **kw)
    else:
        fn = lg.recover_lineage if args.method == "geometric" else lg.trajectory_lineage
        edges = fn(models, **kw)
    print(lg.lineage_text(edges))
    if args.json:
        atomic_write_json(args.json, lg.lineage_json(edges, args.method))
    if args.plot:
        from wsjax.plots import save_figure

        save_figure(lg.plot_lineage(edges, f"lineage ({args.method})"), args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    from wsjax import identify as vc

    args = _parser().parse_args(argv)
    if args.command == "index":
        epochs = None if args.epochs is None else [int(e) for e in args.epochs.split(",")]
        sources = args.sources + args.run
        if not sources:
            raise ConfigError("give at least one folder of checkpoints or --run zoo directory")
        index = vc.index_from_folders(sources, epochs=epochs, svd=args.svd,
                                      order_method=args.order_method, factor=args.factor,
                                      quantile=args.quantile, beyond_back=args.beyond_back,
                                      beyond_reach=args.beyond_reach)
        vc.save_index(index, args.out)
        _summary(index, args.out)
        return 0
    if args.command == "add":
        index = vc.add_folders(vc.load_index(args.index), args.sources, args.order_method)
        vc.save_index(index, args.index)
        _summary(index, args.index)
        return 0
    if args.command == "lineage":
        return _lineage(args)
    index = vc.load_index(args.index) if args.command == "identify" else None
    x, names, _ = vc.load_checkpoints(args.checkpoints, index and index.layout)
    if args.command == "identify":
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


def _summary(index, out) -> None:
    b = index.calibration["beyond"]
    rates = "" if b["llo_tpr"] is None or b["loo_fpr"] is None else (
        f" (leave-last-out TPR {b['llo_tpr']:.2f}, leave-one-out FPR {b['loo_fpr']:.3f})")
    print(f"indexed {len(index.labels)} trajectories, {len(index.points)} snapshots, "
          f"threshold {index.threshold:.4g}, beyond-end cutoff {b['back']:.2f}{rates} "
          f"-> {out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
