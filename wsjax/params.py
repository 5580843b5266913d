"""Flattening Flax parameters to one weight vector, and back.

Order (fixed, documented, invertible): the leaves of the parameter pytree in the order of
`jax.tree_util.tree_flatten` (nested dict keys sorted alphabetically, e.g. for the CNN
`Conv_0/kernel`, `Conv_1/kernel`, `Dense_0/kernel`), each leaf raveled in C (row-major) order
and concatenated. This is exactly `jax.flatten_util.ravel_pytree`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from wsjax.errors import ConfigError

__all__ = ["flatten_params", "make_unflatten", "param_layout"]


def flatten_params(params) -> jax.Array:
    """Parameter pytree -> [P] vector. Batched: `jax.vmap(flatten_params)`."""
    return ravel_pytree(params)[0]


def make_unflatten(template) -> Callable[[jax.Array], object]:
    """A function [P] vector -> parameter pytree shaped like `template`.

    Raises ConfigError when a vector of the wrong length is passed to it.
    """
    flat, unravel = ravel_pytree(template)
    size = flat.shape[0]

    def unflatten(vector):
        vector = jnp.asarray(vector)
        if vector.shape != (size,):
            raise ConfigError(
                f"weight vector has shape {tuple(vector.shape)}, this architecture needs ({size},)"
            )
        return unravel(vector.astype(flat.dtype))

    return unflatten


def param_layout(template) -> list[tuple[str, tuple[int, ...], int]]:
    """[(path, shape, offset)] of each leaf in the flattened vector, in order."""
    leaves = jax.tree_util.tree_flatten_with_path(template)[0]
    layout, offset = [], 0
    for path, leaf in leaves:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        shape = tuple(np.shape(leaf))
        layout.append((name, shape, offset))
        offset += int(np.prod(shape))
    return layout
