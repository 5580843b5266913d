"""Hand-written forward and backward passes of the paper's two bias-free models for a block
of members at once, used by the training core (`wsjax.train.core`) in place of the general
path for those two models only.

Kept while the general path (lowered Flax layers under vmap) measures more than 1.3x slower
than these on the training benchmark, on the CPU or on a GPU (docs/performance.md says where
each stands).

What they do that the general path does not: the first conv's windows are cut once for the
whole training set and gathered per step; only the conv outputs that survive the max-pools are
computed; the second conv, whose input is only 3x3, is one dense matrix per member; the FFNN's
10 x 10 layers keep the member axis minor (on the CPU's vector lanes) inside the step loop.
Max-pool gradients go to the first maximum of each window in row-major order, and LeakyReLU's
derivative at 0 is 1, both as JAX's own derivatives of the Flax modules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from wsjax.models import CNN, FFNN

__all__ = ["FFNNKernels", "CNNKernels", "hand_kernels", "KernelStep"]

Array = jax.Array


def _bmm(spec: str, a: Array, b: Array) -> Array:
    return jnp.einsum(spec, a, b, precision=jax.lax.Precision.HIGHEST)


def _dense(x: Array, w: Array, shared: bool = False) -> Array:
    """x [S, B, I] (or [B, I] shared) times per-member w [S, O, I] -> [S, B, O].

    For small batches on a CPU as one batched matrix-vector product per example: those run
    several times faster than one batched product of [B, I] blocks, which the matrix library
    handles poorly at this size. Elsewhere one product: on an accelerator every product is a
    kernel launch of its own inside the step loop (a choice not yet measured on a GPU).
    """
    if shared:
        return _bmm("bi,soi->sbo", x, w)
    if x.shape[1] > 8 or jax.default_backend() != "cpu":
        return _bmm("sbi,soi->sbo", x, w)
    return jnp.stack([_bmm("si,soi->so", x[:, b], w) for b in range(x.shape[1])], axis=1)


def _outer_sum(a: Array, d: Array) -> Array:
    """sum_b a[s, b, i] * d[s, b, o] -> [S, I, O]: a weight gradient.

    For small batches, written out as elementwise products so that XLA fuses it into the
    optimizer update that consumes it (no [S, I, O] gradient is written to memory).
    """
    if a.shape[1] > 16:
        return _bmm("sbi,sbo->sio", a, d)
    return sum(a[:, b, :, None] * d[:, b, None, :] for b in range(a.shape[1]))


def _first_max_mask(values: list[Array]) -> tuple[Array, list[Array]]:
    """Max of equally shaped arrays and, per array, where it is the first maximum (0/1 floats)."""
    m = values[0]
    for v in values[1:]:
        m = jnp.maximum(m, v)
    taken = jnp.zeros(m.shape, bool)
    masks = []
    for v in values:
        hit = (v == m) & ~taken
        taken = taken | hit
        masks.append(hit.astype(m.dtype))
    return m, masks


def _leaky(z: Array, slope: float) -> Array:
    return jnp.where(z >= 0, z, slope * z)


def _leaky_grad(z: Array, slope: float) -> Array:
    return jnp.where(z >= 0, 1.0, slope).astype(z.dtype)


def _sm_dense(h: Array, w: Array) -> Array:
    """Member-minor layer: h [B, I, S] times w [O, I, S] -> [B, O, S]."""
    return jnp.sum(h[:, None] * w[None], axis=2)


def _sm_dense_t(d: Array, w: Array) -> Array:
    """Member-minor layer, transposed: d [B, O, S] times w [O, I, S] -> [B, I, S]."""
    return jnp.sum(d[:, :, None] * w[None], axis=1)


def _sm_outer(d: Array, a: Array) -> Array:
    """Member-minor weight gradient: sum_b d[b, o, s] * a[b, i, s] -> [O, I, S]."""
    return jnp.sum(d[:, :, None] * a[:, None], axis=0)


class FFNNKernels:
    """Forward and backward of wsjax.models.FFNN (bias-free) for S members at once.

    `to_weights` gives the kernels transposed, [S, out, in]. Inside the training loop
    (`pack`) the first layer stays so, the long input axis minor in its weight-gradient-and-
    update loop; the two 10 x 10 layers are stored member-minor, [out, in, S]: per member they
    are too small for a matrix product, and with the members on the vector lanes of the CPU
    they are a few elementwise loops (reductions over a major axis, which XLA computes once
    and does not recompute inside each consumer as it does cheap elementwise producers).
    """

    names = ("Dense_0", "Dense_1", "Dense_2")
    # Members per block on a CPU device. Alone in its process a device's large loops are split
    # over all cores, which pays for large blocks. With one device per core (sharded) a block
    # runs on one core, and 8 members, one AVX2 vector across the member-minor layers, keep
    # the first layer's weights and momentum in the core's L2 cache (docs/performance.md).
    seed_block = 64
    sharded_seed_block = 8
    member_axes = (0, 2, 2)  # of the packed weights

    def __init__(self, module: FFNN):
        self.module = module

    def to_weights(self, params) -> tuple[Array, ...]:
        return tuple(jnp.swapaxes(params[n]["kernel"], 1, 2) for n in self.names)

    def to_params(self, weights) -> dict:
        return {n: {"kernel": jnp.swapaxes(w, 1, 2)}
                for n, w in zip(self.names, weights, strict=True)}

    @staticmethod
    def pack(weights) -> tuple[Array, ...]:
        """`to_weights` layout -> the training loop's: ([S, 10, 196], [10, 10, S], [C, 10, S])."""
        return (weights[0],) + tuple(jnp.moveaxis(w, 0, -1) for w in weights[1:])

    @staticmethod
    def unpack(packed) -> tuple[Array, ...]:
        return (packed[0],) + tuple(jnp.moveaxis(w, -1, 0) for w in packed[1:])

    @staticmethod
    def prepare(x: Array) -> Array:
        """Inputs [N, ...] -> the features `forward` takes, [N, 196] (flattened, as FFNN)."""
        return x.reshape(x.shape[0], -1)

    def forward(self, w, x: Array, shared: bool = False):
        """Packed weights, features x [S, B, 196] (or [B, 196] shared by all members) ->
        (out [S, B, C], cache)."""
        h1 = jax.nn.sigmoid(_dense(x, w[0], shared=shared))             # [S, B, 10]
        h1 = jnp.transpose(h1, (1, 2, 0))                               # [B, 10, S]
        h2 = jax.nn.sigmoid(_sm_dense(h1, w[1]))
        out = _sm_dense(h2, w[2])                                       # [B, C, S]
        return jnp.transpose(out, (2, 0, 1)), (x, h1, h2)

    def backward(self, w, cache, d_out: Array) -> tuple[Array, ...]:
        """Gradients of the packed weights from d_out = dLoss/d_out [S, B, C]."""
        x, h1, h2 = cache
        d3 = jnp.transpose(d_out, (1, 2, 0))                            # [B, C, S]
        g3 = _sm_outer(d3, h2)
        d2 = _sm_dense_t(d3, w[2]) * h2 * (1 - h2)
        g2 = _sm_outer(d2, h1)
        d1 = jnp.transpose(_sm_dense_t(d2, w[1]) * h1 * (1 - h1), (2, 0, 1))   # [S, B, 10]
        g1 = _outer_sum(d1, x)
        return g1, g2, g3


