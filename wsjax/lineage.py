"""Lineage of fine-tuned models from weights alone: which model was forked from which
checkpoint of which parent.

Ours (`recover_lineage`): a model forked from checkpoint k of its parent starts at that
checkpoint, and fine-tuning moves a few of its weights far and most of them a little. Edge
p -> c is measured from c's earliest checkpoint to each of p's checkpoints after step 0 (an
initialization is no fork point: inits of unrelated models lie near each other) by the
geometric mean of the per-weight absolute differences: it follows the bulk of the weights,
which stays near the fork checkpoint, where the Euclidean distance follows the few that
moved, and one epoch of training can carry those farther than the distance between
relatives. The cost is the nearest checkpoint's distance over the median of c's distances to
all the other models (most of them unrelated); a virtual root offers every model the cost
`root_cost` (a model no nearer to any checkpoint than that share of the typical distance is a
root); the tree is the minimum spanning arborescence (Edmonds, networkx). The fork step is
that of the parent's checkpoint nearest to c's first checkpoint stepped back by c's own
first step (2 c_1 - c_2), an estimate of where c started. The direction comes from each
model's own checkpoint order, not from the weights' statistics.

`trajectory_lineage`, the Euclidean form it replaced: the cost is the Euclidean distance from
c's earliest checkpoint to p's trajectory (the polyline through its checkpoints after step 0,
as in `wsjax.identify`), over the same median; the fork is the parent's last step at or
before the foot of that projection.

MoTHer-style baseline (`mother_lineage`, after Horwitz et al., "On the Origin of Llamas"):
each model is its last checkpoint; edge cost = Euclidean distance, plus a penalty `lam` (the
median distance) when the parent's summed per-layer excess kurtosis exceeds the child's
(fine-tuning is taken to raise kurtosis); the virtual root costs the same `root_cost` times
the median distance between models; Edmonds' minimum spanning arborescence. Its fork
checkpoint is the parent's checkpoint nearest to the child's earliest one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats

from wsjax.checkpoints import Layout
from wsjax.errors import ConfigError

__all__ = ["Model", "Edge", "recover_lineage", "trajectory_lineage", "mother_lineage",
           "geometric_distance", "lineage_agreement",
           "lineage_text", "lineage_json", "plot_lineage", "ROOT_COST", "Fork", "train_tree"]

ROOT_COST = 0.5
_ROOT = "\0root"


@dataclass(frozen=True)
class Model:
    """One model's checkpoints: x float64 [T, P] in training order, steps [T]."""

    name: str
    x: np.ndarray
    steps: np.ndarray


@dataclass(frozen=True)
class Edge:
    """child was forked from parent at the parent's checkpoint `fork_step` (parent None: a
    root); cost is the edge's cost in the arborescence."""

    child: str
    parent: str | None
    fork_step: float | None
    cost: float


def _arborescence(names: list[str], cost: dict[tuple[str, str], float],
                  root_cost: dict[str, float]) -> dict[str, str | None]:
    """Minimum spanning arborescence over names plus a virtual root (Edmonds, networkx):
    child -> parent (None for the virtual root)."""
    import networkx as nx

    g = nx.DiGraph()
    for n in names:
        g.add_edge(_ROOT, n, weight=float(root_cost[n]))
    for (p, c), w in cost.items():
        g.add_edge(p, c, weight=float(w))
    tree = nx.minimum_spanning_arborescence(g, attr="weight", preserve_attrs=True)
    parent = {c: p for p, c in tree.edges()}
    return {n: None if parent[n] == _ROOT else parent[n] for n in names}


def _tree(models: list[Model], cost: dict, root_cost: float, fork) -> list[Edge]:
    """Edges of the minimum spanning arborescence, fork(parent, child) -> fork step."""
    by = {m.name: m for m in models}
    parent = _arborescence(list(by), cost, dict.fromkeys(by, root_cost))
    return [Edge(m.name, None, None, root_cost) if parent[m.name] is None
            else Edge(m.name, parent[m.name], fork(by[parent[m.name]], m),
                      float(cost[parent[m.name], m.name])) for m in models]


def _check(models: list[Model]) -> None:
    if len(models) < 2:
        raise ConfigError("lineage needs at least two models")
    if len({m.x.shape[1] for m in models}) != 1:
        raise ConfigError("models of different sizes (architectures); recover them apart")
    if len({m.name for m in models}) != len(models):
        raise ConfigError("two models share a name")


