"""Checkpoints in the formats of the frameworks, read as named arrays, and folders of them.

A checkpoint becomes named arrays, {"Dense_0/kernel": array, ...} (nested dicts joined with
"/"), and one weight vector: the arrays raveled in C order and concatenated in the order of
their names split at "/" (for a Flax params dict this is `jax.flatten_util.ravel_pytree`'s
order, see `wsjax.params`). Its `Layout` (names, shapes, dtypes) says which architecture it
belongs to; two checkpoints are comparable only when their layouts agree.

Formats:
    .msgpack       Flax `flax.serialization.to_bytes` / `msgpack_serialize` of a params pytree
    directory      an Orbax checkpoint (`orbax.checkpoint`; a step folder of a
                   CheckpointManager with one item is read through to that item)
    .safetensors   safetensors (`safetensors.numpy`); a "step" or "epoch" entry of its
                   metadata is taken as the recorded step
    .npz           named arrays
    .npy           one flat vector [P] (no names: only its length can be checked), or [n, P]
                   for n checkpoints of one flat layout

A folder of checkpoints (`scan_folder`): every checkpoint below it; its model is the
sub-folder it sits in (relative to the folder given; the folder's own name for checkpoints at
its top), its step a recorded step, else the last number in its name, else none.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsjax.errors import ConfigError, DataError

__all__ = ["Layout", "LayoutMismatchError", "Checkpoint", "read_checkpoint", "read_named",
           "flatten_named", "scan_folder", "is_orbax_dir", "FLAT", "SUFFIXES"]

FLAT = "(flat vector)"
SUFFIXES = (".msgpack", ".safetensors", ".npz", ".npy")
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "commit_success.txt")


class LayoutMismatchError(ConfigError):
    """A checkpoint's layout is not the index's (another architecture, or another naming)."""


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of a checkpoint's arrays, in flattening order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def size(self) -> int:
        """P, the number of weights."""
        return int(sum(int(np.prod(s)) for s in self.shapes))

    @property
    def flat(self) -> bool:
        """A bare vector without names (a .npy, or a zoo run's snapshots)."""
        return self.names == (FLAT,)

    def to_json(self) -> dict:
        return dict(names=list(self.names), shapes=[list(s) for s in self.shapes],
                    dtypes=list(self.dtypes))

    @classmethod
    def from_json(cls, d: dict) -> Layout:
        return cls(tuple(d["names"]), tuple(tuple(int(n) for n in s) for s in d["shapes"]),
                   tuple(d["dtypes"]))

    @classmethod
    def flat_of(cls, size: int, dtype: str = "float32") -> Layout:
        return cls((FLAT,), ((int(size),),), (dtype,))

    def difference(self, other: Layout) -> str | None:
        """None when `other` (a checkpoint's layout) fits this one (an index's), else the
        first differing parameter in words. A flat vector on either side carries no names,
        so there only the number of weights can be compared; dtypes are not compared (the
        index works in float64), names and shapes are."""
        if self.flat or other.flat:
            if self.size == other.size:
                return None
            return (f"checkpoint has {other.size} weights but the index holds "
                    f"{self.size}-weight models (a different architecture)")
        mine = dict(zip(self.names, self.shapes, strict=True))
        theirs = dict(zip(other.names, other.shapes, strict=True))
        for name in sorted(set(mine) | set(theirs), key=_name_key):
            if name not in theirs:
                return f"parameter {name} {mine[name]} of the index is missing from the checkpoint"
            if name not in mine:
                return f"parameter {name} {theirs[name]} of the checkpoint is not in the index"
            if mine[name] != theirs[name]:
                return (f"parameter {name} has shape {theirs[name]} in the checkpoint but "
                        f"{mine[name]} in the index")
        return None

    def unflatten(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Flat weights [P] -> named arrays in this layout (the inverse of `flatten_named`)."""
        ends = np.cumsum([int(np.prod(s)) for s in self.shapes])
        parts = np.split(np.asarray(x), ends[:-1])
        return {n: p.reshape(s).astype(d)
                for n, p, s, d in zip(self.names, parts, self.shapes, self.dtypes, strict=True)}

    def check(self, other: Layout, where: str) -> None:
        """Raises LayoutMismatchError naming the first differing parameter."""
        diff = self.difference(other)
        if diff is not None:
            raise LayoutMismatchError(f"{where}: {diff}; build an index from checkpoints of "
                                      "this architecture")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint found in a folder (`scan_folder`)."""

    path: Path
    model: str
    step: float | None


def _name_key(name: str) -> tuple:
    return tuple(name.split("/"))


def _join(prefix: str, key) -> str:
    return f"{prefix}/{key}" if prefix else str(key)


def _flatten_tree(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts (lists, tuples) of arrays -> {"a/b/c": array}."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix or "value": np.asarray(tree)}
    out = {}
    for k, v in items:
        out.update(_flatten_tree(v, _join(prefix, k)))
    return out


def is_orbax_dir(path: Path) -> bool:
    """An Orbax checkpoint folder: a PyTree item, or a CheckpointManager step folder."""
    return path.is_dir() and any((path / m).exists() for m in _ORBAX_MARKERS)


def _orbax_item(path: Path) -> Path:
    """The PyTree item to restore: the folder itself, or the one item of a step folder."""
    if (path / "_METADATA").is_file():
        return path
    items = [p for p in sorted(path.iterdir()) if p.is_dir() and (p / "_METADATA").is_file()]
    if len(items) != 1:
        raise DataError(f"{path}: an Orbax step folder with {len(items)} PyTree items; name "
                        "the item folder itself")
    return items[0]


_SETTLE_S = 0.25


def _read_orbax(path: Path) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    item = _orbax_item(path)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    # what it prints about a damaged folder (warnings, its threads' tracebacks) repeats the
    # one-line error raised below
    quiet = contextlib.redirect_stderr(io.StringIO())
    try:
        with quiet, ocp.PyTreeCheckpointer() as ckptr:
            try:
                meta = ckptr.metadata(item)
                tree = getattr(meta, "item_metadata", meta)
                tree = getattr(tree, "tree", tree)
                if not tree:
                    raise DataError(f"{path}: corrupted or truncated Orbax checkpoint (its "
                                    "array metadata cannot be read)")
                # restored as host numpy arrays: the checkpoint's sharding does not matter here
                as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                        tree)
                restored = ckptr.restore(item,
                                         args=ocp.args.PyTreeRestore(restore_args=as_numpy))
            except Exception:
                # its reads of the other arrays are still in flight and report, when they
                # end, that its event loop has closed: let them end while stderr is quiet
                time.sleep(_SETTLE_S)
                raise
    finally:
        absl.setLevel(level)
    return _flatten_tree(restored)


def _read_msgpack(path: Path) -> dict[str, np.ndarray]:
    from flax import serialization

    return _flatten_tree(serialization.msgpack_restore(path.read_bytes()))


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], float | None]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        meta = f.metadata() or {}
    step = None
    for key in ("step", "epoch"):
        if key in meta:
            try:
                step = float(meta[key])
            except ValueError:
                raise DataError(f"{path}: metadata {key}={meta[key]!r} is not a number") from None
            break
    return arrays, step


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_named(path: str | os.PathLike) -> tuple[list[dict[str, np.ndarray]], float | None]:
    """Reads a checkpoint file or folder -> ([named arrays per checkpoint], recorded step).

    A .npy of [n, P] holds n checkpoints; every other format one. Raises DataError with one
    line for a missing, unknown, corrupted or truncated checkpoint, or non-finite weights.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: checkpoint not found")
    if path.is_dir() and not is_orbax_dir(path):
        raise DataError(f"{path}: a folder but not an Orbax checkpoint (no _METADATA); give "
                        "checkpoint files, or index the folder with `python -m wsjax index`")
    if path.is_file() and path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown checkpoint format; use one of "
                        f"{', '.join(SUFFIXES)} or an Orbax checkpoint folder")
    step = None
    try:
        if path.is_dir():
            named = [_read_orbax(path)]
        elif path.suffix == ".msgpack":
            named = [_read_msgpack(path)]
        elif path.suffix == ".safetensors":
            arrays, step = _read_safetensors(path)
            named = [arrays]
        elif path.suffix == ".npz":
            named = [_read_npz(path)]
        else:
            x = np.load(path, allow_pickle=False)
            if x.ndim not in (1, 2):
                raise DataError(f"{path}: a flat .npy must be [P] or [n, P], got {x.shape}")
            named = [{FLAT: row} for row in (x[None] if x.ndim == 1 else x)]
    except DataError:
        raise
    except Exception as e:  # every reader has its own errors for a damaged file
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise DataError(f"{path}: corrupted or truncated checkpoint ({msg})") from None
    if not named or not named[0]:
        raise DataError(f"{path}: the checkpoint holds no arrays")
    for arrays in named:
        for name, a in arrays.items():
            if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
                raise DataError(f"{path}: parameter {name} has dtype {a.dtype}, not numbers")
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                raise DataError(f"{path}: parameter {name} holds NaN or infinite weights")
    return named, step


def flatten_named(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, Layout]:
    """Named arrays -> (float64 [P] vector, layout), in the order of the names split at "/"."""
    names = sorted(arrays, key=_name_key)
    layout = Layout(tuple(names), tuple(tuple(int(n) for n in np.shape(arrays[k]))
                                        for k in names),
                    tuple(str(np.asarray(arrays[k]).dtype) for k in names))
    vec = np.concatenate([np.ravel(np.asarray(arrays[k], dtype=np.float64)) for k in names])
    return vec, layout


def read_checkpoint(path: str | os.PathLike) -> tuple[np.ndarray, Layout, float | None]:
    """A checkpoint -> (weights float64 [n, P], layout, recorded step or None)."""
    named, step = read_named(path)
    vecs, layout = [], None
    for arrays in named:
        v, lay = flatten_named(arrays)
        vecs.append(v)
        layout = layout or lay
    return np.stack(vecs), layout, step


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _name_step(path: Path) -> float | None:
    """The last number in a checkpoint's name (suffix removed), e.g. ckpt-300 -> 300."""
    stem = path.name[: -len(path.suffix)] if path.suffix in SUFFIXES else path.name
    found = _NUMBER.findall(stem)
    return float(found[-1]) if found else None


def scan_folder(root: str | os.PathLike) -> list[Checkpoint]:
    """Every checkpoint below `root`, with its model (sub-folder) and step (name number).

    Orbax folders are not looked into. A CheckpointManager's step folders (named by their
    step) sit in the model's folder, so their model is that folder and their step the name.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames.sort()
        for d in list(dirnames):
            if is_orbax_dir(here / d):
                dirnames.remove(d)
                found.append(here / d)
        found += [here / f for f in sorted(filenames)
                  if Path(f).suffix in SUFFIXES and not f.startswith(".")]
    out = []
    for path in found:
        rel = path.parent.relative_to(root)
        model = root.resolve().name if rel == Path(".") else rel.as_posix()
        out.append(Checkpoint(path=path, model=model, step=_name_step(path)))
    return out
