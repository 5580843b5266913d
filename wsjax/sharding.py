"""The seed (member) axis of a zoo sharded over devices, on one host or many.

One host: `seed_mesh()` is a 1-D mesh named "seeds" over the local devices; `run_zoo(...,
mesh=seed_mesh())` places member state and hyperparameters with `NamedSharding(mesh,
P("seeds"))` and the data replicated (`P()`), and the jitted, vmapped trainer propagates that
sharding, so each device trains its own members. A member count not divisible by the device
count is padded with copies of the last member, which are dropped from the output.

Many hosts: every process calls `jax.distributed.initialize` and then `run_zoo_sharded`. The
members are split into contiguous blocks, one per process; each process trains its block on its
own devices (a local seed mesh) and writes only its own shard. Members never interact, so no
cross-process collective is needed: the coordinator handshake only assigns process indices.

Sharded run directory:

    RUN/sharded.json                 manifest: num_processes, seeds, shards [{dir, seeds}]
    RUN/shards/process-00000/        an ordinary, resumable run directory (wsjax.store) for
    RUN/shards/process-00001/        that process's contiguous block of seeds
    ...

`load_sharded_zoo(RUN)` concatenates the shards along the seed axis in manifest order (which
is seed order) and gives one Zoo; a shard that is missing or incomplete is an error naming the
process to rerun. Resume works per shard: rerun the same commands.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wsjax.errors import ConfigError, RunDirError
from wsjax.store import Zoo, atomic_write_json, load_zoo, read_json

__all__ = ["SEED_AXIS", "seed_mesh", "shard_members", "use_cpu_cores", "process_block",
           "run_zoo_sharded", "load_sharded_zoo", "is_sharded_run", "initialize_distributed"]

SEED_AXIS = "seeds"


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def use_cpu_cores(n: int | None = None) -> int:
    """Makes JAX's CPU backend one device per core, so that a seed mesh uses every core.

    XLA runs one program on a CPU device mostly on one thread; the zoo's small per-step
    operations do not spread over cores. With one CPU device per core and the members sharded
    over them, every core trains its own members (about 1.5-1.8x faster on 2 cores).

    Call before JAX runs anything. `n`: devices wanted (default: the cores this process may
    use). Returns the number of CPU devices JAX will have, or 0 where it is too late to change
    (JAX already initialised, or the user set it: JAX_NUM_CPU_DEVICES or XLA_FLAGS'
    --xla_force_host_platform_device_count win).
    """
    if "JAX_NUM_CPU_DEVICES" in os.environ or \
            "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 0
    if n is None:
        n = usable_cores()
    n = max(1, int(n or 1))
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        return 0
    return n


def seed_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "seeds" over `devices` (default: this process's local devices)."""
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise ConfigError("no devices to build a seed mesh on")
    return Mesh(np.array(devs), (SEED_AXIS,))


def shard_members(tree, mesh: Mesh, replicate: bool = False):
    """Places every leaf of `tree` on `mesh`: split along axis 0 over "seeds", or replicated.

    Leaves to split must have a leading member axis divisible by `mesh.size`.
    """
    spec = PartitionSpec() if replicate else PartitionSpec(SEED_AXIS)
    sharding = NamedSharding(mesh, spec)
    if not replicate:
        for leaf in jax.tree.leaves(tree):
            if leaf.shape[0] % mesh.size:
                raise ConfigError(f"member axis {leaf.shape[0]} is not divisible by the "
                                  f"{mesh.size} devices of the seed mesh; pad it first")
    return jax.device_put(tree, sharding)


def process_block(members: int, num_processes: int, process_id: int) -> tuple[int, int]:
    """[lo, hi): the contiguous block of member indices that process `process_id` trains.

    Blocks differ in size by at most one; a process may get an empty block.
    """
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"process id {process_id} is not in 0..{num_processes - 1}")
    base, extra = divmod(members, num_processes)
    lo = process_id * base + min(process_id, extra)
    return lo, lo + base + (1 if process_id < extra else 0)


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """`jax.distributed.initialize` with explicit values, or JAX's own environment when None."""
    kwargs = {}
    if coordinator is not None:
        kwargs = {"coordinator_address": coordinator, "num_processes": num_processes,
                  "process_id": process_id}
    jax.distributed.initialize(**kwargs)


