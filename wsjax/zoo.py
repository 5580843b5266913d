"""Training the paper's model zoos into resumable run directories.

`run_zoo(config, out_dir)` trains `config.seeds` members of a registered architecture at once
and writes a run directory (see wsjax.store). Killed at any point, the same call resumes from
the last completed epoch and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.data import Dataset, load_dataset
from wsjax.errors import ConfigError, RunDirError
from wsjax.models import KERNEL_INITS, get_arch
from wsjax.sharding import process_block, seed_mesh, shard_members
from wsjax.store import (
    RESTART_FIX,
    DiskFullError,
    atomic_write_json,
    check_file,
    create_snapshots,
    epoch_hashes,
    fault_point,
    finish_run,
    load_training_state,
    load_zoo,
    open_snapshots,
    read_json,
    reset_faults,
    run_dir_lock,
    save_training_state,
    split_chunks,
)
from wsjax.train import (
    BatchedTrainer,
    HParams,
    PlainTrainer,
    diverged_epochs,
    get_loss,
    kernel_mask,
    make_sgd,
)
from wsjax.train.blocks import speed_options

__all__ = ["ZooConfig", "run_zoo", "run_zoo_sharded", "make_trainer", "member_keys",
           "dataset_fingerprint"]


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """What defines a zoo. None for a hyperparameter means the architecture's paper default.

    Attributes:
        arch: registered architecture ("ffnn", "cnn").
        dataset: "mnist" or "digits".
        seeds: number of members; member i uses seed `seed_start + i`.
        epochs: training epochs (snapshots are kept for epochs 0..epochs).
        loss: MSE reduction, "sum" (default, see README), "mean" or "batch_mean".
        chunk: train at most this many members at once (memory only; results are identical).

    The details the paper leaves open, each a choice of the reproduction study
    (`wsjax.variants`); their defaults are the paper's settings as SPEC.md reads them:
        weight_init: kernel init, a key of `wsjax.models.KERNEL_INITS`.
        pool_ceil: the CNN's max-pools in ceil mode.
        decay, coupling: weight decay on "all" parameters or "kernels" only, "coupled" (added
            to the gradient, PyTorch) or "decoupled" (after momentum); see `make_sgd`.
        input_norm: standardise the inputs with MNIST's mean and std instead of [0, 1].
        n_train: train on the first n training examples only (None: all).
        epoch_examples: examples per epoch, at least the training set's size (None: one pass):
            the training set tiled to this length, every example floor(m / n) times and a
            fixed random choice of m mod n of them once more; each epoch shuffles the tiled
            set. Gives the 24,000-image subset the 60,000-example epochs of full MNIST.
        kernels_only: leave biases out of the snapshots (the analysed weight vector).
    """

    arch: str = "cnn"
    dataset: str = "mnist"
    seeds: int = 250
    seed_start: int = 0
    epochs: int = 50
    loss: str = "sum"
    learning_rate: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    use_bias: bool = False
    chunk: int | None = None
    weight_init: str = "kaiming_normal"
    pool_ceil: bool = False
    decay: str = "all"
    coupling: str = "coupled"
    input_norm: bool = False
    n_train: int | None = None
    epoch_examples: int | None = None
    kernels_only: bool = False

    def __post_init__(self):
        get_arch(self.arch)
        get_loss(self.loss)
        if self.weight_init not in KERNEL_INITS:
            raise ConfigError(f"unknown weight_init {self.weight_init!r}; choose one of "
                              f"{', '.join(sorted(KERNEL_INITS))}")
        if self.pool_ceil and self.arch != "cnn":
            raise ConfigError("pool_ceil applies to the cnn only")
        try:
            make_sgd(self.decay, self.coupling)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.n_train is not None and self.n_train < 1:
            raise ConfigError(f"n_train must be at least 1, got {self.n_train}")
        if self.epoch_examples is not None and self.epoch_examples < 1:
            raise ConfigError(f"epoch_examples must be at least 1, got {self.epoch_examples}")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"--chunk must be at least 1, got {self.chunk}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        for name in ("learning_rate", "weight_decay", "momentum"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0")

    def resolved(self) -> dict:
        """The configuration with every default filled in (what config.json records)."""
        spec = get_arch(self.arch)
        d = dataclasses.asdict(self)
        d.pop("chunk")
        for name in ("learning_rate", "momentum", "weight_decay", "batch_size"):
            if d[name] is None:
                d[name] = getattr(spec, name)
        # Recorded only where changed, so that the run directories of the paper's settings
        # read the same as before these choices existed.
        for f in dataclasses.fields(self):
            if f.name in _OPEN_DETAILS and d[f.name] == f.default:
                d.pop(f.name)
        return d

    def module_options(self) -> dict:
        """Keyword arguments of the architecture's module."""
        options = {"use_bias": self.use_bias}
        if self.weight_init != "kaiming_normal":
            options["weight_init"] = self.weight_init
        if self.pool_ceil:
            options["pool_ceil"] = True
        return options

    def hparams(self) -> HParams:
        r = self.resolved()
        return HParams(r["learning_rate"], r["momentum"], r["weight_decay"])


