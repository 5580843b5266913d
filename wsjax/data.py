"""Datasets for model zoos: MNIST (TFDS or an IDX folder) and the embedded `digits` set.

Every image set is returned as float32 in [0, 1] with shape [N, 14, 14, 1] (the CNN view);
`Dataset.flat()` gives the FFNN view [N, 196]. Labels are int32 in 0..9.

MNIST is reduced from 28x28 to 14x14 by 2x2 mean pooling (the paper says only "reduced to
14x14"; mean pooling is our choice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import logging
import os
import urllib.parse
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from wsjax.errors import DataError

__all__ = [
    "Dataset",
    "DataError",
    "pool_2x2",
    "read_idx",
    "write_idx",
    "load_idx_folder",
    "load_mnist",
    "load_tfds_mnist",
    "load_digits",
    "load_dataset",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
]

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_OFFLINE_HINT = (
    "pass --data-dir DIR with the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) "
    "or use --dataset digits, which runs offline"
)

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An in-memory classification dataset.

    Attributes:
        name: short name, e.g. "mnist" or "digits".
        source: where the arrays came from (a folder, "tfds", "sklearn").
        x_train: float32 [N, ...] inputs.
        y_train: int32 [N] labels.
        x_test: float32 [M, ...] inputs.
        y_test: int32 [M] labels.
        num_classes: number of label values.
    """

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10

    def __post_init__(self):
        if len(self.x_train) != len(self.y_train):
            raise DataError(
                f"{self.name}: {len(self.x_train)} training inputs but {len(self.y_train)} labels"
            )
        if len(self.x_test) != len(self.y_test):
            raise DataError(
                f"{self.name}: {len(self.x_test)} test inputs but {len(self.y_test)} labels"
            )

    def flat(self) -> Dataset:
        """The same data with each input flattened: [N, prod(rest)] (the FFNN view)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.reshape(len(self.x_train), -1),
            x_test=self.x_test.reshape(len(self.x_test), -1),
        )

    def describe(self) -> str:
        return (
            f"{self.name} ({self.source}): {len(self.x_train)} train / {len(self.x_test)} test, "
            f"inputs {tuple(self.x_train.shape[1:])}"
        )


def pool_2x2(images: np.ndarray) -> np.ndarray:
    """2x2 mean pooling of uint8 images, scaled to [0, 1].

    Args:
        images: [N, H, W] uint8 (or [N, H, W, 1]); H and W even.

    Returns:
        float32 [N, H/2, W/2, 1] in [0, 1].
    """
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1] % 2 or x.shape[2] % 2:
        raise DataError(f"pool_2x2 needs [N, H, W] images with even H, W; got {x.shape}")
    n, h, w = x.shape
    pooled = x.astype(np.float32).reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return (pooled / np.float32(255.0))[..., None].astype(np.float32)


def _open_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.open(f) as g:
                    return g.read()
            return f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e}); the file is damaged or truncated") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its stored dtype and shape.

    Raises:
        DataError: the file is missing, has a wrong magic number or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = _open_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path}: wrong magic number {raw[:4].hex() or '(empty)'}; not an IDX file"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header < expected:
        raise DataError(
            f"{path}: truncated: header says {dims} but only {len(raw) - header} of "
            f"{expected} data bytes are present"
        )
    data = np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims)), offset=header)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, gz: bool = True) -> None:
    """Write a uint8 array as an IDX file (used by tests and to export data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / stem}[.gz]: file not found in the MNIST folder")


def _check_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path):
    if images.ndim != 3:
        raise DataError(f"{img_path}: expected [N, 28, 28] images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected [N] labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{img_path}: {len(images)} images but {lbl_path.name} has {len(labels)} labels"
        )


def load_idx_folder(data_dir: str | os.PathLike) -> Dataset:
    """MNIST from a folder of the four standard IDX files, pooled to 14x14.

    Args:
        data_dir: folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
            t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz].
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: MNIST folder not found; {_OFFLINE_HINT}")
    paths = {k: _find_idx(folder, v) for k, v in IDX_FILES.items()}
    arrays = {k: read_idx(p) for k, p in paths.items()}
    _check_pair(arrays["train_images"], arrays["train_labels"], paths["train_images"],
                paths["train_labels"])
    _check_pair(arrays["test_images"], arrays["test_labels"], paths["test_images"],
                paths["test_labels"])
    return Dataset(
        name="mnist",
        source=str(folder),
        x_train=pool_2x2(arrays["train_images"]),
        y_train=arrays["train_labels"].astype(np.int32),
        x_test=pool_2x2(arrays["test_images"]),
        y_test=arrays["test_labels"].astype(np.int32),
    )


# What preparing MNIST through TFDS imports beyond tensorflow-datasets' declared dependencies;
# each is installed by the `tfds` extra under the same name. (tensorflow-datasets imports
# importlib_resources while preparing but does not declare it.)
TFDS_PREPARE_MODULES = ("tensorflow", "importlib_resources")
TFDS_INSTALL = 'pip install -e ".[tfds]"'
# Long enough for a slow network to answer one request; short enough that a machine without
# one hears so at once instead of after TFDS's minutes of download retries.
REACH_TIMEOUT_S = 5.0


def _tfds_error(problem: str) -> DataError:
    return DataError(f"MNIST through TensorFlow Datasets: {problem}; {_OFFLINE_HINT}")


@contextlib.contextmanager
def _quiet_absl():
    """Hide TFDS's warnings about a dataset folder that does not exist yet (the normal state
    before the first download), so that a failure reads as one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _missing_prepare_modules() -> list[str]:
    return [m for m in TFDS_PREPARE_MODULES if find_spec(m) is None]


