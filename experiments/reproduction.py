"""Reproduction study: small CNN zoos that vary one detail of the paper's setup at a time.

Each variant (wsjax.variants) trains into its own run directory under --out, through the same
resumable `run_zoo` as every zoo, and the script prints one table over every variant trained
there so far. --readings re-reads the epoch-order measure in several ways on any run directory.

    python -m experiments.reproduction --data-dir DIR --out runs/variants --seeds 16 --epochs 30
    python -m experiments.reproduction --list
    python -m experiments.reproduction --readings runs/cnn-mnist runs/ffnn-mnist
"""

from __future__ import annotations

import sys
from pathlib import Path

from wsjax.analysis.reproduction import (
    comparison_markdown,
    readings,
    readings_markdown,
    variant_row,
)
from wsjax.cli import ArgumentParser, run_cli
from wsjax.data import load_dataset
from wsjax.errors import ConfigError
from wsjax.store import atomic_write_bytes, atomic_write_json, load_zoo, read_json
from wsjax.variants import VARIANTS
from wsjax.zoo import run_zoo


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.reproduction",
                       description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files")
    p.add_argument("--out", default="runs/variants", help="parent folder; one run per variant")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="NAME",
                   help="which variants (default: all; see --list)")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--seed-start", type=int, default=0, help="first seed (replicate zoos)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ks", type=int, nargs="*", default=[50, 10],
                   help="SVD dimensions in the table (default 50 10)")
    p.add_argument("--readings", nargs="+", metavar="RUN",
                   help="only re-read the epoch order of these run directories")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--no-progress", action="store_true")
    return p


def _write(folder: Path, stem: str, rows: list[dict], md: str) -> None:
    print(md)
    atomic_write_json(folder / f"{stem}.json", rows)
    atomic_write_bytes(folder / f"{stem}.md", md.encode())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:20s} {v.doc}")
        return 0
    if args.readings:
        for zoo in [load_zoo(r) for r in args.readings]:  # every folder checked first
            rows = readings(zoo)
            _write(zoo.path, "readings", rows, readings_markdown(
                f"{zoo.arch} zoo of {zoo.snapshots.shape[0]} models x {zoo.num_epochs} epochs",
                rows))
        return 0
    if args.seeds < 2 or args.epochs < 2:
        raise ConfigError("--seeds and --epochs must be at least 2")
    from wsjax.sharding import members_mesh, use_cpu_cores

    use_cpu_cores()  # before JAX starts: on a CPU, one device per core, the seeds over them
    mesh = members_mesh()
    ds = load_dataset(args.dataset, args.data_dir)
    out, ks = Path(args.out), tuple(args.ks)
    for name in args.variants or list(VARIANTS):
        v = VARIANTS[name]
        config = v.config(dataset=args.dataset, seeds=args.seeds, epochs=args.epochs,
                          seed_start=args.seed_start)
        zoo = load_zoo(run_zoo(config, out / name, dataset=ds, progress=not args.no_progress,
                               mesh=mesh))
        print(comparison_markdown([variant_row(v.name, v.doc, zoo, ks)]).splitlines()[-1],
              flush=True)
    # One table over every variant trained in --out so far (also by earlier invocations).
    done = [v for v in VARIANTS.values() if _complete(out / v.name)]
    rows = [variant_row(v.name, v.doc, load_zoo(out / v.name), ks) for v in done]
    _write(out, "comparison", rows, comparison_markdown(rows))
    return 0


def _complete(run: Path) -> bool:
    progress = run / "progress.json"
    return progress.is_file() and bool(read_json(progress).get("complete"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