_OPEN_DETAILS = ("weight_init", "pool_ceil", "decay", "coupling", "input_norm", "n_train",
                 "epoch_examples", "kernels_only")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual torchvision Normalize constants


def member_keys(seeds: np.ndarray) -> np.ndarray:
    """Raw uint32 key data [S, 2]: member i's key is `jax.random.key(seed_i)`."""
    return np.stack([np.asarray(jax.random.key_data(jax.random.key(int(s)))) for s in seeds])


def make_trainer(config: ZooConfig, fast: bool = True, use_kernels: bool = True,
                 **options) -> PlainTrainer:
    """The zoo's trainer: the training core (`wsjax.train.BatchedTrainer`; with use_kernels,
    the hand-written kernels where they support the configuration), or with fast=False the
    plain vmapped trainer. Same results to float32 rounding.

    `options`: the core's speed options (`wsjax.train.blocks.SPEED_OPTIONS`: seed_block,
    unroll, eval_budget), positive integers, None for the default; ignored by the plain
    trainer, but checked either way.
    """
    options = speed_options(**options)
    spec = get_arch(config.arch)
    r = config.resolved()
    args = (spec.make_module(**config.module_options()), make_sgd(config.decay, config.coupling),
            get_loss(config.loss), r["batch_size"])
    if not fast:
        return PlainTrainer(*args)
    return BatchedTrainer(*args, use_kernels=use_kernels, **options)


def dataset_fingerprint(ds: Dataset) -> str:
    h = hashlib.sha256()
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _prepare_inputs(config: ZooConfig, ds: Dataset) -> Dataset:
    """The data as the zoo trains on it: the architecture's input shape, and the config's
    training subset and input scaling."""
    want = get_arch(config.arch).input_shape
    if int(np.prod(ds.x_train.shape[1:])) != int(np.prod(want)):
        raise ConfigError(f"{ds.name} inputs have shape {ds.x_train.shape[1:]}; {config.arch} "
                          f"needs {want}")
    x_tr, y_tr, x_te = ds.x_train.reshape(-1, *want), ds.y_train, ds.x_test.reshape(-1, *want)
    if config.n_train is not None:
        if config.n_train > len(x_tr):
            raise ConfigError(f"n_train {config.n_train} exceeds the {len(x_tr)} training "
                              f"examples of {ds.name}; use a larger dataset")
        x_tr, y_tr = x_tr[: config.n_train], y_tr[: config.n_train]
    if config.epoch_examples is not None:
        idx = tiled_indices(len(x_tr), config.epoch_examples)
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    if config.input_norm:
        x_tr, x_te = ((a - MNIST_MEAN) / MNIST_STD for a in (x_tr, x_te))
    return dataclasses.replace(ds, x_train=x_tr.astype(ds.x_train.dtype), y_train=y_tr,
                               x_test=x_te.astype(ds.x_test.dtype))


