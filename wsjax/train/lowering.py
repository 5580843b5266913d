"""Layers rewritten into the form that batches well over the members of a zoo.

A zoo trains a per-member function `vmap`-ed over members. Under `vmap` a convolution whose
input and kernel both carry the member axis becomes a grouped convolution, one group per
member, and max pooling's derivative becomes a scatter: both run slowly on XLA's CPU backend.
`lower(fn)` evaluates `fn` with a few primitives replaced by equivalent programs of slices,
elementwise operations and matrix products, which `vmap` turns into batched matrix products and
fused loops:

- `conv_general_dilated` (any stride, padding, kernel dilation, layout): the input's windows
  (strided slices of the padded input) times the kernel as a matrix;
- `reduce_window_max` (max pooling): the maximum over the window's strided slices, taken
  first-maximum-wins so that its derivative goes where JAX's own does;
- `reduce_window_sum` (average and sum pooling): the sum of the window's strided slices;
- `dot_general` of a small per-member matrix (`SMALL_DENSE`): broadcast products and a
  reduction, which XLA fuses into one loop, where a batched product of tiny matrices would
  call the matrix library once per member.

Everything else, and anything not covered (grouped or input-dilated convolutions, windows
over the batch axis), is evaluated as it is. Gradients come from JAX's own differentiation of
the rewritten program, so `jax.grad(lower(f))` is the derivative of `f` up to float32
rounding. `lower` works on any JAX function, a Flax module's `apply` among them: it traces
`fn` once per input shape and rewrites the traced program.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex

__all__ = ["lower", "LOWERED_PRIMITIVES", "SMALL_DENSE"]

# A weight matrix with at most this many entries counts as small: its product with a batch is
# done as elementwise products and a sum.
SMALL_DENSE = 256


def lower(fn: Callable) -> Callable:
    """`fn` with its convolutions, pooling windows and small matrix products rewritten (see the
    module docstring); same signature, same results to float32 rounding."""

    @functools.wraps(fn)
    def lowered(*args, **kwargs):
        flat, tree = jax.tree.flatten((args, kwargs))
        specs = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in flat]
        closed, out_shape = jax.make_jaxpr(
            lambda *leaves: fn(*jax.tree.unflatten(tree, leaves)[0],
                               **jax.tree.unflatten(tree, leaves)[1]),
            return_shape=True)(*specs)
        outs = _evaluate(closed.jaxpr, closed.consts, flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return lowered


def _evaluate(jaxpr, consts, args) -> list:
    env = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    for var, value in itertools.chain(zip(jaxpr.constvars, consts, strict=True),
                                      zip(jaxpr.invars, args, strict=True)):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        outs = None
        if name in _RULES:
            outs = _RULES[name](*invals, **eqn.params)
        elif name in ("pjit", "jit"):
            inner = eqn.params["jaxpr"]
            outs = _evaluate(inner.jaxpr, inner.consts, invals)
        if outs is None:  # no rule, or a case the rule does not cover
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for var, value in zip(eqn.outvars, outs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _window_slices(x, window, strides, padding, dilation, pad_value):
    """The strided slices of padded `x` that a window op combines, one per window tap, in
    row-major tap order, each of the output's shape. `padding`: (low, high) per axis."""
    x = lax.pad(x, jnp.asarray(pad_value, x.dtype), [(lo, hi, 0) for lo, hi in padding])
    out_shape = [(n - ((w - 1) * d + 1)) // s + 1
                 for n, w, s, d in zip(x.shape, window, strides, dilation, strict=True)]
    slices = []
    for tap in itertools.product(*(range(w) for w in window)):
        start = [t * d for t, d in zip(tap, dilation, strict=True)]
        limit = [b + (o - 1) * s + 1 for b, o, s in zip(start, out_shape, strides, strict=True)]
        slices.append(lax.slice(x, start, limit, strides))
    return slices


def _patches(x, window, strides, padding, dilation):
    """x [N, *spatial, C] -> its windows [N, *out, T * C], taps row-major, channels minor."""
    taps = _window_slices(x, (1, *window, 1), (1, *strides, 1), [(0, 0), *padding, (0, 0)],
                          (1, *dilation, 1), 0)
    return jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_nhwc(x, w, strides, padding, dilation, precision):
    """Convolution of x [N, *spatial, C] with w [*k, C, O] -> [N, *out, O], as windows times
    the kernel matrix."""
    return _conv_nhwc_fwd(x, w, strides, padding, dilation, precision)[0]


def _conv_nhwc_fwd(x, w, strides, padding, dilation, precision):
    patches = _patches(x, w.shape[:-2], strides, padding, dilation)
    out = jnp.tensordot(patches, w.reshape(-1, w.shape[-1]), 1, precision=precision)
    return out, (patches, x.shape, w)


