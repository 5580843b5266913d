"""Version control from weights: identify a checkpoint's model and epoch, order a lineage."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from wsjax.errors import ConfigError, WsjaxError
from wsjax.identify import (
    DimensionMismatchError,
    build_index,
    identify,
    load_index,
    order_agreement,
    order_checkpoints,
    save_index,
)
from wsjax.store import load_zoo, trajectory_points
from wsjax.zoo import ZooConfig, run_zoo

SEEDS, EPOCHS, EXTRA = 6, 8, 4


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    """A digits FFNN zoo (seeds 0-5, 8 epochs), a longer run of seeds 0-1 (12 epochs) and two
    unseen seeds (100-101); same keys, so the longer run continues the zoo exactly."""
    base = tmp_path_factory.mktemp("vc")
    quiet = dict(progress=False, log=lambda *_: None)
    run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=SEEDS, epochs=EPOCHS), base / "a",
            **quiet)
    run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=2, epochs=EPOCHS + EXTRA),
            base / "long", **quiet)
    run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=2, seed_start=100, epochs=EPOCHS),
            base / "new", **quiet)
    return base, load_zoo(base / "a"), load_zoo(base / "long"), load_zoo(base / "new")


def _even_index(zoo, svd=None):
    points = trajectory_points(zoo.snapshots, np.arange(SEEDS), np.arange(0, EPOCHS + 1, 2))
    return build_index(*points, [f"seed{s}" for s in zoo.seeds], svd=svd)


def test_evaluation_of_straight_trajectories_by_hand():
    """Models on parallel lines far apart, equal steps: every odd epoch lies halfway along its
    even segment (epoch exact), and a line elsewhere is never accepted."""
    from wsjax.evaluation import evaluate, evaluate_order

    e = np.arange(11.0)
    def line(offset):
        return np.stack([e, np.full_like(e, offset), np.zeros_like(e)], axis=1)
    known = np.stack([line(0.0), line(100.0)])                        # [2, 11, 3]
    unseen = np.stack([line(50.0)])
    r = evaluate(known, unseen, epochs=8, extra=2, svd=None)
    assert r["holdout_model_acc"] == 1.0 and r["holdout_accepted"] == 1.0
    assert r["holdout_epoch_mae"] < 1e-9
    assert r["unseen_false_accept"] == 0.0 and r["unseen_n"] == 8
    assert [row["extra"] for row in r["beyond_full"]] == [1, 2]
    # a line with equal steps has no direction: the order is found up to reversal
    assert abs(evaluate_order(known, epochs=8)["endpoint"]["kendall_tau"]) == 1.0


@pytest.mark.parametrize("svd", [None, 10])
def test_held_out_odd_epochs_identified(zoos, svd):
    _, zoo, _, _ = zoos
    index = _even_index(zoo, svd)
    odd = np.arange(1, EPOCHS, 2)
    res = identify(index, np.asarray(zoo.snapshots[:, odd]).reshape(-1, zoo.snapshots.shape[-1]))
    truth = [f"seed{s}" for s in np.repeat(zoo.seeds, len(odd))]
    assert [r.model for r in res] == truth
    err = np.abs(np.array([r.epoch for r in res]) - np.tile(odd, SEEDS))
    assert err.mean() < 1.0
    assert all(r.segment[0] < r.epoch < r.segment[1] or abs(r.epoch - r.nearest_epoch) < 1
               for r in res)


@pytest.mark.parametrize("svd", [None, 10])
def test_continued_training_is_flagged_beyond_end(zoos, svd):
    _, zoo, long, _ = zoos
    np.testing.assert_array_equal(long.snapshots[:, :EPOCHS + 1], zoo.snapshots[:2])
    p = zoo.snapshots.shape[-1]
    index = build_index(np.asarray(zoo.snapshots).reshape(-1, p),
                        np.repeat(np.arange(SEEDS), EPOCHS + 1),
                        np.tile(np.arange(EPOCHS + 1), SEEDS), svd=svd)
    beyond = np.asarray(long.snapshots[:, EPOCHS + 1:]).reshape(-1, p)
    res = identify(index, beyond)
    assert [r.nearest_model for r in res] == ["0"] * EXTRA + ["1"] * EXTRA
    assert all(r.beyond_end and r.epoch > EPOCHS and r.extra_epochs > 0 for r in res)
    assert not any(r.beyond_end for r in identify(index, np.asarray(zoo.snapshots[:, -1])))


@pytest.mark.parametrize("svd", [None, 10])
def test_interior_checkpoints_are_not_beyond_end(zoos, svd):
    """Index the even epochs; the odd ones (the last one included) lie between two snapshots."""
    _, zoo, long, _ = zoos
    p = zoo.snapshots.shape[-1]
    index = _even_index(zoo, svd)
    odd = np.arange(1, EPOCHS, 2)
    res = identify(index, np.asarray(zoo.snapshots[:, odd]).reshape(-1, p))
    assert not any(r.beyond_end for r in res)
    assert all(r.beyond_score > 0.5 for r in res[len(odd) - 1::len(odd)])
    res = identify(index, np.asarray(long.snapshots[:, EPOCHS + 1:]).reshape(-1, p))
    assert all(r.beyond_end for r in res)


def test_beyond_end_hand_cases():
    """A straight 3-point trajectory (step 2) and one that turns back towards its start."""
    line = np.array([[0.0, 0, 0], [2, 0, 0], [4, 0, 0]])
    bend = np.array([[0.0, 0, 0], [10, 0, 0], [3, 1, 0], [2, 1, 0]]) + [0, 0, 100]
    index = build_index(np.concatenate([line, bend]), [0] * 3 + [1] * 4,
                        [0, 1, 2, 0, 1, 2, 3], threshold=50.0, beyond_back=0.5)
    q = np.array([[4.0, 2, 0],      # sideways off the end: orthogonal to the last step
                  [6, 0, 0],        # straight on
                  [3, 0.5, 0],      # inside the last segment
                  [4, 0, 0],        # the end itself
                  [4.1, 0, 0],      # within a quarter step of the end
                  [3, -0.5, 100]])  # beside bend's first segment, offset from its end not back
    r = identify(index, q)
    assert [x.model for x in r] == ["0"] * 5 + ["1"]
    assert [x.beyond_end for x in r] == [True, True, False, False, False, False]
    assert r[0].beyond_score == pytest.approx(0.0) and r[0].end_distance == pytest.approx(2.0)
    assert r[0].epoch == pytest.approx(3.0) and r[0].extra_epochs == pytest.approx(1.0)
    assert r[1].beyond_score == pytest.approx(-1.0) and r[1].epoch == pytest.approx(3.0)
    assert r[2].beyond_score == pytest.approx(2 / 1.25) and r[2].epoch == pytest.approx(1.5)
    assert r[3].epoch == pytest.approx(2.0) and r[3].end_distance == 0.0
    assert r[5].beyond_score == pytest.approx(-0.5 / 3.25) and r[5].epoch == pytest.approx(0.3)
    assert r[5].end_distance / r[5].distance > 2.0  # only the guard keeps it inside


def test_beyond_calibration_on_random_walks():
    """High-dimensional random walks: a walk's new steps are orthogonal to its old ones, so a
    continuation is past the end and a half-step point lies between two snapshots."""
    rng = np.random.default_rng(1)
    m, t, d = 5, 12, 400
    walks = np.cumsum(rng.normal(size=(m, 2 * t + 8, d)), axis=1) + 50 * rng.normal(size=(m, 1, d))
    known = walks[:, : 2 * t + 1 : 2]
    index = build_index(known.reshape(-1, d), np.repeat(np.arange(m), t + 1),
                        np.tile(np.arange(t + 1.0), m))
    cal = index.calibration["beyond"]
    assert cal["calibrated"] and 0.25 <= cal["back"] <= 0.75
    assert cal["llo_tpr"] == 1.0 and cal["loo_fpr"] == 0.0 and cal["llo_n"] == m
    short = build_index(known[:, :-1].reshape(-1, d), np.repeat(np.arange(m), t),
                        np.tile(np.arange(t + 0.0), m), beyond_back=cal["back"])
    assert all(r.beyond_end for r in identify(short, known[:, -1]))
    half = identify(index, walks[:, 1 : 2 * t : 2].reshape(-1, d))
    assert not any(r.beyond_end for r in half)
    on = identify(index, walks[:, 2 * t + 1 :].reshape(-1, d))
    assert all(r.beyond_end for r in on)
    assert [r.model for r in on] == [str(i) for i in np.repeat(np.arange(m), 7)]
    assert all(abs(r.beyond_score) < 0.3 for r in on)
    with pytest.raises(ConfigError, match="beyond-back"):
        build_index(known.reshape(-1, d), np.repeat(np.arange(m), t + 1),
                    np.tile(np.arange(t + 1.0), m), beyond_back=1.5)


def test_unseen_seed_is_unknown(zoos):
    _, zoo, _, new = zoos
    index = _even_index(zoo)
    res = identify(index, np.asarray(new.snapshots[:, 1:]).reshape(-1, new.snapshots.shape[-1]))
    assert all(r.unknown and r.model is None for r in res)
    assert identify(index, new.snapshots[0, 3], threshold=1e9)[0].model is not None


def test_dimension_mismatch_is_refused(zoos):
    _, zoo, _, _ = zoos
    index = _even_index(zoo)
    with pytest.raises(DimensionMismatchError, match="1376 weights.*2160") as e:
        identify(index, np.zeros(1376))
    assert isinstance(e.value, ValueError) and isinstance(e.value, WsjaxError)


def test_segment_projection_hand_case():
    pts = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [10.0, 10.0], [10.0, 12.0]])
    index = build_index(pts, [0, 0, 0, 1, 1], [0, 1, 2, 0, 1], threshold=5.0)
    r = identify(index, np.array([[0.5, 0.1], [2.0, 3.0], [10.0, 20.0]]))
    assert r[0].model == "0" and r[0].epoch == pytest.approx(0.25) and r[0].segment == (0, 1)
    assert r[0].distance == pytest.approx(0.1)
    assert r[1].beyond_end and r[1].epoch == pytest.approx(2.5) and r[1].distance == 1.0
    assert r[2].unknown and r[2].nearest_model == "1" and r[2].distance == pytest.approx(8.0)
    d_other = np.hypot(0.5 - 10, 0.1 - 10)
    assert r[0].confidence == pytest.approx(1 - 0.1 / d_other)


def test_batched_segment_distances_equal_a_loop_over_trajectories():
    """The index's matrix-product distances (statistics and identify's screen) against
    `_segment_distance` per query and trajectory, and identify against that brute force."""
    from wsjax.identify import _nearest_other, _segment_distance, _segments, _trajectories

    rng = np.random.default_rng(3)
    m, t, d = 12, 7, 30
    steps = rng.normal(size=(m, t, d)) * 0.8 ** np.arange(t)[None, :, None]
    x = (rng.normal(size=(m, 1, d)) * 2 + np.cumsum(steps, axis=1)).reshape(-1, d)
    model, epoch = np.repeat(np.arange(m), t), np.tile(np.arange(t), m).astype(float)
    model[-1] = m  # a one-snapshot trajectory: its segment is a point
    trajs = _trajectories(model, epoch)
    ref = np.array([[_segment_distance(p, x[s], epoch[s])[0] for s in trajs.values()]
                    for p in x])                                        # [N, M]
    rows = np.arange(len(x))
    got = _nearest_other(x, trajs, rows, model, list(trajs))
    masked = np.where(model[:, None] == np.arange(m + 1)[None, :], np.inf, ref)
    np.testing.assert_allclose(got, masked.min(axis=1), rtol=1e-9)
    assert len(_segments(trajs, [m])[0]) == 1
    index = build_index(x, model, epoch, threshold=1e9)
    q = x[::5] + rng.normal(size=x[::5].shape) * 0.5
    brute = np.array([[_segment_distance(p, x[s], epoch[s])[0] for s in trajs.values()]
                      for p in q])
    res = identify(index, q)
    assert [r.nearest_model for r in res] == [str(i) for i in brute.argmin(axis=1)]
    np.testing.assert_allclose([r.distance for r in res], brute.min(axis=1), rtol=1e-12)
    np.testing.assert_allclose([r.second_distance for r in res], np.sort(brute, 1)[:, 1],
                               rtol=1e-12)


def test_save_load_roundtrip(zoos, tmp_path):
    _, zoo, _, _ = zoos
    index = _even_index(zoo, svd=5)
    load = load_index(save_index(index, tmp_path / "idx"))
    np.testing.assert_array_equal(load.points, index.points)
    np.testing.assert_array_equal(load.basis, index.basis)
    assert load.threshold == index.threshold and load.labels == index.labels
    with pytest.raises(ConfigError, match="not an index"):
        load_index(tmp_path)


def test_merge_rule_hand_case():
    """Merge height = nearest-neighbour distance; steps 4, 2, 1 from a to d."""
    x = np.array([[0.0], [4.0], [6.0], [7.0]])
    perm = np.array([2, 0, 3, 1])
    order = order_checkpoints(x[perm], "merge")
    nn = np.array([4.0, 2.0, 1.0, 1.0])[perm]
    np.testing.assert_array_equal(order, np.argsort(-nn, kind="stable"))
    assert perm[order].tolist()[:2] == [0, 1]


def test_kurtosis_rule_matches_scipy():
    x = np.random.default_rng(0).standard_t(5, size=(6, 500))
    k = scipy.stats.kurtosis(x, axis=1)
    assert order_checkpoints(x, "kurtosis").tolist() == np.argsort(k).tolist()


def test_order_recovers_trajectory_better_than_chance(zoos):
    _, zoo, _, _ = zoos
    rng = np.random.default_rng(0)
    taus = []
    for s in range(SEEDS):
        perm = rng.permutation(EPOCHS + 1)
        order = order_checkpoints(np.asarray(zoo.snapshots[s, perm]), "endpoint")
        taus.append(order_agreement(order, perm)["kendall_tau"])
    assert np.mean(taus) > 0.8


def test_order_agreement_reference():
    order = np.array([0, 2, 1, 3])
    a = order_agreement(order, np.array([0, 1, 2, 3]))
    assert a["kendall_tau"] == pytest.approx(scipy.stats.kendalltau([0, 1, 2, 3], [0, 2, 1, 3])[0])
    assert a["adjacent"] == pytest.approx(0.0)  # 0->2, 2->1 (backwards), 1->3
    assert order_agreement(np.arange(4), np.arange(4))["adjacent"] == 1.0
    with pytest.raises(ConfigError, match="unknown order method"):
        order_checkpoints(np.zeros((3, 2)), "nope")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "wsjax", *map(str, args)],
                          capture_output=True, text=True)


class _Done:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Runs `python -m wsjax ARGS` in-process (the exit-2 case below runs a real subprocess)."""
    from wsjax.__main__ import main
    from wsjax.cli import run_cli

    def call(*args):
        capsys.readouterr()
        code = run_cli(main, [str(a) for a in args])
        out = capsys.readouterr()
        return _Done(code, out.out, out.err)

    return call


