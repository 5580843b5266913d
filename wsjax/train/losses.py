"""Losses of outputs [B, C] against integer labels [B], and accuracy."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from wsjax.errors import ConfigError

__all__ = ["LOSSES", "get_loss", "mse_sum", "mse_mean", "mse_batch_mean",
           "softmax_cross_entropy", "accuracy"]

Array = jax.Array


def _one_hot(labels: Array, num_classes: int) -> Array:
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def mse_sum(outputs: Array, labels: Array) -> Array:
    """MSE against one-hot targets, summed over batch and classes (PyTorch reduction='sum').

    outputs [B, C], labels [B] int -> scalar.
    """
    return jnp.sum((outputs - _one_hot(labels, outputs.shape[-1])) ** 2)


def mse_mean(outputs: Array, labels: Array) -> Array:
    """MSE against one-hot targets, averaged over batch and classes (reduction='mean')."""
    return jnp.mean((outputs - _one_hot(labels, outputs.shape[-1])) ** 2)


def mse_batch_mean(outputs: Array, labels: Array) -> Array:
    """MSE summed over classes and averaged over the batch."""
    return jnp.mean(jnp.sum((outputs - _one_hot(labels, outputs.shape[-1])) ** 2, axis=-1))


def softmax_cross_entropy(outputs: Array, labels: Array) -> Array:
    """Cross-entropy of logits [B, C] against integer labels [B], averaged over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()


LOSSES: dict[str, Callable[[Array, Array], Array]] = {
    "sum": mse_sum,
    "mean": mse_mean,
    "batch_mean": mse_batch_mean,
}


def get_loss(name: str) -> Callable[[Array, Array], Array]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(
            f"unknown loss reduction {name!r}; choose one of {', '.join(LOSSES)}"
        ) from None


def accuracy(outputs: Array, labels: Array) -> Array:
    """Fraction of argmax(outputs) == labels. outputs [B, C], labels [B] -> scalar."""
    return jnp.mean(jnp.argmax(outputs, -1) == labels)
