"""The batched trainer against a plain per-seed loop, determinism, chunking, divergence."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsjax.data import Dataset
from wsjax.models import ARCHS
from wsjax.train import (
    BatchedTrainer,
    HParams,
    mse_sum,
    sgd_with_weight_decay,
    softmax_cross_entropy,
)


def small(ds: Dataset, n_train: int, n_test: int = 100) -> Dataset:
    return dataclasses.replace(ds, x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train],
                               x_test=ds.x_test[:n_test], y_test=ds.y_test[:n_test])


def paper_trainer(name: str) -> tuple[BatchedTrainer, HParams]:
    spec = ARCHS[name]
    trainer = BatchedTrainer(spec.make_module(), sgd_with_weight_decay, mse_sum, spec.batch_size)
    return trainer, HParams(spec.learning_rate, spec.momentum, spec.weight_decay)


def per_seed_reference(name: str, key, ds: Dataset, epochs: int) -> np.ndarray:
    """One model, no vmap: a Python loop over epochs and a jitted single step.

    Same conventions as the trainer's docs: key -> (init_key, shuffle_key); epoch e's order is
    permutation(fold_in(shuffle_key, e)); the incomplete last batch is dropped.
    Returns [epochs+1, P] flattened weights.
    """
    spec = ARCHS[name]
    model = spec.make_module()
    init_key, shuffle_key = jax.random.split(key)
    params = model.init(init_key, jnp.asarray(ds.x_train[:1]))["params"]
    tx = optax.chain(optax.add_decayed_weights(spec.weight_decay),
                     optax.sgd(spec.learning_rate, momentum=spec.momentum))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss(p):
            out = model.apply({"params": p}, xb)
            return jnp.sum((out - jax.nn.one_hot(yb, 10)) ** 2)

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def flat(p):
        return np.concatenate([np.asarray(p[k]["kernel"]).ravel() for k in sorted(p)])

    snaps = [flat(params)]
    n, bs = len(ds.x_train), spec.batch_size
    for e in range(1, epochs + 1):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, e), n))
        for s in range(n // bs):
            idx = perm[s * bs:(s + 1) * bs]
            params, opt_state = step(params, opt_state, ds.x_train[idx], ds.y_train[idx])
        snaps.append(flat(params))
    return np.stack(snaps)


@pytest.mark.parametrize("name,n_train", [("ffnn", 160), ("cnn", 240)])
def test_vmapped_zoo_equals_per_seed_loop(digits, name, n_train):
    ds = small(digits, n_train)
    trainer, hp = paper_trainer(name)
    keys = jax.random.split(jax.random.key(42), 3)
    result = trainer.fit(keys, ds, epochs=2, hparams=hp)
    assert result.snapshots.shape == (3, 3, ARCHS[name].num_params)
    for i in range(3):
        ref = per_seed_reference(name, keys[i], ds, epochs=2)
        np.testing.assert_allclose(result.snapshots[i], ref, rtol=2e-4, atol=2e-5)


def test_output_shapes_and_determinism(digits):
    ds = small(digits, 200)
    trainer, hp = paper_trainer("ffnn")
    keys = jax.random.split(jax.random.key(0), 4)
    a = trainer.fit(keys, ds, epochs=3, hparams=hp)
    b = trainer.fit(keys, ds, epochs=3, hparams=hp)
    assert a.snapshots.shape == (4, 4, 2160) and a.snapshots.dtype == np.float32
    assert a.test_accuracy.shape == (4, 4) and a.test_loss.shape == (4, 4)
    assert a.train_loss.shape == (4, 3) and a.diverged_epoch.shape == (4,)
    for f in dataclasses.fields(a):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name))
    # Different seeds: different initialisations and different trajectories.
    assert not np.allclose(a.snapshots[0], a.snapshots[1])
    steps = np.linalg.norm(np.diff(a.snapshots, axis=1), axis=-1)
    assert (steps > 0).all()


def test_same_init_different_data_order(digits):
    """Members differ in data order too: equal init keys would still give equal runs only if
    the shuffle keys were equal as well."""
    ds = small(digits, 200)
    trainer, hp = paper_trainer("ffnn")
    k = jax.random.key(7)
    r = trainer.fit(jnp.stack([k, k]), ds, epochs=1, hparams=hp)
    np.testing.assert_array_equal(r.snapshots[0], r.snapshots[1])


def test_chunked_equals_unchunked(digits):
    ds = small(digits, 120)
    trainer, hp = paper_trainer("cnn")
    keys = jax.random.split(jax.random.key(5), 5)
    whole = trainer.fit(keys, ds, epochs=2, hparams=hp)
    chunked = trainer.fit(keys, ds, epochs=2, hparams=hp, chunk=2)
    np.testing.assert_allclose(chunked.snapshots, whole.snapshots, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(chunked.test_accuracy, whole.test_accuracy, atol=1e-6)


def test_diverging_member_is_flagged_and_others_unaffected(digits):
    ds = small(digits, 160)
    trainer, _ = paper_trainer("ffnn")
    keys = jax.random.split(jax.random.key(9), 3)
    hp = HParams(learning_rate=jnp.array([0.03, 1e8, 0.03]), momentum=0.9, weight_decay=3e-4)
    run = trainer.fit(keys, ds, epochs=3, hparams=hp)
    assert run.diverged_epoch[1] >= 1
    assert (run.diverged_epoch[[0, 2]] == -1).all()
    clean = trainer.fit(keys[jnp.array([0, 2])], ds, epochs=3,
                        hparams=HParams(0.03, 0.9, 3e-4))
    np.testing.assert_allclose(run.snapshots[[0, 2]], clean.snapshots, rtol=1e-6, atol=1e-7)
    assert np.isfinite(run.snapshots[[0, 2]]).all()


def test_per_member_hyperparameters_change_the_run(digits):
    ds = small(digits, 160)
    trainer, _ = paper_trainer("ffnn")
    k = jax.random.key(3)
    hp = HParams(learning_rate=jnp.array([0.03, 0.003]), momentum=0.9, weight_decay=3e-4)
    run = trainer.fit(jnp.stack([k, k]), ds, epochs=1, hparams=hp)
    np.testing.assert_array_equal(run.snapshots[0, 0], run.snapshots[1, 0])
    assert not np.allclose(run.snapshots[0, 1], run.snapshots[1, 1])
    single = trainer.fit(k[None], ds, epochs=1, hparams=HParams(0.003, 0.9, 3e-4))
    np.testing.assert_allclose(run.snapshots[1], single.snapshots[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["ffnn", "cnn"])
def test_learning_happens_on_digits(digits, name):
    trainer, hp = paper_trainer(name)
    ds = digits if name == "cnn" else digits.flat()
    run = trainer.fit(jax.random.split(jax.random.key(0), 6), ds, epochs=4, hparams=hp)
    acc = run.test_accuracy.mean(axis=0)
    assert acc[0] < 0.2                 # random init: about chance (0.1)
    assert acc[-1] > 0.25               # well above chance after 4 epochs
    assert run.train_loss[:, -1].mean() < run.train_loss[:, 0].mean()


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


def test_generic_trainer_with_own_model_and_adam(digits):
    """The README example: any Flax module, any optax optimizer, a per-member sweep."""
    trainer = BatchedTrainer(TinyMLP(), optimizer=lambda hp: optax.adam(hp.learning_rate),
                             loss_fn=softmax_cross_entropy, batch_size=32)
    keys = jax.random.split(jax.random.key(0), 4)
    hp = HParams(learning_rate=jnp.array([1e-4, 1e-3, 3e-3, 1e-2]))
    result = trainer.fit(keys, digits, epochs=3, hparams=hp)
    assert result.snapshots.shape == (4, 4, 196 * 32 + 32 + 32 * 10 + 10)
    assert result.test_accuracy[2, -1] > 0.8
    assert result.test_accuracy[0, -1] < result.test_accuracy[2, -1]


def test_plain_optax_transformation_is_accepted(digits):
    trainer = BatchedTrainer(TinyMLP(), optax.sgd(0.05), softmax_cross_entropy, 16)
    result = trainer.fit(jax.random.split(jax.random.key(1), 2), small(digits, 160), epochs=1)
    assert result.snapshots.shape[:2] == (2, 2)
