"""The training core: many members (seeds, hyperparameters) of any Flax model trained at once.

Every member is trained by the same pure per-member step; the population is that step
`vmap`-ed over a leading member axis, and the optimizer steps of an epoch are one `lax.scan`.
`BatchedTrainer` runs one jitted program per epoch and does, for every model:

- the training set stays on the device; every step gathers its batch rows by index;
- each epoch's data orders are drawn on the host one epoch ahead (`wsjax.train.orders`);
- the model's layers are lowered into the form that batches well over members
  (`wsjax.train.lowering`: convolutions as windows times per-member kernel matrices, pooling
  as strided slices, small dense layers as fused loops), gradients by `jax.grad`;
- on a CPU, members run in cache-sized blocks one after another (`wsjax.train.blocks`), and
  members sharded over one CPU device per core run their own blocks on each core;
- evaluation runs in blocks too.

The paper's two bias-free models with its SGD go through hand-written kernels instead
(`wsjax.train.kernels`), where those measure faster. `PlainTrainer` is the plain vmapped
trainer that the core is checked against.

What a member's PRNG key fixes: `key -> (init_key, shuffle_key)`; `init_key` gives the initial
weights, `fold_in(shuffle_key, epoch)` the permutation of the training set in that epoch (a new
one every epoch; the last incomplete batch is dropped). Two runs with the same keys give the
same bits on the same machine.

Example (any Flax model, any optax optimizer, any loss)::

    trainer = BatchedTrainer(model, optimizer=lambda hp: optax.adam(hp.learning_rate),
                             loss_fn=softmax_cross_entropy, batch_size=32)
    keys = jax.random.split(jax.random.key(0), 8)
    hp = HParams(learning_rate=jnp.logspace(-4, -2, 8))   # one value per member
    result = trainer.fit(keys, dataset, epochs=5, hparams=hp)
    result.snapshots  # [8, 6, P]

or, step by step (`init` once, then `epoch` per epoch)::

    state = trainer.init(keys, trainer.broadcast_hparams(hp, 8), x_train)
    state, metrics = trainer.epoch(state, hp, (x_train, y_train), 1)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from wsjax.data import Dataset
from wsjax.errors import ConfigError
from wsjax.store import split_chunks
from wsjax.train.blocks import (
    Programs,
    member_blocks,
    member_mesh,
    on_cpu,
    speed_options,
)
from wsjax.train.kernels import KernelStep, hand_kernels
from wsjax.train.lowering import lower
from wsjax.train.orders import OrderSource, epoch_key
from wsjax.train.state import (
    HParams,
    MemberState,
    ZooResult,
    diverged_epochs,
    sgd_with_weight_decay,
)

__all__ = ["BatchedTrainer", "PlainTrainer", "GeneralStep", "EpochMetrics"]

Array = jax.Array


class EpochMetrics(NamedTuple):
    """What one epoch gives per member: train_loss [S] (mean batch loss), snapshot [S, P]
    (flattened weights after the epoch), finite [S] (loss and weights finite)."""

    train_loss: Array
    snapshot: Array
    finite: Array


def _as_key_data(keys) -> Array:
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(keys)
    return keys


class PlainTrainer:
    """The plain vmapped trainer: the per-member step `vmap`-ed over all members, the data
    orders drawn inside the program. The reference that `BatchedTrainer` is checked against,
    and the base of its host-side API (`init`, `evaluate`, `fit`).

    Args:
        model: a Flax module; called as `model.apply({"params": p}, x)`.
        optimizer: an optax GradientTransformation, or a function HParams -> transformation
            (the function form lets hyperparameters differ per member).
        loss_fn: (outputs [B, C], labels [B]) -> scalar, differentiated w.r.t. the parameters.
        batch_size: examples per optimizer step.
        eval_batch_size: test examples per evaluation step (memory, not results).
        apply_fn: optional replacement for `model.apply(...)` with signature (params, x) -> out;
            it must compute the same function.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optax.GradientTransformation | Callable[[HParams], optax.GradientTransformation],
        loss_fn: Callable[[Array, Array], Array],
        batch_size: int,
        eval_batch_size: int = 1000,
        apply_fn: Callable[[Any, Array], Array] | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.make_optimizer = optimizer if callable(optimizer) and not isinstance(
            optimizer, optax.GradientTransformation) else (lambda _hp: optimizer)
        self.loss_fn = loss_fn
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.apply_fn = apply_fn or (lambda p, x: model.apply({"params": p}, x))
        self._init = jax.jit(jax.vmap(self._init_member, in_axes=(0, 0, None)))
        self._epochs = jax.jit(
            jax.vmap(self._member_epochs, in_axes=(0, 0, None, None, None, None)),
            static_argnums=(5,),
        )
        self._evaluate = jax.jit(jax.vmap(self._member_eval, in_axes=(0, None, None, None)))
        self._flatten = jax.jit(jax.vmap(lambda p: ravel_pytree(p)[0]))

    # ---- per-member pure functions -------------------------------------------------------
    def _init_member(self, key_data: Array, hp: HParams, x_example: Array) -> MemberState:
        key = jax.random.wrap_key_data(key_data)
        init_key, shuffle_key = jax.random.split(key)
        params = self.model.init(init_key, x_example)["params"]
        opt_state = self.make_optimizer(hp).init(params)
        return MemberState(params, opt_state, jax.random.key_data(shuffle_key))

    def _member_epochs(self, state: MemberState, hp: HParams, x: Array, y: Array,
                       epoch0: Array, n_epochs: int):
        """Runs `n_epochs` epochs starting at epoch index `epoch0` (1-based epoch numbers).

        Returns (state, (train_loss [n_epochs], flat weights [n_epochs, P], finite [n_epochs])).
        """
        opt = self.make_optimizer(hp)
        steps = x.shape[0] // self.batch_size

        def loss_of(params, xb, yb):
            return self.loss_fn(self.apply_fn(params, xb), yb)

        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_of)(params, x[idx], y[idx])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        def epoch(carry, epoch_index):
            perm = jax.random.permutation(epoch_key(state.shuffle_key, epoch_index), x.shape[0])
            batches = perm[: steps * self.batch_size].reshape(steps, self.batch_size)
            carry, losses = jax.lax.scan(step, carry, batches)
            flat = ravel_pytree(carry[0])[0]
            finite = jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.isfinite(flat))
            return carry, (jnp.mean(losses), flat, finite)

        (params, opt_state), outs = jax.lax.scan(
            epoch, (state.params, state.opt_state), epoch0 + jnp.arange(n_epochs))
        return MemberState(params, opt_state, state.shuffle_key), outs

    def _member_eval(self, params, x: Array, y: Array, n_valid: Array):
        """Accuracy and mean per-example loss over the first n_valid rows of padded x, y.

        x [nb, eb, ...], y [nb, eb] (test set cut into batches, padded).
        """

        def body(totals, batch):
            xb, yb, mask = batch
            out = self.apply_fn(params, xb)
            correct = jnp.sum((jnp.argmax(out, -1) == yb) * mask)
            per_example = jax.vmap(lambda o, t: self.loss_fn(o[None], t[None]))(out, yb)
            loss = jnp.sum(jnp.where(mask, per_example, 0.0))
            return (totals[0] + correct, totals[1] + loss), None

        eb = x.shape[1]
        mask = (jnp.arange(x.shape[0] * eb) < n_valid).reshape(x.shape[0], eb)
        (correct, loss), _ = jax.lax.scan(body, (0.0, 0.0), (x, y, mask))
        return correct / n_valid, loss / n_valid

    # ---- host-side API --------------------------------------------------------------------
    def broadcast_hparams(self, hparams: HParams | None, members: int) -> HParams:
        hparams = HParams() if hparams is None else hparams

        def bcast(v):
            v = jnp.asarray(v, jnp.float32)
            if v.ndim == 0:
                return jnp.broadcast_to(v, (members,))
            if v.shape != (members,):
                raise ConfigError(
                    f"per-member hyperparameter has shape {v.shape}; expected a scalar or "
                    f"({members},)")
            return v

        return jax.tree.map(bcast, hparams)

    def init(self, keys, hparams: HParams, x_example: Array) -> MemberState:
        """Initial state of every member. keys: [S] PRNG keys (typed or raw uint32 [S, 2])."""
        key_data = _as_key_data(keys)
        return self._init(key_data, hparams, jnp.asarray(x_example[:1]))

    def flat_params(self, state: MemberState) -> Array:
        """[S, P] flattened weights of every member (see wsjax.params for the order)."""
        return self._flatten(state.params)

    def train_epochs(self, state: MemberState, hparams: HParams, x: Array, y: Array,
                     first_epoch: int, n_epochs: int, last_epoch: int | None = None):
        """Runs epochs first_epoch .. first_epoch + n_epochs - 1 (1-based) for all members.

        `last_epoch`, the run's last epoch where the caller knows it, tells a trainer that
        prepares later epochs' work ahead (`BatchedTrainer`) where to stop; results
        do not depend on it.

        Returns (state, train_loss [S, n], snapshots [S, n, P], finite [S, n]).
        """
        self._check_one_batch(x)
        state, (loss, snaps, finite) = self._epochs(
            state, hparams, x, y, jnp.int32(first_epoch), int(n_epochs))
        return state, loss, snaps, finite

    def _check_one_batch(self, x: Array) -> None:
        if x.shape[0] < self.batch_size:
            raise ConfigError(
                f"training set has {x.shape[0]} examples, fewer than one batch "
                f"({self.batch_size})")

    def eval_batch(self, state: MemberState) -> int:
        """Test examples per evaluation step for the members of `state` (memory, not
        results)."""
        return self.eval_batch_size

    def evaluate(self, state: MemberState, x: Array, y: Array):
        """Test accuracy [S] and mean per-example test loss [S] of every member."""
        n = x.shape[0]
        eb = min(self.eval_batch(state), n)
        nb = -(-n // eb)
        pad = nb * eb - n
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(
            nb, eb, *x.shape[1:])
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(nb, eb)
        return self._eval_program(state)(state.params, xp, yp, jnp.float32(n))

    def _eval_program(self, state: MemberState):
        """The jitted evaluation for `state` (its members' placement may choose it)."""
        return self._evaluate

    def fit(self, keys, dataset: Dataset, epochs: int, hparams: HParams | None = None,
            chunk: int | None = None, progress: bool = False) -> ZooResult:
        """Trains every member for `epochs` epochs and returns all snapshots and metrics.

        Args:
            keys: [S] PRNG keys, one per member.
            dataset: training and test arrays.
            epochs: number of epochs.
            hparams: HParams with scalars or [S] arrays.
            chunk: train at most this many members at once (same results, less memory).
            progress: show a tqdm progress bar.
        """
        key_data = np.asarray(_as_key_data(keys))
        members = len(key_data)
        hp = self.broadcast_hparams(hparams, members)
        chunk = members if chunk is None else int(chunk)
        if chunk < 1:
            raise ConfigError(f"chunk must be at least 1, got {chunk}")
        x_tr, y_tr = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
        x_te, y_te = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
        parts = []
        bar = _progress(epochs * -(-members // chunk), progress, "training")
        for idx, padded in split_chunks(members, chunk):
            hp_c = jax.tree.map(lambda v, p=padded: v[p], hp)
            state = self.init(key_data[padded], hp_c, x_tr)
            snaps = [self.flat_params(state)[:, None]]
            acc0, loss0 = self.evaluate(state, x_te, y_te)
            accs, tlosses, trlosses, finites = [acc0[:, None]], [loss0[:, None]], [], []
            for e in range(1, epochs + 1):
                t0 = time.perf_counter()
                state, trl, sn, fin = self.train_epochs(state, hp_c, x_tr, y_tr, e, 1,
                                                        last_epoch=epochs)
                acc, tl = self.evaluate(state, x_te, y_te)
                snaps.append(sn)
                accs.append(acc[:, None])
                tlosses.append(tl[:, None])
                trlosses.append(trl)
                finites.append(fin)
                jax.block_until_ready(acc)
                bar.update(1)
                bar.set_postfix(model_steps_per_s=_rate(chunk, x_tr.shape[0] // self.batch_size,
                                                        time.perf_counter() - t0))
            keep = slice(0, len(idx))
            parts.append([np.asarray(jnp.concatenate(a, axis=1))[keep]
                          for a in (snaps, accs, tlosses, trlosses, finites)])
        bar.close()
        snaps, acc, tl, trl, fin = (np.concatenate(p) for p in zip(*parts, strict=True))
        return ZooResult(snaps.astype(np.float32), acc.astype(np.float32),
                         tl.astype(np.float32), trl.astype(np.float32), diverged_epochs(fin))


def _rate(members: int, steps: int, seconds: float) -> str:
    return f"{members * steps / max(seconds, 1e-9):,.0f}"


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="epoch", leave=True)


class GeneralStep:
    """The block step of the training core for any model and optimizer.

    `block_epoch` trains one block of members (every leaf [s, ...]) for one epoch: the
    per-member step (loss, `jax.grad`, optimizer update) `vmap`-ed over the block, scanned
    over the epoch's steps. `block_outputs` gives the block's outputs on a shared test batch.
    """

    # A block's members' weights and step activations fit in about this many floats (2 MiB,
    # a core's L2 cache on common x86 CPUs), at most MAX_BLOCK members.
    CACHE_FLOATS = 1 << 19
    MAX_BLOCK = 16
    eval_floats = None  # activations per test example and member: not needed here

    def __init__(self, apply_fn: Callable, make_optimizer: Callable, loss_fn: Callable,
                 batch_size: int):
        self.apply_fn = apply_fn
        self.make_optimizer = make_optimizer
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.seed_block = self.sharded_seed_block = self.MAX_BLOCK
        self._fitted_for = None  # the shapes fit_block last sized the blocks for

    def member_floats(self, params, example: Array) -> int:
        """Floats of one member's weights and of the values of one forward pass on a batch:
        params one member's (shapes suffice), example [1, ...]."""
        batch = jax.ShapeDtypeStruct((self.batch_size, *example.shape[1:]), example.dtype)
        jaxpr = jax.make_jaxpr(self.apply_fn)(params, batch).jaxpr
        values = sum(int(np.prod(v.aval.shape)) for e in jaxpr.eqns for v in e.outvars)
        return values + sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))

    def fit_block(self, params, example: Array) -> None:
        """Sets the blocks to the most members (a power of two) whose working set fits
        `CACHE_FLOATS`; traced once per parameter and example shapes (every chunk of a run
        calls it)."""
        shapes = (jax.tree.map(lambda a: (a.shape, a.dtype), params), example.shape,
                  example.dtype)
        if shapes == self._fitted_for:
            return
        self._fitted_for = shapes
        fits = max(1, self.CACHE_FLOATS // self.member_floats(params, example))
        self.seed_block = self.sharded_seed_block = min(self.MAX_BLOCK,
                                                        1 << (fits.bit_length() - 1))

    @staticmethod
    def prepare(x: Array) -> Array:
        return x

    def block_epoch(self, params, opt_state, hp: HParams, orders: Array, x: Array, y: Array,
                    unroll: int = 1):
        """orders [s, N] -> (params, opt_state, mean loss [s], flat weights [s, P],
        finite [s])."""
        steps = x.shape[0] // self.batch_size

        def member_step(p, o, h, idx):
            loss, g = jax.value_and_grad(
                lambda q: self.loss_fn(self.apply_fn(q, x[idx]), y[idx]))(p)
            updates, o = self.make_optimizer(h).update(g, o, p)
            return optax.apply_updates(p, updates), o, loss

        def step(carry, idx):
            p, o, loss = jax.vmap(member_step)(*carry, hp, idx)
            return (p, o), loss

        members = orders.shape[0]
        batches = orders[:, : steps * self.batch_size].reshape(members, steps, self.batch_size)
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                                   batches.transpose(1, 0, 2), unroll=unroll)
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(params)
        finite = jnp.all(jnp.isfinite(losses), axis=0) & jnp.all(jnp.isfinite(flat), axis=1)
        return params, opt_state, jnp.mean(losses, axis=0), flat, finite

    def block_outputs(self, params):
        """A function of one test batch [eb, ...] -> the block's outputs [s, eb, C]."""
        return lambda xb: jax.vmap(self.apply_fn, in_axes=(0, None))(params, xb)


