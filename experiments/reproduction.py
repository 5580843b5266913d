"""Reproduction study: small CNN zoos that vary one detail of the paper's setup at a time.

The paper's CNN zoo recovers about 20 ordered initial epochs (ordered fraction 0.69); ours,
trained as SPEC.md reads the paper, about 6 (0.42). Each variant below changes ONE thing
against the paper-settings baseline, trains a small zoo of it into its own run directory
(readable by `experiments.tables`, `experiments.figures`), and the script prints one table.
A second table re-reads the epoch-order measure in several ways on any run directory.

    python -m experiments.reproduction --data-dir DIR --out runs/variants --seeds 16 --epochs 30
    python -m experiments.reproduction --list
    python -m experiments.reproduction --readings runs/cnn-mnist runs/ffnn-mnist
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from wsjax.analysis.linkage import cut, merge_heights, single_linkage
from wsjax.analysis.metrics import cluster_metrics
from wsjax.analysis.tables import PAPER_TABLES, zoo_tables_detail
from wsjax.cli import ArgumentParser, run_cli
from wsjax.data import Dataset, load_dataset
from wsjax.errors import ConfigError
from wsjax.models import ARCHS, kaiming_normal
from wsjax.store import (
    Zoo,
    atomic_write_bytes,
    atomic_write_json,
    finish_run,
    load_zoo,
    read_json,
)
from wsjax.train import BatchedTrainer, HParams, get_loss
from wsjax.zoo import dataset_fingerprint, member_keys

__all__ = ["Variant", "VARIANTS", "PaperCNN", "fast_cnn_apply", "make_optimizer",
           "kernel_mask", "train_variant", "write_run", "run_variant", "READINGS", "readings",
           "step_ratio", "jump_count", "dead_features", "variant_row", "main"]

# PyTorch's default for layers whose init is not overridden: kaiming_uniform(a=sqrt(5)),
# i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights, the same bound for biases.
torch_default_uniform = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
INITS = {
    "kaiming_normal": kaiming_normal,
    "kaiming_normal_fan_out": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    "torch_default": torch_default_uniform,
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual torchvision Normalize constants


def _torch_bias_init(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class PaperCNN(nn.Module):
    """wsjax.models.CNN with the details the paper leaves open made switchable.

    Same parameter names (Conv_0, Conv_1, Dense_0), so the defaults give exactly the weights of
    wsjax.models.CNN for the same key. Input [B, 14, 14, 1]; output [B, 10].

    Attributes:
        init_name: a key of INITS for every kernel.
        use_bias: add biases (PyTorch's default uniform init); they are left out of the weight
            vector that is analysed (see kernel_mask).
        pool_ceil: max-pool with ceil mode (7 -> 4 instead of 7 -> 3), as PyTorch's ceil_mode.
    """

    init_name: str = "kaiming_normal"
    use_bias: bool = False
    pool_ceil: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k_init = INITS[self.init_name]
        for c, fan_in in ((16, 9 * x.shape[-1]), (8, 9 * 16)):
            x = nn.Conv(c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        use_bias=self.use_bias, kernel_init=k_init,
                        bias_init=_torch_bias_init(fan_in))(x)
            x = _max_pool(x, self.pool_ceil)
            x = nn.leaky_relu(x, 0.01)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10, use_bias=self.use_bias, kernel_init=k_init,
                        bias_init=_torch_bias_init(x.shape[-1]))(x)


def _max_pool(x: jax.Array, ceil: bool) -> jax.Array:
    """2x2 max-pool, stride 2, on [B, H, W, C]; floor (VALID) or ceil mode."""
    b, h, w, c = x.shape
    if ceil:
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    else:
        x = x[:, : h - h % 2, : w - w % 2]
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    return x.reshape(b, h2, 2, w2, 2, c).max(axis=(2, 4))


def _conv3x3_s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 conv, stride 2, zero padding 1, as patches @ kernel. x [B, H, W, C], kernel HWIO."""
    b, h, w, c = x.shape
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.stack([xp[:, di:di + 2 * oh - 1:2, dj:dj + 2 * ow - 1:2, :]
                         for di in range(3) for dj in range(3)], axis=3)  # [B, oh, ow, 9, C]
    return jnp.einsum("bhwpc,pco->bhwo", patches, kernel.reshape(9, c, kernel.shape[-1]))


def fast_cnn_apply(pool_ceil: bool = False) -> Callable:
    """(params, x) -> outputs computing PaperCNN with plain matrix products.

    Batched convolutions under vmap are slow on CPU; at 14x14 the patches are tiny, so an
    explicit patch matrix is several times faster and gives the same function.
    """

    def apply(params, x):
        for name in ("Conv_0", "Conv_1"):
            x = _conv3x3_s2(x, params[name]["kernel"])
            if "bias" in params[name]:
                x = x + params[name]["bias"].reshape(1, 1, 1, -1)
            x = nn.leaky_relu(_max_pool(x, pool_ceil), 0.01)
        x = x.reshape((x.shape[0], -1)) @ params["Dense_0"]["kernel"]
        return x + params["Dense_0"]["bias"][None] if "bias" in params["Dense_0"] else x

    return apply


def kernel_mask(params) -> np.ndarray:
    """bool [P]: which entries of ravel_pytree(params) are kernels (not biases)."""
    marks = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.full(jnp.shape(leaf), getattr(path[-1], "key", "") == "kernel"),
        params)
    return np.asarray(ravel_pytree(marks)[0]).astype(bool)


