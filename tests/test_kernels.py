"""The training core with the hand-written kernels (wsjax.train.kernels), its data orders,
blocks and compile options, against the plain vmapped trainer and a per-seed loop."""

from __future__ import annotations

import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import per_seed_reference, small

import wsjax.train.blocks as blocks
import wsjax.train.kernels as kernels_module
import wsjax.train.orders as orders_module
from wsjax.models import ARCHS
from wsjax.train import (
    BatchedTrainer,
    HParams,
    PlainTrainer,
    mse_mean,
    mse_sum,
    sgd_with_weight_decay,
)
from wsjax.train.kernels import CNNKernels, _conv2_fold, _conv2_matrix, hand_kernels
from wsjax.zoo import ZooConfig, make_trainer

TOL = dict(rtol=2e-5, atol=2e-6)


def hparams(name: str) -> HParams:
    spec = ARCHS[name]
    return HParams(spec.learning_rate, spec.momentum, spec.weight_decay)


def both(name: str, loss=mse_sum, seed_block: int = 2):
    spec = ARCHS[name]
    plain = PlainTrainer(spec.make_module(), sgd_with_weight_decay, loss, spec.batch_size)
    fast = BatchedTrainer(spec.make_module(), sgd_with_weight_decay, loss, spec.batch_size,
                          seed_block=seed_block)
    assert fast.kernels is not None
    return plain, fast


def shaped(ds, name):
    shape = ARCHS[name].input_shape
    return (jnp.asarray(ds.x_train.reshape(-1, *shape)), jnp.asarray(ds.y_train),
            jnp.asarray(ds.x_test.reshape(-1, *shape)), jnp.asarray(ds.y_test))


@pytest.mark.parametrize("name,n_train,loss", [("ffnn", 40, mse_sum), ("cnn", 48, mse_sum),
                                               ("ffnn", 40, mse_mean)])
def test_fast_epochs_equal_plain_trainer(digits, name, n_train, loss):
    x, y, _, _ = shaped(small(digits, n_train), name)
    plain, fast = both(name, loss)
    members = 5  # three blocks of two, the last padded
    hp = plain.broadcast_hparams(hparams(name), members)
    state = plain.init(jax.random.split(jax.random.key(3), members), hp, x)
    want = plain.train_epochs(state, hp, x, y, 1, 2)
    got = fast.train_epochs(state, hp, x, y, 1, 2)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), **TOL)
    # the weights moved: the comparison is not between two initialisations
    assert not np.allclose(want[2][:, -1], plain.flat_params(state))


def test_next_epochs_orders_drawn_ahead_are_the_ones_it_would_draw(digits, monkeypatch):
    """Each call draws the next epoch's orders ahead; the next call takes them instead of
    drawing its own, and trains as a fresh trainer (and the plain one) does."""
    x, y, _, _ = shaped(small(digits, 40), "ffnn")
    plain, trainer = both("ffnn")
    hp = plain.broadcast_hparams(hparams("ffnn"), 3)
    state = plain.init(jax.random.split(jax.random.key(8), 3), hp, x)
    first = trainer.train_epochs(state, hp, x, y, 1, 1)
    (tag, (epoch, ahead)), = trainer.orders.prefetched.items()
    assert epoch == 2
    keys = jax.vmap(orders_module.epoch_key, in_axes=(0, None))(state.shuffle_key, 2)
    want = orders_module.permutations(keys, 40)
    np.testing.assert_array_equal(np.asarray(ahead), np.asarray(want))
    assert not np.array_equal(np.asarray(ahead)[0], np.arange(40))  # shuffled
    drawn = []
    real = trainer.orders.draw
    monkeypatch.setattr(trainer.orders, "draw", lambda *a: drawn.append(a[1]) or real(*a))
    second = trainer.train_epochs(first[0], hp, x, y, 2, 1)
    assert drawn == [3]  # epoch 2's orders were not drawn again, epoch 3's were drawn ahead
    assert list(trainer.orders.prefetched) == [tag] and trainer.orders.prefetched[tag][0] == 3
    fresh = both("ffnn")[1].train_epochs(first[0], hp, x, y, 2, 1)
    want = plain.train_epochs(state, hp, x, y, 1, 2)
    for g, f in zip(jax.tree.leaves(second), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(f))
    np.testing.assert_allclose(np.asarray(second[2][:, 0]), np.asarray(want[2][:, 1]), **TOL)
    # the run's last epoch draws nothing ahead, and takes the orders drawn for it
    drawn.clear()
    trainer.train_epochs(second[0], hp, x, y, 3, 1, last_epoch=3)
    assert drawn == [] and trainer.orders.prefetched == {}
    # other members' keys (chunks of a zoo run) each keep their own next epoch; the oldest
    # go once more than max_prefetched_entries order entries are kept
    tags = []
    for seed in range(6):
        other = plain.init(jax.random.split(jax.random.key(100 + seed), 3), hp, x)
        trainer.train_epochs(other, hp, x, y, 1, 1)
        tags.append(next(reversed(trainer.orders.prefetched)))
    assert list(trainer.orders.prefetched) == tags and len(set(tags)) == 6
    assert [e for e, _ in trainer.orders.prefetched.values()] == [2] * 6
    trainer.orders.max_entries = 2 * 3 * 40
    trainer.train_epochs(other, hp, x, y, 2, 1)  # the newest key set again, now at epoch 3
    kept = trainer.orders.prefetched
    assert list(kept) == tags[4:] and kept[tags[5]][0] == 3
    trainer.block_until_ready()


