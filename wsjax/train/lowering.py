"""Layers rewritten into the form that batches well over the members of a zoo.

A zoo trains a per-member function `vmap`-ed over members. Under `vmap` a convolution whose
input and kernel both carry the member axis becomes a grouped convolution, one group per
member, and max pooling's derivative becomes a scatter: both run slowly on XLA's CPU backend.
`lower(fn)` evaluates `fn` with a few primitives replaced by equivalent programs of slices,
elementwise operations and matrix products, which `vmap` turns into batched matrix products and
fused loops:

- `conv_general_dilated` (any stride, padding, kernel dilation, layout): the input's windows
  (strided slices) times the kernel as a matrix. On small output maps (under `LARGE_MAP`
  positions) the windows are cut channels-minor and the input gradient is a convolution of
  the dilated output gradient (a custom VJP); on larger ones the windows are cut
  channel-major, one whole slice per tap, every product of the step has a form the CPU's
  matrix library accepts, and the input gradient is the taps' pads summed once (custom
  VJPs). Output positions that nothing reads (the last row and column of an odd map before
  a 2 x 2 pool, `_needed_regions`) are not computed;
- `reduce_window_max` (max pooling): where the windows tile the input, a reshape and a max,
  the gradient sent to the first maximum of each window in row-major order, as JAX's own
  derivative does (a custom VJP of one select per tap); elsewhere the maximum over the
  window's strided slices, first maximum winning;
- `reduce_window_sum` (average and sum pooling): a reshape and a sum, or the sum of the
  window's strided slices;
- `dot_general` of a per-member matrix: a small one (`SMALL_DENSE`) as broadcast products and
  a reduction, which XLA fuses into one loop; a larger one as a product whose weight gradient
  takes a materialized x^T (`matmul`), which the CPU's matrix library accepts.

Everything else, and anything not covered (grouped or input-dilated convolutions, windows
over the batch axis), is evaluated as it is. Gradients come from JAX's own differentiation of
the rewritten program, so `jax.grad(lower(f))` is the derivative of `f` up to float32
rounding. `lower` works on any JAX function, a Flax module's `apply` among them: it traces
`fn` once per input shape and rewrites the traced program. Which form is used where was chosen
by profiles of training steps (docs/performance.md).
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

    def call(tree, *leaves):
        args, kwargs = jax.tree.unflatten(tree, leaves)
        return fn(*args, **kwargs)

    @functools.wraps(fn)
    def lowered(*args, **kwargs):
        flat, tree = jax.tree.flatten((args, kwargs))
        specs = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in flat]
        closed, out_shape = jax.make_jaxpr(functools.partial(call, tree),
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
    needed = _needed_regions(jaxpr)
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        outs = None
        if name == "conv_general_dilated":
            outs = _conv(*invals, keep=needed.get(eqn.outvars[0]), **eqn.params)
        elif name in _RULES:
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


# Primitives whose output element i depends only on element i of same-shaped operands.
_ELEMENTWISE = frozenset({
    "abs", "add", "add_any", "convert_element_type", "cos", "div", "eq", "exp", "exp2",
    "expm1", "ge", "gt", "integer_pow", "le", "log", "log1p", "logistic", "lt", "max", "min",
    "mul", "ne", "neg", "pow", "rsqrt", "select_n", "sign", "sin", "sqrt", "square", "sub",
    "tanh"})


def _needed_regions(jaxpr, out_boxes=None) -> dict:
    """For each variable of `jaxpr`, the box ((lo, hi) per axis) of its elements that the
    program's outputs depend on, where that is less than the whole array: elements that only
    a pooling window's floor division drops (the last row of an odd map before a 2 x 2 pool)
    are not needed. Traced backwards through elementwise operations; any other use needs
    everything."""
    boxes: dict = {}

    def demand(v, box):
        if isinstance(v, jex.Literal) or not hasattr(v.aval, "shape"):
            return
        full = tuple((0, n) for n in v.aval.shape)
        box = full if box is None or len(box) != len(full) else box
        old = boxes.get(v)
        boxes[v] = box if old is None else tuple(
            (min(a, c), max(b, d)) for (a, b), (c, d) in zip(old, box, strict=True))

    for v, box in zip(jaxpr.outvars, out_boxes or [None] * len(jaxpr.outvars), strict=True):
        demand(v, box)
    for eqn in reversed(jaxpr.eqns):
        name, outs = eqn.primitive.name, [boxes.get(v) for v in eqn.outvars]
        shape = getattr(eqn.outvars[0].aval, "shape", None)
        inner = eqn.params.get("jaxpr") if name in ("pjit", "jit") else (
            eqn.params.get("call_jaxpr") if name == "custom_jvp_call" else None)
        if inner is not None:  # a jitted function (an activation): traced through
            inner = getattr(inner, "jaxpr", inner)
            inner_boxes = _needed_regions(inner, outs)
            for v, u in zip(eqn.invars, inner.invars, strict=True):
                demand(v, inner_boxes.get(u))
        elif name in _ELEMENTWISE and len(outs) == 1:
            box = outs[0]
            for v in eqn.invars:
                demand(v, box if getattr(v.aval, "shape", None) == shape else None)
        elif (name in ("reduce_window_max", "reduce_window_sum") and outs[0] is not None
              and all(lo == 0 and hi == 0 for lo, hi in eqn.params["padding"])
              and all(d == 1 for d in eqn.params["base_dilation"])):
            p = eqn.params
            box = tuple((lo * s, (hi - 1) * s + (w - 1) * d + 1) if hi > lo else (0, 0)
                        for (lo, hi), s, w, d in zip(outs[0], p["window_strides"],
                                                     p["window_dimensions"],
                                                     p["window_dilation"], strict=True))
            demand(eqn.invars[0], box)
        else:
            for v in eqn.invars:
                demand(v, None)
    if out_boxes is not None:  # a jitted function's: every box, for the caller
        return boxes
    return {v: box for v, box in boxes.items()
            if any(hi - lo < n for (lo, hi), n in zip(box, v.aval.shape, strict=True))}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x, w, precision=None):
    """x [..., K] times w [K, O] -> [..., O], whose weight gradient x^T d is a product of a
    row-major x^T: XLA would fold the transpose into the product, which the CPU's matrix
    library then declines, and the product runs as a slow loop of XLA's own."""
    return _matmul_fwd(x, w, precision)[0]