def make_optimizer(decay: str, coupling: str) -> Callable[[HParams], optax.GradientTransformation]:
    """SGD with momentum and weight decay; HParams -> transformation (per-member values).

    decay: "all" parameters or "kernels" only. coupling: "coupled" adds wd * w to the gradient
    before momentum (PyTorch's SGD); "decoupled" subtracts lr * wd * w after the momentum step,
    so the decay is not amplified by momentum (about 10x weaker at momentum 0.9).
    """
    if decay not in ("all", "kernels") or coupling not in ("coupled", "decoupled"):
        raise ConfigError(f"unknown weight decay {decay!r}/{coupling!r}")

    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: decay == "all" or getattr(path[-1], "key", "") == "kernel", params)

    def build(hp: HParams) -> optax.GradientTransformation:
        if coupling == "coupled":
            return optax.chain(optax.add_decayed_weights(hp.weight_decay, mask=mask),
                               optax.sgd(hp.learning_rate, momentum=hp.momentum))
        return optax.chain(optax.sgd(hp.learning_rate, momentum=hp.momentum),
                           optax.add_decayed_weights(-hp.learning_rate * hp.weight_decay,
                                                     mask=mask))

    return build


@dataclasses.dataclass(frozen=True)
class Variant:
    """One change against the paper-settings CNN baseline (the defaults are the baseline).

    Attributes:
        name: registry key; doc: what it changes and why it is a candidate.
        init (PaperCNN.init_name), use_bias, pool_ceil: see PaperCNN.
        decay, coupling: see make_optimizer.
        weight_decay, learning_rate: None for the paper's 0.1 and 0.0003.
        input_norm: standardise inputs with the usual MNIST mean/std instead of [0, 1].
        n_train: train on the first n training images (fewer steps per epoch); None: all.
        loss: MSE reduction (wsjax.train.LOSSES).
    """

    name: str
    doc: str
    init: str = "kaiming_normal"
    use_bias: bool = False
    pool_ceil: bool = False
    decay: str = "all"
    coupling: str = "coupled"
    weight_decay: float | None = None
    learning_rate: float | None = None
    input_norm: bool = False
    n_train: int | None = None
    loss: str = "sum"

    def training_config(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("doc")
        spec = ARCHS["cnn"]
        d.update(learning_rate=spec.learning_rate if self.learning_rate is None
                 else self.learning_rate, momentum=spec.momentum,
                 batch_size=spec.batch_size,
                 weight_decay=spec.weight_decay if self.weight_decay is None
                 else self.weight_decay)
        return d


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("baseline", "the paper's settings as SPEC.md reads them (bias-free, Kaiming "
            "normal fan-in, coupled decay 0.1 on all weights, summed MSE, floor pooling, "
            "inputs in [0, 1])"),
    Variant("wd_decoupled", "weight decay applied after momentum (w -= lr*wd*w), not through "
            "the momentum buffer as in PyTorch's SGD", coupling="decoupled"),
    Variant("wd_0.01", "coupled weight decay 0.01 instead of 0.1: in steady state the same "
            "balance of decay and gradient as wd_decoupled (decay times 1 - momentum)",
            weight_decay=0.01),
    Variant("lr_0.0001", "learning rate 0.0001 instead of 0.0003: smaller steps, fewer "
            "sudden jumps, slower decay of the initialization", learning_rate=0.0001),
    Variant("lr_0.000025", "learning rate 0.0003 / 12: the summed loss taking the steps of a "
            "batch-averaged loss (batch_mean_decoupled is this plus 20% more decay)",
            learning_rate=0.000025),
    Variant("batch_mean", "MSE summed over classes and averaged over the batch (12x smaller "
            "gradients than the sum)", loss="batch_mean"),
    Variant("batch_mean_decoupled", "TWO changes: MSE averaged over the batch (summed over "
            "classes) and decay after momentum; 12x smaller gradients, 10x weaker decay, so the "
            "baseline's balance of the two with much smaller steps", loss="batch_mean",
            coupling="decoupled"),
    Variant("bias_decay_all", "biases in the model (PyTorch default init), decayed, left out of "
            "the weight vector", use_bias=True),
    Variant("bias_decay_kernels", "biases in the model, weight decay on kernels only, biases "
            "left out of the weight vector", use_bias=True, decay="kernels"),
    Variant("init_torch_default", "PyTorch's default init (uniform, variance 1/(3 fan_in), 6x "
            "smaller than Kaiming normal)", init="torch_default"),
    Variant("init_fan_out", "Kaiming normal with fan_out (4x smaller std in the first conv, "
            "2x larger in the dense layer)", init="kaiming_normal_fan_out"),
    Variant("pool_ceil", "max-pool in ceil mode (7x7 -> 4x4, then 2x2 -> 1x1)", pool_ceil=True),
    Variant("input_norm", "inputs standardised with MNIST mean 0.1307 / std 0.3081",
            input_norm=True),
    Variant("half_data", "first half of the training images: half the steps per epoch",
            n_train=12000),
]}


