"""Run directories: one zoo per folder, written atomically, checked on read, resumable.

Layout of a run directory::

    config.json         the full configuration (JSON), plus the data it was trained on
    snapshots.npy       float32 [S, E+1, P] flattened weights; epoch 0 = initialisation (mmap-able)
    metrics.npz         test_accuracy [S, E+1], test_loss [S, E+1], train_loss [S, E],
                        diverged_epoch [S] (-1: never), seeds [S]
    progress.json       {"completed_epochs": k, "complete": bool, "files": integrity records,
                        "train_seconds": training time so far; once complete, "provenance":
                        device, versions, training time and speed}
    state-EEEEEE.npz    training state after epoch k (only while incomplete)
    .lock               held (flock) by the command writing the folder; holds its pid

Every file is written to a temporary name in the same folder and moved into place
(`os.replace`), so a killed process leaves either the old or the new file, never half of one.
`snapshots.npy` is the exception by design: epochs are written into it in place (mmap), its
blocks reserved up front so that a full disk shows at creation, not as a crash mid-run.

`progress.json` is the commit point, written last: it holds the size and SHA-256 of every
other file it counts (of each epoch's [S, P] slice for snapshots.npy), so that readers check
the files against it and anything it does not name (a save interrupted before its commit) is
ignored and replaced. Damage is reported as a `RunDirError` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from wsjax.errors import RunDirError

__all__ = [
    "Zoo",
    "trajectory_points",
    "load_zoo",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_npz",
    "read_json",
    "finish_run",
    "load_sharded_zoo",
    "split_chunks",
    "save_training_state",
    "load_training_state",
    "DiskFullError",
    "file_record",
    "check_file",
    "epoch_hashes",
    "run_dir_lock",
    "fault_point",
    "reset_faults",
    "open_snapshots",
    "create_snapshots",
    "check_finite",
    "RESTART_FIX",
]

METRIC_KEYS = ("test_accuracy", "test_loss", "train_loss", "diverged_epoch", "seeds")

RESTART_FIX = ("rerun the `python -m experiments.zoo` command that made it with --restart to "
               "retrain it from epoch 0 (training is deterministic: the same result)")

FAULT_ENV = "WSJAX_FAULT"
_fault_counts: dict[str, int] = {}


class DiskFullError(RunDirError):
    """The disk filled up (ENOSPC / EDQUOT) while a file was being written."""


def reset_faults() -> None:
    """Starts counting fault points afresh (a run counts its own moments)."""
    _fault_counts.clear()


def fault_point(name: str) -> None:
    """A named moment of a save, for fault-injection tests; does nothing unless asked.

    WSJAX_FAULT="ACTION POINT [N]" acts the N-th time (default 1) this run reaches POINT:
    "kill" sends SIGKILL to this process, "enospc" raises OSError(ENOSPC) as a full disk
    would, "pause" creates the file $WSJAX_FAULT_FILE.paused and waits until
    $WSJAX_FAULT_FILE exists. Names are "<file>:<phase>", e.g. "progress.json:replaced".
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    action, point, *count = spec.split()
    if point != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] != int(count[0] if count else 1):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    elif action == "pause":
        release = Path(os.environ["WSJAX_FAULT_FILE"])
        Path(f"{release}.paused").touch()
        deadline = time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """The integrity record of a file: {"size": bytes, "sha256": hex digest}."""
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": _sha256_file(path)}


def check_file(path: Path, record: dict | None, fix: str) -> None:
    """Raises RunDirError naming `path` and `fix` unless it matches its integrity record.

    record: {"size", "sha256"} (None: the file only has to exist).
    """
    if not path.is_file():
        raise RunDirError(f"{path} is missing; {fix}")
    if record is None:
        return
    size = path.stat().st_size
    if size != record["size"]:
        raise RunDirError(f"{path} is damaged ({size} bytes, {record['size']} recorded); {fix}")
    if "sha256" in record and _sha256_file(path) != record["sha256"]:
        raise RunDirError(f"{path} is damaged (its SHA-256 differs from the record); {fix}")


