"""Hand-written kernels for the paper's two models: the whole zoo steps as one program.

`BatchedTrainer` differentiates a per-member function and vmaps it. For the CNN that turns the
convolutions into grouped convolutions (one group per member), and XLA's CPU backend runs those
slowly. Here the forward and backward passes of the FFNN and the CNN are written out for all
members at once, with the member axis as the batch axis of batched matrix products:

- no grouped convolution appears: the first conv is patches (strided slices) times a
  per-member kernel matrix, its patches cut once for the whole training set
  (`CNNKernels.prepare`) and gathered per step; the second, whose input is only 3x3, is one
  dense matrix per member from its whole input to its whole output (`_conv2_matrix`), built
  from the kernel each step, so that its input needs no patches and its input gradient no
  scatter;
- only the conv outputs that survive the max-pools are computed (the 7x7 map of the first conv
  loses its last row and column to the 2x2 pool);
- max-pool gradients go to the first maximum of each window in row-major order, and
  LeakyReLU's derivative at 0 is 1, both as JAX's own derivatives of the Flax modules;
- small batches (the FFNN's 4) go through one batched matrix-vector product per example,
  which a CPU runs faster than one batched product of tiny matrices; the FFNN's 10 x 10 layers
  keep the member axis minor (on the CPU's vector lanes) inside the training loop;
- one jitted call runs an epoch: the training set stays on the device and every step gathers
  its batch rows by index; the epoch's data orders (`permutations`, equal to the plain
  trainer's) are drawn by a program of their own, sorted on the host on a CPU;
- members run in blocks whose working set stays in cache, in training and in evaluation.

`make_fast_trainer(...)` returns a `FastTrainer` where the model and optimizer are supported
(bias-free FFNN or CNN from wsjax.models with the 14x14x1 input, SGD with momentum and
coupled weight decay) and the plain `BatchedTrainer` otherwise. Both give the same results to
float32 rounding; tests/test_fast.py checks that against the plain trainer and a per-seed loop.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from wsjax.errors import ConfigError
from wsjax.models import CNN, FFNN
from wsjax.sharding import usable_cores
from wsjax.train import (
    BatchedTrainer,
    HParams,
    MemberState,
    epoch_key,
    sgd_with_weight_decay,
)

__all__ = ["FastTrainer", "make_fast_trainer", "fast_kernels", "FFNNKernels", "CNNKernels",
           "permutations"]

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
    # over all cores, which pays for large blocks (64: 1.14x the speed of 8 on 2 cores). With
    # one device per core (sharded) a block runs on one core and 8 members, one AVX2 vector
    # across the member-minor layers, keep the first layer's weights and momentum (125 kB)
    # in the core's L2 cache: 1.10-1.20x the speed of 64 (README, Training speed).
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
    included), but no patches to cut and no scatter-add of their gradient (1.4x the speed of
    the patch version on one core).
    """

    names = ("Conv_0", "Conv_1", "Dense_0")
    seed_block = 16  # members per block: about the fastest of 8 to 64 on a 2-core CPU
    sharded_seed_block = 16  # with one device per core: 8 and 16 alike, 32 0.86x
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
        # left operand) and XLA runs as a slow loop of its own (1.1x the CNN's speed here).
        a1t = _leaky(jnp.swapaxes(m1.reshape(a1.shape), 1, 2), self.slope)   # [S, 9 * c1, B]
        g2 = _conv2_fold(_bmm("skb,sbn->skn", a1t, d_z2))
        d_a1 = _bmm("sbn,skn->sbk", d_z2, big).reshape(m1.shape)        # [S, B, 9, c1]
        d_m1 = d_a1 * _leaky_grad(m1, self.slope)
        d_z1 = jnp.stack([d_m1 * mk for mk in masks1], axis=2)          # [S, B, 4, 9, c1]
        d_z1 = d_z1.reshape(*d_z1.shape[:2], 36, -1)
        g1 = _bmm("brk,sbro->sko" if shared else "sbrk,sbro->sko", p1, d_z1)
        return g1, g2, g3


