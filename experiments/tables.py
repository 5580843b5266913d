"""The paper's Tables 2 and 3 (cluster purity and epoch order) for one or more trained zoos.

    python -m experiments.tables --run runs/cnn-mnist --run runs/ffnn-mnist
    python -m experiments.tables --run DIR --ks 50 10 --include-epoch0

Prints each zoo's table with the paper's values beside ours and writes tables.json and
tables.md into each run directory.
"""

from __future__ import annotations

import sys

from wsjax.analysis.tables import DEFAULT_KS, tables_markdown, zoo_tables_detail
from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.store import atomic_write_bytes, atomic_write_json, load_zoo


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.tables", description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="DIR",
                   help="a completed zoo run directory (repeat for several)")
    p.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS),
                   help="truncated SVD dimensions (default 500 100 50 25 10 5)")
    p.add_argument("--include-epoch0", action="store_true",
                   help="also cluster the initial weights (the paper's tables leave them out)")
    p.add_argument("--engine", default="auto", choices=["auto", "numpy", "jax"],
                   help="single-linkage engine (default: the faster one on this machine)")
    p.add_argument("--memory-limit-gib", type=float, default=None,
                   help="refuse a single linkage whose memory estimate exceeds this")
    p.add_argument("--no-progress", action="store_true")
    return p


def _bytes(gib: float | None) -> int | None:
    return None if gib is None else int(gib * 2 ** 30)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(k < 1 for k in args.ks):
        raise ConfigError(f"--ks must be positive, got {args.ks}")
    zoos = [load_zoo(r) for r in args.run]  # fail on a bad directory before any long work
    for zoo in zoos:
        t = zoo_tables_detail(zoo, ks=args.ks, include_epoch0=args.include_epoch0,
                              progress=not args.no_progress, engine=args.engine,
                              memory_limit=_bytes(args.memory_limit_gib))
        md = tables_markdown(t)
        print(md)
        atomic_write_json(zoo.path / "tables.json", t)
        atomic_write_bytes(zoo.path / "tables.md", md.encode())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
