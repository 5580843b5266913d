"""Lineage of fine-tuned models: a small known tree trained on digits, recovered from folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from wsjax.lineage import (
    Edge,
    Fork,
    Model,
    geometric_distance,
    lineage_agreement,
    mother_lineage,
    recover_lineage,
    train_tree,
    trajectory_lineage,
)
from wsjax.zoo import ZooConfig


@pytest.fixture(scope="module")
def tree(digits):
    """3 roots (3 epochs); each forked at epochs 1 and 3 into children trained 3 epochs on a
    half of the data (one of them at half the learning rate); each first child forked again
    at its epoch 2, as in the evaluation tree. (No fork at a parent's first saved checkpoint:
    that checkpoint and the child's first are each an epoch from the fork point, and nothing
    in them says which came first.)"""
    forks = []
    for i in range(3):
        forks += [Fork(f"r{i}.a", f"r{i}", 1, 3, half=i % 2),
                  Fork(f"r{i}.b", f"r{i}", 3, 3, half=(i + 1) % 2, lr_scale=0.5),
                  Fork(f"r{i}.a.x", f"r{i}.a", 2, 2, half=(i + 1) % 2)]
    cfg = ZooConfig(arch="ffnn", dataset="digits", seeds=3, epochs=3)
    return train_tree(cfg, forks, dataset=digits)


def test_tree_zoo_forks_from_the_parent(tree):
    """A child's first epoch starts from its parent's checkpoint: it lies one epoch of
    training from it, much nearer than to the other roots."""
    models, truth = tree
    by = {m.name: m for m in models}
    assert truth["r1.a.x"] == ("r1.a", 2.0) and truth["r2"] == (None, None)
    for child, (parent, at) in truth.items():
        if parent is None:
            continue
        x = by[child].x[0]
        own = np.linalg.norm(by[parent].x[by[parent].steps == at][0] - x)
        other = min(np.linalg.norm(by[r].x - x, axis=1).min()
                    for r in ("r0", "r1", "r2") if not child.startswith(r))
        assert own < 0.5 * other


def test_lineage_recovered_from_folders(tree, tmp_path, capsys):
    from wsjax.__main__ import main
    from wsjax.cli import run_cli

    models, truth = tree
    for m in models:
        (tmp_path / "zoo" / m.name).mkdir(parents=True)
        for x, s in zip(m.x, m.steps, strict=True):
            np.savez(tmp_path / "zoo" / m.name / f"epoch_{int(s)}.npz", w=x.astype(np.float32))
    capsys.readouterr()
    assert run_cli(main, ["lineage", str(tmp_path / "zoo"), "--json", str(tmp_path / "t.json"),
                          "--plot", str(tmp_path / "tree")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "r0  root" and "forked at step" in out
    assert (tmp_path / "tree.png").stat().st_size > 0
    got = json.loads((tmp_path / "t.json").read_text())
    edges = [Edge(d["model"], d["parent"], d["fork_step"], d["cost"]) for d in got["models"]]
    assert {e.child: (e.parent, e.fork_step) for e in edges} == truth
    base = lineage_agreement(mother_lineage(models), truth)
    assert base["parent_acc"] < 1.0


def test_trajectory_lineage_hand_case():
    """Three roots far apart on straight lines; a child leaves root a at its step 2 sideways;
    a grandchild leaves the child at the child's step 2. Edmonds must give that forest. (In
    three coordinates, one of them 0 in every model, this is a case for the Euclidean form.)"""
    e = np.arange(5.0)
    a = np.stack([10 * e, 0 * e, 0 * e], axis=1)
    b, d = a + [0, 100, 0], a + [0, -100, 0]
    child = np.array([[20.0, 0, 0.3], [20.0, 0, 0.6], [20.0, 0, 0.9]])     # steps 1..3
    grand = np.array([[20.3, 0, 0.6], [20.6, 0, 0.6]])                    # from child step 2
    s = np.arange(1.0, 4)
    models = [Model("a", a, e), Model("b", b, e), Model("d", d, e), Model("c", child, s),
              Model("g", grand, s[:2])]
    truth = {"a": (None, None), "b": (None, None), "d": (None, None), "c": ("a", 2.0),
             "g": ("c", 2.0)}
    got = {x.child: (x.parent, x.fork_step) for x in trajectory_lineage(models)}
    assert got == truth
    wrong = [Edge("a", "c", 1.0, 0), Edge("b", None, None, 0), Edge("d", None, None, 0),
             Edge("c", None, None, 0), Edge("g", "c", 3.5, 0)]
    score = lineage_agreement(wrong, truth)
    assert score["parent_acc"] == 0.6 and score["fork_acc"] == 0.0
    assert score["direction_acc"] == 0.5 and score["root_acc"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("method", [recover_lineage, trajectory_lineage])
def test_initializations_are_no_fork_points(method):
    """Roots start near each other (random inits are closer together than trained weights),
    take a long first step and then short ones; a parent's step 0 is not a fork point, so
    they stay roots while their children, forked at steps 2 and 4, are attached there. Every
    move changes every weight, as training does."""
    rng = np.random.default_rng(0)
    d, steps = 40, np.arange(6.0)
    way = rng.normal(size=(9, d))
    way /= np.linalg.norm(way, axis=1, keepdims=True)
    models, truth = [], {}
    for i in range(3):
        start = rng.normal(size=d) * 0.1
        along = np.array([0.0, 10, 11, 12, 13, 14])
        models.append(Model(f"r{i}", start + np.outer(along, way[i]) + rng.normal(
            size=(6, d)) * 0.05, steps))
        truth[f"r{i}"] = (None, None)
        for k in (2, 4):
            # fine-tuning moves on along the parent's direction, and off it
            move = way[3 + 2 * i + k // 4] * 0.8 + way[i] * 0.5
            x = models[3 * i].x[k] + np.outer(np.arange(1.0, 4.0), move)
            models.append(Model(f"r{i}.{k}", x + rng.normal(size=x.shape) * 0.05,
                                np.arange(1.0, 4.0)))
            truth[f"r{i}.{k}"] = (f"r{i}", float(k))
    got = {e.child: (e.parent, e.fork_step) for e in method(models)}
    assert got == truth


def test_geometric_distance_hand_worked_and_scipy():
    """Differences 0.5, 2, 8, 0.25 multiply to 2: the geometric mean is 2 ** (1/4). A weight
    left unchanged counts as float32's resolution at its size. Against scipy's gmean."""
    a = np.ones(4)
    assert geometric_distance(a, np.array([1.5, 3, 9, 0.75])) == pytest.approx(2 ** 0.25)
    a5 = np.ones(5)
    got = geometric_distance(a5, np.array([1.5, 3, 9, 0.75, 1.0]))
    assert got == pytest.approx((2 * np.finfo(np.float32).eps) ** 0.2)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=(3, 50))
    b[:, :5] = a[:5]
    floor = np.finfo(np.float32).eps * np.maximum(np.maximum(abs(a), abs(b)),
                                                  np.sqrt(np.mean(a * a)))
    want = scipy.stats.gmean(np.maximum(abs(b - a), floor), axis=1)
    np.testing.assert_allclose(geometric_distance(a, b), want, rtol=1e-12)


def test_geometric_distance_follows_the_bulk_of_the_weights():
    """Fine-tuning moves a few weights far and the rest a little. Its first checkpoint is
    nearer, in Euclidean distance, to a point that moved every weight a little and the few
    halfway; the geometric mean puts it nearest the fork point it came from."""
    rng = np.random.default_rng(1)
    fork = rng.normal(size=400)
    few = np.zeros(400)
    few[:20] = 3.0
    child = fork + few + 1e-3 * rng.normal(size=400)
    decoy = fork + few / 2 + 0.3 * rng.choice([-1.0, 1.0], size=400)
    assert np.linalg.norm(child - decoy) < np.linalg.norm(child - fork)
    near = geometric_distance(child, np.stack([fork, decoy]))
    assert near[0] < near[1]


def test_tree_identify_on_straight_trajectories():
    """Models on straight lines far apart: held-out (never indexed) models are rejected,
    and odd steps sit exactly between their even neighbours."""
    from wsjax.evaluation import tree_identify

    d = 30
    lines = [Model(f"m{i}", np.eye(d)[i] * 50 + np.outer(np.arange(6.0), np.eye(d)[i + 10]),
                   np.arange(6.0)) for i in range(6)]
    got = tree_identify(lines[:4], lines[4:])
    assert got["unseen_accepted"] == 0 and got["unseen_models"] == 2
    assert got["unseen_fa_upper95"] == pytest.approx(1 - 0.05 ** 0.5)
    assert got["holdout_n"] == 6 and got["holdout_model_acc"] == 1.0
    assert got["holdout_epoch_mae"] == pytest.approx(0.0, abs=1e-9)
