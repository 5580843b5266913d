"""The reproduction study's variants and readings, on tiny digits zoos and hand-worked cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.reproduction import main
from wsjax.analysis.reproduction import dead_features, jump_count, readings, step_ratio
from wsjax.analysis.tables import zoo_tables_detail
from wsjax.errors import ConfigError, RunDirError
from wsjax.models import CNN
from wsjax.store import Zoo, load_zoo
from wsjax.train import kernel_mask, make_sgd
from wsjax.variants import VARIANTS
from wsjax.zoo import run_zoo


def _numpy_cnn(params, x, ceil):
    """The CNN written out in numpy: conv 3x3 stride 2 pad 1 (+ bias), 2x2 max-pool (floor or
    ceil), LeakyReLU, twice, then the dense layer. x [B, 14, 14, 1]."""
    x = np.asarray(x, np.float64)
    for name in ("Conv_0", "Conv_1"):
        k = np.asarray(params[name]["kernel"], np.float64)                 # [3, 3, C, O]
        b, h, w, _ = x.shape
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        oh, ow = (h + 1) // 2, (w + 1) // 2
        y = np.zeros((b, oh, ow, k.shape[-1]))
        for i in range(oh):
            for j in range(ow):
                y[:, i, j] = np.einsum("bhwc,hwco->bo", xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3], k)
        y = y + np.asarray(params[name].get("bias", 0.0))
        ph, pw = ((oh + 1) // 2, (ow + 1) // 2) if ceil else (oh // 2, ow // 2)
        pooled = np.array([[y[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
                            for j in range(pw)] for i in range(ph)]).transpose(2, 0, 1, 3)
        x = np.where(pooled > 0, pooled, 0.01 * pooled)
    d = params["Dense_0"]
    return x.reshape(x.shape[0], -1) @ np.asarray(d["kernel"]) + np.asarray(d.get("bias", 0.0))


@pytest.mark.parametrize("use_bias,pool_ceil", [(False, False), (True, True)])
def test_cnn_options_equal_the_model_written_out(use_bias, pool_ceil):
    x = jax.random.normal(jax.random.key(1), (4, 14, 14, 1))
    module = CNN(use_bias=use_bias, pool_ceil=pool_ceil)
    params = module.init(jax.random.key(0), x)["params"]
    # 14 -> conv 7 -> pool 3 (ceil: 4) -> conv 2 -> pool 1: 8 features into the dense layer
    assert params["Dense_0"]["kernel"].shape == (8, 10)
    np.testing.assert_allclose(np.asarray(module.apply({"params": params}, x)),
                               _numpy_cnn(params, x, pool_ceil), rtol=1e-4, atol=1e-5)


def test_biases_start_as_pytorch_s_default():
    params = CNN(use_bias=True).init(jax.random.key(0), jnp.zeros((1, 14, 14, 1)))["params"]
    for name, fan_in in (("Conv_0", 9), ("Conv_1", 9 * 16), ("Dense_0", 8)):
        bias = np.asarray(params[name]["bias"])
        assert np.abs(bias).max() <= 1 / np.sqrt(fan_in) and np.abs(bias).max() > 0


def _hand_sgd(w, g, lr, m, wd, coupling, steps, decay_mask):
    """PyTorch's SGD update written out (coupled), or with decay after momentum."""
    w, buf = dict(w), {k: np.zeros_like(v) for k, v in w.items()}
    for _ in range(steps):
        for k in w:
            d = g[k] + (wd * w[k] if coupling == "coupled" and decay_mask[k] else 0.0)
            buf[k] = m * buf[k] + d
            new = w[k] - lr * buf[k]
            if coupling == "decoupled" and decay_mask[k]:
                new = new - lr * wd * w[k]
            w[k] = new
    return w


@pytest.mark.parametrize("decay", ["all", "kernels"])
@pytest.mark.parametrize("coupling", ["coupled", "decoupled"])
def test_optimizer_matches_the_update_written_out(decay, coupling):
    from wsjax.train import HParams

    rng = np.random.default_rng(0)
    w = {"kernel": rng.normal(size=3), "bias": rng.normal(size=2)}
    g = {"kernel": rng.normal(size=3), "bias": rng.normal(size=2)}
    opt = make_sgd(decay, coupling)(HParams(0.1, 0.9, 0.5))
    params = {"Dense_0": {k: jnp.asarray(v, jnp.float32) for k, v in w.items()}}
    grads = {"Dense_0": {k: jnp.asarray(v, jnp.float32) for k, v in g.items()}}
    state = opt.init(params)
    for _ in range(4):
        upd, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, upd)
    want = _hand_sgd(w, g, 0.1, 0.9, 0.5, coupling, 4,
                     {"kernel": True, "bias": decay == "all"})
    for k in w:
        np.testing.assert_allclose(np.asarray(params["Dense_0"][k]), want[k], rtol=1e-5)