class BatchedTrainer(PlainTrainer):
    """Trains a population of members of any Flax model at once: the training core.

    Same state, same outputs, same resumable layout as `PlainTrainer`, to float32 rounding;
    only the programs that train and evaluate differ (see the module docstring).

    Args (model, optimizer, loss_fn, batch_size, eval_batch_size, apply_fn: as PlainTrainer's):
        lower_layers: lower the model's layers (`wsjax.train.lowering`); False runs them as
            Flax writes them (speed, not results).
        use_kernels: use the hand-written kernels where they support the model and optimizer
            (`wsjax.train.kernels`); False sends every model through the general path.
        seed_block: members trained together, block after block (speed, not results).
            Default: on a CPU the step's own, whose working set stays in the cache; on an
            accelerator all members in one block.
        unroll: optimizer steps per iteration of the compiled step loop (speed, not results).
        eval_budget: with the hand kernels on a CPU, floats of activations of one block of
            members for one evaluation batch (sets the test batch; speed, not results).
    """

    def __init__(self, model: nn.Module, optimizer, loss_fn: Callable[[Array, Array], Array],
                 batch_size: int, eval_batch_size: int = 1000,
                 apply_fn: Callable[[Any, Array], Array] | None = None, *,
                 lower_layers: bool = True, use_kernels: bool = True,
                 seed_block: int | None = None, unroll: int = 1, eval_budget: int = 250_000):
        super().__init__(model, optimizer, loss_fn, batch_size, eval_batch_size, apply_fn)
        checked = speed_options(seed_block=seed_block, unroll=unroll, eval_budget=eval_budget)
        self.seed_block = checked.get("seed_block")
        self.unroll = checked.get("unroll", 1)
        self.eval_budget = checked.get("eval_budget", 250_000)
        kernels = None
        if use_kernels and apply_fn is None and optimizer is sgd_with_weight_decay:
            kernels = hand_kernels(model)
        if kernels is not None:
            self.step = KernelStep(kernels, loss_fn, self.batch_size)
        else:
            self.step = GeneralStep(lower(self.apply_fn) if lower_layers else self.apply_fn,
                                    self.make_optimizer, loss_fn, self.batch_size)
        self.orders = OrderSource()
        self.programs = Programs()

    def init(self, keys, hparams: HParams, x_example: Array) -> MemberState:
        state = super().init(keys, hparams, x_example)
        if isinstance(self.step, GeneralStep):
            one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                               state.params)
            self.step.fit_block(one, jnp.asarray(x_example[:1]))
        return state

    @property
    def kernels(self):
        """The hand-written kernels in use, or None on the general path."""
        return getattr(self.step, "kernels", None)

    def block_size(self, cpu: bool, sharded: bool = False) -> int | None:
        """Members per block (None: all in one) where the members live on a CPU or not, on
        one device or sharded over several."""
        if self.seed_block is not None:
            return self.seed_block
        if not cpu:
            return None
        return self.step.sharded_seed_block if sharded else self.step.seed_block

    def _block_of(self, state: MemberState, mesh) -> int | None:
        return self.block_size(on_cpu(state.params), mesh is not None)

    def epoch(self, state: MemberState, hparams: HParams, data: tuple[Array, Array],
              e: int, last_epoch: int | None = None) -> tuple[MemberState, EpochMetrics]:
        """Trains every member through epoch `e` (1-based) on data = (x [N, ...], y [N]).

        `last_epoch`: the run's last epoch where the caller knows it; the next epoch's data
        orders are drawn ahead unless `e` is the last. Results do not depend on it.
        """
        x, y = data
        self._check_one_batch(x)
        mesh = member_mesh(state.params)
        fn = self.programs.get(self._all_epoch, mesh, "mmrrm",
                               block=self._block_of(state, mesh), unroll=self.unroll)
        keys = jnp.asarray(jax.device_get(state.shuffle_key))
        orders = self.orders.get(keys, e, x.shape[0], mesh,
                                 ahead=last_epoch is None or e < last_epoch)
        state, metrics = fn(state, hparams, x, y, orders)
        return state, EpochMetrics(*metrics)

    def train_epochs(self, state: MemberState, hparams: HParams, x: Array, y: Array,
                     first_epoch: int, n_epochs: int, last_epoch: int | None = None):
        outs = []
        for e in range(first_epoch, first_epoch + n_epochs):
            state, metrics = self.epoch(state, hparams, (x, y), e, last_epoch)
            outs.append((metrics.train_loss[:, None], metrics.snapshot[:, None],
                         metrics.finite[:, None]))
        loss, snaps, finite = (jnp.concatenate(o, axis=1) if len(outs) > 1 else o[0]
                               for o in zip(*outs, strict=True))
        return state, loss, snaps, finite

    def block_until_ready(self) -> None:
        """Waits for the work started ahead: the next epoch's data orders. A benchmark that
        times one epoch per call calls it, so that each call pays for one epoch's orders."""
        self.orders.block_until_ready()

    def _all_epoch(self, state: MemberState, hp: HParams, x: Array, y: Array, orders: Array,
                   block: int | None, unroll: int):
        """One epoch of all members, the data taken in `orders` [S, N], in blocks of `block`.

        Returns (state, (loss [S], flat weights [S, P], finite [S])).
        """
        members = state.shuffle_key.shape[0]
        split, merge = member_blocks(members, block)
        inputs = jax.tree.map(split, (state.params, state.opt_state, hp, orders))
        feats = self.step.prepare(x)
        params, opt_state, loss, flat, finite = jax.tree.map(merge, jax.lax.map(
            lambda b: self.step.block_epoch(*b, feats, y, unroll), inputs))
        return MemberState(params, opt_state, state.shuffle_key), (loss, flat, finite)

    def _eval_program(self, state: MemberState):
        mesh = member_mesh(state.params)
        return self.programs.get(self._all_eval, mesh, "mrrr",
                                 block=self._block_of(state, mesh))

    def _all_eval(self, params, x: Array, y: Array, n_valid: Array, block: int | None):
        """Accuracy [S] and mean per-example loss [S] over the first n_valid rows of x, y.

        x [nb, eb, ...], y [nb, eb]: the test set cut into batches (padded). Members run in
        blocks as in training, so that a block's activations for a test batch stay in cache.
        """
        members = jax.tree.leaves(params)[0].shape[0]
        split, merge = member_blocks(members, block)
        per_example = jax.vmap(jax.vmap(lambda o, t: self.loss_fn(o[None], t[None])),
                               in_axes=(0, None))
        nb, eb = x.shape[:2]
        mask = (jnp.arange(nb * eb) < n_valid).reshape(nb, eb)
        # the test set's features once, not once per block of members
        feats = self.step.prepare(x.reshape(nb * eb, *x.shape[2:]))
        feats = feats.reshape(nb, eb, *feats.shape[1:])

        def block_eval(block_params):
            outputs = self.step.block_outputs(block_params)
            size = jax.tree.leaves(block_params)[0].shape[0]

            def body(totals, batch):
                fb, yb, mb = batch
                out = outputs(fb)                                           # [s, eb, C]
                correct = jnp.sum((jnp.argmax(out, -1) == yb[None]) * mb[None], axis=1)
                loss = jnp.sum(jnp.where(mb[None], per_example(out, yb), 0.0), axis=1)
                return (totals[0] + correct, totals[1] + loss), None

            zeros = jnp.zeros((size,), jnp.float32)
            return jax.lax.scan(body, (zeros, zeros), (feats, y, mask))[0]

        correct, loss = jax.tree.map(merge, jax.lax.map(block_eval, jax.tree.map(split, params)))
        return correct / n_valid, loss / n_valid

    def eval_batch(self, state: MemberState) -> int:
        if not on_cpu(state.params) or self.step.eval_floats is None:
            return self.eval_batch_size
        # the activations of one block of members for one test batch stay under eval_budget
        members = jax.tree.leaves(state.params)[0].shape[0]
        block = min(self._block_of(state, member_mesh(state.params)), max(1, members))
        return max(1, min(self.eval_batch_size,
                          self.eval_budget // (block * self.step.eval_floats)))
