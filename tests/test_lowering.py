"""Lowered layers (wsjax.train.lowering) against the plain Flax layers and JAX's derivatives."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsjax.train.lowering import lower

TOL = dict(rtol=2e-5, atol=2e-5)


def _check(module, x, lowered_away=("conv_general_dilated", "reduce_window")):
    """Outputs and gradients (w.r.t. parameters and input) of `module` equal with and without
    lowering, vmapped over 3 members; the lowered program has none of `lowered_away`."""
    keys = jax.random.split(jax.random.key(0), 3)
    params = jax.vmap(lambda k: module.init(k, x[0]))(keys)

    def f(p, xi):
        return module.apply(p, xi)

    def loss(fn):
        return lambda p, xi: jnp.sum(jnp.sin(fn(p, xi)))

    # compiled, one program per side: faster than dispatching the lowered program op by op
    def outputs_and_grads(fn):
        return jax.jit(lambda p, xs: (jax.vmap(fn)(p, xs), jax.vmap(
            jax.grad(loss(fn), argnums=(0, 1)))(p, xs)))(params, x)

    want, got = outputs_and_grads(f), outputs_and_grads(lower(f))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), **TOL)
    names = {e.primitive.name for e in jax.make_jaxpr(lower(f))(
        jax.tree.map(lambda a: a[0], params), x[0]).jaxpr.eqns}
    assert not any(n.startswith(away) for n in names for away in lowered_away), names


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("strides,padding,kernel,dilation", [
    ((1, 1), "SAME", (3, 3), 1),
    ((2, 2), ((1, 1), (1, 1)), (3, 3), 1),
    ((2, 1), "VALID", (5, 3), 1),
    ((1, 1), ((2, 0), (0, 1)), (3, 2), 2),
    ((3, 3), "SAME", (4, 4), 1),
])
def test_conv_equals_flax_conv(bias, strides, padding, kernel, dilation):
    module = nn.Conv(4, kernel, strides=strides, padding=padding, use_bias=bias,
                     kernel_dilation=dilation)
    x = jax.random.normal(jax.random.key(1), (3, 2, 11, 9, 3))
    _check(module, x)


def test_conv_1d_and_channels_first_layouts():
    x = jax.random.normal(jax.random.key(2), (3, 2, 13, 3))
    _check(nn.Conv(5, (4,), strides=(2,), padding="SAME"), x)

    class ChannelsFirst(nn.Module):
        @nn.compact
        def __call__(self, x):                                          # [B, C, H, W]
            w = self.param("w", nn.initializers.normal(), (6, x.shape[1], 3, 3))
            return jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (0, 1)),
                                                dimension_numbers=("NCHW", "OIHW", "NCHW"))

    _check(ChannelsFirst(), jax.random.normal(jax.random.key(3), (3, 2, 3, 10, 8)))


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (2, 2), "VALID"),       # windows tile the input (odd size: the rest dropped)
    ((3, 3), (2, 2), "SAME"),        # overlapping windows
    ((2, 3), (1, 2), "VALID"),
    ((2, 2), (2, 2), ((1, 0), (0, 1))),
])
def test_pooling_equals_flax_pooling(pool, window, strides, padding):
    fn = nn.max_pool if pool == "max" else nn.avg_pool

    class Pool(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(3, (1, 1))(x)
            return fn(x, window, strides, padding)

    _check(Pool(), jax.random.normal(jax.random.key(4), (3, 2, 9, 7, 2)))


def test_max_pool_gradient_goes_to_the_first_of_tied_maxima():
    """Tied maxima (zeros of a ReLU, equal inputs): the gradient goes where JAX's own
    derivative of max pooling sends it, the first maximum in row-major order."""
    x = jnp.asarray(np.repeat(np.repeat(np.arange(4.0).reshape(1, 2, 2, 1), 2, 1), 2, 2))

    def f(x):
        return jnp.sum(nn.max_pool(x, (2, 2), (2, 2)) * jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1))

    np.testing.assert_array_equal(np.asarray(jax.grad(lower(f))(x)), np.asarray(jax.grad(f)(x)))
    assert float(jnp.sum(jax.grad(lower(f))(x) != 0)) == 4  # one tap per window


def test_nan_passes_through_lowered_max_pool():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 1, 1, 0].set(jnp.nan)
    out = lower(lambda x: nn.max_pool(x, (2, 2), (2, 2)))(x)
    assert np.isnan(np.asarray(out)[0, 0, 0, 0]) and np.isfinite(np.asarray(out)[0, 1, 1, 0])


@pytest.mark.parametrize("features,bias", [(3, True), (40, False)])
def test_dense_and_activations_equal_flax(features, bias):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(features, use_bias=bias)(x)
            x = nn.gelu(nn.sigmoid(nn.tanh(nn.relu(x)) + nn.leaky_relu(x)))
            return nn.Dense(2)(nn.elu(x) + nn.softplus(x) + nn.silu(x))

    _check(Net(), jax.random.normal(jax.random.key(5), (3, 4, 7)), lowered_away=())


def test_paper_models_lower_to_no_convolution_or_window():
    from wsjax.models import CNN, FFNN, LeNet

    _check(CNN(), jax.random.uniform(jax.random.key(6), (3, 2, 14, 14, 1)))
    _check(CNN(use_bias=True, pool_ceil=True),
           jax.random.uniform(jax.random.key(7), (3, 2, 14, 14, 1)))
    _check(FFNN(), jax.random.uniform(jax.random.key(8), (3, 2, 196)))
    # LeNet's numbers are checked through training in tests/test_core.py; here its program
    lenet, x = LeNet(), jnp.zeros((2, 28, 28, 1))
    params = lenet.init(jax.random.key(9), x)
    names = {e.primitive.name for e in jax.make_jaxpr(
        jax.grad(lambda p: jnp.sum(lower(lenet.apply)(p, x))))(params).jaxpr.eqns}
    assert not any("conv" in n or "reduce_window" in n or "select_and" in n for n in names)


@pytest.mark.parametrize("strides,padding,dilation", [
    ((1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((2, 3), ((0, 2), (1, 0)), (2, 1)),
    ((3, 2), ((2, 2), (0, 0)), (1, 2)),
])
@pytest.mark.parametrize("form", ["_conv_nhwc", "_conv_taps"])
def test_convolution_vjp_equals_jax_derivative(strides, padding, dilation, form):
    """Both forms' custom VJPs against JAX's derivative of lax.conv_general_dilated, on any
    map size: the small-map form (input gradient as a convolution of the dilated output
    gradient) and the large-map form (channel-major tap windows, their gradient a sum of
    pads)."""
    from wsjax.train import lowering

    conv = getattr(lowering, form)

    x = jax.random.normal(jax.random.key(10), (2, 7, 6, 3))
    w = jax.random.normal(jax.random.key(11), (3, 2, 3, 4))

    def reference(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def ours(x, w):
        return conv(x, w, strides, padding, dilation, None)

    np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(reference(x, w)), **TOL)
    got = jax.grad(lambda *v: jnp.sum(jnp.sin(ours(*v))), argnums=(0, 1))(x, w)
    want = jax.grad(lambda *v: jnp.sum(jnp.sin(reference(*v))), argnums=(0, 1))(x, w)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), **TOL)


class _ConvPool(nn.Module):
    """conv 3x3 (7x7 map) -> bias, leaky ReLU -> 2x2 max pool that drops the last row and
    column; with `also_sum`, the mean of the conv's whole output is added as well."""
    also_sum: bool = False

    @nn.compact
    def __call__(self, x):
        y = nn.leaky_relu(nn.Conv(4, (3, 3), padding="SAME")(x), 0.1)
        out = nn.max_pool(y, (2, 2), (2, 2)).reshape(-1)
        return out + jnp.mean(y) if self.also_sum else out


