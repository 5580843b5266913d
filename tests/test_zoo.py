"""Zoo run directories: outputs, atomic resume after SIGKILL, CLI errors and summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from wsjax.errors import ConfigError, RunDirError
from wsjax.models import ARCHS
from wsjax.params import make_unflatten
from wsjax.store import load_zoo
from wsjax.train import accuracy
from wsjax.zoo import ZooConfig, make_trainer, run_zoo

SMALL = dict(dataset="digits", seeds=3, epochs=3)


@pytest.fixture(scope="module")
def ffnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "ffnn"
    run_zoo(ZooConfig(arch="ffnn", **SMALL), out, progress=False, log=lambda *_: None)
    return out


def test_run_directory_contents(ffnn_run):
    zoo = load_zoo(ffnn_run)
    assert zoo.snapshots.shape == (3, 4, 2160) and zoo.snapshots.dtype == np.float32
    assert isinstance(zoo.snapshots, np.memmap)
    assert zoo.test_accuracy.shape == (3, 4) and zoo.train_loss.shape == (3, 3)
    assert zoo.seeds.tolist() == [0, 1, 2] and (zoo.diverged_epoch == -1).all()
    assert zoo.config["config"]["learning_rate"] == ARCHS["ffnn"].learning_rate
    assert zoo.config["data"]["name"] == "digits" and zoo.config["num_params"] == 2160
    assert not list(ffnn_run.glob("state*.npz"))
    assert json.loads((ffnn_run / "progress.json").read_text())["complete"] is True
    prov = zoo.config["provenance"]  # where, with what and how fast: the report's summary
    assert prov["jax"] == jax.__version__ and prov["platform"] == jax.devices()[0].platform
    assert prov["train_seconds"] > 0
    steps = 3 * zoo.num_epochs * (zoo.config["data"]["n_train"] // 4)  # members x epochs x batches
    assert prov["model_steps_per_s"] == pytest.approx(steps / prov["train_seconds"], rel=1e-2)


def test_snapshot_unflattens_to_the_recorded_accuracy(ffnn_run, digits):
    zoo = load_zoo(ffnn_run)
    spec = ARCHS["ffnn"]
    model = spec.make_module()
    template = model.init(jax.random.key(0), digits.x_train[:1].reshape(1, -1))["params"]
    unflatten = make_unflatten(template)
    for seed_index, epoch in [(0, 0), (1, 3), (2, 2)]:
        params = unflatten(zoo.snapshots[seed_index, epoch])
        out = model.apply({"params": params}, digits.x_test)
        acc = float(accuracy(out, digits.y_test))
        assert acc == pytest.approx(float(zoo.test_accuracy[seed_index, epoch]), abs=1e-6)


def test_seed_i_of_the_zoo_is_key_of_seed_i(ffnn_run):
    """A member's weights depend only on its own seed: a 1-seed zoo at seed 2 equals member 2."""
    zoo = load_zoo(ffnn_run)
    cfg = ZooConfig(arch="ffnn", dataset="digits", seeds=1, seed_start=2, epochs=3)
    trainer = make_trainer(cfg)
    assert trainer.batch_size == 4
    single = run_zoo(cfg, ffnn_run.parent / "one", progress=False, log=lambda *_: None)
    # Equal up to float32 summation order (a batch of 1 vs 3 members vectorises differently).
    np.testing.assert_allclose(load_zoo(single).snapshots[0], zoo.snapshots[2], rtol=1e-4,
                               atol=1e-5)


def test_rerun_of_complete_zoo_is_a_no_op(ffnn_run):
    before = (ffnn_run / "snapshots.npy").stat().st_mtime_ns
    msgs = []
    run_zoo(ZooConfig(arch="ffnn", **SMALL), ffnn_run, progress=False, log=msgs.append)
    assert "already complete" in msgs[0]
    assert (ffnn_run / "snapshots.npy").stat().st_mtime_ns == before


def test_different_config_in_same_dir_is_refused(ffnn_run):
    with pytest.raises(RunDirError, match="different zoo.*another --out"):
        run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=3, epochs=4), ffnn_run,
                progress=False)


def test_resume_in_process_is_bit_identical(tmp_path, ffnn_run):
    out = tmp_path / "resumed"
    cfg = ZooConfig(arch="ffnn", chunk=2, **SMALL)
    run_zoo(cfg, out, progress=False, log=lambda *_: None, stop_after_epoch=1)
    assert (out / "state-000001.npz").exists()
    with pytest.raises(RunDirError, match="incomplete.*resume"):
        load_zoo(out)
    run_zoo(cfg, out, progress=False, log=lambda *_: None)
    a, b = load_zoo(out), load_zoo(ffnn_run)
    np.testing.assert_array_equal(a.snapshots, b.snapshots)
    np.testing.assert_array_equal(a.test_accuracy, b.test_accuracy)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)