def _trained(p: Model) -> np.ndarray:
    """[T] bool: p's checkpoints that are fork candidates (all of them if none is past 0)."""
    return p.steps > 0 if (p.steps > 0).any() else np.ones(len(p.steps), bool)


def geometric_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geometric mean over weights of |a - b|: a [P], b [..., P] -> [...]. A difference below
    float32's resolution (at the weight's size, or the typical weight's size for one near 0)
    counts as that resolution: a weight left exactly unchanged, or 0 in both, is as near as
    stored weights can tell, not infinitely near, so a few such weights cannot outvote the
    rest."""
    typical = np.sqrt(np.mean(a * a))
    floor = np.finfo(np.float32).eps * np.maximum(np.maximum(np.abs(a), np.abs(b)), typical)
    d = np.maximum(np.abs(b - a), np.maximum(floor, np.finfo(np.float64).tiny))
    return np.exp(np.log(d).mean(-1))


def _costs(models: list[Model], measure) -> tuple[dict, dict]:
    """Edge costs {(p, c): cost} and fork steps {(p, c): step} for every ordered pair, from
    measure(c's first checkpoint [P], p's fork candidates [T, P], their steps [T]) ->
    (distance, step). A cost is the distance over the median of c's distances to all the
    other models."""
    dist, at = {}, {}
    for c in models:
        for p in models:
            if p is not c:
                keep = _trained(p)
                dist[p.name, c.name], at[p.name, c.name] = measure(c.x[0], p.x[keep],
                                                                   p.steps[keep])
    scale = {c.name: float(np.median([d for (_, cc), d in dist.items() if cc == c.name]))
             for c in models}
    return {(p, c): d / max(scale[c], 1e-300) for (p, c), d in dist.items()}, at


def _nearest_checkpoint(a: np.ndarray, x: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    d = geometric_distance(a, x)
    j = int(np.argmin(d))
    return float(d[j]), float(steps[j])


def recover_lineage(models: list[Model], root_cost: float = ROOT_COST) -> list[Edge]:
    """Our method (module docstring). Returns one Edge per model, input order."""
    _check(models)
    cost, _ = _costs(models, _nearest_checkpoint)

    def fork(parent: Model, child: Model) -> float:
        # the child's first checkpoint is an epoch past the fork, and that epoch moves much
        # of the bulk as the parent's own next epoch does: step back along the child's first
        # step to the fork before looking for it among the parent's checkpoints
        start = 2 * child.x[0] - child.x[1] if len(child.x) > 1 else child.x[0]
        keep = _trained(parent)
        return _nearest_checkpoint(start, parent.x[keep], parent.steps[keep])[1]

    return _tree(models, cost, root_cost, fork)


def trajectory_lineage(models: list[Model], root_cost: float = ROOT_COST) -> list[Edge]:
    """The Euclidean trajectory form (module docstring). Returns one Edge per model."""
    from wsjax.identify import _segment_distance

    _check(models)
    cost, foot = _costs(models, lambda a, x, s: _segment_distance(a, x, s)[:2])

    def fork(parent: Model, child: Model) -> float:
        # the child's first checkpoint is an epoch of training past the fork, and that epoch
        # moves it along the parent's own next step: the fork is the step at or before the foot
        before = parent.steps[parent.steps <= foot[parent.name, child.name] + 1e-9]
        return float(before.max() if len(before) else parent.steps.min())

    return _tree(models, cost, root_cost, fork)


def _kurtosis(x: np.ndarray, layout: Layout | None) -> float:
    """Summed excess kurtosis of each parameter array (one for a flat layout)."""
    if layout is None or layout.flat:
        return float(scipy.stats.kurtosis(x))
    out, at = 0.0, 0
    for shape in layout.shapes:
        n = int(np.prod(shape))
        if n > 3:
            out += float(scipy.stats.kurtosis(x[at:at + n]))
        at += n
    return out


def mother_lineage(models: list[Model], layout: Layout | None = None,
                   root_cost: float = ROOT_COST) -> list[Edge]:
    """The MoTHer-style baseline (module docstring). Returns one Edge per model."""
    _check(models)
    names = [m.name for m in models]
    last = np.stack([m.x[-1] for m in models])
    sq = (last * last).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * last @ last.T, 0.0))
    kurt = [_kurtosis(v, layout) for v in last]
    off = d[~np.eye(len(d), dtype=bool)]
    lam = float(np.median(off))
    cost = {(names[i], names[j]): d[i, j] + (lam if kurt[i] > kurt[j] else 0.0)
            for i in range(len(d)) for j in range(len(d)) if i != j}

    def fork(parent: Model, child: Model) -> float:
        return float(parent.steps[np.argmin(np.linalg.norm(parent.x - child.x[0], axis=1))])

    return _tree(models, cost, root_cost * lam, fork)


def lineage_agreement(edges: list[Edge], truth: dict[str, tuple[str | None, float | None]],
                      tolerance: float = 1.0) -> dict:
    """Scores recovered edges against truth {child: (parent or None, fork step or None)}.

    parent_acc: share of models whose parent (or root status) is right; fork_acc: share of
    forked models with the right parent and a fork step within `tolerance`; direction_acc:
    of the true parent-child pairs that the recovery links in either direction, the share
    linked in the right one; root_acc: share of roots found as roots.
    """
    got = {e.child: e for e in edges}
    forked = [c for c, (p, _) in truth.items() if p is not None]
    roots = [c for c, (p, _) in truth.items() if p is None]
    parent_ok = [got[c].parent == p for c, (p, _) in truth.items()]
    fork_ok = [got[c].parent == truth[c][0] and got[c].fork_step is not None
               and abs(got[c].fork_step - truth[c][1]) <= tolerance for c in forked]
    linked = [(c, p) for c, (p, _) in truth.items() if p is not None
              and (got[c].parent == p or got[p].parent == c)]
    return dict(
        parent_acc=float(np.mean(parent_ok)),
        fork_acc=float(np.mean(fork_ok)) if forked else None,
        direction_acc=float(np.mean([got[c].parent == p for c, p in linked])) if linked
        else None,
        root_acc=float(np.mean([got[c].parent is None for c in roots])) if roots else None,
        n_models=len(truth), n_forked=len(forked), n_linked=len(linked))


def _children(edges: list[Edge]) -> dict:
    kids: dict = {}
    for e in edges:
        kids.setdefault(e.parent, []).append(e)
    return kids


def lineage_text(edges: list[Edge]) -> str:
    """The forest as indented text: `child  <- forked at step k of parent (cost c)`."""
    kids, lines = _children(edges), []

    def walk(e: Edge, depth: int):
        how = "root" if e.parent is None else f"forked at step {e.fork_step:g} (cost {e.cost:.3g})"
        lines.append(f"{'  ' * depth}{e.child}  {how}")
        for k in sorted(kids.get(e.child, []), key=lambda k: k.child):
            walk(k, depth + 1)

    for r in sorted(kids.get(None, []), key=lambda e: e.child):
        walk(r, 0)
    return "\n".join(lines)


def lineage_json(edges: list[Edge], method: str) -> dict:
    return dict(method=method, models=[dict(model=e.child, parent=e.parent,
                                            fork_step=e.fork_step, cost=e.cost) for e in edges])


def plot_lineage(edges: list[Edge], title: str = ""):
    """A drawing of the forest: roots on top, children below, edges labelled with the fork
    step. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    kids = _children(edges)
    pos, col = {}, [0]

    def place(e: Edge, depth: int):
        below = sorted(kids.get(e.child, []), key=lambda k: k.child)
        for k in below:
            place(k, depth + 1)
        if below:
            pos[e.child] = (np.mean([pos[k.child][0] for k in below]), -depth)
        else:
            pos[e.child] = (float(col[0]), -depth)
            col[0] += 1

    for r in sorted(kids.get(None, []), key=lambda e: e.child):
        place(r, 0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * col[0] + 1), 1.4 * (1 - min(
        y for _, y in pos.values())) + 0.6))
    for e in edges:
        x, y = pos[e.child]
        if e.parent is not None:
            px, py = pos[e.parent]
            ax.annotate("", xy=(x, y + 0.12), xytext=(px, py - 0.12),
                        arrowprops=dict(arrowstyle="->", color="0.4", lw=1))
            ax.text((x + px) / 2, (y + py) / 2, f"@{e.fork_step:g}", fontsize=7, color="0.3",
                    ha="center", va="center", backgroundcolor="white")
        ax.text(x, y, e.child, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.3",
                          fc="#dbe8f5" if e.parent is None else "white", ec="0.3"))
    ax.set_xlim(-0.8, col[0] - 0.2)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.6, 0.6)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Fork:
    """A child trained `epochs` epochs from checkpoint `at` of `parent`, on half `half` of the
    training set (0 or 1; None: all of it) at `lr_scale` times the learning rate."""

    child: str
    parent: str
    at: int
    epochs: int
    half: int | None = None
    lr_scale: float = 1.0