def test_process_exits_cleanly_while_orders_are_drawn_ahead():
    """A process that exits right after an epoch, the next epoch's orders still being drawn,
    exits with 0 (without the exit hook that waits for them it aborted in XLA's teardown: on
    this case 3 runs of 3)."""
    code = """if True:
        from wsjax.sharding import use_cpu_cores
        use_cpu_cores(2)  # as the zoo command does
        import jax, jax.numpy as jnp, numpy as np
        from wsjax.models import ARCHS
        from wsjax.train import BatchedTrainer, mse_sum, sgd_with_weight_decay, HParams
        spec = ARCHS["ffnn"]
        trainer = BatchedTrainer(spec.make_module(), sgd_with_weight_decay, mse_sum, 4)
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.random((4000, 196), dtype=np.float32))
        y = jnp.asarray(rng.integers(0, 10, 4000).astype(np.int32))
        hp = trainer.broadcast_hparams(HParams(0.03, 0.9, 3e-4), 64)
        state = trainer.init(jax.random.split(jax.random.key(0), 64), hp, x)
        jax.block_until_ready(trainer.train_epochs(state, hp, x, y, 1, 1))
        print("trained")  # and exits, the next epoch's orders drawn ahead
    """
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "trained"
    assert "terminate" not in res.stderr, res.stderr[-2000:]


@pytest.mark.parametrize("name,n_train", [("ffnn", 40), ("cnn", 60)])
def test_fast_zoo_equals_per_seed_loop(digits, name, n_train):
    ds = small(digits, n_train, n_test=50)
    _, fast = both(name)
    keys = jax.random.split(jax.random.key(42), 3)
    result = fast.fit(keys, ds, epochs=2, hparams=hparams(name))
    for i in range(3):
        ref = per_seed_reference(name, keys[i], ds, epochs=2)
        np.testing.assert_allclose(result.snapshots[i], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["ffnn", "cnn"])
def test_fast_evaluation_equals_plain(digits, name):
    _, _, xt, yt = shaped(small(digits, 12, n_test=157), name)
    plain, fast = both(name)
    hp = plain.broadcast_hparams(hparams(name), 4)
    state = plain.init(jax.random.split(jax.random.key(0), 4), hp, xt)
    fast.eval_batch_size = 50  # several test batches and a padded last one
    for g, w in zip(fast.evaluate(state, xt, yt), plain.evaluate(state, xt, yt), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), **TOL)


def test_cnn_gradient_with_tied_pool_windows():
    """Blank and constant images tie inside pool windows; the gradient must go where JAX's own
    derivative of the Flax max-pool sends it."""
    module = ARCHS["cnn"].make_module()
    rng = np.random.default_rng(0)
    x = rng.random((6, 14, 14, 1)).astype(np.float32)
    x[0] = 0.0
    x[1] = 0.5
    x[2, :, :7] = 0.0
    y = jnp.asarray([1, 2, 3, 4, 5, 6])
    params = jax.vmap(lambda k: module.init(k, jnp.asarray(x[:1]))["params"])(
        jax.random.split(jax.random.key(1), 2))
    want = jax.vmap(jax.grad(lambda p: mse_sum(module.apply({"params": p}, x), y)))(params)
    kernels = CNNKernels(module)
    w = kernels.to_weights(params)
    xs = jnp.broadcast_to(kernels.prepare(jnp.asarray(x)), (2, 6, 36, 9))
    out, cache = kernels.forward(w, xs)
    d_out = jax.vmap(jax.grad(mse_sum))(out, jnp.broadcast_to(y, (2, 6)))
    got = kernels.to_params(kernels.backward(w, cache, d_out))
    for g, v in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=1e-5, atol=1e-6)