def fast_kernels(module) -> FFNNKernels | CNNKernels | None:
    """The kernels for `module`, or None where it is not a configuration they support."""
    if type(module) is FFNN and not module.use_bias:
        return FFNNKernels(module)
    if (type(module) is CNN and not module.use_bias and len(module.channels) == 2):
        return CNNKernels(module)
    return None


def _shuffle_rows(sort_keys: np.ndarray) -> np.ndarray:
    """uint32 sort keys [rounds, S, n] -> the permutations [S, n] that the rounds give: each
    round a stable sort of the current order by that round's keys.

    A key and its position packed into one unique 64-bit word make an unstable sort give the
    stable order (NumPy's SIMD sort of 64-bit words is several times faster than a stable sort
    of uint32). The key's top bit is flipped and the word sorted as a signed integer, which
    keeps the order: NumPy sorts int64 faster than uint64 (a row of 4,000: 1.6x; the whole
    shuffle of 250 rows 1.3x at 4,000 and 1.15x at 60,000). One row at a time, so that its [n]
    arrays stay in cache: 2.8x faster than whole-array passes for 250 rows of 60,000.
    """
    rounds, members, n = sort_keys.shape
    if rounds == 0:
        return np.tile(np.arange(n, dtype=np.int32), (members, 1))
    out = np.empty((members, n), np.int32)
    position = np.arange(n, dtype=np.uint64)
    packed = np.empty(n, np.uint64)
    signed = packed.view(np.int64)
    flipped = np.empty(n, np.uint32)
    low = packed.view(np.uint32)[0::2] if np.little_endian else packed.view(np.uint32)[1::2]
    for s in range(members):
        perm = None
        for r in range(rounds):
            np.bitwise_xor(sort_keys[r, s], np.uint32(1 << 31), out=flipped)
            np.left_shift(flipped, 32, out=packed, dtype=np.uint64)
            packed |= position
            signed.sort()
            perm = low.astype(np.int32) if perm is None else perm[low]
        out[s] = perm
    return out


def _host_shuffle(sort_keys: np.ndarray) -> np.ndarray:
    """`_shuffle_rows`, the members split over threads, one per usable core (NumPy's sort
    releases the GIL): the sort is a tenth of an FFNN epoch, and the devices wait for it."""
    sort_keys = np.asarray(sort_keys)
    workers = min(usable_cores(), sort_keys.shape[1])
    if workers <= 1:
        return _shuffle_rows(sort_keys)
    bounds = np.linspace(0, sort_keys.shape[1], workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        try:
            parts = [pool.submit(_shuffle_rows, sort_keys[:, a:b])
                     for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        except RuntimeError:  # no new threads once the interpreter exits (orders drawn ahead)
            return _shuffle_rows(sort_keys)
        return np.concatenate([p.result() for p in parts])


def _rotate_left(v: Array, r: int) -> Array:
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))


def _threefry_bits(key: Array, n: int) -> Array:
    """`jax.random.bits(key, (n,), jnp.uint32)` of a threefry2x32 key (partitionable mode), bit
    for bit: the Threefry-2x32 hash (20 rounds) of the counters 0..n-1, high words 0, the two
    output words xor-ed.

    JAX's CPU lowering of the hash keeps its rounds in a loop over whole arrays, a pass through
    memory per round; unrolled here, XLA fuses the 20 rounds into one loop (4-5x faster on a
    CPU, where drawing the sort keys of 250 orders of 60,000 rows had taken 0.8 s per epoch).
    """
    k1, k2 = jax.random.key_data(key)
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0 = jnp.zeros((n,), jnp.uint32) + ks[0]
    x1 = jnp.arange(n, dtype=jnp.uint32) + ks[1]
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0 ^ x1