def _matmul_fwd(x, w, precision):
    return jnp.tensordot(x, w, 1, precision=precision), (x, w)


def _matmul_bwd(precision, res, d_out):
    x, w = res
    rows = x.reshape(-1, x.shape[-1])
    x_t = lax.optimization_barrier(rows.T)                              # [K, M], materialized
    d_w = jnp.dot(x_t, d_out.reshape(-1, d_out.shape[-1]), precision=precision)
    d_x = jnp.tensordot(d_out, w, (-1, -1), precision=precision)
    return d_x, d_w


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _positions(size: int, window: int, stride: int, dilation: int) -> int:
    """Window positions along an axis of `size` (padding included)."""
    return (size - (dilation * (window - 1) + 1)) // stride + 1


def _window_slices(x, window, strides, padding, dilation, pad_value):
    """The strided slices of padded `x` that a window op combines, one per window tap, in
    row-major tap order, each of the output's shape. `padding`: (low, high) per axis."""
    x = lax.pad(x, jnp.asarray(pad_value, x.dtype), [(lo, hi, 0) for lo, hi in padding])
    out_shape = [_positions(n, w, s, d)
                 for n, w, s, d in zip(x.shape, window, strides, dilation, strict=True)]
    slices = []
    for tap in itertools.product(*(range(w) for w in window)):
        start = [t * d for t, d in zip(tap, dilation, strict=True)]
        limit = [b + (o - 1) * s + 1 for b, o, s in zip(start, out_shape, strides, strict=True)]
        slices.append(lax.slice(x, start, limit, strides))
    return slices


def _patches(x, window, strides, padding, dilation):
    """x [N, *spatial, C] -> its windows [N, *out, T * C], taps row-major, channels minor, as
    a concatenation of strided slices."""
    taps = _window_slices(x, (1, *window, 1), (1, *strides, 1), [(0, 0), *padding, (0, 0)],
                          (1, *dilation, 1), 0)
    return jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]


# Output positions per example below which a convolution's input gradient is a convolution
# of the dilated output gradient (a custom VJP) rather than JAX's derivative of its windows.
LARGE_MAP = 16


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


def _stack0(arrays):
    """Stacked on a new leading axis, as a concatenation of reshapes: under vmap the member
    axis stays in front (a stack's expand_dims would put it second and cost a transpose)."""
    return jnp.concatenate([lax.reshape(a, (1, *a.shape)) for a in arrays], axis=0)