def test_unsupported_configurations_fall_back_to_plain_trainer(digits):
    spec = ARCHS["ffnn"]
    assert hand_kernels(spec.make_module(use_bias=True)) is None
    assert hand_kernels(nn.Dense(3)) is None
    assert BatchedTrainer(spec.make_module(), lambda hp: optax.adam(1e-3), mse_sum,
                          4).kernels is None
    assert make_trainer(ZooConfig(arch="cnn", dataset="digits")).kernels is not None
    assert make_trainer(ZooConfig(arch="cnn", dataset="digits"), use_kernels=False).kernels \
        is None
    assert type(make_trainer(ZooConfig(arch="cnn", dataset="digits"), fast=False)) \
        is PlainTrainer
    # a model with biases trains on the general path and equals the plain trainer
    config = ZooConfig(arch="ffnn", dataset="digits", use_bias=True, seeds=2, epochs=1)
    trainer = make_trainer(config, seed_block=2, unroll=3)
    assert trainer.kernels is None
    ds = small(digits, 40, n_test=50)
    keys = jax.random.split(jax.random.key(0), 2)
    got = trainer.fit(keys, ds, epochs=1, hparams=config.hparams())
    want = PlainTrainer(spec.make_module(use_bias=True), sgd_with_weight_decay, mse_sum,
                        spec.batch_size).fit(keys, ds, epochs=1, hparams=config.hparams())
    np.testing.assert_allclose(got.snapshots, want.snapshots, **TOL)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 60_000])
def test_host_permutations_equal_jax_permutation(n):
    """Sorted on the host, the data orders are jax.random.permutation's bit for bit. At 60,000
    rows two of the 32-bit sort keys of a row collide in most rows, so the stable order of
    equal keys is checked too."""
    from wsjax.train.orders import permutations

    keys = jax.random.split(jax.random.key(7), 6)
    want = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
    got = jax.jit(lambda k: permutations(k, n, on_host=True))(keys)
    assert got.dtype == want.dtype and got.shape == (6, n)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    if n == 60_000:  # the claim above: some row really has equal keys in a round
        sub = jax.vmap(lambda k: jax.random.bits(jax.random.split(k)[1], (n,), jnp.uint32))(keys)
        assert any(len(np.unique(row)) < n for row in np.asarray(sub))


def test_host_sort_orders_extreme_and_equal_keys_stably():
    """`_shuffle_rows` against NumPy's stable argsort, round after round, on keys at both ends
    and both sides of the top bit, with ties."""
    from wsjax.train.orders import _shuffle_rows

    top = 2**31
    keys = np.array([[[2**32 - 1, 0, top, top - 1, top, 0, 7, 2**32 - 1, top + 1]],
                     [[5, 5, 2**32 - 1, 0, top - 1, top, top, 5, 0]]], np.uint32)
    perm = np.arange(keys.shape[2])
    for r in range(keys.shape[0]):
        perm = perm[np.argsort(keys[r, 0], kind="stable")]
    np.testing.assert_array_equal(_shuffle_rows(keys)[0], perm)


def test_dense_per_example_and_single_product_agree(monkeypatch):
    """`_dense`'s CPU form (a product per example) and its form elsewhere (one product), on
    whatever platform the tests run."""
    fast = kernels_module

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 196)).astype(np.float32)
    w = rng.standard_normal((3, 10, 196)).astype(np.float32)
    want = np.einsum("sbi,soi->sbo", x.astype(np.float64), w.astype(np.float64))

    def products():
        eqns = jax.make_jaxpr(lambda a, b: fast._dense(a, b))(x, w).jaxpr.eqns  # traced anew
        return sum(e.primitive.name == "dot_general" for e in eqns)

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    per_example = np.asarray(fast._dense(jnp.asarray(x), jnp.asarray(w)))
    assert products() == 4
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    one = np.asarray(fast._dense(jnp.asarray(x), jnp.asarray(w)))
    assert products() == 1
    np.testing.assert_allclose(per_example, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(one, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 5, 4097])