def _random_bits(key: Array, n: int) -> Array:
    """uint32 [n]: `jax.random.bits(key, (n,), jnp.uint32)`, by `_threefry_bits` where that is
    the same computation."""
    if (str(jax.random.key_impl(key)) == "threefry2x32" and jax.config.jax_threefry_partitionable
            and n < 2**32):
        return _threefry_bits(key, n)
    return jax.random.bits(key, (n,), jnp.uint32)


def permutations(keys: Array, n: int, on_host: bool | None = None) -> Array:
    """`jax.random.permutation(key, n)` for each of the typed keys [S], bit for bit: [S, n].

    jax.random.permutation sorts random 32-bit keys with a stable sort, in a few rounds. On a
    CPU, XLA's sort is slow (about 1 s for 64 permutations of 24,000 rows, as much as a
    quarter of an FFNN epoch's training); there the random keys are drawn in JAX as
    jax.random.permutation draws them and the sorting is done by NumPy in a callback.
    `on_host`: default, on the host when JAX's default backend is the CPU.
    """
    if on_host is None:
        on_host = jax.default_backend() == "cpu"
    if not on_host:
        return jax.vmap(lambda key: jax.random.permutation(key, n))(keys)
    # the rounds of jax.random.permutation's shuffle (jax/_src/random: _shuffle)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    if rounds == 0:
        return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (keys.shape[0], n))

    def draws(key):
        out = []
        for _ in range(rounds):
            key, sub = jax.random.split(key)
            out.append(_random_bits(sub, n))
        return jnp.stack(out)

    sort_keys = jnp.swapaxes(jax.vmap(draws)(keys), 0, 1)              # [rounds, S, n]
    shape = jax.ShapeDtypeStruct(sort_keys.shape[1:], jnp.int32)
    return jax.pure_callback(_host_shuffle, shape, sort_keys, vmap_method="sequential")


# XLA's CPU backend hands reductions and elementwise loops to its YNNPACK library by default;
# on the member-minor reductions of FFNNKernels that is several times slower than XLA's own
# loops. Only the dot products go to the library here. Copy insertion by region analysis
# drops the copies of the 10 x 10 layers' weights that the step loop otherwise makes every
# step (FFNN 3-5% faster).
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
                "xla_cpu_copy_insertion_use_region_analysis": True}


# XLA's CPU backend splits large loops over the cores of the process's thread pool. Where the
# members are sharded over one CPU device per core, every core already runs a device's
# program, and a split loop waits for a core that is busy with the other device's program:
# without the split the FFNN trains about 7% faster on 2 cores (README, Training speed).
_SHARDED_CPU_OPTIONS = {"xla_disable_hlo_passes": "cpu-parallel-task-assigner"}


@functools.cache
def _compile_options(sharded: bool = False) -> dict | None:
    """`_CPU_OPTIONS` (and `_SHARDED_CPU_OPTIONS` for a program sharded over several CPU
    devices) where JAX's default backend is the CPU, as many of them as this jaxlib knows."""
    if jax.default_backend() != "cpu":
        return None
    wanted = [dict(_CPU_OPTIONS, **_SHARDED_CPU_OPTIONS)] if sharded else []
    for options in wanted + [dict(_CPU_OPTIONS)]:
        try:
            jax.jit(jnp.sum, compiler_options=options).lower(jnp.zeros(2)).compile()
        except Exception:  # an XLA without the option: its defaults are correct, only slower
            continue
        return options
    return None


def _member_mesh(state: MemberState):
    """The 1-D mesh that the members are sharded over, or None when they are not sharded."""
    for leaf in jax.tree.leaves(state.params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.device_set) > 1:
            return sharding.mesh
    return None


