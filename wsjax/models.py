"""The paper's two architectures as Flax modules, and a registry with their training settings.

Both are bias-free by default, so that their flattened weight vectors have exactly the
paper's dimensions: 2,160 (FFNN) and 1,376 (CNN). Kernels use Kaiming (He) normal
initialisation, fan-in, with a plain (untruncated) normal as in PyTorch's `kaiming_normal_`;
`KERNEL_INITS` names the alternatives the reproduction study tries. Biases, where switched on,
start as PyTorch's default for a layer (the paper's models are PyTorch ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax.errors import ConfigError

__all__ = ["FFNN", "CNN", "MLP", "LeNet", "ArchSpec", "ARCHS", "get_arch", "kaiming_normal",
           "KERNEL_INITS"]

kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
KERNEL_INITS = {
    "kaiming_normal": kaiming_normal,
    "kaiming_normal_fan_out": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    # PyTorch's default for a layer whose init is not overridden: kaiming_uniform(a=sqrt(5)),
    # i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    "torch_default": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
}


def _kernel_init(name: str):
    try:
        return KERNEL_INITS[name]
    except KeyError:
        raise ConfigError(f"unknown kernel init {name!r}; choose one of "
                          f"{', '.join(sorted(KERNEL_INITS))}") from None


def torch_bias_init(fan_in: int):
    """PyTorch's default bias init for a layer with `fan_in` inputs: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / fan_in ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features: int, fan_in: int, use_bias: bool, init: str) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=_kernel_init(init),
                    bias_init=torch_bias_init(fan_in))


class FFNN(nn.Module):
    """fc -> sigmoid -> fc -> sigmoid -> fc.

    Input [B, 196] or [B, 14, 14, 1] (flattened); output [B, num_classes] (no softmax).
    """

    hidden: int = 10
    num_classes: int = 10
    use_bias: bool = False
    weight_init: str = "kaiming_normal"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for features in (self.hidden, self.hidden):
            x = nn.sigmoid(_dense(features, x.shape[-1], self.use_bias, self.weight_init)(x))
        return _dense(self.num_classes, x.shape[-1], self.use_bias, self.weight_init)(x)


class CNN(nn.Module):
    """2 x [conv 3x3 stride 2 pad 1 -> max-pool 2x2 -> LeakyReLU(0.01)] -> fc.

    Input [B, 14, 14, 1]; 14 -> 7 -> (pool) 3 -> 2 -> (pool) 1; output [B, num_classes].
    With pool_ceil, the pools keep the odd edge as PyTorch's ceil_mode does
    (14 -> 7 -> 4 -> 2 -> 1, the same parameters).
    """

    channels: tuple[int, int] = (16, 8)
    num_classes: int = 10
    use_bias: bool = False
    negative_slope: float = 0.01
    weight_init: str = "kaiming_normal"
    pool_ceil: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for c in self.channels:
            x = nn.Conv(c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        use_bias=self.use_bias, kernel_init=_kernel_init(self.weight_init),
                        bias_init=torch_bias_init(9 * x.shape[-1]))(x)
            pad = [(0, d % 2 if self.pool_ceil else 0) for d in x.shape[1:3]]
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=pad)
            x = nn.leaky_relu(x, self.negative_slope)
        x = x.reshape((x.shape[0], -1))
        return _dense(self.num_classes, x.shape[-1], self.use_bias, self.weight_init)(x)


class MLP(nn.Module):
    """A model a user might bring: dense 196 -> 64 -> 64 -> 10 with biases and ReLU (Flax
    defaults). Used by the benchmarks and tests of the training core's general path."""

    features: tuple[int, ...] = (64, 64)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for f in self.features:
            x = nn.relu(nn.Dense(f)(x))
        return nn.Dense(self.num_classes)(x)


class LeNet(nn.Module):
    """LeNet-5 style, for 28x28x1 inputs: conv 5x5 6 (same), max-pool 2, conv 5x5 16 (valid),
    max-pool 2, dense 120 -> 84 -> 10, biases and ReLU. Used by the benchmarks and tests of the
    training core's general path."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.max_pool(nn.relu(nn.Conv(6, (5, 5), padding="SAME")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """A registered architecture and the paper's training settings for it (Table 1).

    Attributes:
        name: registry key.
        make_module: builds the Flax module; keyword arguments go to the module.
        input_shape: shape of one input example.
        num_params: length of the flattened weight vector of the default (bias-free) module.
        learning_rate, momentum, weight_decay, batch_size: the paper's SGD settings.
    """

    name: str
    make_module: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_params: int
    learning_rate: float
    momentum: float
    weight_decay: float
    batch_size: int


ARCHS: dict[str, ArchSpec] = {
    "ffnn": ArchSpec("ffnn", FFNN, (196,), 2160, 0.03, 0.9, 0.0003, 4),
    "cnn": ArchSpec("cnn", CNN, (14, 14, 1), 1376, 0.0003, 0.9, 0.1, 12),
}


def get_arch(name: str) -> ArchSpec:
    """The registered architecture `name`, or a ConfigError that lists the choices."""
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHS))}"
        ) from None


def example_input(spec: ArchSpec, batch: int = 1) -> jax.Array:
    """Zeros of shape [batch, *spec.input_shape], for module.init."""
    return jnp.zeros((batch, *spec.input_shape), jnp.float32)