def _out_positions(spatial_shape, window, strides, padding, dilation) -> list[int]:
    return [_positions(n + lo + hi, k, s, d) for n, (lo, hi), k, s, d
            in zip(spatial_shape, padding, window, strides, dilation, strict=True)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _tap_windows(x, window, strides, padding, dilation):
    """x [C, N, *spatial] -> its windows [T * C, N * prod(out)], taps row-major, then
    channels: each tap's strided slice written whole, where windows with the channels minor
    would interleave narrow slices element by element."""
    taps = _window_slices(x, (1, 1, *window), (1, 1, *strides), [(0, 0), (0, 0), *padding],
                          (1, 1, *dilation), 0)
    return _stack0(taps).reshape(len(taps) * x.shape[0], -1)


def _tap_windows_fwd(x, window, strides, padding, dilation):
    return _tap_windows(x, window, strides, padding, dilation), x.shape


def _tap_windows_bwd(window, strides, padding, dilation, x_shape, d_cols):
    out = _out_positions(x_shape[2:], window, strides, padding, dilation)
    padded = [n + lo + hi for n, (lo, hi) in zip(x_shape[2:], padding, strict=True)]
    taps = list(itertools.product(*(range(k) for k in window)))
    d = d_cols.reshape(len(taps), *x_shape[:2], *out)
    zero = jnp.zeros((), d.dtype)
    parts = []
    for i, tap in enumerate(taps):
        pads = [(0, 0, 0), (0, 0, 0)]
        for t, dl, o, s, n in zip(tap, dilation, out, strides, padded, strict=True):
            pads.append((t * dl, n - t * dl - ((o - 1) * s + 1), s - 1))
        parts.append(lax.pad(d[i], zero, pads))
    # the taps' gradients summed as a product with ones, which XLA computes once: a sum of
    # adds would be fused into, and recomputed by, every consumer reading an element twice
    # (the max pool's gradient before it reads each element once per window tap)
    summed = jnp.tensordot(jnp.ones(len(parts), d.dtype), _stack0(parts), 1)
    start = [0, 0] + [lo for lo, _ in padding]
    limit = [*x_shape[:2]] + [lo + n for (lo, _), n in zip(padding, x_shape[2:], strict=True)]
    return (lax.slice(summed, start, limit),)


_tap_windows.defvjp(_tap_windows_fwd, _tap_windows_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cols_product(cols, w, precision=None):
    """cols [K, P] contracted on their leading axis with w [K, O] -> [P, O]. Every product,
    forward and both gradients, takes the forms the CPU's matrix library accepts (no
    transposed left operand): the forward as (w^T cols)^T, the weight gradient cols g, the
    windows' gradient w g^T."""
    return _cols_product_fwd(cols, w, precision)[0]


def _cols_product_fwd(cols, w, precision):
    w_t = lax.optimization_barrier(w.T)                                 # [O, K], materialized
    # the barrier keeps XLA from folding the transpose into the product, whose transposed
    # left operand the matrix library would then decline
    y_t = lax.optimization_barrier(jnp.dot(w_t, cols, precision=precision))    # [O, P]
    return y_t.T, (cols, w)


def _cols_product_bwd(precision, res, g):
    cols, w = res
    d_cols = lax.dot_general(w, g, (((1,), (1,)), ((), ())), precision=precision)  # [K, P]
    return d_cols, jnp.dot(cols, g, precision=precision)


_cols_product.defvjp(_cols_product_fwd, _cols_product_bwd)


def _conv_taps(x, w, strides, padding, dilation, precision):
    """Convolution of x [N, *spatial, C] with w [*k, C, O] -> [N, *out, O] as the windows of
    x taken channel-major ([C, N, *spatial], `_tap_windows`) times the kernel matrix."""
    spatial = w.ndim - 2
    window = tuple(w.shape[:spatial])
    xc = jnp.moveaxis(x, -1, 0)
    cols = _tap_windows(xc, window, strides, padding, dilation)
    out = _out_positions(x.shape[1:-1], window, strides, padding, dilation)
    y = _cols_product(cols, w.reshape(-1, w.shape[-1]), precision)        # [P, O]
    return y.reshape(x.shape[0], *out, w.shape[-1])


def _conv(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count, precision, preferred_element_type,
          keep=None, **_):
    if (feature_group_count != 1 or batch_group_count != 1 or any(d != 1 for d in lhs_dilation)
            or any(lo < 0 or hi < 0 for lo, hi in padding)
            or (preferred_element_type is not None and preferred_element_type != lhs.dtype)
            or lhs.dtype != rhs.dtype or not jnp.issubdtype(lhs.dtype, jnp.floating)):
        return None
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    spatial = len(lhs_spec) - 2
    x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))     # [N, *sp, C]
    w = jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))     # [*k, C, O]
    window, padding = w.shape[:spatial], tuple(map(tuple, padding))
    full = _out_positions(x.shape[1:-1], window, window_strides, padding, rhs_dilation)
    # only the leading output positions that the program reads (`keep`, from
    # _needed_regions): the input cut (or its high padding cut) to what they cover
    kept = list(full)
    if keep is not None:
        kept = [min(o, keep[out_spec[2 + i]][1]) if keep[out_spec[2 + i]][0] == 0 else o
                for i, o in enumerate(full)]
        pads, sizes = [], []
        for i, (n, (lo, _)) in enumerate(zip(x.shape[1:-1], padding, strict=True)):
            reach = (kept[i] - 1) * window_strides[i] + rhs_dilation[i] * (window[i] - 1) + 1
            new_hi = reach - lo - n
            pads.append((lo, max(new_hi, 0)))
            sizes.append(n + min(new_hi, 0))
        if kept != full and min(kept) > 0 and min(sizes) > 0:
            x = x[(slice(None), *(slice(0, m) for m in sizes), slice(None))]
            padding = tuple(pads)
        else:  # nothing to cut, or the kept outputs read only the low padding
            kept = list(full)
    positions = np.prod(kept)
    if positions < LARGE_MAP:
        # small maps: the input gradient as a convolution of the dilated output gradient
        # (no sum of padded window gradients)
        out = _conv_nhwc(x, w, tuple(window_strides), padding, tuple(rhs_dilation),
                         precision)                                       # [N, *out, O]
    else:
        out = _conv_taps(x, w, tuple(window_strides), padding, tuple(rhs_dilation),
                         precision)
    if kept != full:
        out = lax.pad(out, jnp.zeros((), out.dtype),
                      [(0, 0, 0)] + [(0, f - k, 0) for f, k in zip(full, kept, strict=True)]
                      + [(0, 0, 0)])
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max(tiles, axes):
    """Max of `tiles` over its window `axes`; the gradient goes to the first maximum in
    row-major tap order, as in JAX's derivative of reduce_window_max."""
    return _tiled_max_fwd(tiles, axes)[0]


