"""Train a model zoo: every seed of one architecture at once, into a resumable run directory.

    python -m experiments.zoo --arch cnn                                  # the paper's CNN zoo
    python -m experiments.zoo --arch ffnn --data-dir path/to/mnist-idx    # offline MNIST
    python -m experiments.zoo --arch cnn --dataset digits --seeds 16 --epochs 10

Defaults are the paper's zoo (250 seeds, 50 epochs, its Table 1 settings, summed MSE) on MNIST.
Rerunning an interrupted command resumes it from the last completed epoch. A damaged run
directory is refused with the file named; --restart retrains it from epoch 0.
"""

from __future__ import annotations

import sys

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.models import ARCHS
from wsjax.train import LOSSES
from wsjax.zoo import ZooConfig, run_zoo


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.zoo", description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="cnn")
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--data-dir", default=None,
                   help="folder with the MNIST IDX files (offline); default: TensorFlow Datasets")
    p.add_argument("--seeds", type=int, default=250, help="number of members (default 250)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--loss", choices=sorted(LOSSES), default="sum",
                   help="MSE reduction (default sum; see README)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: paper's)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--use-bias", action="store_true",
                   help="add biases to every layer (not the paper's models: trained on the "
                        "general path)")
    p.add_argument("--epoch-examples", type=int, default=None, help="examples per epoch, the "
                   "training set tiled to this length (60000: full-length MNIST epochs)")
    p.add_argument("--chunk", type=int, default=None,
                   help="train at most N seeds at once (less memory, same results)")
    p.add_argument("--out", default=None, help="run directory (default runs/<arch>-<dataset>)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--restart", action="store_true",
                   help="discard what --out holds (e.g. a damaged file) and train from epoch 0")
    p.add_argument("--wait", action="store_true",
                   help="if another command is writing --out, wait for it instead of failing")
    p.add_argument("--devices", type=int, default=0,
                   help="shard the seeds over this many local devices (default 0: all; on a "
                        "CPU each core is one device)")
    p.add_argument("--coordinator", default=None,
                   help="multi-host: HOST:PORT of process 0 (jax.distributed); each process "
                        "writes its own shard of --out")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.coordinator is None:
        from wsjax.sharding import use_cpu_cores

        use_cpu_cores()  # before JAX starts: on a CPU, one device per core
    config = ZooConfig(arch=args.arch, dataset=args.dataset, seeds=args.seeds,
                       seed_start=args.seed_start, epochs=args.epochs, loss=args.loss,
                       learning_rate=args.lr, weight_decay=args.weight_decay,
                       momentum=args.momentum, batch_size=args.batch_size, chunk=args.chunk,
                       use_bias=args.use_bias, epoch_examples=args.epoch_examples)
    out = args.out or f"runs/{args.arch}-{args.dataset}"
    if args.coordinator is not None:
        from wsjax.sharding import initialize_distributed
        from wsjax.zoo import run_zoo_sharded

        if args.num_processes is None or args.process_id is None:
            raise ConfigError("--coordinator needs --num-processes and --process-id")
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        run_zoo_sharded(config, out, data_dir=args.data_dir, progress=not args.no_progress,
                        restart=args.restart, wait=args.wait)
        return 0
    import jax

    from wsjax.sharding import members_mesh

    local = jax.local_devices()
    if not 0 <= args.devices <= len(local):
        raise ConfigError(f"--devices must be 0..{len(local)} (0: all local devices)")
    devices = local[: args.devices or len(local)]
    mesh = members_mesh(devices)
    run_zoo(config, out, data_dir=args.data_dir, progress=not args.no_progress, mesh=mesh,
            restart=args.restart, wait=args.wait)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
