"""The training core's general path on five models against the plain vmapped trainer and a
per-seed loop; chunking, divergence, compile counts and the package's import graph."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import small

from wsjax.models import ARCHS, CNN, FFNN, MLP, LeNet
from wsjax.train import (
    BatchedTrainer,
    HParams,
    PlainTrainer,
    mse_sum,
    sgd_with_weight_decay,
    softmax_cross_entropy,
)

TOL = dict(rtol=5e-5, atol=5e-6)


def adam(hp: HParams) -> optax.GradientTransformation:
    return optax.adam(hp.learning_rate)


def paper(arch: str, module):
    """A paper architecture's row of MODELS, with its Table 1 settings."""
    spec = ARCHS[arch]
    return (module, sgd_with_weight_decay, mse_sum, spec.batch_size,
            HParams(spec.learning_rate, spec.momentum, spec.weight_decay), spec.input_shape)


# name -> (module, optimizer, loss, batch size, hyperparameters, input shape)
MODELS = {
    "paper-ffnn": paper("ffnn", FFNN()),
    "paper-cnn": paper("cnn", CNN()),
    "mlp-adam": (MLP(), adam, softmax_cross_entropy, 8, HParams(1e-3), (196,)),
    "lenet": (LeNet(), adam, softmax_cross_entropy, 8, HParams(1e-3), (28, 28, 1)),
    "paper-cnn-bias": paper("cnn", CNN(use_bias=True)),
}


def data(digits, shape, n_train: int, n_test: int = 40):
    """The digits, resized to `shape` where it is 28x28 (nearest neighbour)."""
    ds = small(digits, n_train, n_test)
    if shape == (28, 28, 1):
        ds = dataclasses.replace(
            ds, x_train=np.repeat(np.repeat(ds.x_train, 2, 1), 2, 2),
            x_test=np.repeat(np.repeat(ds.x_test, 2, 1), 2, 2))
    return dataclasses.replace(ds, x_train=ds.x_train.reshape(-1, *shape),
                               x_test=ds.x_test.reshape(-1, *shape))


def per_seed_loop(module, make_opt, loss_fn, batch: int, hp: HParams, key, ds, epochs: int):
    """One member, no vmap, no lowering: a Python loop over epochs and steps. [E+1, P]."""
    init_key, shuffle_key = jax.random.split(key)
    params = module.init(init_key, jnp.asarray(ds.x_train[:1]))["params"]
    tx = make_opt(hp)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        grads = jax.grad(lambda p: loss_fn(module.apply({"params": p}, xb), yb))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    snaps = [jax.flatten_util.ravel_pytree(params)[0]]
    n = len(ds.x_train)
    for e in range(1, epochs + 1):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, e), n))
        for s in range(n // batch):
            idx = perm[s * batch:(s + 1) * batch]
            params, opt_state = step(params, opt_state, ds.x_train[idx], ds.y_train[idx])
        snaps.append(jax.flatten_util.ravel_pytree(params)[0])
    return np.stack(snaps)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_general_path_equals_plain_trainer_and_per_seed_loop(digits, name):
    module, opt, loss, batch, hp, shape = MODELS[name]
    ds = data(digits, shape, n_train=5 * batch)
    general = BatchedTrainer(module, opt, loss, batch, use_kernels=False, seed_block=2)
    assert general.kernels is None
    plain = PlainTrainer(module, opt, loss, batch)
    keys = jax.random.split(jax.random.key(4), 3)  # two blocks, the last padded
    got = general.fit(keys, ds, epochs=2, hparams=hp)
    want = plain.fit(keys, ds, epochs=2, hparams=hp)
    # Adam divides by the gradient's running size: a weight whose gradient is at rounding
    # level moves by up to the learning rate either way, so there only to a tenth of it
    tol = dict(rtol=1e-4, atol=1e-4) if opt is adam else TOL
    for field in ("snapshots", "test_accuracy", "test_loss", "train_loss"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), **tol,
                                   err_msg=field)
    loop = per_seed_loop(module, opt, loss, batch, hp, keys[1], ds, 2)
    np.testing.assert_allclose(got.snapshots[1], loop, **tol)
    assert not np.allclose(got.snapshots[:, 0], got.snapshots[:, -1])  # it trained


def test_chunked_equals_unchunked_on_the_general_path(digits):
    module, opt, loss, batch, hp, shape = MODELS["lenet"]
    ds = data(digits, shape, n_train=4 * batch)
    trainer = BatchedTrainer(module, opt, loss, batch)
    keys = jax.random.split(jax.random.key(1), 5)
    whole = trainer.fit(keys, ds, epochs=2, hparams=hp)
    chunked = trainer.fit(keys, ds, epochs=2, hparams=hp, chunk=2)
    np.testing.assert_allclose(chunked.snapshots, whole.snapshots, rtol=1e-6, atol=1e-7)


def test_diverging_member_of_a_user_model_is_flagged_others_unchanged(digits):
    module, opt, loss, batch, hp, shape = MODELS["mlp-adam"]
    ds = data(digits, shape, n_train=6 * batch)
    trainer = BatchedTrainer(module, lambda h: optax.sgd(h.learning_rate), mse_sum, batch)
    keys = jax.random.split(jax.random.key(2), 3)
    lrs = jnp.asarray([0.01, 1e12, 0.02])
    mixed = trainer.fit(keys, ds, epochs=2, hparams=HParams(learning_rate=lrs))
    assert mixed.diverged_epoch.tolist() == [-1, 1, -1]
    for i in (0, 2):
        alone = trainer.fit(keys[i:i + 1], ds, epochs=2,
                            hparams=HParams(learning_rate=lrs[i:i + 1]))
        np.testing.assert_allclose(mixed.snapshots[i], alone.snapshots[0], rtol=1e-6,
                                   atol=1e-7)


def test_a_zoo_run_compiles_each_program_once_per_chunk_shape(tmp_path, digits, monkeypatch):
    """Three epochs of two equal chunks: one training and one evaluation program."""
    import wsjax.zoo as zoo

    made = []
    real = zoo.make_trainer
    monkeypatch.setattr(zoo, "make_trainer", lambda *a, **k: made.append(real(*a, **k))
                        or made[-1])
    config = zoo.ZooConfig(arch="cnn", dataset="digits", seeds=4, chunk=2, epochs=3,
                           use_bias=True)
    zoo.run_zoo(config, tmp_path / "run", dataset=small(digits, 48, 30), progress=False,
                log=lambda *_: None)
    (trainer,) = made
    assert trainer.kernels is None
    assert trainer.programs.traces == 2


def _imports(path: Path, package_root: Path) -> set[str]:
    """The wsjax modules that the module at `path` imports, at any level of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "wsjax" or name.startswith("wsjax."):
                found.add(name)
    return found


def test_no_import_cycle_inside_wsjax():
    root = Path(__file__).resolve().parents[1] / "wsjax"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: {m for m in _imports(path, root) if m in modules and m != name}
             for name, path in modules.items()}
    # a package's own __init__ re-exports its modules; importing the package is an edge to it
    assert "wsjax.train.core" in graph and graph["wsjax.train"]
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