def _tiled_max_fwd(tiles, axes):
    out = jnp.max(tiles, axis=axes)
    return out, (tiles, out)


def _tiled_max_bwd(axes, res, g):
    tiles, out = res
    # taps in row-major order, each taking the gradient where it is the first maximum
    taken = jnp.zeros(out.shape, bool)
    parts = []
    zero = jnp.zeros((), g.dtype)
    for tap in itertools.product(*(range(tiles.shape[a]) for a in axes)):
        index = [slice(None)] * tiles.ndim
        for a, t in zip(axes, tap, strict=True):
            index[a] = t
        hit = (tiles[tuple(index)] == out) & ~taken
        taken = taken | hit
        parts.append(jnp.where(hit, g, zero))
    grad = jnp.stack(parts, axis=-1).reshape(*out.shape, *(tiles.shape[a] for a in axes))
    # [*out, *window] -> the tiles' layout, each window axis after its output axis
    order, window_axis = [], out.ndim
    for a in range(tiles.ndim):
        if a in axes:
            order.append(window_axis)
            window_axis += 1
        else:
            order.append(a - sum(1 for b in axes if b < a))
    return (jnp.transpose(grad, order),)


_tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


def _pool_max(operand, *, window_dimensions, window_strides, padding, base_dilation,
              window_dilation):
    if (any(d != 1 for d in (*base_dilation, *window_dilation))
            or not jnp.issubdtype(operand.dtype, jnp.floating)):
        return None
    tiled = _tiled(operand, window_dimensions, window_strides, padding, -jnp.inf)
    if tiled is not None:
        tiles, axes = tiled
        return _tiled_max(tiles, axes)
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
    """x [..., I] times a matrix w [I, O]: a small one as sum(x[..., I, None] * w, -2), a
    larger one by `matmul`."""
    (lc, rc), (lb, rb) = dimension_numbers
    if (lb or rb or len(lc) != 1 or rhs.ndim != 2 or lc[0] != lhs.ndim - 1
            or params.get("out_sharding") is not None
            or not jnp.issubdtype(lhs.dtype, jnp.floating)):
        return None
    w = rhs if rc[0] == 0 else rhs.T
    if rhs.size > SMALL_DENSE:
        if preferred_element_type not in (None, lhs.dtype) or lhs.dtype != rhs.dtype:
            return None
        return matmul(lhs, w, precision)
    dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    w = w.reshape((1,) * (lhs.ndim - 1) + w.shape)
    prod = lhs[..., :, None].astype(dtype) * w.astype(dtype)
    return jnp.sum(prod, axis=-2)


_RULES = {
    "conv_general_dilated": _conv,
    "reduce_window_max": _pool_max,
    "reduce_window_sum": _pool_sum,
    "dot_general": _dot,
}

LOWERED_PRIMITIVES = tuple(_RULES)
