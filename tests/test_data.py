"""Data loading: IDX parsing and validation, MNIST pooling, the digits set (TFDS: test_tfds)."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest

from wsjax.data import (
    DIGITS_TEST_FRACTION,
    DataError,
    load_dataset,
    load_digits,
    load_idx_folder,
    pool_2x2,
    read_idx,
    write_idx,
)

IDX = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def reference_pool(images: np.ndarray) -> np.ndarray:
    """Plain loops: each 14x14 pixel is the mean of its 2x2 block, divided by 255."""
    n = images.shape[0]
    out = np.zeros((n, 14, 14), np.float64)
    for i in range(14):
        for j in range(14):
            block = images[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(np.float64)
            out[:, i, j] = block.reshape(n, 4).sum(axis=1) / 4.0 / 255.0
    return out


def make_folder(tmp_path, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in IDX.items():
        write_idx(tmp_path / (stem + (".gz" if gz else "")), arrays[key], gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, a, gz=gz)
    b = read_idx(path)
    assert b.dtype == np.uint8 and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_loads_and_pools(tmp_path, gz):
    arrays = make_folder(tmp_path, gz=gz)
    ds = load_idx_folder(tmp_path)
    assert ds.x_train.shape == (12, 14, 14, 1) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.shape == (5,)
    np.testing.assert_allclose(ds.x_train[..., 0], reference_pool(arrays["train_images"]),
                               rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.flat().x_train.shape == (12, 196)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="MNIST folder not found.*--dataset digits"):
        load_idx_folder(tmp_path / "nope")


def test_missing_file(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*not found"):
        load_idx_folder(tmp_path)


def test_wrong_magic(tmp_path):
    make_folder(tmp_path)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: wrong magic number 12345678"):
        load_idx_folder(tmp_path)


def test_truncated_data(tmp_path):
    make_folder(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_idx_folder(tmp_path)


def test_truncated_gzip_stream(tmp_path):
    make_folder(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_idx_folder(tmp_path)


def test_count_mismatch(tmp_path):
    make_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match="12 images but train-labels-idx1-ubyte.gz has 11 labels"):
        load_idx_folder(tmp_path)


def test_cli_reports_bad_data_in_one_line(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.zoo", "--data-dir", str(tmp_path), "--seeds", "2",
         "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "magic number" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_digits_split_is_fixed_and_shaped():
    a, b = load_digits(), load_digits()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    n = len(a.x_train) + len(a.x_test)
    assert n == 1797
    assert len(a.x_test) == round(DIGITS_TEST_FRACTION * n)
    assert a.x_train.shape[1:] == (14, 14, 1) and a.x_train.dtype == np.float32
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0 and a.x_train.max() > 0.9
    assert set(np.unique(a.y_train)) == set(range(10))


def test_digits_resize_keeps_the_image():
    """Downsampling the 14x14 image back to 7x7 resembles the 8x8 original's coarse layout."""
    from sklearn.datasets import load_digits as sk

    ds = load_digits()
    bunch = sk()
    # Both sets together hold every original image once: total ink is preserved up to scale.
    ink_orig = bunch.images.sum() / 16.0 / 64.0
    ink_new = (ds.x_train.sum() + ds.x_test.sum()) / 196.0
    assert abs(ink_new - ink_orig) / ink_orig < 0.05


def test_unknown_dataset_and_misplaced_data_dir():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="--data-dir is for MNIST"):
        load_dataset("digits", "somewhere")


def test_pool_rejects_odd_sizes():
    with pytest.raises(DataError, match="even"):
        pool_2x2(np.zeros((2, 27, 28), np.uint8))


@pytest.mark.mnist
def test_real_mnist_subset(mnist_dir):
    ds = load_idx_folder(mnist_dir)
    assert ds.x_train.shape == (24000, 14, 14, 1)
    assert ds.x_test.shape == (10000, 14, 14, 1)
    assert np.bincount(ds.y_train, minlength=10).sum() == 24000
    assert np.bincount(ds.y_test, minlength=10).sum() == 10000
    assert (np.bincount(ds.y_test, minlength=10) > 800).all()
    assert ds.x_train.min() == 0.0 and 0.99 <= ds.x_train.max() <= 1.0
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (10000, 28, 28) and raw.dtype == np.uint8
    np.testing.assert_allclose(ds.x_test[:500, ..., 0], reference_pool(raw[:500]), rtol=1e-6,
                               atol=1e-7)