def _write_atomically(path: Path, write) -> dict:
    """Calls write(f) on a temporary file next to `path`, syncs it and moves it into place.

    Returns the file's integrity record. A full disk is a DiskFullError naming `path`; the
    temporary file is removed and the previous `path`, if any, is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            fault_point(f"{path.name}:written")
            os.fsync(f.fileno())
        record = file_record(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"{path}: no space left on the disk while writing it") from None
        raise
    fault_point(f"{path.name}:replaced")
    return record


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> dict:
    """Writes `data` to `path` atomically; returns its integrity record."""
    def write(f):
        # In two parts, so that a test can stop a save half-way through a file.
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        fault_point(f"{Path(path).name}:half")
        f.write(data[half:])

    return _write_atomically(Path(path), write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> dict:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> dict:
    return _write_atomically(
        Path(path), lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def read_json(path: str | os.PathLike, fix: str | None = None) -> Any:
    """A JSON file; a missing or malformed one is a RunDirError (with `fix` appended)."""
    tail = f"; {fix}" if fix else ""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: not found{tail}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is damaged (not valid JSON: {e}){tail}") from None


def epoch_hashes(snapshots: np.ndarray, epochs) -> list[str]:
    """SHA-256 of each epoch's snapshots [S, P] (C order) of snapshots [S, E+1, P]."""
    return [hashlib.sha256(np.ascontiguousarray(snapshots[:, e]).tobytes()).hexdigest()
            for e in epochs]


def _snapshot_record(path: Path, snapshots: np.ndarray, epochs: int) -> dict:
    return {"size": path.stat().st_size, "epoch_sha256": epoch_hashes(snapshots, range(epochs + 1))}