def _prepare(v: Variant, ds: Dataset) -> Dataset:
    x_tr, y_tr, x_te = ds.x_train.reshape(-1, 14, 14, 1), ds.y_train, ds.x_test.reshape(-1, 14,
                                                                                          14, 1)
    if v.n_train is not None:
        if v.n_train > len(x_tr):
            raise ConfigError(f"variant {v.name} needs {v.n_train} training images, "
                              f"{ds.name} has {len(x_tr)}; use a larger dataset")
        x_tr, y_tr = x_tr[: v.n_train], y_tr[: v.n_train]
    if v.input_norm:
        x_tr, x_te = (x_tr - MNIST_MEAN) / MNIST_STD, (x_te - MNIST_MEAN) / MNIST_STD
    return dataclasses.replace(ds, x_train=x_tr.astype(np.float32), y_train=y_tr,
                               x_test=x_te.astype(np.float32))


def make_variant_trainer(v: Variant) -> tuple[BatchedTrainer, PaperCNN]:
    module = PaperCNN(init_name=v.init, use_bias=v.use_bias, pool_ceil=v.pool_ceil)
    trainer = BatchedTrainer(module, make_optimizer(v.decay, v.coupling), get_loss(v.loss),
                             ARCHS["cnn"].batch_size, apply_fn=fast_cnn_apply(v.pool_ceil))
    return trainer, module


def train_variant(v: Variant, ds: Dataset, seeds: int, epochs: int, seed_start: int = 0):
    """Trains `seeds` members of variant v; member i uses jax.random.key(seed_start + i).

    Returns (ZooResult with snapshots restricted to the kernels [S, E+1, 1376], Dataset used).
    """
    ds = _prepare(v, ds)
    trainer, module = make_variant_trainer(v)
    cfg = v.training_config()
    hp = HParams(cfg["learning_rate"], cfg["momentum"], cfg["weight_decay"])
    keys = member_keys(np.arange(seed_start, seed_start + seeds))
    result = trainer.fit(keys, ds, epochs, hparams=hp)
    template = module.init(jax.random.key(0), ds.x_train[:1])["params"]
    mask = kernel_mask(template)
    return dataclasses.replace(result, snapshots=result.snapshots[:, :, mask]), ds


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_run(out: Path, identity: dict, result, seeds: np.ndarray) -> Path:
    """Writes a completed run directory in wsjax.store's layout (progress.json last)."""
    out.mkdir(parents=True, exist_ok=True)
    _save_npy(out / "snapshots.npy", result.snapshots.astype(np.float32))
    epochs = int(result.snapshots.shape[1] - 1)
    finish_run(out, {**identity, "arch": "cnn", "num_params": int(result.snapshots.shape[2]),
                     "seeds": seeds.tolist(), "epochs": epochs,
                     "flatten_order": "jax.flatten_util.ravel_pytree, kernels only"}, epochs,
               {"test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
                "train_loss": result.train_loss, "diverged_epoch": result.diverged_epoch,
                "seeds": seeds})
    return out


