"""Batched training of model zoos: the training core and what it is made of.

- `core`: `BatchedTrainer` (the core, any Flax model) and `PlainTrainer` (the reference);
- `state`: hyperparameters, member state, results, the paper's optimizer;
- `losses`: losses and accuracy;
- `orders`: per-member data orders, drawn on the host one epoch ahead;
- `blocks`: members in blocks, devices, compile options;
- `lowering`: layers rewritten into the form that batches well over members;
- `kernels`: hand-written kernels of the paper's two models.
"""

from wsjax.train.core import BatchedTrainer, EpochMetrics, GeneralStep, PlainTrainer
from wsjax.train.losses import (
    LOSSES,
    accuracy,
    get_loss,
    mse_batch_mean,
    mse_mean,
    mse_sum,
    softmax_cross_entropy,
)
from wsjax.train.lowering import lower
from wsjax.train.orders import epoch_key, permutations
from wsjax.train.state import (
    HParams,
    MemberState,
    ZooResult,
    diverged_epochs,
    kernel_mask,
    make_sgd,
    sgd_with_weight_decay,
)

__all__ = [
    "LOSSES",
    "BatchedTrainer",
    "EpochMetrics",
    "GeneralStep",
    "HParams",
    "MemberState",
    "PlainTrainer",
    "ZooResult",
    "accuracy",
    "diverged_epochs",
    "epoch_key",
    "get_loss",
    "kernel_mask",
    "lower",
    "make_sgd",
    "mse_batch_mean",
    "mse_mean",
    "mse_sum",
    "permutations",
    "sgd_with_weight_decay",
    "softmax_cross_entropy",
]