def _conv2_matrix(w2: Array) -> Array:
    """Conv-2 kernel matrices [S, 9 c1, c2] -> the conv as a dense matrix [S, 9 c1, 4 c2] from
    the pooled 3x3xc1 map to the 2x2xc2 output (3x3 stride 2, padding 1).

    Output (r, c) takes input (y, x) through tap (y - 2r + 1, x - 2c + 1): its block is the
    kernel shifted by (2r - 1, 2c - 1), zeros where no tap joins them.
    """
    s, rows, c2 = w2.shape
    wp = jnp.pad(w2.reshape(s, 3, 3, rows // 9, c2), [(0, 0), (1, 1), (1, 1), (0, 0), (0, 0)])
    blocks = [wp[:, 2 - 2 * r:5 - 2 * r, 2 - 2 * c:5 - 2 * c] for r in range(2) for c in range(2)]
    return jnp.stack(blocks, axis=-2).reshape(s, rows, 4 * c2)        # [S, 3, 3, c1, 4, c2]


def _conv2_fold(g: Array) -> Array:
    """Gradient of `_conv2_matrix`'s output [S, 9 c1, 4 c2] -> of its input [S, 9 c1, c2]:
    each kernel tap summed over the blocks it appears in."""
    s, rows, cols = g.shape
    c1 = rows // 9
    g = g.reshape(s, 3, 3, c1, 4, cols // 4)
    total = 0
    for r in range(2):
        for c in range(2):
            gp = jnp.pad(g[..., 2 * r + c, :], [(0, 0), (2 - 2 * r, 2 * r), (2 - 2 * c, 2 * c),
                                               (0, 0), (0, 0)])
            total = total + gp[:, 1:4, 1:4]
    return total.reshape(s, 9 * c1, -1)


class CNNKernels:
    """Forward and backward of wsjax.models.CNN (bias-free, 14x14x1 input) for S members at once.

    Weights: conv kernels as matrices [S, 9 * c_in, c_out] (rows in (kh, kw, c_in) order, Flax's
    HWIO kernel flattened) and the dense kernel [S, c2, C].

    The second conv (3x3xc1 -> 2x2xc2) runs as a dense [9 c1, 4 c2] matrix per member: as many
    multiply-adds as its patches times the kernel (each output's patch is 9 c1 long, padding
    included), but no patches to cut and no scatter-add of their gradient.
    """

    names = ("Conv_0", "Conv_1", "Dense_0")
    seed_block = 16  # members per block, measured among 8 to 64 (docs/performance.md)
    sharded_seed_block = 16
    member_axes = (0, 0, 0)

    def __init__(self, module: CNN):
        self.module = module
        self.slope = float(module.negative_slope)
        self.channels = tuple(module.channels)

    def to_weights(self, params) -> tuple[Array, ...]:
        k1, k2 = params["Conv_0"]["kernel"], params["Conv_1"]["kernel"]
        return (k1.reshape(k1.shape[0], -1, k1.shape[-1]),
                k2.reshape(k2.shape[0], -1, k2.shape[-1]), params["Dense_0"]["kernel"])

    def to_params(self, weights) -> dict:
        w1, w2, w3 = weights
        c0, (c1, c2) = w1.shape[1] // 9, self.channels
        return {"Conv_0": {"kernel": w1.reshape(w1.shape[0], 3, 3, c0, c1)},
                "Conv_1": {"kernel": w2.reshape(w2.shape[0], 3, 3, c1, c2)},
                "Dense_0": {"kernel": w3}}

    @staticmethod
    def pack(weights) -> tuple[Array, ...]:
        """`to_weights` layout -> the training loop's (the same)."""
        return tuple(weights)

    @staticmethod
    def unpack(packed) -> tuple[Array, ...]:
        return tuple(packed)

    @staticmethod
    def prepare(x: Array) -> Array:
        """Inputs [N, 14, 14, 1] -> the features `forward` takes: the first conv's input windows
        [N, 36, 9], once for the whole data set (shared by all members and steps).

        Row 9 * (2i + j) + 3p + q holds the 3x3 stride-2 window (top/left padding 1) of the conv
        output at (2p + i, 2q + j), p, q < 3: the outputs the 2x2 pool keeps, grouped by place
        (i, j) in the pool window. Columns in (kh, kw) order, as Flax's kernel.
        """
        xp = jnp.pad(x[..., 0], [(0, 0), (1, 0), (1, 0)])
        p = jnp.stack([jnp.stack([xp[:, 2 * i + kh::4, 2 * j + kw::4][:, :3, :3]
                                  for kh in range(3) for kw in range(3)], axis=-1)
                       for i in range(2) for j in range(2)], axis=1)    # [N, 4, 3, 3, 9]
        return p.reshape(x.shape[0], 36, 9)

    def forward(self, w, x: Array, shared: bool = False):
        """Features x [S, B, 36, 9] (or [B, 36, 9] shared by all members) -> (out [S, B, C],
        cache)."""
        s = "" if shared else "s"
        p1 = x
        z1 = _bmm(f"{s}brk,sko->sbro", p1, w[0])                        # [S, B, 36, c1]
        z1 = z1.reshape(*z1.shape[:2], 4, 9, z1.shape[-1])
        m1, masks1 = _first_max_mask([z1[:, :, i] for i in range(4)])   # [S, B, 9, c1]
        a1 = _leaky(m1, self.slope).reshape(*m1.shape[:2], -1)          # [S, B, 9 * c1]
        big = _conv2_matrix(w[1])                                       # [S, 9 * c1, 4 * c2]
        z2 = _bmm("sbk,skn->sbn", a1, big)
        z2 = z2.reshape(*z2.shape[:2], 4, -1)                           # [S, B, 4, c2]
        m2, masks2 = _first_max_mask([z2[:, :, i] for i in range(4)])   # [S, B, c2]
        a2 = _leaky(m2, self.slope)
        out = _bmm("sbi,sio->sbo", a2, w[2])
        return out, (p1, masks1, m1, a1, big, masks2, m2, a2, shared)

    def backward(self, w, cache, d_out: Array) -> tuple[Array, ...]:
        p1, masks1, m1, a1, big, masks2, m2, a2, shared = cache
        g3 = _outer_sum(a2, d_out)
        d_m2 = _bmm("sbo,sio->sbi", d_out, w[2]) * _leaky_grad(m2, self.slope)
        d_z2 = jnp.concatenate([d_m2 * mk for mk in masks2], axis=-1)    # [S, B, 4 * c2]
        # a1 transposed, computed again from m1 rather than transposed: a transpose would be
        # folded into the product, which the matrix library then rejects (it wants a row-major
        # left operand) and XLA runs as a slow loop of its own.
        a1t = _leaky(jnp.swapaxes(m1.reshape(a1.shape), 1, 2), self.slope)   # [S, 9 * c1, B]
        g2 = _conv2_fold(_bmm("skb,sbn->skn", a1t, d_z2))
        d_a1 = _bmm("sbn,skn->sbk", d_z2, big).reshape(m1.shape)        # [S, B, 9, c1]
        d_m1 = d_a1 * _leaky_grad(m1, self.slope)
        d_z1 = jnp.stack([d_m1 * mk for mk in masks1], axis=2)          # [S, B, 4, 9, c1]
        d_z1 = d_z1.reshape(*d_z1.shape[:2], 36, -1)
        g1 = _bmm("brk,sbro->sko" if shared else "sbrk,sbro->sko", p1, d_z1)
        return g1, g2, g3


def hand_kernels(module) -> FFNNKernels | CNNKernels | None:
    """The kernels for `module`, or None where it is not a configuration they support."""
    if type(module) is FFNN and not module.use_bias:
        return FFNNKernels(module)
    if (type(module) is CNN and not module.use_bias and not module.pool_ceil
            and len(module.channels) == 2):
        return CNNKernels(module)
    return None


def _find_trace(opt_state):
    """The momentum buffer of `sgd_with_weight_decay`'s state and a function that replaces it."""
    leaves, treedef = jax.tree.flatten(opt_state,
                                       is_leaf=lambda n: isinstance(n, optax.TraceState))
    (i,) = [i for i, n in enumerate(leaves) if isinstance(n, optax.TraceState)]

    def replace(trace):
        new = list(leaves)
        new[i] = optax.TraceState(trace=trace)
        return jax.tree.unflatten(treedef, new)

    return leaves[i].trace, replace


class KernelStep:
    """The training core's block step for a model with `hand_kernels` and
    `sgd_with_weight_decay` (see `wsjax.train.core.GeneralStep` for the interface)."""

    def __init__(self, kernels, loss_fn, batch_size: int):
        self.kernels = kernels
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.seed_block = kernels.seed_block
        self.sharded_seed_block = kernels.sharded_seed_block
        # floats of activations per test example and member, for the evaluation batch
        self.eval_floats = 600 if isinstance(kernels, CNNKernels) else 30

    def prepare(self, x: Array) -> Array:
        return self.kernels.prepare(x)

    def block_epoch(self, params, opt_state, hp, orders: Array, feats: Array, y: Array,
                    unroll: int = 1):
        k = self.kernels
        members = orders.shape[0]
        steps = feats.shape[0] // self.batch_size
        trace, replace_trace = _find_trace(opt_state)

        def per_member(v, ndim, axis):
            return jnp.expand_dims(v, [a for a in range(ndim) if a != axis % ndim])

        def step(carry, idx):
            w, t = carry
            out, cache = k.forward(w, feats[idx])
            loss, d_out = jax.vmap(jax.value_and_grad(self.loss_fn))(out, y[idx])
            g = k.backward(w, cache, d_out)
            new_w, new_t = [], []
            for wi, ti, gi, axis in zip(w, t, g, k.member_axes, strict=True):
                lr, mom, wd = (per_member(v, wi.ndim, axis) for v in
                               (hp.learning_rate, hp.momentum, hp.weight_decay))
                ti = (gi + wd * wi) + mom * ti
                new_t.append(ti)
                new_w.append(wi + ti * (-lr))
            return (tuple(new_w), tuple(new_t)), loss

        batches = orders[:, : steps * self.batch_size].reshape(members, steps, self.batch_size)
        carry = (k.pack(k.to_weights(params)), k.pack(k.to_weights(trace)))
        (w, t), losses = jax.lax.scan(step, carry, batches.transpose(1, 0, 2), unroll=unroll)
        params = k.to_params(k.unpack(w))
        opt_state = replace_trace(k.to_params(k.unpack(t)))
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(params)
        finite = jnp.all(jnp.isfinite(losses), axis=0) & jnp.all(jnp.isfinite(flat), axis=1)
        return params, opt_state, jnp.mean(losses, axis=0), flat, finite

    def block_outputs(self, params):
        """A function of one test batch's features [eb, ...] -> outputs [s, eb, C]."""
        w = self.kernels.pack(self.kernels.to_weights(params))
        return lambda feats: self.kernels.forward(w, feats, shared=True)[0]
