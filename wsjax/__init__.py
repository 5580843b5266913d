"""wsjax: model zoos trained all seeds at once in JAX, and their weight space.

The public API, re-exported from the modules that implement it.
"""

import importlib

# Imported on first use (PEP 562), so that commands that need no JAX (identify, order,
# linkage of weight files) start without importing it.
_EXPORTS = {
    "wsjax.data": ("Dataset", "load_dataset", "load_digits", "load_idx_folder", "load_mnist"),
    "wsjax.errors": ("ConfigError", "DataError", "RunDirError", "WsjaxError"),
    "wsjax.models": ("ARCHS", "CNN", "FFNN", "ArchSpec", "get_arch"),
    "wsjax.params": ("flatten_params", "make_unflatten", "param_layout"),
    "wsjax.store": ("Zoo", "load_zoo"),
    "wsjax.train": ("BatchedTrainer", "HParams", "ZooResult", "mse_sum",
                    "sgd_with_weight_decay", "softmax_cross_entropy"),
    "wsjax.zoo": ("ZooConfig", "run_zoo"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wsjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__version__ = "0.1.0"

__all__ = [
    "ARCHS",
    "CNN",
    "FFNN",
    "ArchSpec",
    "BatchedTrainer",
    "ConfigError",
    "DataError",
    "Dataset",
    "HParams",
    "RunDirError",
    "WsjaxError",
    "Zoo",
    "ZooConfig",
    "ZooResult",
    "flatten_params",
    "get_arch",
    "load_dataset",
    "load_digits",
    "load_idx_folder",
    "load_mnist",
    "load_zoo",
    "make_unflatten",
    "mse_sum",
    "param_layout",
    "run_zoo",
    "sgd_with_weight_decay",
    "softmax_cross_entropy",
]