def _on_cpu(tree) -> bool:
    """Whether the arrays of `tree` live on CPU devices (for host arrays: JAX's default
    backend)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
            return all(d.platform == "cpu" for d in leaf.devices())
    return jax.default_backend() == "cpu"


def _member_blocks(members: int, block: int | None):
    """(split, merge): [S, ...] <-> [blocks, size, ...], members cut into equal blocks of at
    most `block` (None: one block), the last padded with copies of the last member (merge
    drops them)."""
    blocks = -(-members // min(members if block is None else block, members))
    size = -(-members // blocks)
    pad = jnp.minimum(jnp.arange(blocks * size), members - 1)

    def split(a):
        return a[pad].reshape(blocks, size, *a.shape[1:])

    def merge(a):
        return a.reshape(blocks * size, *a.shape[2:])[:members]

    return split, merge


def _find_trace(opt_state):
    """The momentum buffer of `sgd_with_weight_decay`'s state and a function that replaces it."""
    leaves, treedef = jax.tree.flatten(opt_state,
                                       is_leaf=lambda n: isinstance(n, optax.TraceState))
    where = [i for i, n in enumerate(leaves) if isinstance(n, optax.TraceState)]
    (i,) = where

    def replace(trace):
        new = list(leaves)
        new[i] = optax.TraceState(trace=trace)
        return jax.tree.unflatten(treedef, new)

    return leaves[i].trace, replace


_IN_FLIGHT: list[Array] = []  # orders drawn ahead, not yet known to be ready


def _drawing_ahead(orders: Array) -> None:
    """Keeps `orders`, drawn ahead, until they are ready or the process exits."""
    _IN_FLIGHT[:] = [a for a in _IN_FLIGHT if not a.is_ready()] + [orders]


@atexit.register
def _finish_drawing_ahead() -> None:
    """At exit, waits for the orders still being drawn ahead (by trainers alive or not): a
    process that exits while their host callback is pending crashes in XLA's teardown."""
    with contextlib.suppress(Exception):  # the process is exiting anyway; nothing to save
        jax.block_until_ready(_IN_FLIGHT)
    _IN_FLIGHT.clear()