def tiled_indices(n: int, m: int) -> np.ndarray:
    """int [m]: every index of range(n) floor(m / n) times, then a fixed random choice
    (numpy's default_rng(0)) of m mod n distinct indices once more, in index order."""
    if m < n:
        raise ConfigError(f"epoch_examples {m} is below the {n} training examples; use n_train "
                          f"for a subset")
    extra = np.sort(np.random.default_rng(0).permutation(n)[: m % n])
    return np.concatenate([np.tile(np.arange(n), m // n), extra])


def _state_name(epoch: int) -> str:
    return f"state-{epoch:06d}.npz"


def _committed(out: Path, identity: dict) -> dict | None:
    """What progress.json commits in `out`, its files checked against their records; None
    for a folder with nothing committed (new, or killed before its first save).

    Raises:
        RunDirError: a damaged or missing file, or a different zoo; nothing is changed.
    """
    progress_path, config_path = out / "progress.json", out / "config.json"
    if not progress_path.exists():
        leftovers = [p.name for p in (out / "metrics.npz", *out.glob("state*.npz")) if p.exists()]
        if leftovers:
            raise RunDirError(f"{progress_path} is missing (the folder holds "
                              f"{', '.join(sorted(leftovers))}); {RESTART_FIX}")
        if config_path.exists():  # a run killed before its first save: nothing to keep
            _same_zoo(out, read_json(config_path, RESTART_FIX), identity)
        return None
    progress = read_json(progress_path, RESTART_FIX)
    if not isinstance(progress, dict):
        raise RunDirError(f"{progress_path} is damaged (not a record); {RESTART_FIX}")
    if "files" not in progress and not progress.get("complete"):
        raise RunDirError(f"{progress_path} is from an older wsjax (no integrity records); "
                          f"{RESTART_FIX}")
    files = progress.get("files", {})  # a complete run of an older wsjax is read unchecked
    check_file(config_path, files.get("config.json"), RESTART_FIX)
    _same_zoo(out, read_json(config_path, RESTART_FIX), identity)
    if progress.get("complete"):
        load_zoo(out)  # checks every file
        return progress
    done = int(progress["completed_epochs"])
    if done > 0:
        check_file(out / _state_name(done), files.get(_state_name(done)), RESTART_FIX)
    open_snapshots(out / "snapshots.npy", files.get("snapshots.npy"), RESTART_FIX)
    return progress


def _same_zoo(out: Path, stored: dict, identity: dict) -> None:
    if not isinstance(stored, dict) or \
            {"config": stored.get("config"), "data": stored.get("data")} != identity:
        raise RunDirError(f"{out}: holds a different zoo (config or data differ); choose "
                          "another --out or delete that folder")


def _discard_training_files(out: Path, identity: dict) -> None:
    """For --restart: removes what training wrote (progress.json first, so that a kill half-way
    leaves a folder with nothing committed), keeping a readable config.json of another zoo."""
    config_path = out / "config.json"
    if config_path.exists():
        try:
            stored = json.loads(config_path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored = None
        if stored is not None:
            _same_zoo(out, stored, identity)
    for p in (out / "progress.json", *out.glob("state*.npz"), out / "metrics.npz",
              out / "snapshots.npy", config_path):
        p.unlink(missing_ok=True)


def _remove_leftovers(out: Path, progress: dict | None) -> None:
    """Temporary files of interrupted saves and training states progress.json does not name."""
    keep = set((progress or {}).get("files", {}))
    for p in [*out.glob(".*.tmp"), *out.glob("state*.npz")]:
        if p.name not in keep:
            p.unlink(missing_ok=True)


def run_zoo(config: ZooConfig, out_dir: str | Path, dataset: Dataset | None = None,
            data_dir: str | None = None, progress: bool = True, log=print,
            stop_after_epoch: int | None = None, mesh=None, restart: bool = False,
            wait: bool = False) -> Path:
    """Trains (or resumes, or finds complete) the zoo described by `config` in `out_dir`.

    The folder is locked while this runs (wsjax.store.run_dir_lock). Its files are checked
    against their integrity records before anything is written: a damaged one is a RunDirError
    naming it, and nothing is changed unless `restart` is given.

    Args:
        config: the zoo.
        out_dir: its run directory (created; must hold this same zoo if it exists).
        dataset: the data; loaded from `config.dataset` / `data_dir` when None.
        data_dir: MNIST IDX folder (None: TFDS).
        progress: show a tqdm bar.
        log: where one-line messages go.
        stop_after_epoch: stop (incomplete, resumable) once this epoch is saved; for tests.
        mesh: a 1-D `jax.sharding.Mesh` over "seeds" (wsjax.sharding.seed_mesh): each chunk's
            members are split over its devices; chunks are padded to a multiple of its size.
        restart: discard what is in `out_dir` (damaged or not) and train from epoch 0.
        wait: if another process holds the folder, wait for it instead of failing.

    Returns:
        out_dir as a Path.

    Raises:
        DiskFullError: the disk filled up; the epochs saved before stay, resumable.
    """
    reset_faults()
    out = Path(out_dir)
    ds = dataset if dataset is not None else load_dataset(config.dataset, data_dir)
    ds = _prepare_inputs(config, ds)
    identity = {
        "config": config.resolved(),
        "data": {"name": ds.name, "source": ds.source, "n_train": len(ds.x_train),
                 "n_test": len(ds.x_test), "fingerprint": dataset_fingerprint(ds)},
    }
    steps = len(ds.x_train) // identity["config"]["batch_size"]
    if steps < 1:
        raise ConfigError(f"{ds.name} has {len(ds.x_train)} training examples, fewer than one "
                          f"batch of {identity['config']['batch_size']}")
    out.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(out, wait=wait, log=log):
        if restart:
            _discard_training_files(out, identity)
        committed = _committed(out, identity)
        _remove_leftovers(out, committed)
        if committed is not None and committed.get("complete"):
            log(f"{out}: already complete, nothing to do")
            return out
        try:
            return _train(config, out, ds, identity, committed, progress, log,
                          stop_after_epoch, mesh, steps)
        except DiskFullError as e:
            raise DiskFullError(f"{e}; the epochs saved before are kept: free some space and "
                                "rerun the same command to resume") from None


def _train(config: ZooConfig, out: Path, ds: Dataset, identity: dict, committed: dict | None,
           progress: bool, log, stop_after_epoch: int | None, mesh, steps: int) -> Path:
    """run_zoo's training, in a locked folder whose committed files are checked."""
    spec = get_arch(config.arch)
    trainer = make_trainer(config)
    members = config.seeds
    seeds = np.arange(config.seed_start, config.seed_start + members, dtype=np.int64)
    keys = member_keys(seeds)
    x_tr, y_tr = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    x_te, y_te = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    hp_all = trainer.broadcast_hparams(config.hparams(), members)
    chunk = min(config.chunk or members, members)
    if mesh is not None:
        chunk = -(-chunk // mesh.size) * mesh.size
    chunks = split_chunks(members, chunk)
    hps = [jax.tree.map(lambda v, p=pad: v[p], hp_all) for _, pad in chunks]
    states = [trainer.init(keys[pad], hp, x_tr) for (_, pad), hp in zip(chunks, hps, strict=True)]
    keep = slice(None)
    if config.kernels_only:
        template = spec.make_module(**config.module_options()).init(jax.random.key(0), x_tr[:1])
        keep = kernel_mask(template["params"])
    num_params = int(np.asarray(trainer.flat_params(states[0]))[:, keep].shape[1])
    E = config.epochs

    snap_path, progress_path = out / "snapshots.npy", out / "progress.json"
    metrics = {
        "test_accuracy": np.zeros((members, E + 1), np.float32),
        "test_loss": np.zeros((members, E + 1), np.float32),
        "train_loss": np.zeros((members, E), np.float32),
        "finite": np.ones((members, E), bool),
    }
    done = 0 if committed is None else int(committed["completed_epochs"])
    # Training time is summed over resumed sessions, so the report's speed covers the run.
    seconds_before = 0.0 if committed is None else float(committed.get("train_seconds", 0.0))
    if done > 0:
        files = committed["files"]
        done, metrics, states = load_training_state(out / _state_name(done), states, chunks,
                                                    list(metrics))
        snapshots = np.load(snap_path, mmap_mode="r+", allow_pickle=False)
        log(f"{out}: resuming after epoch {done} of {E}")
    else:
        files = {"config.json": atomic_write_json(
            out / "config.json", {**identity, "arch": config.arch, "num_params": num_params,
                                  "seeds": seeds.tolist(), "epochs": E,
                                  "flatten_order": "jax.flatten_util.ravel_pytree"})}
        snapshots = create_snapshots(snap_path, (members, E + 1, num_params))
        for c, (idx, _) in enumerate(chunks):
            snapshots[idx, 0] = np.asarray(trainer.flat_params(states[c]))[: len(idx), keep]
            acc, tl = trainer.evaluate(states[c], x_te, y_te)
            metrics["test_accuracy"][idx, 0] = np.asarray(acc)[: len(idx)]
            metrics["test_loss"][idx, 0] = np.asarray(tl)[: len(idx)]
        snapshots.flush()
        fault_point("snapshots.npy:epoch")
        files["snapshots.npy"] = {"size": snap_path.stat().st_size,
                                  "epoch_sha256": epoch_hashes(snapshots, [0])}
        atomic_write_json(progress_path, {"completed_epochs": 0, "complete": False,
                                          "files": files})
    if mesh is not None:
        states = [shard_members(s, mesh) for s in states]
        hps = [shard_members(h, mesh) for h in hps]
        x_tr, y_tr, x_te, y_te = shard_members((x_tr, y_tr, x_te, y_te), mesh, replicate=True)

    from tqdm.auto import tqdm

    bar = tqdm(total=E, initial=done, disable=not progress, unit="epoch",
               desc=f"{config.arch} x{members}")
    t_start = time.perf_counter()
    for e in range(done + 1, E + 1):
        t0 = time.perf_counter()
        for c, (idx, _) in enumerate(chunks):
            states[c], trl, sn, fin = trainer.train_epochs(states[c], hps[c], x_tr, y_tr, e, 1,
                                                            last_epoch=E)
            acc, tl = trainer.evaluate(states[c], x_te, y_te)
            n = len(idx)
            snapshots[idx, e] = np.asarray(sn)[:n, 0][:, keep]
            metrics["train_loss"][idx, e - 1] = np.asarray(trl)[:n, 0]
            metrics["finite"][idx, e - 1] = np.asarray(fin)[:n, 0]
            metrics["test_accuracy"][idx, e] = np.asarray(acc)[:n]
            metrics["test_loss"][idx, e] = np.asarray(tl)[:n]
        snapshots.flush()
        fault_point("snapshots.npy:epoch")
        files["snapshots.npy"]["epoch_sha256"].append(epoch_hashes(snapshots, [e])[0])
        files.pop(_state_name(e - 1), None)
        files[_state_name(e)] = save_training_state(out / _state_name(e), states, chunks,
                                                    members, e, metrics)
        atomic_write_json(progress_path, {
            "completed_epochs": e, "complete": False, "files": files,
            "train_seconds": seconds_before + time.perf_counter() - t_start})
        (out / _state_name(e - 1)).unlink(missing_ok=True)
        dt = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(model_steps_s=f"{members * steps / dt:,.0f}",
                        acc=f"{np.nanmean(metrics['test_accuracy'][:, e]):.3f}")
        if stop_after_epoch is not None and e >= stop_after_epoch and e < E:
            bar.close()
            return out
    bar.close()
    elapsed = time.perf_counter() - t_start

    provenance = training_provenance(seconds_before + elapsed, members * steps * E, mesh)
    finish_run(out, None, E,
               {**metrics, "diverged_epoch": diverged_epochs(metrics["finite"]), "seeds": seeds},
               provenance=provenance, snapshots_record=files["snapshots.npy"])
    (out / _state_name(E)).unlink(missing_ok=True)
    del snapshots
    _summary(out, log, elapsed, E - done, members, steps, spec.name)
    return out


def training_provenance(train_seconds: float, model_steps: int, mesh=None) -> dict:
    """Where, with what and how fast a zoo was trained: stored in config.json's "provenance".

    Args:
        train_seconds: wall-clock seconds of training, summed over resumed sessions.
        model_steps: members x optimizer steps of the whole run.
        mesh: the seed mesh the run used, if any (its devices are the ones named).
    """
    try:
        version = importlib.metadata.version("wsjax")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        version = None
    devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()
    return {
        "device": f"{len(devices)} x {devices[0].device_kind}",
        "platform": devices[0].platform,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "wsjax": version,
        "train_seconds": round(float(train_seconds), 3),
        "model_steps_per_s": round(model_steps / max(float(train_seconds), 1e-9), 1),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _summary(out: Path, log, elapsed: float, epochs_run: int, members: int, steps: int,
             arch: str) -> None:
    zoo = load_zoo(out, verify=False)  # just written and recorded: no second hashing pass
    acc = zoo.test_accuracy[:, -1]
    ok = zoo.healthy()
    rate = members * steps * epochs_run / max(elapsed, 1e-9)
    log(f"trained {arch} zoo: {members} members x {zoo.num_epochs} epochs in {elapsed:.1f} s "
        f"({rate:,.0f} model-steps/s)")
    if ok.any():
        log(f"test accuracy at epoch {zoo.num_epochs}: mean {acc[ok].mean():.4f}, "
            f"min {acc[ok].min():.4f}, max {acc[ok].max():.4f}")
    if (~ok).any():
        bad = ", ".join(f"seed {s} (epoch {e})" for s, e in
                        zip(zoo.seeds[~ok], zoo.diverged_epoch[~ok], strict=True))
        log(f"diverged: {int((~ok).sum())} member(s): {bad}")
    log(f"saved to {out}")


def _shard_dir(process_id: int) -> str:
    return f"shards/process-{process_id:05d}"


def run_zoo_sharded(config, out_dir: str | Path, dataset=None, data_dir: str | None = None,
                    progress: bool = True, log=print, process_id: int | None = None,
                    num_processes: int | None = None, devices=None, restart: bool = False,
                    wait: bool = False) -> Path:
    """Trains this process's block of `config`'s members into its shard of a sharded run.

    Args:
        config: the whole zoo (wsjax.zoo.ZooConfig); every process passes the same one.
        out_dir: the sharded run directory (shared by all processes, e.g. a network disk,
            or gathered into one place afterwards).
        process_id, num_processes: default `jax.process_index()` / `jax.process_count()`.
        devices: this process's devices for the seed mesh (default: its local devices).
        restart, wait: as for `run_zoo`, for this process's shard.

    Returns:
        the shard's run directory.
    """
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
        if read_json(out / "sharded.json", "delete it and rerun the same commands") != manifest:
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
                   mesh=seed_mesh(devices), restart=restart, wait=wait)
