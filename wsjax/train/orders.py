"""Per-member data orders: each epoch's permutation of the training set, bit-equal to
`jax.random.permutation`, drawn on the host one epoch ahead.

A member's shuffle key and the epoch fix its order: `permutation(epoch_key(key, e), n)`. On a
CPU, XLA's sort is slow; there the random sort keys are drawn in JAX exactly as
`jax.random.permutation` draws them and the sorting is done by NumPy in a host callback, in a
program of its own (a host callback must not run inside a program that spans several devices).
`OrderSource` draws the next epoch's orders while the current epoch trains.
"""

from __future__ import annotations

import atexit
import contextlib
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.train.blocks import usable_cores

__all__ = ["epoch_key", "permutations", "OrderSource"]

Array = jax.Array


def epoch_key(shuffle_key: Array, epoch: Array) -> Array:
    """The key of a member's data order in `epoch`: fold_in of its shuffle key (key data, as
    MemberState holds it). The order is jax.random.permutation(epoch_key(...), n)."""
    return jax.random.fold_in(jax.random.wrap_key_data(shuffle_key), epoch)


def _shuffle_rows(sort_keys: np.ndarray) -> np.ndarray:
    """uint32 sort keys [rounds, S, n] -> the permutations [S, n] that the rounds give: each
    round a stable sort of the current order by that round's keys.

    A key and its position packed into one unique 64-bit word make an unstable sort give the
    stable order (NumPy's SIMD sort of 64-bit words is faster than a stable sort of uint32).
    The key's top bit is flipped and the word sorted as a signed integer, which keeps the
    order: NumPy sorts int64 faster than uint64. One row at a time, so that its [n] arrays stay
    in cache.
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
    memory per round; unrolled here, XLA fuses the 20 rounds into one loop.
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


class OrderSource:
    """The data orders [S, n] of a set of members for an epoch, the next epoch's drawn ahead.

    Orders drawn ahead are kept one epoch per key set (a chunk of members of a zoo run), at
    most `max_entries` order entries in all (1 GiB of int32): every chunk of a paper-size zoo
    fits many times over, so none is evicted before its next epoch takes it.
    """

    max_entries = 1 << 28

    def __init__(self):
        self._draw = jax.jit(self._epoch_orders, static_argnums=(2,))
        self.prefetched: dict = {}  # (keys, rows, mesh) -> (epoch, orders)

    @staticmethod
    def _epoch_orders(shuffle_key: Array, epoch: Array, n: int) -> Array:
        return permutations(jax.vmap(epoch_key, in_axes=(0, None))(shuffle_key, epoch), n)

    def draw(self, keys: Array, epoch: int, n: int, mesh) -> Array:
        """Orders of `epoch` [S, n] for the members' shuffle keys [S, ...], sharded member by
        member over `mesh` (or None)."""
        orders = self._draw(keys, jnp.int32(epoch), n)
        if mesh is not None:
            orders = jax.device_put(orders, jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec(mesh.axis_names[0])))
        return orders

    def get(self, keys: Array, epoch: int, n: int, mesh, ahead: bool) -> Array:
        """`draw(keys, epoch, ...)`, taken from the orders drawn ahead where they are there;
        with `ahead`, the next epoch's are drawn now and kept."""
        tag = (np.asarray(jax.random.key_data(keys)).tobytes(), n, mesh)
        kept_epoch, orders = self.prefetched.pop(tag, (None, None))
        if kept_epoch != epoch:
            orders = self.draw(keys, epoch, n, mesh)
        if ahead:
            self._keep(tag, epoch + 1, self.draw(keys, epoch + 1, n, mesh))
        return orders

    def _keep(self, tag, epoch: int, orders: Array) -> None:
        self.prefetched[tag] = (epoch, orders)
        _drawing_ahead(orders)
        kept = sum(o.size for _, o in self.prefetched.values())
        while kept > self.max_entries and len(self.prefetched) > 1:
            _, dropped = self.prefetched.pop(next(iter(self.prefetched)))
            kept -= dropped.size

    def block_until_ready(self) -> None:
        jax.block_until_ready([o for _, o in self.prefetched.values()])
