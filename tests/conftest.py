"""Shared fixtures. MNIST tests run where WSJAX_MNIST_DIR names an IDX folder, else skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