def run_variant(v: Variant, ds: Dataset, out: Path, seeds: int, epochs: int,
                log=print) -> Zoo:
    """Trains variant v into `out` (or finds it there, complete and identical) and loads it."""
    identity = {"config": {**v.training_config(), "seeds": seeds, "epochs": epochs},
                "data": {"name": ds.name, "source": ds.source, "n_train": len(ds.x_train),
                         "n_test": len(ds.x_test), "fingerprint": dataset_fingerprint(ds)},
                "variant": {"name": v.name, "doc": v.doc}}
    if (out / "progress.json").exists() and read_json(out / "progress.json").get("complete"):
        stored = read_json(out / "config.json")
        if {k: stored.get(k) for k in ("config", "data")} == {k: identity[k] for k in
                                                              ("config", "data")}:
            log(f"{v.name}: found complete in {out}")
            return load_zoo(out)
        raise ConfigError(f"{out}: holds a different zoo; choose another --out or delete it")
    t0 = time.perf_counter()
    result, _ = train_variant(v, ds, seeds, epochs)
    write_run(out, identity, result, np.arange(seeds))
    log(f"{v.name}: trained {seeds} x {epochs} epochs in {time.perf_counter() - t0:.0f} s")
    return load_zoo(out)


# ---- readings of the epoch-order measure ---------------------------------------------------

def _rank_key(order: np.ndarray) -> np.ndarray:
    """float [n]: a key whose decreasing sort (stable) is `order` (indices, first = largest)."""
    key = np.empty(order.shape[0])
    key[order] = np.arange(order.shape[0], 0, -1)
    return key


def _order_metrics(labels, model_ids, epochs, key) -> dict:
    m = cluster_metrics(labels, model_ids, epochs, key)
    return {"purity": m.mean_purity, "ordered_initial": m.mean_ordered_initial,
            "ordered_fraction": m.mean_ordered_fraction}


def _extra_measures(labels, model_ids, epochs, key) -> dict:
    """Other readings of the two measures, on the merge-height order.

    in_place: epochs at their true position anywhere in the order (not only a prefix);
    increasing: adjacent pairs in increasing epoch order (not necessarily consecutive).
    """
    in_place, increasing = [], []
    for cl in np.unique(labels):
        idx = np.flatnonzero(labels == cl)
        ms, counts = np.unique(model_ids[idx], return_counts=True)
        own = idx[model_ids[idx] == ms[np.argmax(counts)]]
        got = epochs[own[np.argsort(-key[own], kind="stable")]]
        in_place.append(int(np.sum(got == np.sort(got))))
        if got.shape[0] > 1:
            increasing.append(float(np.mean(np.diff(got) > 0)))
    return {"in_place": float(np.mean(in_place)), "increasing_pairs": float(np.mean(increasing))}


def _cluster_centroid_distance(x, labels, model_ids) -> np.ndarray:
    d = np.empty(x.shape[0])
    for cl in np.unique(labels):
        idx = np.flatnonzero(labels == cl)
        ms, counts = np.unique(model_ids[idx], return_counts=True)
        own = idx[model_ids[idx] == ms[np.argmax(counts)]]
        d[idx] = np.linalg.norm(x[idx] - x[own].mean(axis=0), axis=1)
    return d


