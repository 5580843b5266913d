"""What a batched training run holds and returns: per-member hyperparameters, member state,
the zoo's result, and the paper's optimizer."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import numpy as np
import optax

__all__ = ["HParams", "MemberState", "ZooResult", "sgd_with_weight_decay", "make_sgd",
           "diverged_epochs"]


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


def _is_kernel(path, _leaf) -> bool:
    return getattr(path[-1], "key", "") == "kernel"


def make_sgd(decay: str = "all", coupling: str = "coupled"):
    """SGD with momentum and weight decay, HParams -> transformation; the paper's optimizer
    (`sgd_with_weight_decay`) for the defaults.

    decay: "all" parameters or "kernels" only. coupling: "coupled" adds wd * w to the gradient
    before momentum (PyTorch's SGD); "decoupled" subtracts lr * wd * w after the momentum step,
    so the decay is not amplified by momentum.
    """
    if decay not in ("all", "kernels") or coupling not in ("coupled", "decoupled"):
        raise ValueError(f"unknown weight decay {decay!r}/{coupling!r}: decay is 'all' or "
                         "'kernels', coupling 'coupled' or 'decoupled'")
    if (decay, coupling) == ("all", "coupled"):
        return sgd_with_weight_decay

    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: decay == "all" or _is_kernel(path, leaf), params)

    def build(hp: HParams) -> optax.GradientTransformation:
        if coupling == "coupled":
            return optax.chain(optax.add_decayed_weights(hp.weight_decay, mask=mask),
                               optax.sgd(hp.learning_rate, momentum=hp.momentum))
        return optax.chain(optax.sgd(hp.learning_rate, momentum=hp.momentum),
                           optax.add_decayed_weights(-hp.learning_rate * hp.weight_decay,
                                                     mask=mask))

    return build


def kernel_mask(params) -> np.ndarray:
    """bool [P]: which entries of the flattened params (ravel_pytree order) are kernels."""
    from jax.flatten_util import ravel_pytree

    marks = jax.tree_util.tree_map_with_path(
        lambda path, leaf: np.full(np.shape(leaf), _is_kernel(path, leaf)), params)
    return np.asarray(ravel_pytree(marks)[0]).astype(bool)


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
