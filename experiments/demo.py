"""The Quick start demo: a small zoo of each architecture on the bundled digits data, then the
analysis, figures and one HTML report per zoo.

    python -m experiments.demo [--seeds 16] [--epochs 12] [--out runs/demo]

Runs offline in a few minutes on a laptop CPU; rerunning resumes or reuses finished steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments import tables
from wsjax.cli import ArgumentParser, run_cli
from wsjax.report import build_report
from wsjax.zoo import ZooConfig, run_zoo


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.demo", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--out", default="runs/demo")
    args = p.parse_args(argv)
    reports = []
    for arch in ("ffnn", "cnn"):
        out = Path(args.out) / f"{arch}-digits"
        print(f"== {arch}: {args.seeds} seeds x {args.epochs} epochs on digits -> {out}")
        run_zoo(ZooConfig(arch=arch, dataset="digits", seeds=args.seeds, epochs=args.epochs), out)
        tables.main(["--run", str(out)])
        reports.append(build_report(out))
    for report in reports:
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