def test_kernel_mask_leaves_biases_out():
    params = CNN(use_bias=True).init(jax.random.key(0), jnp.zeros((1, 14, 14, 1)))["params"]
    mask = kernel_mask(params)
    assert mask.shape == (1376 + 16 + 8 + 10,) and int(mask.sum()) == 1376


@pytest.fixture(scope="module")
def bias_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("variants") / "bias_decay_kernels"
    config = VARIANTS["bias_decay_kernels"].config(dataset="digits", seeds=3, epochs=2)
    return out, load_zoo(run_zoo(config, out, dataset=digits, progress=False,
                                 log=lambda *_: None))


def test_variant_run_is_a_readable_zoo(bias_run, digits):
    out, zoo = bias_run
    assert zoo.snapshots.shape == (3, 3, 1376) and zoo.arch == "cnn"
    assert zoo.config["config"]["decay"] == "kernels" and zoo.config["config"]["use_bias"]
    # epoch 0 is member 0's initial kernels: the trainer splits key(0) into (init, shuffle)
    init_key = jax.random.split(jax.random.key(0))[0]
    params = CNN(use_bias=True).init(init_key, digits.x_train[:1].reshape(1, 14, 14, 1))
    flat = np.concatenate([np.asarray(params["params"][n]["kernel"]).ravel()
                           for n in ("Conv_0", "Conv_1", "Dense_0")])
    np.testing.assert_allclose(zoo.snapshots[0, 0], flat, rtol=1e-6)
    assert (zoo.test_accuracy[:, -1] > 0.1).all()
    t = zoo_tables_detail(zoo, ks=(5,))
    assert [r["space"] for r in t["rows"]] == ["1376 (weight space)", "SVD 5"]


def test_variant_run_resumes_and_refuses_another_zoo(bias_run, digits):
    out, _ = bias_run
    variant = VARIANTS["bias_decay_kernels"]
    said = []
    run_zoo(variant.config(dataset="digits", seeds=3, epochs=2), out, dataset=digits,
            progress=False, log=said.append)
    assert said and "already complete" in said[0]
    with pytest.raises(RunDirError, match="different zoo"):
        run_zoo(variant.config(dataset="digits", seeds=3, epochs=3), out, dataset=digits,
                progress=False, log=lambda *_: None)
    with pytest.raises(ConfigError, match="n_train"):
        run_zoo(VARIANTS["half_data"].config(dataset="digits", seeds=2, epochs=2),
                out.parent / "half", dataset=digits, progress=False)
    with pytest.raises(ConfigError, match="fixes use_bias"):
        variant.config(use_bias=False)


def test_every_variant_is_a_valid_zoo_that_differs_from_the_baseline():
    base = VARIANTS["baseline"].config(seeds=2, epochs=1).resolved()
    for name, v in VARIANTS.items():
        got = v.config(seeds=2, epochs=1).resolved()
        assert (got == base) == (name == "baseline"), name
    # the paper's settings record no field of the open details
    assert "pool_ceil" not in base and "weight_init" not in base


def _line_zoo(tmp_path) -> Zoo:
    """Two models on far-apart lines; epoch e of each at 0, 10, 15, 17, 18 along axis 0."""
    pos = np.array([0.0, 10.0, 15.0, 17.0, 18.0])
    snaps = np.zeros((2, 5, 2), np.float32)
    snaps[:, :, 0] = pos
    snaps[1, :, 1] = 1000.0
    z = np.zeros((2, 5), np.float32)
    return Zoo(path=tmp_path, config={"arch": "cnn"}, snapshots=snaps, test_accuracy=z,
               test_loss=z, train_loss=z[:, 1:], diverged_epoch=np.array([-1, -1]),
               seeds=np.array([0, 1]))


def test_readings_on_a_hand_worked_trajectory(tmp_path):
    rows = {r["reading"]: r for r in readings(_line_zoo(tmp_path), log=lambda *_: None)}
    # merge heights of epochs 1..4: 5, 2, 1, 1 (3 and 4 tie as mutual nearest neighbours)
    assert rows["merge_height"]["ordered_initial"] == 4
    assert rows["merge_height"]["ordered_fraction"] == 1.0
    assert rows["merge_height"]["in_place"] == 4 and rows["merge_height"]["increasing_pairs"] == 1
    # ties the other way: 1, 2, 4, 3
    assert rows["ties_late_first"]["ordered_initial"] == 2
    assert rows["ties_late_first"]["ordered_fraction"] == pytest.approx(1 / 3)
    # the norm grows with the epoch here, so decreasing norm is the reverse order 4, 3, 2, 1
    assert rows["weight_norm"]["ordered_initial"] == 0
    assert rows["weight_norm"]["ordered_fraction"] == 0
    # centroid at 15: distances 5, 0, 2, 3 -> order 1, 4, 3, 2
    assert rows["centroid_distance"]["ordered_initial"] == 1
    assert rows["centroid_distance"]["ordered_fraction"] == 0
    # scipy draws each chain as 1, (2, (3, 4))
    assert rows["dendrogram_leaves"]["ordered_initial"] == 4
    # with the initialisation: heights 10, 5, 2, 1, 1
    assert rows["epoch0_in"]["ordered_initial"] == 5
    assert all(r["purity"] == 1.0 for r in rows.values())