def readings(zoo: Zoo, log=print) -> list[dict]:
    """Epoch-order measures of the full weight space under several readings of the paper.

    Each row: reading, what it does, purity, ordered_initial, ordered_fraction (and for the
    baseline reading also in_place and increasing_pairs).
    """
    from scipy.cluster.hierarchy import leaves_list

    healthy = np.flatnonzero(zoo.healthy())
    rows = []
    for first in (1, 0):
        snaps = np.asarray(zoo.snapshots[healthy][:, first:], dtype=np.float64)
        s, e, p = snaps.shape
        x = snaps.reshape(s * e, p)
        model_ids = np.repeat(healthy, e)
        epochs = np.tile(np.arange(first, zoo.num_epochs + 1), s)
        t0 = time.perf_counter()
        z = single_linkage(x)
        log(f"single linkage of {x.shape[0]} points: {time.perf_counter() - t0:.0f} s")
        labels = cut(z, s)
        h = merge_heights(z, x.shape[0])
        if first == 0:
            rows.append({"reading": "epoch0_in", "doc": "merge height, initialization "
                         "snapshots clustered too", **_order_metrics(labels, model_ids, epochs, h)})
            continue
        rows.append({"reading": "merge_height", "doc": "decreasing merge height, ties in "
                     "epoch order (ours)", **_order_metrics(labels, model_ids, epochs, h),
                     **_extra_measures(labels, model_ids, epochs, h)})
        late = _rank_key(np.lexsort((-epochs, -h)))
        rows.append({"reading": "ties_late_first", "doc": "decreasing merge height, ties in "
                     "reverse epoch order", **_order_metrics(labels, model_ids, epochs, late)})
        mutual = np.mean([np.sum(h == h[i]) > 1 for i in range(0, len(h), max(1, len(h) // 2000))])
        rows[-1]["doc"] += f" (~{mutual:.0%} of snapshots share their height)"
        leaves = _rank_key(leaves_list(z))
        rows.append({"reading": "dendrogram_leaves", "doc": "left-to-right leaf order of the "
                     "dendrogram (scipy leaves_list)",
                     **_order_metrics(labels, model_ids, epochs, leaves)})
        rows.append({"reading": "centroid_distance", "doc": "decreasing distance to the "
                     "centroid of the cluster's dominant model",
                     **_order_metrics(labels, model_ids, epochs,
                                      _cluster_centroid_distance(x, labels, model_ids))})
        rows.append({"reading": "weight_norm", "doc": "decreasing distance to the origin "
                     "(weight norm)", **_order_metrics(labels, model_ids, epochs,
                                                       np.linalg.norm(x, axis=1))})
    return rows


READINGS = ("merge_height", "ties_late_first", "dendrogram_leaves", "centroid_distance",
            "weight_norm", "epoch0_in")


# ---- reporting -----------------------------------------------------------------------------

def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def step_ratio(zoo: Zoo) -> float:
    """Mean over healthy models of |w_E - w_(E-1)| / |w_2 - w_1|: how far the epoch steps
    have shrunk by the last epoch (small: still relaxing; near 1: a noise floor early on)."""
    w = np.asarray(zoo.snapshots[zoo.healthy()], dtype=np.float64)
    steps = np.linalg.norm(np.diff(w[:, 1:], axis=1), axis=2)  # [S, E-1], epochs 2..E
    return float(np.mean(steps[:, -1] / steps[:, 0]))


def jump_count(zoo: Zoo) -> float:
    """Mean per healthy model of epochs e >= 3 whose step |w_e - w_(e-1)| exceeds 1.5x the
    previous one: the jumps that break the decreasing-step pattern merge heights rely on."""
    w = np.asarray(zoo.snapshots[zoo.healthy()], dtype=np.float64)
    steps = np.linalg.norm(np.diff(w, axis=1), axis=2)  # [S, E], epochs 1..E
    return float(np.mean(np.sum(steps[:, 2:] > 1.5 * steps[:, 1:-1], axis=1)))


def dead_features(zoo: Zoo) -> float | None:
    """Mean per healthy model of the CNN's 8 bottleneck features whose 10 outgoing dense
    weights have norm < 0.05 at the last epoch (the dense kernel is the last 80 entries of
    the 1,376); None for another layout."""
    if zoo.snapshots.shape[2] != ARCHS["cnn"].num_params:
        return None
    dense = np.asarray(zoo.snapshots[zoo.healthy(), -1, -80:], dtype=np.float64)
    return float(np.mean(np.sum(np.linalg.norm(dense.reshape(-1, 8, 10), axis=2) < 0.05,
                                axis=1)))


def variant_row(v: Variant, zoo: Zoo, ks=(50, 10)) -> dict:
    t = zoo_tables_detail(zoo, ks=ks)
    acc = np.asarray(zoo.test_accuracy)[zoo.healthy()]
    row = {"variant": v.name, "doc": v.doc, "seeds": int(zoo.snapshots.shape[0]),
           "epochs": zoo.num_epochs, "healthy": int(zoo.healthy().sum()),
           "test_accuracy": float(acc[:, -1].mean()) if acc.size else None,
           "test_accuracy_epoch5": float(acc[:, min(5, zoo.num_epochs)].mean())
           if acc.size else None,
           "final_norm": float(np.linalg.norm(zoo.snapshots[:, -1], axis=1).mean()),
           "step_ratio": step_ratio(zoo)}
    row["jumps"], row["dead_features"] = jump_count(zoo), dead_features(zoo)
    for r in t["rows"]:
        key = "full" if r["space"].endswith("(weight space)") else r["space"].replace(" ", "")
        row[key] = {k: r[k] for k in ("mean_purity", "overall_purity", "ordered_initial",
                                      "ordered_fraction")}
    return row


def comparison_markdown(rows: list[dict]) -> str:
    paper = PAPER_TABLES["cnn"]["rows"]["full"]
    lines = ["| variant | test acc (ep 5 / last) | final norm | last/first step | jumps "
             "| dead features | purity | # ordered initial | % ordered | SVD-50 # / % "
             "| SVD-10 purity |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| paper (250 seeds, 50 epochs) | – | – | – | – | – | {paper[0]:.3f} | "
             f"{paper[1]:.3f} | "
             f"{paper[2]:.3f} | 17.728 / 0.675 | 0.896 |"]
    for r in rows:
        full, s50, s10 = r.get("full", {}), r.get("SVD50", {}), r.get("SVD10", {})
        lines.append(
            f"| {r['variant']} | {_f(r['test_accuracy_epoch5'])} / {_f(r['test_accuracy'])} | "
            f"{r['final_norm']:.2f} | {_f(r.get('step_ratio'))} | {r['jumps']:.2f} | "
            f"{_f(r['dead_features'])} | {_f(full.get('mean_purity'))} | "
            f"{_f(full.get('ordered_initial'))} | {_f(full.get('ordered_fraction'))} | "
            f"{_f(s50.get('ordered_initial'))} / {_f(s50.get('ordered_fraction'))} | "
            f"{_f(s10.get('mean_purity'))} |")
    return "\n".join(lines) + "\n"


def readings_markdown(name: str, rows: list[dict]) -> str:
    lines = [f"Readings of the epoch-order measure, full weight space, {name}:", "",
             "| reading | purity | # ordered initial | % ordered | what it does |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['reading']} | {_f(r['purity'])} | {_f(r['ordered_initial'])} | "
                     f"{_f(r['ordered_fraction'])} | {r['doc']} |")
    base = rows[0]
    if "in_place" in base:
        lines.append(f"\nOn the merge-height order: epochs at their true position "
                     f"{base['in_place']:.3f} per cluster; adjacent pairs increasing "
                     f"{base['increasing_pairs']:.3f}.")
    return "\n".join(lines) + "\n"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.reproduction",
                       description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files")
    p.add_argument("--out", default="runs/variants", help="parent folder; one run per variant")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), metavar="NAME",
                   help="which variants (default: all; see --list)")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ks", type=int, nargs="*", default=[50, 10],
                   help="SVD dimensions in the table (default 50 10)")
    p.add_argument("--readings", nargs="+", metavar="RUN",
                   help="only re-read the epoch order of these run directories")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:20s} {v.doc}")
        return 0
    if args.readings:
        zoos = [load_zoo(r) for r in args.readings]
        for zoo in zoos:
            rows = readings(zoo)
            md = readings_markdown(f"{zoo.arch} zoo of {zoo.snapshots.shape[0]} models x "
                                   f"{zoo.num_epochs} epochs", rows)
            print(md)
            atomic_write_json(zoo.path / "readings.json", rows)
            atomic_write_bytes(zoo.path / "readings.md", md.encode())
        return 0
    if args.seeds < 2 or args.epochs < 2:
        raise ConfigError("--seeds and --epochs must be at least 2")
    ds = load_dataset(args.dataset, args.data_dir)
    out = Path(args.out)
    for name in args.variants or list(VARIANTS):
        v = VARIANTS[name]
        zoo = run_variant(v, ds, out / name, args.seeds, args.epochs)
        print(comparison_markdown([variant_row(v, zoo, ks=tuple(args.ks))]).splitlines()[-1],
              flush=True)
    # One table over every variant trained in --out so far (also by earlier invocations).
    rows = [variant_row(v, load_zoo(out / v.name), ks=tuple(args.ks))
            for v in VARIANTS.values() if (out / v.name / "progress.json").exists()
            and read_json(out / v.name / "progress.json").get("complete")]
    md = comparison_markdown(rows)
    print(md)
    atomic_write_json(out / "comparison.json", rows)
    atomic_write_bytes(out / "comparison.md", md.encode())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