def open_snapshots(path: Path, record: dict | None, fix: str, mode: str = "r") -> np.ndarray:
    """snapshots.npy memory-mapped, checked against its record (size, each recorded epoch's
    SHA-256; None: unchecked). Raises RunDirError naming the damaged epochs and `fix`."""
    if record is not None:
        check_file(path, {"size": record["size"]}, fix)
    elif not path.is_file():
        raise RunDirError(f"{path} is missing; {fix}")
    try:
        snapshots = np.load(path, mmap_mode=mode, allow_pickle=False)
    except (OSError, ValueError):
        raise RunDirError(f"{path} is damaged (its .npy header cannot be read); {fix}") from None
    if record is not None:
        want = record["epoch_sha256"]
        if snapshots.ndim != 3 or snapshots.shape[1] < len(want):
            raise RunDirError(f"{path} is damaged (shape {snapshots.shape}); {fix}")
        got = epoch_hashes(snapshots, range(len(want)))
        bad = [e for e, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
        if bad:
            raise RunDirError(f"{path} is damaged at epoch(s) {', '.join(map(str, bad))} "
                              f"(SHA-256 differs from the record); {fix}")
    return snapshots


def create_snapshots(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A new float32 snapshots.npy of `shape`, memory-mapped for writing, its blocks reserved
    (without that, a disk that fills up mid-run kills the process through the mapping)."""
    try:
        snapshots = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        with open(path, "r+b") as f:
            fault_point("snapshots.npy:allocate")
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"{path}: no space left on the disk for "
                                f"{np.prod(shape) * 4 / 2**20:.1f} MiB of snapshots") from None
        raise
    return snapshots


def finish_run(run_dir: str | os.PathLike, config: dict | None, epochs: int,
               metrics: dict[str, np.ndarray], provenance: dict | None = None,
               snapshots_record: dict | None = None) -> None:
    """Marks a run directory whose snapshots.npy is written as complete.

    Writes metrics.npz (the METRIC_KEYS of `metrics`), config.json (`config`; None: keep the
    one there) and, last, progress.json {"completed_epochs": epochs, "complete": true,
    "files": the integrity records of the three, "provenance": where and how fast it was
    trained}: a reader never sees a complete run without its metrics and configuration.
    The provenance goes with the commit, not into config.json, so that a save that fails
    leaves config.json as its record says; `load_zoo` shows it as config["provenance"].
    `snapshots_record`: snapshots.npy's record (size, every epoch's SHA-256) where the caller
    has it; None: computed here.
    """
    run_dir = Path(run_dir)
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"finish_run: metrics lack {', '.join(missing)}")
    files = {"metrics.npz": atomic_save_npz(
        run_dir / "metrics.npz", **{k: np.asarray(metrics[k]) for k in METRIC_KEYS})}
    files["config.json"] = (atomic_write_json(run_dir / "config.json", config)
                            if config is not None else file_record(run_dir / "config.json"))
    snap_path = run_dir / "snapshots.npy"
    # A trainer that hashed each epoch as it saved it passes those records: no second pass.
    files["snapshots.npy"] = snapshots_record or _snapshot_record(
        snap_path, np.load(snap_path, mmap_mode="r", allow_pickle=False), epochs)
    extra = {} if provenance is None else {"provenance": provenance}
    atomic_write_json(run_dir / "progress.json", {"completed_epochs": int(epochs),
                                                  "complete": True, "files": files, **extra})


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, wait: bool = False, log=print):
    """Holds an exclusive OS lock (flock) on run_dir/.lock; the OS releases it when the process
    ends, however it ends. Held by another process: a RunDirError naming its pid, or with
    `wait`, a wait for it."""
    path = Path(run_dir) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            if not wait:
                raise RunDirError(
                    f"{run_dir}: another command (pid {holder}) is writing this run "
                    "directory; let it finish, or add --wait to start when it ends") from None
            log(f"{run_dir}: waiting for pid {holder}, which is writing it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    # The holder writes its pid just after taking the lock: give it a moment to appear.
    for _ in range(50):
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.01)
    return "unknown"


@dataclasses.dataclass(frozen=True)
class Zoo:
    """A trained zoo as read from a run directory.

    Attributes:
        path: the run directory.
        config: the configuration dict from config.json.
        snapshots: float32 [S, E+1, P] (memory-mapped).
        test_accuracy: [S, E+1]; test_loss: [S, E+1]; train_loss: [S, E].
        diverged_epoch: int [S], -1 for members that never diverged.
        seeds: int [S].
    """

    path: Path
    config: dict
    snapshots: np.ndarray
    test_accuracy: np.ndarray
    test_loss: np.ndarray
    train_loss: np.ndarray
    diverged_epoch: np.ndarray
    seeds: np.ndarray

    @property
    def arch(self) -> str:
        return self.config["arch"]

    @property
    def num_epochs(self) -> int:
        return self.snapshots.shape[1] - 1

    def healthy(self) -> np.ndarray:
        """bool [S]: members whose training never diverged."""
        return self.diverged_epoch < 0

    def points(self, epochs=None, space="full", members=None) -> tuple:
        """The zoo as points of a weight space, one per (member, epoch).

        Args:
            epochs: which snapshots (default 1..E: the paper's analysis leaves the
                initialisation out).
            space: "full" (the weights), or k for the top-k directions of an uncentred
                truncated SVD of these points.
            members: positions of the members (default: the healthy ones).

        Returns:
            (x float64 [n, D], model [n] seed of each point, epoch [n]), member-major.
        """
        members = np.flatnonzero(self.healthy()) if members is None else np.asarray(members)
        epochs = np.arange(1, self.num_epochs + 1) if epochs is None else np.asarray(epochs)
        x, model, epoch = trajectory_points(self.snapshots, np.asarray(self.seeds), epochs,
                                            members)
        if space != "full":
            from wsjax.analysis.svd import fit_svd, project

            x = np.asarray(project(fit_svd(x, rank=int(space)), int(space)))
        return x, model, epoch


def trajectory_points(snapshots, model_ids, epochs, members=None) -> tuple:
    """Snapshots [S, T, P] -> (x float64 [n, P], model [n], epoch [n]), member-major.

    model_ids [S] names each member; epochs [T'] are the snapshot positions to keep;
    members (default all) the member positions.
    """
    members = np.arange(len(model_ids)) if members is None else np.asarray(members)
    epochs = np.asarray(epochs)
    sub = np.asarray(snapshots[members][:, epochs], dtype=np.float64)
    x = sub.reshape(-1, sub.shape[-1])
    return (x, np.repeat(np.asarray(model_ids)[members], len(epochs)),
            np.tile(epochs, len(members)))


def load_zoo(run_dir: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Zoo:
    """Reads a completed run directory.

    With `verify`, every file is checked against its integrity record in progress.json, and
    non-finite weights in a member not marked as diverged (at an epoch before its divergence)
    are refused as damage: one pass over the snapshots.

    Raises:
        RunDirError: the folder is missing, the run is incomplete, or a file is damaged,
            missing or malformed; the message names the file and the fix.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: run directory not found; train one with "
                          "`python -m experiments.zoo --out DIR`")
    if (run_dir / "sharded.json").is_file() or (run_dir / "shards").is_dir():
        return load_sharded_zoo(run_dir, verify=verify)
    progress = read_json(run_dir / "progress.json", RESTART_FIX)
    if not isinstance(progress, dict):
        raise RunDirError(f"{run_dir / 'progress.json'} is damaged (not a record); {RESTART_FIX}")
    if not progress.get("complete"):
        raise RunDirError(
            f"{run_dir}: run is incomplete ({progress.get('completed_epochs', 0)} epochs done); "
            "rerun the same `experiments.zoo` command to resume it")
    # Runs written before integrity records existed have none: they are read unchecked.
    files = progress.get("files", {}) if verify else {}
    for name in ("config.json", "metrics.npz"):
        check_file(run_dir / name, files.get(name), RESTART_FIX)
    config = read_json(run_dir / "config.json", RESTART_FIX)
    if "provenance" in progress:
        config = {**config, "provenance": progress["provenance"]}
    snapshots = open_snapshots(run_dir / "snapshots.npy", files.get("snapshots.npy"),
                               RESTART_FIX)
    if not mmap:
        snapshots = np.array(snapshots)
    try:
        with np.load(run_dir / "metrics.npz", allow_pickle=False) as m:
            metrics = {k: m[k] for k in METRIC_KEYS}
    except (OSError, KeyError, ValueError) as e:
        raise RunDirError(f"{run_dir / 'metrics.npz'} is damaged ({e}); {RESTART_FIX}") from None
    zoo = Zoo(path=run_dir, config=config, snapshots=snapshots, **metrics)
    if verify:
        check_finite(zoo)
    return zoo


def check_finite(zoo: Zoo) -> None:
    """Refuses NaN/inf weights in a member at an epoch before it diverged (or in one that never
    did): the training marks divergence, so these can only come from a damaged file.

    Raises:
        RunDirError: naming the first such member (index and seed) and epoch.
    """
    S, T = zoo.snapshots.shape[:2]
    limit = np.where(zoo.diverged_epoch < 0, T, zoo.diverged_epoch)  # epochs before it: finite
    for e in range(T):
        finite = np.isfinite(zoo.snapshots[:, e]).all(axis=1)
        bad = np.flatnonzero(~finite & (e < limit))
        if len(bad):
            s = int(bad[0])
            raise RunDirError(
                f"{zoo.path / 'snapshots.npy'} is damaged: member {s} (seed {int(zoo.seeds[s])}) "
                f"has non-finite weights at epoch {e} but is not marked as diverged there; "
                f"{RESTART_FIX}")


def load_sharded_zoo(run_dir: str | Path, verify: bool = True) -> Zoo:
    """Reads a sharded run as one Zoo: shards concatenated along the seed axis, in seed order.

    Snapshots are loaded into memory (one array [S, E+1, P]).

    Raises:
        RunDirError: no manifest, or a shard missing, damaged, incomplete or disagreeing with it.
    """
    run_dir = Path(run_dir)
    fix = "rerun the same commands on every host to write it again"
    manifest = read_json(run_dir / "sharded.json", fix)
    try:
        entries = [(e["dir"], np.arange(*e["seeds"])) for e in manifest["shards"]]
        seeds = list(manifest["seeds"])
    except (TypeError, KeyError, ValueError):
        raise RunDirError(f"{run_dir / 'sharded.json'} is damaged (not a manifest); {fix}") \
            from None
    zoos = []
    for name, want in entries:
        try:
            z = load_zoo(run_dir / name, verify=verify)
        except RunDirError as e:
            raise RunDirError(f"{run_dir}: shard {name} is not ready ({e}); rerun "
                              "that process's command") from None
        if not np.array_equal(np.asarray(z.seeds), want):
            raise RunDirError(f"{run_dir}: shard {name} holds seeds other than the "
                              "manifest's; the run directory is mixed up")
        zoos.append(z)
    first = zoos[0]
    config = dict(first.config)
    config["seeds"] = seeds
    config["config"] = {**first.config["config"], "seeds": len(seeds), "seed_start": seeds[0]}
    config["sharded"] = manifest

    def cat(name):
        return np.concatenate([np.asarray(getattr(z, name)) for z in zoos])

    return Zoo(path=run_dir, config=config, snapshots=cat("snapshots"),
               test_accuracy=cat("test_accuracy"), test_loss=cat("test_loss"),
               train_loss=cat("train_loss"), diverged_epoch=cat("diverged_epoch"),
               seeds=cat("seeds"))


def split_chunks(members: int, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(member indices, the same padded with copies of the last to length chunk)] covering
    0..members-1: the chunks of members that a run trains one after another."""
    out = []
    for lo in range(0, members, chunk):
        idx = np.arange(lo, min(lo + chunk, members))
        out.append((idx, np.concatenate([idx, np.full(chunk - len(idx), idx[-1])])))
    return out


def save_training_state(path: Path, states: list, chunks, members: int, epoch: int,
                        metrics: dict[str, np.ndarray]) -> dict:
    """Writes the training state of every chunk (pytrees with a leading member axis, merged
    into [members, ...] per leaf) and the metrics so far to `path` (a state-*.npz),
    atomically; returns its integrity record."""
    import jax

    leaves_per_chunk = [jax.tree.leaves(s) for s in states]
    arrays = {}
    for i in range(len(leaves_per_chunk[0])):
        full = None
        for (idx, _), leaves in zip(chunks, leaves_per_chunk, strict=True):
            part = np.asarray(leaves[i])[: len(idx)]
            if full is None:
                full = np.empty((members, *part.shape[1:]), part.dtype)
            full[idx] = part
        arrays[f"leaf_{i}"] = full
    return atomic_save_npz(path, completed_epochs=np.int64(epoch), **metrics, **arrays)


def load_training_state(path: Path, states: list, chunks,
                        metric_names) -> tuple[int, dict[str, np.ndarray], list]:
    """Reads `save_training_state`'s file: (completed epochs, metrics, the chunks' states in
    the structure of `states`). Check it against its record first (`check_file`)."""
    import jax
    import jax.numpy as jnp

    with np.load(path, allow_pickle=False) as z:
        done = int(z["completed_epochs"])
        metrics = {k: z[k] for k in metric_names}
        loaded = []
        for state, (_, pad) in zip(states, chunks, strict=True):
            treedef = jax.tree.structure(state)
            leaves = [jnp.asarray(z[f"leaf_{i}"][pad]) for i in range(treedef.num_leaves)]
            loaded.append(jax.tree.unflatten(treedef, leaves))
    return done, metrics, loaded