def test_unrolled_threefry_bits_equal_jax_random_bits(n):
    from wsjax.train.orders import _random_bits, _threefry_bits

    keys = jax.random.split(jax.random.key(11), 3)
    want = jax.vmap(lambda k: jax.random.bits(k, (n,), jnp.uint32))(keys)
    got = jax.jit(jax.vmap(lambda k: _threefry_bits(k, n)))(keys)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    def primitives(key):
        eqns = jax.make_jaxpr(lambda k: _random_bits(k, n))(key).jaxpr.eqns
        return {e.primitive.name for e in eqns}

    # threefry keys take the unrolled hash, other key implementations jax.random.bits
    assert "random_bits" not in primitives(keys[0])
    rbg = jax.random.key(11, impl="rbg")
    assert "random_bits" in primitives(rbg)
    np.testing.assert_array_equal(np.asarray(_random_bits(rbg, n)),
                                  np.asarray(jax.random.bits(rbg, (n,), jnp.uint32)))


def test_host_permutations_equal_jax_permutation_without_partitionable_threefry():
    from wsjax.train.orders import permutations

    keys = jax.random.split(jax.random.key(5), 3)
    with jax.threefry_partitionable(False):
        want = jax.vmap(lambda k: jax.random.permutation(k, 2000))(keys)
        got = jax.jit(lambda k: permutations(k, 2000, on_host=True))(keys)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_speed_options_must_be_positive_and_known():
    from wsjax.errors import ConfigError

    spec = ARCHS["ffnn"]
    for option in ("seed_block", "unroll", "eval_budget"):
        for bad in (0, -3):
            with pytest.raises(ConfigError, match=option):
                BatchedTrainer(spec.make_module(), sgd_with_weight_decay, mse_sum,
                               spec.batch_size, **{option: bad})
    with pytest.raises(ConfigError, match="unknown trainer option.*unrol"):
        make_trainer(ZooConfig(arch="ffnn", dataset="digits"), unrol=4)
    # checked on the plain path too; None means the default
    for config in (ZooConfig(arch="ffnn", dataset="digits"),
                   ZooConfig(arch="ffnn", dataset="digits", use_bias=True)):
        for bad in (0, 2.5, "4", True):
            with pytest.raises(ConfigError, match="unroll must be a positive integer"):
                make_trainer(config, unroll=bad)
    trainer = make_trainer(ZooConfig(arch="ffnn", dataset="digits"), unroll=None,
                           seed_block=None, eval_budget=None)
    assert (trainer.unroll, trainer.seed_block, trainer.eval_budget) == (1, None, 250_000)


@pytest.mark.parametrize("name,n_train", [("ffnn", 40), ("cnn", 60)])
def test_unrolled_step_loop_changes_speed_not_results(digits, name, n_train):
    """Several optimizer steps per loop iteration, the step count (10, 5) not a multiple of
    the unroll: the same epochs as one step per iteration."""
    x, y, _, _ = shaped(small(digits, n_train), name)
    _, once = both(name)
    _, unrolled = both(name)
    unrolled.unroll = 3
    hp = once.broadcast_hparams(hparams(name), 3)
    state = once.init(jax.random.split(jax.random.key(11), 3), hp, x)
    want = once.train_epochs(state, hp, x, y, 1, 2)
    got = unrolled.train_epochs(state, hp, x, y, 1, 2)
    assert {dict(k[2])["unroll"] for k in unrolled.programs._cache if k[0] == "_all_epoch"} == {3}
    assert {dict(k[2])["unroll"] for k in once.programs._cache if k[0] == "_all_epoch"} == {1}

    from jax.extend.core import jaxprs_in_params

    def scan_unrolls(trainer):
        """The unroll of every scan in the traced epoch program."""
        fn = functools.partial(trainer._all_epoch, block=2, unroll=trainer.unroll)
        orders = jnp.zeros((3, x.shape[0]), jnp.int32)
        found = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                if eqn.primitive.name == "scan":
                    found.append(eqn.params["unroll"])
                for sub in jaxprs_in_params(eqn.params):
                    walk(sub)

        walk(jax.make_jaxpr(fn)(state, hp, x, y, orders).jaxpr)
        return found

    assert 3 in scan_unrolls(unrolled) and 3 not in scan_unrolls(once)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), **TOL)


