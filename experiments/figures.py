"""Draw the paper's Figures 3-9 for one trained zoo into RUN/figures/ (PNG and PDF).

    python -m experiments.figures --run runs/cnn-mnist
    python -m experiments.figures --run runs/ffnn-digits --include-init --no-umap
"""

from __future__ import annotations

import sys
from pathlib import Path

from wsjax.cli import ArgumentParser, run_cli
from wsjax.plots import make_figures
from wsjax.store import load_zoo


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.figures", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a completed run directory")
    p.add_argument("--include-init", action="store_true",
                   help="also use the epoch-0 snapshots (the paper's analysis leaves them out)")
    p.add_argument("--no-umap", action="store_true", help="skip Figs. 4-5 (UMAP)")
    p.add_argument("--random-state", type=int, default=0, help="UMAP seed (default 0)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    zoo = load_zoo(args.run)
    out = Path(args.run) / "figures"
    written = make_figures(zoo, out, include_init=args.include_init,
                           random_state=args.random_state, progress=not args.no_progress,
                           umap=not args.no_umap)
    for stem, what in written.items():
        print(f"{stem}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
