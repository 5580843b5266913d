"""A batched trainer: many members (seeds, hyperparameters) of any Flax model trained at once.

Every member is trained by the same pure per-member function; the population is that function
`vmap`-ed over a leading member axis, and the optimizer steps of an epoch are one `lax.scan`.
One jitted call runs one or more epochs for all members, so the host can report progress and
save between calls.

What a member's PRNG key fixes: `key -> (init_key, shuffle_key)`; `init_key` gives the initial
weights, `fold_in(shuffle_key, epoch)` the permutation of the training set in that epoch (a new
one every epoch; the last incomplete batch is dropped). Two runs with the same keys give the
same bits on the same machine.

Example (any Flax model, any optax optimizer, any loss)::

    trainer = BatchedTrainer(model, optimizer=lambda hp: optax.adam(hp.learning_rate),
                             loss_fn=softmax_xent, batch_size=32)
    keys = jax.random.split(jax.random.key(0), 8)
    hp = HParams(learning_rate=jnp.logspace(-4, -2, 8))   # one value per member
    result = trainer.fit(keys, dataset, epochs=5, hparams=hp)
    result.snapshots  # [8, 6, P]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from wsjax.data import Dataset
from wsjax.errors import ConfigError

__all__ = [
    "HParams",
    "MemberState",
    "BatchedTrainer",
    "ZooResult",
    "sgd_with_weight_decay",
    "LOSSES",
    "get_loss",
    "mse_sum",
    "mse_mean",
    "mse_batch_mean",
    "softmax_cross_entropy",
    "accuracy",
    "epoch_key",
]

Array = jax.Array


@flax.struct.dataclass
class HParams:
    """Numeric hyperparameters that may differ per member (a pytree that can be vmapped).

    Each field is a scalar (shared by all members) or a [members] array. `BatchedTrainer`
    broadcasts scalars to one value per member.
    """

    learning_rate: Any = 0.01
    momentum: Any = 0.9
    weight_decay: Any = 0.0


def sgd_with_weight_decay(hp: HParams) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay, as PyTorch's `torch.optim.SGD`.

    The decay term `weight_decay * w` is added to the gradient before momentum.
    """
    return optax.chain(
        optax.add_decayed_weights(hp.weight_decay),
        optax.sgd(hp.learning_rate, momentum=hp.momentum),
    )


def _one_hot(labels: Array, num_classes: int) -> Array:
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def mse_sum(outputs: Array, labels: Array) -> Array:
    """MSE against one-hot targets, summed over batch and classes (PyTorch reduction='sum').

    outputs [B, C], labels [B] int -> scalar.
    """
    return jnp.sum((outputs - _one_hot(labels, outputs.shape[-1])) ** 2)


def mse_mean(outputs: Array, labels: Array) -> Array:
    """MSE against one-hot targets, averaged over batch and classes (reduction='mean')."""
    return jnp.mean((outputs - _one_hot(labels, outputs.shape[-1])) ** 2)


def mse_batch_mean(outputs: Array, labels: Array) -> Array:
    """MSE summed over classes and averaged over the batch."""
    return jnp.mean(jnp.sum((outputs - _one_hot(labels, outputs.shape[-1])) ** 2, axis=-1))


def softmax_cross_entropy(outputs: Array, labels: Array) -> Array:
    """Cross-entropy of logits [B, C] against integer labels [B], averaged over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()


LOSSES: dict[str, Callable[[Array, Array], Array]] = {
    "sum": mse_sum,
    "mean": mse_mean,
    "batch_mean": mse_batch_mean,
}


def get_loss(name: str) -> Callable[[Array, Array], Array]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(
            f"unknown loss reduction {name!r}; choose one of {', '.join(LOSSES)}"
        ) from None


def accuracy(outputs: Array, labels: Array) -> Array:
    """Fraction of argmax(outputs) == labels. outputs [B, C], labels [B] -> scalar."""
    return jnp.mean(jnp.argmax(outputs, -1) == labels)


@flax.struct.dataclass
class MemberState:
    """Training state of all members; every leaf has a leading [members] axis.

    Attributes:
        params: model parameters.
        opt_state: optimizer state.
        shuffle_key: [members, ...] key data for the per-epoch data order.
    """

    params: Any
    opt_state: Any
    shuffle_key: Array


@dataclasses.dataclass
class ZooResult:
    """Everything a batched training run produces (numpy arrays on the host).

    Attributes:
        snapshots: float32 [S, E+1, P] flattened weights; epoch 0 is the initialisation.
        test_accuracy: float32 [S, E+1].
        test_loss: float32 [S, E+1], mean over test examples of the loss of one example.
        train_loss: float32 [S, E], mean over the epoch's steps of the batch loss.
        diverged_epoch: int32 [S], first epoch whose loss or weights were not finite; -1 if none.
    """

    snapshots: np.ndarray
    test_accuracy: np.ndarray
    test_loss: np.ndarray
    train_loss: np.ndarray
    diverged_epoch: np.ndarray


def epoch_key(shuffle_key: Array, epoch: Array) -> Array:
    """The key of a member's data order in `epoch`: fold_in of its shuffle key (key data, as
    MemberState holds it). The order is jax.random.permutation(epoch_key(...), n)."""
    return jax.random.fold_in(jax.random.wrap_key_data(shuffle_key), epoch)


def _as_key_data(keys) -> Array:
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(keys)
    return keys


class BatchedTrainer:
    """Trains a population of members of one model at once (vmap over members, scan over steps).

    Args:
        model: a Flax module; called as `model.apply({"params": p}, x)`.
        optimizer: an optax GradientTransformation, or a function HParams -> transformation
            (the function form lets hyperparameters differ per member).
        loss_fn: (outputs [B, C], labels [B]) -> scalar, differentiated w.r.t. the parameters.
        batch_size: examples per optimizer step.
        eval_batch_size: test examples per evaluation step (memory, not results).
        apply_fn: optional replacement for `model.apply(...)` with signature (params, x) -> out;
            it must compute the same function (used for faster kernels).
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
        prepares later epochs' work ahead (`wsjax.fast.FastTrainer`) where to stop; results
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
        for lo in range(0, members, chunk):
            idx = np.arange(lo, min(lo + chunk, members))
            padded = np.concatenate([idx, np.full(chunk - len(idx), idx[-1])])
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


def diverged_epochs(finite: np.ndarray) -> np.ndarray:
    """First epoch (1-based) whose loss or weights were not finite, per member; -1 if none.

    finite: bool [S, E] -> int32 [S].
    """
    finite = np.asarray(finite, bool)
    bad = ~finite
    first = np.where(bad.any(axis=1), bad.argmax(axis=1) + 1, -1)
    return first.astype(np.int32)


def _rate(members: int, steps: int, seconds: float) -> str:
    return f"{members * steps / max(seconds, 1e-9):,.0f}"


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="epoch", leave=True)
