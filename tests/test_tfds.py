"""MNIST through TensorFlow Datasets: the install, the one-line failures, and the download path
end to end against a local HTTP server (no internet needed).

The end-to-end test needs the `tfds` extra (TensorFlow) and skips without it: `make test-online`.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import os
import socket
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from wsjax import data
from wsjax.data import DataError, load_dataset, load_idx_folder, load_tfds_mnist, read_idx

tfds = pytest.importorskip("tensorflow_datasets")
needs_tensorflow = pytest.mark.skipif(
    find_spec("tensorflow") is None, reason="TensorFlow is not installed (the tfds extra)")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tfds_extra_declares_what_preparation_imports():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["tfds"]
    declared = {req.split(">")[0].split("=")[0].split("[")[0].strip() for req in extra}
    assert set(data.TFDS_PREPARE_MODULES) <= declared


@needs_tensorflow
def test_tfds_prepare_modules_import():
    for module in data.TFDS_PREPARE_MODULES:
        importlib.import_module(module)
    # What tensorflow-datasets uses of importlib_resources while preparing.
    assert importlib.import_module("importlib_resources.abc").Traversable


def test_without_tensorflow_the_line_names_the_install_and_the_offline_ways(
        tmp_path, monkeypatch):
    # Where TensorFlow is installed, wsjax is made to find no trace of it.
    monkeypatch.setattr(data, "find_spec",
                        lambda name: None if name == "tensorflow" else find_spec(name))
    with pytest.raises(DataError) as error:
        load_tfds_mnist(str(tmp_path))
    message = one_line(error)
    assert "needs tensorflow" in message and 'pip install -e ".[tfds]"' in message
    assert "--data-dir DIR" in message and "--dataset digits" in message


def test_offline_the_same_line_comes_at_once_without_download_attempts(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_missing_prepare_modules", lambda: [])  # as if installed
    monkeypatch.setattr(tfds.image_classification.MNIST, "URL",
                        f"http://127.0.0.1:{closed_port()}/mnist/")
    with pytest.raises(DataError) as error:
        load_tfds_mnist(str(tmp_path))
    message = one_line(error)
    assert "no internet to download it" in message and "train-labels-idx1-ubyte.gz" in message
    assert "--data-dir DIR" in message and "--dataset digits" in message
    assert not (tmp_path / "downloads").exists()


def test_a_server_that_never_answers_is_given_up_after_the_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections queue, nobody answers
        start = time.monotonic()
        why = data._unreachable(f"http://127.0.0.1:{silent.getsockname()[1]}/x", 0.5)
        elapsed = time.monotonic() - start
    assert why is not None and elapsed < 2.0


def test_tfds_path_with_mock_data(monkeypatch):
    # mock_data makes preparation a no-op; the builder is told so too, so nothing is fetched.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=24):
        ds = load_tfds_mnist()
    assert ds.source == "tfds"
    assert ds.x_train.shape == (24, 14, 14, 1) and ds.x_test.shape == (24, 14, 14, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert set(np.unique(ds.y_train)) <= set(range(10))


N_TRAIN, N_TEST = 40, 16


def write_served_mnist(folder: Path) -> None:
    """The four gzipped IDX files TFDS downloads: the first images of the real MNIST subset
    where WSJAX_MNIST_DIR names it, else random images."""
    real = os.environ.get("WSJAX_MNIST_DIR", "")
    rng = np.random.default_rng(0)
    for key, stem in data.IDX_FILES.items():
        n = N_TRAIN if key.startswith("train") else N_TEST
        if real and Path(real).is_dir():
            array = read_idx(Path(real) / f"{stem}.gz")[:n]
        elif key.endswith("images"):
            array = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        else:
            array = rng.integers(0, 10, n, dtype=np.uint8)
        data.write_idx(folder / f"{stem}.gz", array, gz=True)


def sorted_examples(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The examples in a canonical order: by label, then by pixels."""
    flat = x.reshape(len(x), -1)
    order = np.lexsort(np.column_stack([flat, y]).T)
    return x[order], y[order]


@pytest.fixture
def mnist_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving MNIST IDX files; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    write_served_mnist(folder)
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                 {"log_message": lambda *args: None})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_any_http_answer_counts_as_reachable(mnist_server):
    _, url = mnist_server
    assert data._unreachable(url + "train-labels-idx1-ubyte.gz", 2.0) is None
    assert data._unreachable(url + "not-there.gz", 2.0) is None  # 404: the network works


@pytest.mark.slow
@needs_tensorflow
def test_tfds_downloads_prepares_and_reads_mnist_from_a_local_server(
        tmp_path, monkeypatch, mnist_server):
    folder, url = mnist_server
    mnist = importlib.import_module("tensorflow_datasets.image_classification.mnist")
    # TFDS's MNIST builder downloads from its URL and reads a fixed count of images per split.
    monkeypatch.setattr(mnist.MNIST, "URL", url)
    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", N_TRAIN)
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", N_TEST)
    # TFDS's default data folder, as a user without TFDS_DATA_DIR gets it.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1")

    ds = load_dataset("mnist")
    reference = load_idx_folder(folder)
    assert ds.source == "tfds"
    assert ds.x_train.shape == (N_TRAIN, 14, 14, 1) and ds.x_test.shape == (N_TEST, 14, 14, 1)
    assert ds.y_train.shape == (N_TRAIN,) and ds.y_train.dtype == np.int32
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
    # TFDS stores the examples in an order of its own: the same examples, compared as sets.
    for split in ("train", "test"):
        x, y = sorted_examples(getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}"))
        x_ref, y_ref = sorted_examples(getattr(reference, f"x_{split}"),
                                       getattr(reference, f"y_{split}"))
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)

    # Prepared once, it is read again without the network, in the same order.
    monkeypatch.setattr(mnist.MNIST, "URL", f"http://127.0.0.1:{closed_port()}/")
    again = load_dataset("mnist")
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)
