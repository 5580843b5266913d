"""What a batched training run holds and returns: per-member hyperparameters, member state,
the zoo's result, and the paper's optimizer."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import numpy as np
import optax

__all__ = ["HParams", "MemberState", "ZooResult", "sgd_with_weight_decay", "diverged_epochs"]


@flax.struct.dataclass
class HParams:
    """Numeric hyperparameters that may differ per member (a pytree that can be vmapped).

    Each field is a scalar (shared by all members) or a [members] array. The trainers
    broadcast scalars to one value per member.
    """

    learning_rate: Any = 0.01
    momentum: Any = 0.9
    weight_decay: Any = 0.0


def sgd_with_weight_decay(hp: HParams) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay, as PyTorch's `torch.optim.SGD`.

    The decay term `weight_decay * w` is added to the gradient before momentum.
    """
    return optax.chain(
        optax.add_decayed_weights(hp.weight_decay),
        optax.sgd(hp.learning_rate, momentum=hp.momentum),
    )


@flax.struct.dataclass
class MemberState:
    """Training state of all members; every leaf has a leading [members] axis.

    Attributes:
        params: model parameters.
        opt_state: optimizer state.
        shuffle_key: [members, ...] key data for the per-epoch data order.
    """

    params: Any
    opt_state: Any
    shuffle_key: jax.Array


@dataclasses.dataclass
class ZooResult:
    """Everything a batched training run produces (numpy arrays on the host).

    Attributes:
        snapshots: float32 [S, E+1, P] flattened weights; epoch 0 is the initialisation.
        test_accuracy: float32 [S, E+1].
        test_loss: float32 [S, E+1], mean over test examples of the loss of one example.
        train_loss: float32 [S, E], mean over the epoch's steps of the batch loss.
        diverged_epoch: int32 [S], first epoch whose loss or weights were not finite; -1 if none.
    """

    snapshots: np.ndarray
    test_accuracy: np.ndarray
    test_loss: np.ndarray
    train_loss: np.ndarray
    diverged_epoch: np.ndarray


def diverged_epochs(finite: np.ndarray) -> np.ndarray:
    """First epoch (1-based) whose loss or weights were not finite, per member; -1 if none.

    finite: bool [S, E] -> int32 [S].
    """
    bad = ~np.asarray(finite, bool)
    return np.where(bad.any(axis=1), bad.argmax(axis=1) + 1, -1).astype(np.int32)