def _conv_nhwc_bwd(strides, padding, dilation, precision, res, d_out):
    patches, x_shape, w = res
    lead = tuple(range(d_out.ndim - 1))
    d_w = jnp.tensordot(patches, d_out, (lead, lead), precision=precision).reshape(w.shape)
    # the input's gradient is a stride-1 convolution of d_out, dilated by the strides and
    # padded, with the kernel flipped and its channel axes swapped (no scatter of windows)
    spatial = w.ndim - 2
    pads = [(0, 0, 0)]
    for i in range(spatial):
        reach = dilation[i] * (w.shape[i] - 1)
        low = reach - padding[i][0]
        dilated = strides[i] * (d_out.shape[1 + i] - 1) + 1
        pads.append((low, x_shape[1 + i] + reach - low - dilated, strides[i] - 1))
    pads.append((0, 0, 0))
    d_pad = lax.pad(d_out, jnp.zeros((), d_out.dtype), pads)
    flipped = jnp.swapaxes(lax.rev(w, tuple(range(spatial))), -1, -2)   # [*k, O, C]
    d_x = jnp.tensordot(_patches(d_pad, w.shape[:-2], (1,) * spatial, [(0, 0)] * spatial,
                                 dilation),
                        flipped.reshape(-1, flipped.shape[-1]), 1, precision=precision)
    return d_x, d_w


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def _conv(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count, precision, preferred_element_type, **_):
    if (feature_group_count != 1 or batch_group_count != 1 or any(d != 1 for d in lhs_dilation)
            or any(lo < 0 or hi < 0 for lo, hi in padding)
            or (preferred_element_type is not None and preferred_element_type != lhs.dtype)
            or lhs.dtype != rhs.dtype or not jnp.issubdtype(lhs.dtype, jnp.floating)):
        return None
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    spatial = len(lhs_spec) - 2
    x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))     # [N, *sp, C]
    w = jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))     # [*k, C, O]
    out = _conv_nhwc(x, w, tuple(window_strides), tuple(map(tuple, padding)),
                     tuple(rhs_dilation), precision)                      # [N, *out, O]
    # our axes are (batch, spatial..., feature): spec entries 0, 2.., 1
    perm = [0] * out.ndim
    for ours, spec_index in enumerate((0, *range(2, spatial + 2), 1)):
        perm[out_spec[spec_index]] = ours
    return jnp.transpose(out, perm)


def _tiled(operand, window, strides, padding, pad_value):
    """Where windows tile the padded operand (stride = window, no dilation): the operand
    padded and cut to whole windows, reshaped to [..., out_i, window_i, ...], and the axes of
    the window taps. None where they do not."""
    if any(s != w for s, w in zip(strides, window, strict=True)):
        return None
    x = lax.pad(operand, jnp.asarray(pad_value, operand.dtype),
                [(lo, hi, 0) for lo, hi in padding])
    outs = [n // w for n, w in zip(x.shape, window, strict=True)]
    x = lax.slice(x, [0] * x.ndim, [o * w for o, w in zip(outs, window, strict=True)])
    shape, axes = [], []
    for o, w in zip(outs, window, strict=True):
        shape.append(o)
        if w > 1:
            axes.append(len(shape))
            shape.append(w)
    return x.reshape(shape), tuple(axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _tiled_max(tiles, axes, first_tap):
    """Max of `tiles` over its window `axes`; the gradient goes to the first maximum in
    row-major tap order (`first_tap`: the taps' row-major numbers), as in JAX's derivative
    of reduce_window_max."""
    return jnp.max(tiles, axis=axes)


def _tiled_max_fwd(tiles, axes, first_tap):
    out = jnp.max(tiles, axis=axes)
    return out, (tiles, out)


def _tiled_max_bwd(axes, first_tap, res, g):
    tiles, out = res
    tap = np.asarray(first_tap).reshape([tiles.shape[a] if a in axes else 1
                                         for a in range(tiles.ndim)])
    big = np.iinfo(np.int32).max
    hit = jnp.expand_dims(out, axes) == tiles
    first = jnp.min(jnp.where(hit, tap, big), axis=axes, keepdims=True)
    return (jnp.where(tap == first, jnp.expand_dims(g, axes), 0).astype(tiles.dtype),)


_tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


def _pool_max(operand, *, window_dimensions, window_strides, padding, base_dilation,
              window_dilation):
    if (any(d != 1 for d in (*base_dilation, *window_dilation))
            or not jnp.issubdtype(operand.dtype, jnp.floating)):
        return None
    tiled = _tiled(operand, window_dimensions, window_strides, padding, -jnp.inf)
    if tiled is not None:
        tiles, axes = tiled
        taps = [tiles.shape[a] for a in axes]
        return _tiled_max(tiles, axes, tuple(range(int(np.prod(taps)))))
    taps = _window_slices(operand, window_dimensions, window_strides, padding,
                          window_dilation, -jnp.inf)
    best = taps[0]
    for v in taps[1:]:
        # strictly greater: the first maximum in row-major order keeps the gradient, as in
        # JAX's derivative of reduce_window_max; a NaN is passed on as max passes it on
        best = jnp.where((v > best) | jnp.isnan(v), v, best)
    return best


def _pool_sum(operand, *, window_dimensions, window_strides, padding, base_dilation,
              window_dilation):
    if any(d != 1 for d in (*base_dilation, *window_dilation)):
        return None
    tiled = _tiled(operand, window_dimensions, window_strides, padding, 0)
    if tiled is not None:
        tiles, axes = tiled
        return jnp.sum(tiles, axis=axes)
    taps = _window_slices(operand, window_dimensions, window_strides, padding,
                          window_dilation, 0)
    return functools.reduce(jnp.add, taps)


def _dot(lhs, rhs, *, dimension_numbers, precision, preferred_element_type, **params):
    """x [..., I] times a small matrix w [I, O] as sum(x[..., I, None] * w, -2)."""
    (lc, rc), (lb, rb) = dimension_numbers
    if (lb or rb or len(lc) != 1 or rhs.ndim != 2 or lc[0] != lhs.ndim - 1
            or rhs.size > SMALL_DENSE or params.get("out_sharding") is not None
            or not jnp.issubdtype(lhs.dtype, jnp.floating)):
        return None
    w = rhs if rc[0] == 0 else rhs.T
    dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    prod = lhs[..., :, None].astype(dtype) * w.astype(dtype)
    return jnp.sum(prod, axis=-2)


_RULES = {
    "conv_general_dilated": _conv,
    "reduce_window_max": _pool_max,
    "reduce_window_sum": _pool_sum,
    "dot_general": _dot,
}

LOWERED_PRIMITIVES = tuple(_RULES)
