"""Wall time of a whole zoo run, as `python -m experiments.zoo` makes it, on data of MNIST's size.

    python benchmarks/zoo_time.py                          # the paper's zoos: 250 x 50, both
    python benchmarks/zoo_time.py --arch cnn --epochs 2    # a slice, scaled to 50 epochs

The zoo is trained by `wsjax.zoo.run_zoo` into a temporary run directory (removed afterwards)
with everything a real run does: initial and per-epoch evaluation on the test set, snapshots
and resumable state saved every epoch, the seeds sharded over all local devices (on a CPU one
device per core, `wsjax.sharding.use_cpu_cores`). The data are random images of MNIST's
shape and size (60,000 training, 10,000 test examples, values in [0, 1), random labels): the
time does not depend on the values, and no download is needed. Wall time counts everything from
the call to its return, compilation included; a run of another number of epochs is scaled to
50 at its mean time per epoch, compilation and setup spread over its epochs (for fewer than 50
epochs an upper bound).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from train_table import (  # this folder: the benchmarks' shared parts
    check_n_train,
    random_data,
    run_stamp,
)

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError

PAPER_EPOCHS = 50


def synthetic_mnist(n_train: int, n_test: int):
    """A `wsjax.data.Dataset` of random 14x14x1 images in [0, 1) and labels 0-9."""
    from wsjax.data import Dataset

    return Dataset("mnist-shaped-random", "numpy.random", *random_data("cnn", n_train, seed=0),
                   *random_data("cnn", n_test, seed=1))


def time_zoo(arch: str, seeds: int, epochs: int, n_train: int, n_test: int) -> dict:
    """Runs one zoo and returns its figures."""
    from wsjax.sharding import members_mesh
    from wsjax.zoo import ZooConfig, run_zoo

    config = ZooConfig(arch=arch, seeds=seeds, epochs=epochs)
    ds = synthetic_mnist(n_train, n_test)
    mesh = members_mesh()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_zoo(config, Path(tmp) / "run", dataset=ds, progress=True, mesh=mesh,
                log=lambda msg: print(f"  {msg}", file=sys.stderr))
        wall = time.perf_counter() - t0
    steps = n_train // config.resolved()["batch_size"]
    return {"arch": arch, "seeds": seeds, "epochs": epochs, "n_train": n_train,
            "n_test": n_test, "wall_s": round(wall, 2),
            "model_steps_per_s": round(seeds * steps * epochs / wall),
            "paper_zoo_s": round(wall * PAPER_EPOCHS / epochs, 1), **run_stamp()}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/zoo_time.py", description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", choices=["ffnn", "cnn"], default=["ffnn", "cnn"])
    p.add_argument("--seeds", type=int, default=250)
    p.add_argument("--epochs", type=int, default=PAPER_EPOCHS,
                   help="epochs to run; another number is scaled to the paper's 50")
    p.add_argument("--n-train", type=int, default=60_000)
    p.add_argument("--n-test", type=int, default=10_000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.seeds, args.epochs, args.n_test) < 1:
        raise ConfigError("--seeds, --epochs and --n-test must be at least 1")
    check_n_train(args.arch, args.n_train)
    from wsjax.sharding import use_cpu_cores

    use_cpu_cores()
    rows = []
    for arch in args.arch:
        rows.append(time_zoo(arch, args.seeds, args.epochs, args.n_train, args.n_test))
        print(json.dumps(rows[-1]), flush=True)  # kept should a later zoo fail
    print("| arch | seeds x epochs | training set | wall time | model-steps/s "
          "| paper-size zoo (50 epochs) | devices |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        paper = f"{r['paper_zoo_s']:.0f} s" + (" (scaled)" if r["epochs"] != PAPER_EPOCHS
                                                else "")
        print(f"| {r['arch'].upper()} | {r['seeds']} x {r['epochs']} | {r['n_train']:,} "
              f"| {r['wall_s']:.1f} s | {r['model_steps_per_s']:,} | {paper} "
              f"| {r['devices']} |")
    print(f"{rows[0]['date']}, JAX {rows[0]['jax']} on {rows[0]['backend']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