def test_cli_lists_and_writes_readings(tmp_path, capsys):
    assert main(["--list"]) == 0
    assert "wd_decoupled" in capsys.readouterr().out
    run = tmp_path / "run"
    run.mkdir()
    zoo = _line_zoo(run)
    np.save(run / "snapshots.npy", zoo.snapshots)
    np.savez(run / "metrics.npz", test_accuracy=zoo.test_accuracy, test_loss=zoo.test_loss,
             train_loss=zoo.train_loss, diverged_epoch=zoo.diverged_epoch, seeds=zoo.seeds)
    (run / "config.json").write_text('{"arch": "cnn"}')
    (run / "progress.json").write_text('{"complete": true, "completed_epochs": 4}')
    assert main(["--readings", str(run)]) == 0
    assert (run / "readings.md").exists() and load_zoo(run).arch == "cnn"
    assert "merge_height" in capsys.readouterr().out


def test_step_measures_on_a_hand_worked_trajectory(tmp_path):
    zoo = _line_zoo(tmp_path)  # steps of epochs 1..4: 10, 5, 2, 1
    assert step_ratio(zoo) == pytest.approx(1 / 5)
    assert jump_count(zoo) == 0 and dead_features(zoo) is None
    snaps = np.array(zoo.snapshots)
    snaps[:, 4, 0] = 15.0 + 2.0 + 4.0  # epoch 4 steps 4 after a step of 2: one jump
    jumped = Zoo(**{**zoo.__dict__, "snapshots": snaps})
    assert jump_count(jumped) == 1 and step_ratio(jumped) == pytest.approx(4 / 5)


def test_dead_features_counts_zero_dense_rows(tmp_path):
    snaps = np.ones((1, 2, 1376), np.float32)
    snaps[0, 1, -80:].reshape(8, 10)[[1, 5]] = 0.0
    zoo = Zoo(path=tmp_path, config={"arch": "cnn"}, snapshots=snaps,
              test_accuracy=np.zeros((1, 2)), test_loss=np.zeros((1, 2)),
              train_loss=np.zeros((1, 1)), diverged_epoch=np.array([-1]), seeds=np.array([0]))
    assert dead_features(zoo) == 2.0


def _verdict_commands() -> list[str]:
    """The `python ...` commands of the verdict table at the top of docs/reproduction.md."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "reproduction.md").read_text()
    section = text.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]
    commands = [c for row in rows for c in re.findall(r"`(python [^`]+)`", row.split("|")[-2])]
    assert len(rows) >= 8 and all(re.search(r"`python ", row) for row in rows), \
        "every verdict row names the command that regenerates it"
    return commands


def test_every_command_of_the_verdict_table_exists():
    import shlex
    import subprocess
    import sys

    programs = set()
    for command in _verdict_commands():
        words = shlex.split(command)
        programs.add(tuple(words[1:3]) if words[1] == "-m" else (words[1],))
    assert programs
    for program in sorted(programs):
        done = subprocess.run([sys.executable, *program, "--help"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (program, done.stderr)


def test_cli_trains_a_variant_from_a_first_seed(tmp_path, capsys):
    """--seed-start gives replicate zoos on disjoint seeds; member i is seed start + i."""
    assert main(["--dataset", "digits", "--out", str(tmp_path), "--seeds", "2",
                 "--seed-start", "7", "--epochs", "2", "--variants", "baseline",
                 "--no-progress"]) == 0
    zoo = load_zoo(tmp_path / "baseline")
    assert zoo.seeds.tolist() == [7, 8]
    alone = load_zoo(run_zoo(VARIANTS["baseline"].config(dataset="digits", seeds=1,
                                                         seed_start=8, epochs=2),
                             tmp_path / "one", progress=False, log=lambda *_: None))
    np.testing.assert_allclose(zoo.snapshots[1], alone.snapshots[0], rtol=1e-5, atol=1e-6)
    assert "baseline" in capsys.readouterr().out