def _unreachable(url: str, timeout: float) -> str | None:
    """Why an HTTP HEAD request for `url` gets no answer within `timeout` seconds, or None.

    A HEAD request (through any proxy the environment names) proves more than an open socket:
    some networks accept every connection and then answer nothing. Name resolution has no
    timeout of its own, so the request runs in a daemon thread abandoned after `timeout`.
    """
    import threading
    import urllib.error
    import urllib.request

    failure: list[Exception] = []

    def head():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                   timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # the server answered: the network works, the download reports the rest
        except Exception as e:  # any other failure is the answer; it is reported, not raised
            failure.append(e)

    attempt = threading.Thread(target=head, daemon=True)
    attempt.start()
    attempt.join(timeout)
    if attempt.is_alive():
        return f"no answer from {url} within {timeout:g} s"
    if failure:
        reason = getattr(failure[0], "reason", failure[0])
        return f"{url} cannot be reached ({reason})"
    return None


def _prepare_tfds_mnist(builder) -> None:
    """Download and prepare MNIST, after checking (in seconds) that it can succeed.

    Raises:
        DataError: TensorFlow (or another module the preparation imports) is missing, or the
            download host cannot be reached.
    """
    missing = _missing_prepare_modules()
    if missing:
        raise _tfds_error(
            f"preparing it the first time needs {', '.join(missing)}: install them with "
            f"{TFDS_INSTALL} in the wsjax folder, or work offline"
        )
    # The MNIST builder names its download folder in URL; one of its files is asked for.
    folder = getattr(builder, "URL", None)
    file_url = urllib.parse.urljoin(folder, IDX_FILES["train_labels"] + ".gz") if folder else None
    why = _unreachable(file_url, REACH_TIMEOUT_S) if file_url else None
    if why:
        raise _tfds_error(f"no internet to download it: {why}")
    builder.download_and_prepare()


def _tfds_split_arrays(builder, split: str):
    source = builder.as_data_source(split=split)
    n = len(source)
    try:
        records = source.__getitems__(list(range(n)))
    except (AttributeError, TypeError):
        records = [source[i] for i in range(n)]
    images = np.stack([np.asarray(r["image"]) for r in records])
    labels = np.asarray([r["label"] for r in records], dtype=np.int32)
    return images, labels


def load_tfds_mnist(data_dir: str | None = None) -> Dataset:
    """MNIST through TensorFlow Datasets' `data_source` API, pooled to 14x14.

    Reading a prepared dataset needs no TensorFlow; preparing it (the first download) does,
    through the `tfds` extra. Any failure becomes one DataError that says how to work offline.

    Args:
        data_dir: TFDS's data folder (default: TFDS's own, `TFDS_DATA_DIR` or
            ~/tensorflow_datasets); MNIST is downloaded and prepared there the first time.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a core dependency
        raise _tfds_error(f"tensorflow-datasets is not installed: {TFDS_INSTALL}") from e
    try:
        with _quiet_absl():
            builder = tfds.builder("mnist", data_dir=data_dir, file_format="array_record")
            prepared = builder.is_prepared()
        if not prepared:
            _prepare_tfds_mnist(builder)
        x_tr, y_tr = _tfds_split_arrays(builder, "train")
        x_te, y_te = _tfds_split_arrays(builder, "test")
    except DataError:
        raise
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _tfds_error(f"{type(e).__name__}: {reason[:160]}") from e
    return Dataset(
        name="mnist",
        source="tfds",
        x_train=pool_2x2(x_tr),
        y_train=y_tr,
        x_test=pool_2x2(x_te),
        y_test=y_te,
    )


def load_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """MNIST from an IDX folder when `data_dir` is given, else through TFDS."""
    if data_dir is not None:
        return load_idx_folder(data_dir)
    return load_tfds_mnist()


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize [N, h, w] -> [N, size, size] with half-pixel centres (float64)."""

    def weights(n_in: int) -> np.ndarray:
        centres = (np.arange(size) + 0.5) * n_in / size - 0.5
        centres = np.clip(centres, 0, n_in - 1)
        lo = np.floor(centres).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = centres - lo
        w = np.zeros((size, n_in))
        w[np.arange(size), lo] += 1 - frac
        w[np.arange(size), hi] += frac
        return w

    wh, ww = weights(images.shape[1]), weights(images.shape[2])
    return np.einsum("ih,nhw,jw->nij", wh, images, ww)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images) at 14x14.

    Pixels (0..16) are scaled to [0, 1] and resized bilinearly (half-pixel centres) to 14x14.
    The split is fixed: a permutation from numpy's default_rng(DIGITS_SPLIT_SEED) puts the
    first 20% (359 images) in the test set and the other 1,438 in the training set.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = bunch.images.astype(np.float64) / 16.0
    x = np.clip(_resize_bilinear(images, 14), 0.0, 1.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    n_test = int(round(DIGITS_TEST_FRACTION * len(x)))
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", "sklearn", x[train], y[train], x[test], y[test])


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """A dataset by name: "mnist" (IDX folder if `data_dir`, else TFDS) or "digits"."""
    if name == "digits":
        if data_dir is not None:
            raise DataError("--data-dir is for MNIST; the digits dataset is bundled, drop it")
        return load_digits()
    if name == "mnist":
        return load_mnist(data_dir)
    raise DataError(f"unknown dataset {name!r}; choose 'mnist' or 'digits'")