def test_conv2_as_dense_matrix_equals_convolution():
    """The CNN's second conv as one dense matrix (and its gradient fold) against lax's
    convolution and JAX's own derivative of the matrix construction."""
    rng = np.random.default_rng(3)
    members, batch, c1, c2 = 3, 5, 16, 8
    w2 = jnp.asarray(rng.normal(size=(members, 9 * c1, c2)), jnp.float32)
    a1 = jnp.asarray(rng.normal(size=(members, batch, 3, 3, c1)), jnp.float32)
    big = _conv2_matrix(w2)
    assert big.shape == (members, 9 * c1, 4 * c2)
    z = jnp.einsum("sbk,skn->sbn", a1.reshape(members, batch, -1), big,
                   precision="highest").reshape(members, batch, 2, 2, c2)
    ref = jnp.stack([jax.lax.conv_general_dilated(
        a1[s], w2[s].reshape(3, 3, c1, c2), (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
        for s in range(members)])
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5)
    # 16 of the 36 (input place, output place) blocks hold a tap: the rest are zeros
    blocks = np.abs(np.asarray(big)).reshape(members, 9, c1, 4, c2).sum(axis=(0, 2, 4))
    assert np.count_nonzero(blocks) == 16
    g = jnp.asarray(rng.normal(size=big.shape), jnp.float32)
    _, vjp = jax.vjp(_conv2_matrix, w2)
    np.testing.assert_allclose(_conv2_fold(g), vjp(g)[0], rtol=1e-6, atol=1e-6)


def test_ffnn_packed_weights_round_trip():
    """The FFNN's training-loop layout (members minor in the 10 x 10 layers) holds the same
    weights, and its hyperparameters broadcast along the member axis of each array."""
    from wsjax.train.kernels import FFNNKernels

    kernels = hand_kernels(ARCHS["ffnn"].make_module())
    assert isinstance(kernels, FFNNKernels)
    rng = np.random.default_rng(0)
    w = tuple(jnp.asarray(rng.random((3, o, i), dtype=np.float32))
              for o, i in ((10, 196), (10, 10), (10, 10)))
    packed = kernels.pack(w)
    for p, axis in zip(packed, kernels.member_axes, strict=True):
        assert p.shape[axis] == 3
    np.testing.assert_array_equal(packed[1][:, :, 2], w[1][2])
    for a, b in zip(kernels.unpack(packed), w, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cpu_compile_options_change_speed_not_results(digits, monkeypatch):
    """Without the XLA options (an XLA that lacks them) the fast trainer computes the same."""
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU compile options apply only where JAX's default backend is the CPU")
    x, y, xt, yt = shaped(small(digits, 40, n_test=30), "ffnn")
    assert blocks.compile_options() == blocks._CPU_OPTIONS
    assert blocks.compile_options(True) == {**blocks._CPU_OPTIONS,
                                             **blocks._SHARDED_CPU_OPTIONS}
    _, trainer = both("ffnn")
    hp = trainer.broadcast_hparams(hparams("ffnn"), 3)
    state = trainer.init(jax.random.split(jax.random.key(5), 3), hp, x)
    runs = (lambda t: t.train_epochs(state, hp, x, y, 1, 1), lambda t: t.evaluate(state, xt, yt))
    with_options = [run(trainer) for run in runs]
    monkeypatch.setattr(blocks, "compile_options", lambda sharded=False: None)
    _, trainer = both("ffnn")
    for run, want in zip(runs, with_options, strict=True):
        for g, w in zip(jax.tree.leaves(run(trainer)), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), **TOL)


@pytest.mark.parametrize("name", ["ffnn", "cnn"])
def test_accelerator_layout_runs_all_members_as_one_block(digits, name, monkeypatch):
    """Off the CPU the members are not cut into blocks and the test batch is not cut to a
    cache budget; checked by having the trainer take its platform for a CPU, then for an
    accelerator."""
    import wsjax.train.core as core

    x, y, xt, yt = shaped(small(digits, 40, n_test=30), name)
    plain, _ = both(name)
    trainer = BatchedTrainer(ARCHS[name].make_module(), sgd_with_weight_decay, mse_sum,
                             ARCHS[name].batch_size, eval_batch_size=16, eval_budget=600)
    members = 5
    hp = plain.broadcast_hparams(hparams(name), members)
    state = plain.init(jax.random.split(jax.random.key(7), members), hp, x)
    assert trainer.block_size(cpu=True) == trainer.kernels.seed_block
    assert trainer.block_size(cpu=True, sharded=True) == trainer.kernels.sharded_seed_block
    monkeypatch.setattr(core, "on_cpu", lambda tree: True)
    assert trainer.eval_batch(state) < 16
    monkeypatch.setattr(core, "on_cpu", lambda tree: False)
    assert trainer.block_size(cpu=False) is None
    assert trainer.eval_batch(state) == 16
    got = trainer.train_epochs(state, hp, x, y, 1, 1), trainer.evaluate(state, xt, yt)
    assert {dict(key[2])["block"] for key in trainer.programs._cache} == {None}
    want = plain.train_epochs(state, hp, x, y, 1, 1), plain.evaluate(state, xt, yt)
    # products of another shape than in the other tests: summed in another order
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
