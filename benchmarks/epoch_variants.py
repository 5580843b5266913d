"""Speed of one training epoch of the fast trainer for settings of its speed options.

    python benchmarks/epoch_variants.py --arch ffnn cnn --unroll 1 8
    python benchmarks/epoch_variants.py --arch cnn --seed-block 8 16 32 --n-train 6000

For each architecture, every combination of the given --unroll and --seed-block values trains
the same `--seeds` members on the same random data (`train_table.random_data`) in one process,
the seeds sharded over all local devices as the zoo command does; the variants' repeats are
interleaved. Each repeat is one epoch of `--n-train` examples, its data orders included. The
table gives model-steps/s (medians) and each variant's speed over the first one; "first epoch"
is the wall time of the run that compiled it. The results do not depend on these options
(tests/test_kernels.py), only the speed: this is how their platform defaults are chosen.
`--json FILE` writes the rows and, per architecture, the fastest variant.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
from train_table import check_n_train, run_stamp, wsjax_runner  # this folder

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.models import get_arch
from wsjax.store import atomic_write_json


def _default(values: list[int] | None) -> list[int | None]:
    return [None] if not values else list(values)


def measure(arch: str, seeds: int, n_train: int, repeats: int, unrolls, blocks) -> list[dict]:
    """One row per (unroll, seed_block): median model-steps/s over `repeats` epochs."""
    import jax

    steps = n_train // get_arch(arch).batch_size
    devices = len(jax.local_devices())
    runners, first = {}, {}
    for unroll, block in itertools.product(unrolls, blocks):
        t0 = time.perf_counter()
        runners[unroll, block] = wsjax_runner(arch, seeds, steps, True, devices,
                                              unroll=unroll, seed_block=block)
        first[unroll, block] = time.perf_counter() - t0
        print(f"  {arch} unroll={unroll} seed_block={block}: compiled and ran one epoch in "
              f"{first[unroll, block]:.1f} s", file=sys.stderr, flush=True)
    times = {v: [] for v in runners}
    for _ in range(repeats):
        for v, run in runners.items():
            times[v].append(run())
    rows = []
    for (unroll, block), ts in times.items():
        epoch = float(np.median(ts))
        rows.append({"arch": arch, "unroll": unroll, "seed_block": block, "seeds": seeds,
                     "n_train": n_train, "epoch_s": epoch,
                     "model_steps_per_s": seeds * steps / epoch,
                     "first_epoch_s": first[unroll, block]})
    return rows


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/epoch_variants.py", description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", choices=["ffnn", "cnn"], default=["ffnn", "cnn"])
    p.add_argument("--seeds", type=int, default=250)
    p.add_argument("--n-train", type=int, default=12_000,
                   help="training examples per epoch (random data)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--unroll", type=int, nargs="+", default=None,
                   help="steps per iteration of the step loop (default: the trainer's own)")
    p.add_argument("--seed-block", type=int, nargs="+", default=None,
                   help="members per block (default: the trainer's own)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if min(a.seeds, a.repeats, *(a.unroll or [1]), *(a.seed_block or [1])) < 1:
        raise ConfigError("--seeds, --repeats, --unroll and --seed-block must be at least 1")
    check_n_train(a.arch, a.n_train)
    if a.json and not a.json.absolute().parent.is_dir():
        raise ConfigError(f"--json {a.json}: its folder does not exist; create it or give "
                          f"another path")
    from wsjax.sharding import use_cpu_cores

    use_cpu_cores()

    rows = []
    for arch in a.arch:
        rows += measure(arch, a.seeds, a.n_train, a.repeats, _default(a.unroll),
                        _default(a.seed_block))
    stamp = run_stamp()
    print("| arch | unroll | seed block | model-steps/s | vs first | epoch | first epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    best = {}
    for arch in a.arch:
        mine = [r for r in rows if r["arch"] == arch]
        for r in mine:
            print(f"| {arch.upper()} | {r['unroll'] or 'default'} | "
                  f"{r['seed_block'] or 'default'} | {r['model_steps_per_s']:,.0f} | "
                  f"{r['model_steps_per_s'] / mine[0]['model_steps_per_s']:.2f}x | "
                  f"{r['epoch_s']:.2f} s | {r['first_epoch_s']:.1f} s |")
        top = max(mine, key=lambda r: r["model_steps_per_s"])
        best[arch] = {"unroll": top["unroll"], "seed_block": top["seed_block"]}
    print(f"{a.seeds} seeds, {a.n_train:,} random examples per epoch, medians of {a.repeats}; "
          f"{stamp['devices']}, JAX {stamp['jax']}, {stamp['date']}")
    if a.json:
        atomic_write_json(a.json, {"rows": rows, "best": best, **stamp})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