@pytest.mark.parametrize("also_sum", [False, True])
def test_conv_outputs_a_pool_drops_are_cut_only_when_nothing_else_reads_them(also_sum):
    from wsjax.train.lowering import _needed_regions

    module = _ConvPool(also_sum)
    x = jax.random.normal(jax.random.key(12), (3, 2, 7, 7, 1))
    _check(module, x)
    params = module.init(jax.random.key(0), x[0])
    jaxpr = jax.make_jaxpr(module.apply)(params, x[0]).jaxpr
    conv = next(e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated")
    box = _needed_regions(jaxpr).get(conv.outvars[0])
    assert box == (None if also_sum else ((0, 2), (0, 6), (0, 6), (0, 4)))


def test_conv_whose_kept_outputs_read_only_padding_is_computed_whole():
    """A pool that keeps outputs of a conv whose low padding exceeds its kernel: the kept
    outputs read no input row to cut, so the conv is computed whole. The reference pads
    explicitly and convolves VALID (XLA's own gradient of such a padded convolution is not
    reliable on the CPU)."""

    def model(padded):
        class PadHeavy(nn.Module):
            @nn.compact
            def __call__(self, x):
                if padded:
                    x = jnp.pad(x, ((0, 0), (3, 0), (3, 0), (0, 0)))
                y = nn.Conv(2, (2, 2), padding="VALID" if padded else ((3, 0), (3, 0)))(x)
                return nn.max_pool(y, (1, 1), (7, 7)).reshape(-1)           # row 0 only
        return PadHeavy()

    x = jax.random.normal(jax.random.key(13), (2, 5, 5, 1))
    params = model(False).init(jax.random.key(0), x)

    def value_and_grads(fn):
        return jax.value_and_grad(lambda p, v: jnp.sum(jnp.sin(fn(p, v))), argnums=(0, 1))(
            params, x)

    want = value_and_grads(model(True).apply)
    got = value_and_grads(lower(model(False).apply))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), **TOL)
