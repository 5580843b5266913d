"""Shared fixtures. MNIST tests run where WSJAX_MNIST_DIR names an IDX folder, else skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
