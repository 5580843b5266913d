"""Shared fixtures. MNIST tests run where WSJAX_MNIST_DIR names an IDX folder, else skip."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Many tests compile the same programs (a fresh trainer per test, a killed run and its resume
# in subprocesses); one compilation cache for the session, shared with those subprocesses
# through the environment, compiles each once. Every session starts with an empty one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="wsjax-tests-xla-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def pytest_configure(config):
    """JAX runs strictly in the tests: an implicit rank promotion (a [n] array silently
    broadcast against [m, n]) is an error, so that shape mistakes fail here."""
    import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    value = os.environ.get("WSJAX_MNIST_DIR", "")
    if not value:
        pytest.skip("WSJAX_MNIST_DIR is not set: no MNIST IDX folder to test on")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"WSJAX_MNIST_DIR={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def digits():
    from wsjax.data import load_digits

    return load_digits()