def train_tree(config, forks: list[Fork], dataset=None, data_dir=None,
               seed: int = 0) -> tuple[list[Model], dict]:
    """A zoo with a known tree, cheaply: `config.seeds` roots (named r0, r1, ..) trained
    `config.epochs` epochs as `wsjax.zoo.run_zoo` would (epochs 0..E kept), then the forks,
    level by level, each level's children trained together by the batched trainer (one group
    per data half and length; learning rates per member). A child's checkpoints are its epochs 1..F
    (its epoch 0 is a copy of the parent's checkpoint, which a fine-tuned model's folder
    would not hold); its steps are its own epochs.

    Returns (models, truth {child: (parent or None, fork step or None)}). Child keys come
    from `seed` and the child's position in `forks`, so the tree is deterministic.
    """
    import jax
    import jax.numpy as jnp

    from wsjax.data import load_dataset
    from wsjax.params import make_unflatten
    from wsjax.train.state import HParams
    from wsjax.zoo import _prepare_inputs, make_trainer, member_keys

    ds = _prepare_inputs(config, dataset if dataset is not None
                         else load_dataset(config.dataset, data_dir))
    trainer = make_trainer(config)
    r = config.resolved()
    x_tr, y_tr = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    hp0 = trainer.broadcast_hparams(config.hparams(), config.seeds)
    state = trainer.init(member_keys(np.arange(config.seed_start,
                                               config.seed_start + config.seeds)), hp0, x_tr)
    first = np.asarray(trainer.flat_params(state), np.float64)[:, None]
    _, _, sn, _ = trainer.train_epochs(state, hp0, x_tr, y_tr, 1, config.epochs,
                                       last_epoch=config.epochs)
    roots = np.concatenate([first, np.asarray(sn, np.float64)], axis=1)   # [R, E+1, P]
    snaps = {f"r{i}": roots[i] for i in range(config.seeds)}
    steps = {n: np.arange(config.epochs + 1.0) for n in snaps}
    truth: dict = dict.fromkeys(snaps, (None, None))
    template = jax.tree.map(lambda a: a[0], trainer.init(
        member_keys(np.arange(1)), trainer.broadcast_hparams(config.hparams(), 1),
        x_tr).params)
    unflatten = jax.vmap(make_unflatten(template))
    todo = list(enumerate(forks))
    # every group is padded to one member count, so that the groups share compiled programs
    pad = max(sum(1 for g in forks if (g.half, g.epochs) == (f.half, f.epochs)) for f in forks)
    while todo:
        ready = [(i, f) for i, f in todo if f.parent in snaps]
        if not ready:
            raise ConfigError(f"fork {todo[0][1].child}: parent {todo[0][1].parent} unknown")
        todo = [t for t in todo if t not in ready]
        for half in sorted({f.half for _, f in ready}, key=lambda h: -1 if h is None else h):
            group = [(i, f) for i, f in ready if f.half == half]
            epochs = {f.epochs for _, f in group}
            for n_ep in sorted(epochs):
                sub = [(i, f) for i, f in group if f.epochs == n_ep]
                padded = sub + [sub[0]] * (pad - len(sub))
                start = np.stack([snaps[f.parent][int(np.flatnonzero(
                    steps[f.parent] == f.at)[0])] for _, f in padded])
                hp = trainer.broadcast_hparams(HParams(
                    learning_rate=jnp.asarray([r["learning_rate"] * f.lr_scale
                                               for _, f in padded]),
                    momentum=r["momentum"], weight_decay=r["weight_decay"]), pad)
                xs, ys = (x_tr, y_tr) if half is None else (x_tr[half::2], y_tr[half::2])
                keys = member_keys(np.asarray([10_000 * (seed + 1) + i for i, _ in padded]))
                state = trainer.init(keys, hp, xs)
                state = state.replace(params=unflatten(jnp.asarray(start, jnp.float32)))
                _, _, sn, _ = trainer.train_epochs(state, hp, xs, ys, 1, n_ep, last_epoch=n_ep)
                sn = np.asarray(sn, np.float64)
                for j, (_, f) in enumerate(sub):
                    snaps[f.child] = sn[j]
                    steps[f.child] = np.arange(1.0, n_ep + 1)
                    truth[f.child] = (f.parent, float(f.at))
    models = [Model(n, snaps[n], steps[n]) for n in snaps]
    return models, truth
