"""Trains the tiny zoo of tests/test_faults.py in a child process, for fault injection.

The children are forked from a multiprocessing forkserver that has imported this module
(wsjax, the data, tqdm) but not started JAX, so that each starts quickly and can be killed
(SIGKILL) on its own.
"""

from __future__ import annotations

import os

import tqdm.auto  # noqa: F401  (imported by run_zoo; here once, before the forks)

from wsjax.data import load_digits
from wsjax.zoo import ZooConfig, run_zoo

DIGITS = load_digits()


def train(out: str, fault: str | None, cache_dir: str, config: dict,
          release: str | None = None) -> None:
    """run_zoo(ZooConfig(**config), out) on the digits with WSJAX_FAULT=fault (and
    WSJAX_FAULT_FILE=release for a pause), compiled programs shared through a persistent JAX
    cache in cache_dir."""
    import jax

    if fault:
        os.environ["WSJAX_FAULT"] = fault
    if release:
        os.environ["WSJAX_FAULT_FILE"] = release
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    run_zoo(ZooConfig(**config), out, dataset=DIGITS, progress=False, log=lambda *_: None)
