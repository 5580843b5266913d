"""wsjax: model zoos trained all seeds at once in JAX, and their weight space.

The public API, re-exported from the modules that implement it.
"""

from wsjax.data import Dataset, load_dataset, load_digits, load_idx_folder, load_mnist
from wsjax.errors import ConfigError, DataError, RunDirError, WsjaxError
from wsjax.models import ARCHS, CNN, FFNN, ArchSpec, get_arch
from wsjax.params import flatten_params, make_unflatten, param_layout
from wsjax.store import Zoo, load_zoo
from wsjax.train import (
    BatchedTrainer,
    HParams,
    ZooResult,
    mse_sum,
    sgd_with_weight_decay,
    softmax_cross_entropy,
)
from wsjax.zoo import ZooConfig, run_zoo

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
