"""Run directories: one zoo per folder, written atomically, resumable, no pickles.

Layout of a run directory::

    config.json      the full configuration (JSON), plus the data it was trained on and, once
                     complete, its provenance (device, versions, training time)
    snapshots.npy    float32 [S, E+1, P] flattened weights; epoch 0 = initialisation (mmap-able)
    metrics.npz      test_accuracy [S, E+1], test_loss [S, E+1], train_loss [S, E],
                     diverged_epoch [S] (-1: never), seeds [S]
    progress.json    {"completed_epochs": k, "complete": bool}
    state.npz        training state after the last completed epoch (only while incomplete)

Every file is written to a temporary name in the same folder and moved into place
(`os.replace`), so a killed process leaves either the old or the new file, never half of one.
`snapshots.npy` is the exception by design: epochs are written into it in place (mmap) and
only count once `progress.json` says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
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
]

METRIC_KEYS = ("test_accuracy", "test_loss", "train_loss", "diverged_epoch", "seeds")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunDirError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e})") from None


def finish_run(run_dir: str | os.PathLike, config: dict, epochs: int,
               metrics: dict[str, np.ndarray]) -> None:
    """Marks a run directory whose snapshots.npy is written as complete.

    Writes metrics.npz (the METRIC_KEYS of `metrics`), config.json (`config`, complete) and,
    last, progress.json {"completed_epochs": epochs, "complete": true}: a reader never sees a
    complete run without its metrics and configuration.
    """
    run_dir = Path(run_dir)
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"finish_run: metrics lack {', '.join(missing)}")
    atomic_save_npz(run_dir / "metrics.npz", **{k: np.asarray(metrics[k]) for k in METRIC_KEYS})
    atomic_write_json(run_dir / "config.json", config)
    atomic_write_json(run_dir / "progress.json", {"completed_epochs": int(epochs),
                                                  "complete": True})


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

            x = np.asarray(project(fit_svd(x), int(space)))
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


def load_zoo(run_dir: str | os.PathLike, mmap: bool = True) -> Zoo:
    """Reads a completed run directory.

    Raises:
        RunDirError: the folder is missing, the run is incomplete, or a file is malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: run directory not found; train one with "
                          "`python -m experiments.zoo --out DIR`")
    if (run_dir / "sharded.json").is_file():
        return load_sharded_zoo(run_dir)
    progress = read_json(run_dir / "progress.json")
    if not progress.get("complete"):
        raise RunDirError(
            f"{run_dir}: run is incomplete ({progress.get('completed_epochs', 0)} epochs done); "
            "rerun the same `experiments.zoo` command to resume it")
    config = read_json(run_dir / "config.json")
    try:
        snapshots = np.load(run_dir / "snapshots.npy", mmap_mode="r" if mmap else None,
                            allow_pickle=False)
        with np.load(run_dir / "metrics.npz", allow_pickle=False) as m:
            metrics = {k: m[k] for k in METRIC_KEYS}
    except (OSError, KeyError, ValueError) as e:
        raise RunDirError(f"{run_dir}: cannot read the zoo arrays ({e})") from None
    return Zoo(path=run_dir, config=config, snapshots=snapshots, **metrics)


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


def split_chunks(members: int, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(member indices, the same padded with copies of the last to length chunk)] covering
    0..members-1: the chunks of members that a run trains one after another."""
    out = []
    for lo in range(0, members, chunk):
        idx = np.arange(lo, min(lo + chunk, members))
        out.append((idx, np.concatenate([idx, np.full(chunk - len(idx), idx[-1])])))
    return out


def save_training_state(path: Path, states: list, chunks, members: int, epoch: int,
                        metrics: dict[str, np.ndarray]) -> None:
    """Writes the training state of every chunk (pytrees with a leading member axis, merged
    into [members, ...] per leaf) and the metrics so far to `path` (state.npz), atomically."""
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
    atomic_save_npz(path, completed_epochs=np.int64(epoch), **metrics, **arrays)


def load_training_state(path: Path, states: list, chunks,
                        metric_names) -> tuple[int, dict[str, np.ndarray], list]:
    """Reads `save_training_state`'s file: (completed epochs, metrics, the chunks' states in
    the structure of `states`)."""
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