def _shard_dir(process_id: int) -> str:
    return f"shards/process-{process_id:05d}"


def run_zoo_sharded(config, out_dir: str | Path, dataset=None, data_dir: str | None = None,
                    progress: bool = True, log=print, process_id: int | None = None,
                    num_processes: int | None = None, devices=None) -> Path:
    """Trains this process's block of `config`'s members into its shard of a sharded run.

    Args:
        config: the whole zoo (wsjax.zoo.ZooConfig); every process passes the same one.
        out_dir: the sharded run directory (shared by all processes, e.g. a network disk,
            or gathered into one place afterwards).
        process_id, num_processes: default `jax.process_index()` / `jax.process_count()`.
        devices: this process's devices for the seed mesh (default: its local devices).

    Returns:
        the shard's run directory.
    """
    from wsjax.zoo import run_zoo

    pid = jax.process_index() if process_id is None else process_id
    n = jax.process_count() if num_processes is None else num_processes
    out = Path(out_dir)
    blocks = [process_block(config.seeds, n, i) for i in range(n)]
    manifest = {
        "format": "wsjax-sharded-run/1",
        "num_processes": n,
        "seeds": list(range(config.seed_start, config.seed_start + config.seeds)),
        "shards": [{"dir": _shard_dir(i), "seeds": [config.seed_start + lo,
                                                    config.seed_start + hi]}
                   for i, (lo, hi) in enumerate(blocks) if hi > lo],
    }
    out.mkdir(parents=True, exist_ok=True)
    if (out / "sharded.json").exists():
        if read_json(out / "sharded.json") != manifest:
            raise RunDirError(f"{out}: holds a different sharded zoo (seeds or process count "
                              "differ); choose another --out or delete that folder")
    elif pid == 0:
        atomic_write_json(out / "sharded.json", manifest)
    lo, hi = blocks[pid]
    shard = out / _shard_dir(pid)
    if hi == lo:
        log(f"process {pid}: no members to train ({config.seeds} seeds over {n} processes)")
        return shard
    sub = dataclasses.replace(config, seeds=hi - lo, seed_start=config.seed_start + lo)
    return run_zoo(sub, shard, dataset=dataset, data_dir=data_dir, progress=progress, log=log,
                   mesh=seed_mesh(devices))


def is_sharded_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "sharded.json").is_file()


def load_sharded_zoo(run_dir: str | Path) -> Zoo:
    """Reads a sharded run as one Zoo: shards concatenated along the seed axis, in seed order.

    Snapshots are loaded into memory (one array [S, E+1, P]).

    Raises:
        RunDirError: no manifest, or a shard missing, incomplete or disagreeing with it.
    """
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "sharded.json")
    zoos = []
    for entry in manifest["shards"]:
        try:
            z = load_zoo(run_dir / entry["dir"])
        except RunDirError as e:
            raise RunDirError(f"{run_dir}: shard {entry['dir']} is not ready ({e}); rerun "
                              "that process's command") from None
        want = np.arange(*entry["seeds"])
        if not np.array_equal(np.asarray(z.seeds), want):
            raise RunDirError(f"{run_dir}: shard {entry['dir']} holds seeds other than the "
                              "manifest's; the run directory is mixed up")
        zoos.append(z)
    first = zoos[0]
    config = dict(first.config)
    config["seeds"] = manifest["seeds"]
    config["config"] = {**first.config["config"], "seeds": len(manifest["seeds"]),
                        "seed_start": manifest["seeds"][0]}
    config["sharded"] = manifest

    def cat(name):
        return np.concatenate([np.asarray(getattr(z, name)) for z in zoos])

    return Zoo(path=run_dir, config=config, snapshots=cat("snapshots"),
               test_accuracy=cat("test_accuracy"), test_loss=cat("test_loss"),
               train_loss=cat("train_loss"), diverged_epoch=cat("diverged_epoch"),
               seeds=cat("seeds"))