def test_chunks_draw_each_epochs_orders_once(tmp_path, ffnn_run, monkeypatch):
    """More chunks than a handful: each chunk's next epoch drawn ahead is kept until it is
    taken, so every chunk draws each epoch's data orders once, none after the last."""
    from wsjax.train.orders import OrderSource

    drawn = []
    real = OrderSource.draw
    monkeypatch.setattr(OrderSource, "draw",
                        lambda self, keys, e, *a: drawn.append(e) or real(self, keys, e, *a))
    out = tmp_path / "chunked"
    run_zoo(ZooConfig(arch="ffnn", chunk=1, **{**SMALL, "seeds": 6}), out, progress=False,
            log=lambda *_: None)
    assert sorted(drawn) == [1] * 6 + [2] * 6 + [3] * 6
    a, b = load_zoo(out), load_zoo(ffnn_run)
    np.testing.assert_array_equal(a.snapshots[:3], b.snapshots)


def _zoo_cmd(out, epochs, *extra):
    return [sys.executable, "-m", "experiments.zoo", "--arch", "ffnn", "--dataset", "digits",
            "--seeds", "4", "--epochs", str(epochs), "--out", str(out), "--no-progress",
            *extra]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--use-bias",)], ids=["paper", "general-path"])
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path, extra):
    """The paper's FFNN (hand kernels) and the FFNN with biases (the general path)."""
    epochs = 40
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_zoo_cmd(killed, epochs, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    progress = killed / "progress.json"
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists():
            try:
                done = json.loads(progress.read_text())["completed_epochs"]
            except (json.JSONDecodeError, KeyError):
                done = 0
            if done >= 2:
                break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 2 <= done < epochs, "the run was not caught mid-way"
    assert not json.loads(progress.read_text())["complete"]

    resumed = subprocess.run(_zoo_cmd(killed, epochs, *extra), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    subprocess.run(_zoo_cmd(clean, epochs, *extra), check=True, capture_output=True, timeout=300)
    a, b = load_zoo(killed), load_zoo(clean)
    np.testing.assert_array_equal(a.snapshots, b.snapshots)
    np.testing.assert_array_equal(a.test_accuracy, b.test_accuracy)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)


def test_cli_summary(tmp_path):
    proc = subprocess.run(_zoo_cmd(tmp_path / "z", 2), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "trained ffnn zoo: 4 members x 2 epochs" in proc.stdout
    assert "model-steps/s" in proc.stdout and "test accuracy at epoch 2: mean" in proc.stdout
    assert f"saved to {tmp_path / 'z'}" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--epochs", "-1"], "--epochs must be at least 1"),
    (["--chunk", "0"], "--chunk must be at least 1"),
    (["--lr", "nan"], "--learning-rate must be a finite number"),
    (["--arch", "vit"], "invalid choice: 'vit'"),
    (["--dataset", "digits", "--data-dir", "x"], "--data-dir is for MNIST"),
])
def test_cli_argument_errors(tmp_path, args, message):
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.zoo", "--out", str(out), "--no-progress", *args],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown loss reduction"):
        ZooConfig(loss="l1")
    assert ZooConfig(arch="cnn").resolved()["weight_decay"] == 0.1


def test_epoch_examples_tile_the_training_set(tmp_path, digits):
    from wsjax.zoo import tiled_indices

    idx = tiled_indices(10, 25)  # every index twice, 5 distinct ones a third time
    counts = np.bincount(idx, minlength=10)
    assert len(idx) == 25 and set(counts.tolist()) == {2, 3} and (counts == 3).sum() == 5
    assert np.array_equal(idx, tiled_indices(10, 25))  # fixed, not drawn per call
    assert np.array_equal(tiled_indices(7, 7), np.arange(7))
    with pytest.raises(ConfigError, match="below the 10 training examples"):
        tiled_indices(10, 9)
    # a run trains epoch_examples // batch steps per epoch and records the choice
    n = len(digits.x_train)
    cfg = ZooConfig(arch="ffnn", dataset="digits", seeds=2, epochs=1, epoch_examples=2 * n + 3)
    zoo = load_zoo(run_zoo(cfg, tmp_path / "tiled", progress=False, log=lambda *_: None))
    assert zoo.config["config"]["epoch_examples"] == 2 * n + 3
    assert zoo.config["data"]["n_train"] == 2 * n + 3
    plain = load_zoo(run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=2, epochs=1),
                             tmp_path / "plain", progress=False, log=lambda *_: None))
    assert "epoch_examples" not in plain.config["config"]
    assert not np.allclose(zoo.snapshots[:, 1], plain.snapshots[:, 1])