class FastTrainer(BatchedTrainer):
    """`BatchedTrainer` for a model with `fast_kernels` and SGD with momentum and coupled decay.

    Same state, same outputs, same resumable layout as the plain trainer; only the programs
    that train and evaluate differ. Build it with `make_fast_trainer`.

    Args (beyond BatchedTrainer's):
        kernels: `fast_kernels(model)`.
        eval_budget: on a CPU, floats of activations of one block of members for one
            evaluation batch (sets the test batch; speed and memory, not results): small
            enough to stay in the cache. Elsewhere the test batch is eval_batch_size.
        seed_block: members trained together, block after block (speed, not results).
            Default: on a CPU the kernels' own, whose working set stays in the cache; on an
            accelerator all members in one block, since it runs a block's members in
            parallel and the blocks one after another.
        unroll: optimizer steps per iteration of the compiled step loop (speed, not
            results). Default 1: 4 was slower on a 2-core CPU, 4 and 16 on an H200 GPU
            (benchmarks/epoch_variants.py; README, Training speed).
    """

    # Orders drawn ahead are kept one epoch per key set (a chunk of members of a zoo run), at
    # most this many order entries in all (1 GiB of int32): every chunk of a paper-size zoo
    # (250 x 60,000) fits many times over, so none is evicted before its next epoch takes it.
    max_prefetched_entries = 1 << 28

    def __init__(self, model, kernels, loss_fn: Callable[[Array, Array], Array],
                 batch_size: int, eval_batch_size: int = 1000,
                 eval_budget: int = 250_000, seed_block: int | None = None,
                 unroll: int = 1):
        super().__init__(model, sgd_with_weight_decay, loss_fn, batch_size, eval_batch_size)
        self.kernels = kernels
        checked = speed_options(seed_block=seed_block, unroll=unroll, eval_budget=eval_budget)
        self.eval_budget = checked.get("eval_budget", 250_000)
        self.seed_block = checked.get("seed_block")
        self.unroll = checked.get("unroll", 1)
        self._orders = jax.jit(self._epoch_orders, static_argnums=(2,))
        self._programs = {}
        # the next epoch's data orders drawn ahead: (members' keys, rows, mesh) -> (epoch, orders)
        self._prefetched: dict = {}

    def block_size(self, cpu: bool, sharded: bool = False) -> int | None:
        """Members per block (None: all in one) where the members live on a CPU or not, on
        one device or sharded over several."""
        if self.seed_block is not None:
            return self.seed_block
        if not cpu:
            return None
        return self.kernels.sharded_seed_block if sharded else self.kernels.seed_block

    def _block_of(self, state: MemberState, mesh) -> int | None:
        """`block_size` for members in `state`, sharded over `mesh` (`_member_mesh(state)`):
        the one choice that the training and evaluation programs and the test batch share."""
        return self.block_size(_on_cpu(state.params), mesh is not None)

    def _program(self, fn, mesh, in_specs: str, **static):
        """`fn` with the static arguments `static` (its members in blocks of `block`, ...),
        jitted once per mesh and static values, with `_compile_options()` (asked on first use,
        so that building a trainer does not start JAX). With a mesh, under shard_map: members
        sharded ("m" in `in_specs`) or replicated ("r"), each device running its own
        members."""
        key = (fn.__name__, mesh, tuple(sorted(static.items())))
        if key not in self._programs:
            fn = functools.partial(fn, **static)
            if mesh is not None:
                spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
                specs = tuple(spec if c == "m" else jax.sharding.PartitionSpec()
                              for c in in_specs)
                fn = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=spec,
                                   check_vma=False)
            self._programs[key] = jax.jit(fn, compiler_options=_compile_options(mesh is not None))
        return self._programs[key]

    def train_epochs(self, state: MemberState, hparams: HParams, x: Array, y: Array,
                     first_epoch: int, n_epochs: int, last_epoch: int | None = None):
        self._check_one_batch(x)
        mesh = _member_mesh(state)
        # Members sharded over devices (wsjax.sharding): each device trains its own members,
        # and every output stays sharded member by member.
        fn = self._program(self._all_epoch, mesh, "mmrrm", block=self._block_of(state, mesh),
                           unroll=self.unroll)
        # The data orders are drawn by a program of their own: its host callback (see
        # `permutations`) must not run inside a program that spans several devices.
        keys = jnp.asarray(jax.device_get(state.shuffle_key))
        tag = (np.asarray(jax.random.key_data(keys)).tobytes(), x.shape[0], mesh)
        outs = []
        for e in range(first_epoch, first_epoch + n_epochs):
            epoch, orders = self._prefetched.pop(tag, (None, None))
            if epoch != e:
                orders = self._orders_on(keys, e, x.shape[0], mesh)
            state, out = fn(state, hparams, x, y, orders)
            outs.append(out)
            # The next epoch's orders are drawn while this one trains and, after the last,
            # while the caller evaluates and saves: on a CPU they had been a tenth of an FFNN
            # epoch, with the cores half idle (README, Training speed).
            if last_epoch is None or e < last_epoch:
                self._draw_ahead(tag, e + 1, self._orders_on(keys, e + 1, x.shape[0], mesh))
        loss, snaps, finite = (jnp.concatenate(o, axis=1) if len(outs) > 1 else o[0]
                               for o in zip(*outs, strict=True))
        return state, loss, snaps, finite

    def _draw_ahead(self, tag, epoch: int, orders: Array) -> None:
        """Keeps `orders` of `epoch` for the key set `tag`, the oldest other key sets' dropped
        once more than `max_prefetched_entries` order entries are kept."""
        self._prefetched[tag] = (epoch, orders)
        _drawing_ahead(orders)
        kept = sum(o.size for _, o in self._prefetched.values())
        while kept > self.max_prefetched_entries and len(self._prefetched) > 1:
            _, dropped = self._prefetched.pop(next(iter(self._prefetched)))
            kept -= dropped.size

    def block_until_ready(self) -> None:
        """Waits for the work this trainer started ahead: the next epoch's data orders. A
        benchmark that times one epoch per call calls it, so that each call pays for one
        epoch's orders, as an epoch of a long run does."""
        jax.block_until_ready([o for _, o in self._prefetched.values()])

    def _orders_on(self, keys: Array, epoch: int, n: int, mesh) -> Array:
        """`_epoch_orders` of `epoch` [S, n], sharded member by member over `mesh` (or None)."""
        orders = self._orders(keys, jnp.int32(epoch), n)
        if mesh is not None:
            orders = jax.device_put(orders, jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec(mesh.axis_names[0])))
        return orders

    def _epoch_orders(self, shuffle_key: Array, epoch: Array, n: int) -> Array:
        """The order [S, n] of the training set in `epoch` for each member, as the plain
        trainer draws it (`wsjax.train.epoch_key`)."""
        return permutations(jax.vmap(epoch_key, in_axes=(0, None))(shuffle_key, epoch), n)

    def _loss_and_dout(self, out: Array, y: Array):
        """Per-member loss [S] and dLoss/dout [S, B, C] of outputs [S, B, C], labels [S, B]."""
        return jax.vmap(jax.value_and_grad(self.loss_fn))(out, y)

    def _all_epoch(self, state: MemberState, hp: HParams, x: Array, y: Array, orders: Array,
                   block: int | None, unroll: int):
        """One epoch of all members, the data taken in `orders` [S, N], in blocks of `block`,
        `unroll` steps per iteration of the step loop.

        Returns (state, (loss [S, 1], flat weights [S, 1, P], finite [S, 1])).
        """
        k = self.kernels
        members = state.shuffle_key.shape[0]
        trace, replace_trace = _find_trace(state.opt_state)
        # Members run in blocks, one after another: a block's weights and activations stay in
        # cache for the whole loop over steps.
        split, merge = _member_blocks(members, block)
        inputs = jax.tree.map(split, (k.to_weights(state.params), k.to_weights(trace), hp,
                                      orders))
        feats = k.prepare(x)
        w, t, loss, flat, finite = jax.tree.map(merge, jax.lax.map(
            lambda b: self._block_epoch(*b, feats, y, unroll), inputs))
        new_state = MemberState(k.to_params(w), replace_trace(k.to_params(t)), state.shuffle_key)
        return new_state, (loss[:, None], flat[:, None], finite[:, None])

    def _block_epoch(self, w, t, hp: HParams, orders: Array, feats: Array, y: Array,
                     unroll: int = 1):
        """One epoch of one block of s members on the training set's features [N, ...]
        (`kernels.prepare`), in `orders` [s, N].

        Returns (weights, traces, mean loss [s], flat weights [s, P], finite [s]).
        """
        k = self.kernels
        members = orders.shape[0]
        steps = feats.shape[0] // self.batch_size

        def per_member(v, ndim, axis):
            return jnp.expand_dims(v, [a for a in range(ndim) if a != axis % ndim])

        def step(carry, idx):
            w, t = carry
            out, cache = k.forward(w, feats[idx])
            loss, d_out = self._loss_and_dout(out, y[idx])
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
        (w, t), losses = jax.lax.scan(step, (k.pack(w), k.pack(t)), batches.transpose(1, 0, 2),
                                      unroll=unroll)
        w, t = k.unpack(w), k.unpack(t)
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(k.to_params(w))
        finite = jnp.all(jnp.isfinite(losses), axis=0) & jnp.all(jnp.isfinite(flat), axis=1)
        return w, t, jnp.mean(losses, axis=0), flat, finite

    def _eval_program(self, state: MemberState):
        mesh = _member_mesh(state)
        return self._program(self._all_eval, mesh, "mrrr", block=self._block_of(state, mesh))

    def _all_eval(self, params, x: Array, y: Array, n_valid: Array, block: int | None):
        """Accuracy [S] and mean per-example loss [S] over the first n_valid rows of x, y.

        x [nb, eb, ...], y [nb, eb]: the test set cut into batches (padded). Members run in
        blocks as in training, so that a block's activations for a test batch stay in cache.
        """
        k = self.kernels
        members = jax.tree.leaves(params)[0].shape[0]
        split, merge = _member_blocks(members, block)
        per_example = jax.vmap(jax.vmap(lambda o, t: self.loss_fn(o[None], t[None])),
                               in_axes=(0, None))
        nb, eb = x.shape[:2]
        mask = (jnp.arange(nb * eb) < n_valid).reshape(nb, eb)
        # the features of the test set once, not once per block of members
        feats = k.prepare(x.reshape(nb * eb, *x.shape[2:]))
        feats = feats.reshape(nb, eb, *feats.shape[1:])

        def block_eval(w):
            size = w[0].shape[0]
            w = k.pack(w)

            def body(totals, batch):
                fb, yb, mb = batch
                out, _ = k.forward(w, fb, shared=True)                      # [s, eb, C]
                correct = jnp.sum((jnp.argmax(out, -1) == yb) * mb, axis=1)
                loss = jnp.sum(jnp.where(mb, per_example(out, yb), 0.0), axis=1)
                return (totals[0] + correct, totals[1] + loss), None

            zeros = jnp.zeros((size,), jnp.float32)
            return jax.lax.scan(body, (zeros, zeros), (feats, y, mask))[0]

        correct, loss = jax.tree.map(
            merge, jax.lax.map(block_eval, jax.tree.map(split, k.to_weights(params))))
        return correct / n_valid, loss / n_valid

    def eval_batch(self, state: MemberState) -> int:
        if not _on_cpu(state.params):
            return self.eval_batch_size
        # The activations of one block of members for one test batch stay under eval_budget
        # floats.
        members = jax.tree.leaves(state.params)[0].shape[0]
        per_example = 600 if isinstance(self.kernels, CNNKernels) else 30
        block = min(self._block_of(state, _member_mesh(state)), max(1, members))
        return max(1, min(self.eval_batch_size, self.eval_budget // (block * per_example)))


FAST_OPTIONS = ("eval_budget", "seed_block", "unroll")  # FastTrainer's speed-only arguments


def speed_options(**options) -> dict[str, int]:
    """The fast trainer's speed options (`FAST_OPTIONS`) with the None ones (the default) left
    out; ConfigError for an unknown name or a value that is not a positive integer."""
    unknown = sorted(set(options) - set(FAST_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown trainer option(s) {', '.join(unknown)}; known: "
                          f"{', '.join(FAST_OPTIONS)}")
    options = {k: v for k, v in options.items() if v is not None}
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"trainer option {name} must be a positive integer (or None for "
                              f"the default), got {value!r}")
    return {k: int(v) for k, v in options.items()}


def make_fast_trainer(model, optimizer, loss_fn: Callable[[Array, Array], Array],
                      batch_size: int, **kwargs: Any) -> BatchedTrainer:
    """A FastTrainer where `model` and `optimizer` are supported, else the plain trainer.

    `optimizer` must be `wsjax.train.sgd_with_weight_decay` itself for the fast path.
    """
    kernels = fast_kernels(model)
    if kernels is None or optimizer is not sgd_with_weight_decay:
        # the fast trainer's speed options mean nothing to the plain one
        plain = {k: v for k, v in kwargs.items() if k not in FAST_OPTIONS}
        return BatchedTrainer(model, optimizer, loss_fn, batch_size, **plain)
    return FastTrainer(model, kernels, loss_fn, batch_size, **kwargs)