def test_cli_index_identify_order_json(zoos, tmp_path, cli):
    base, zoo, long, _ = zoos
    p = cli("index", "--run", base / "a", "--svd", "8", "--out", tmp_path / "idx")
    assert p.returncode == 0, p.stderr
    assert "beyond-end cutoff 0." in p.stdout and "leave-last-out TPR" in p.stdout
    np.save(tmp_path / "c.npy", np.asarray(zoo.snapshots[2, 3]))
    np.save(tmp_path / "many.npy", np.asarray(long.snapshots[0, [4, EPOCHS + 1]]))
    p = cli("identify", "--index", tmp_path / "idx", tmp_path / "c.npy", tmp_path / "many.npy",
            "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [o["model"] for o in out] == ["a:seed2", "a:seed0", "a:seed0"]
    assert out[2]["beyond_end"] and not out[1]["beyond_end"]
    assert out[2]["extra_epochs"] > 0 and out[1]["extra_epochs"] == 0
    p = cli("identify", "--index", tmp_path / "idx", tmp_path / "c.npy", tmp_path / "many.npy")
    assert p.returncode == 0 and "a:seed2" in p.stdout
    assert p.stdout.count("beyond-end (+") == 1
    np.save(tmp_path / "traj.npy", np.asarray(zoo.snapshots[1, [3, 0, 5, 1]]))
    p = cli("order", tmp_path / "traj.npy", "--json")
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["indices"]) == 4
    np.save(tmp_path / "cnn.npy", np.zeros(1376))
    p = _cli("identify", "--index", tmp_path / "idx", tmp_path / "cnn.npy")
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "1376" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("k,n", [(0, 59), (0, 100), (1, 100), (7, 100), (3, 3)])
def test_false_accept_upper_bound_is_clopper_pearson(k, n):
    from wsjax.evaluation import upper_bound

    ref = 1.0 if k == n else scipy.stats.binomtest(k, n).proportion_ci(0.90, "exact").high
    assert upper_bound(k, n) == pytest.approx(ref, rel=1e-9)
    if k == 0:
        assert upper_bound(k, n) == pytest.approx(1 - 0.05 ** (1 / n))
