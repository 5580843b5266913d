"""Assemble one self-contained HTML page for a trained zoo, opening on the paper's table.

    python -m experiments.report --run runs/cnn-mnist            # writes runs/cnn-mnist/report.html

The page: a summary and Table 2/3 as "ours (paper)", then configuration and provenance,
per-cluster values, training curves and Figs. 3-9 with captions (docs/report.md). Figures missing
or drawn by an older wsjax are drawn first (as `experiments.figures` would); the tables come from
the run's tables.json (`python -m experiments.tables --run DIR`) or are computed.
"""

from __future__ import annotations

import sys

from wsjax.cli import ArgumentParser, run_cli
from wsjax.report import build_report


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a completed run directory")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN/report.html)")
    p.add_argument("--no-umap", action="store_true", help="leave out Figs. 4-5 (UMAP)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = build_report(args.run, args.out, umap=not args.no_umap, progress=not args.no_progress)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
