"""The seed axis sharded over fake CPU devices (one process) and over two processes.

Fake devices need XLA_FLAGS before JAX starts, so the sharded runs happen in subprocesses
(tests/_sharding_worker.py); the single-device reference runs in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsjax.errors import ConfigError, RunDirError
from wsjax.sharding import process_block
from wsjax.store import load_sharded_zoo, load_zoo
from wsjax.zoo import ZooConfig, run_zoo

WORKER = Path(__file__).with_name("_sharding_worker.py")
SEEDS, EPOCHS = 6, 2  # 6 is not divisible by 4 devices, nor 3 members by 2
TIMEOUT_S = 300


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("ref")
    run_zoo(ZooConfig(arch="ffnn", dataset="digits", seeds=SEEDS, epochs=EPOCHS), out,
            dataset=digits, progress=False, log=lambda *_: None)
    return load_zoo(out, mmap=False)


def _assert_same_zoo(zoo, ref):
    np.testing.assert_array_equal(zoo.seeds, ref.seeds)
    assert zoo.snapshots.shape == ref.snapshots.shape
    np.testing.assert_allclose(zoo.snapshots, ref.snapshots, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zoo.test_accuracy, ref.test_accuracy, atol=1e-6)
    np.testing.assert_allclose(zoo.train_loss, ref.train_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(zoo.diverged_epoch, ref.diverged_epoch)


def test_process_block_covers_members_once():
    for members in (1, 5, 6, 250):
        for n in (1, 2, 3, 7):
            blocks = [process_block(members, n, i) for i in range(n)]
            covered = np.concatenate([np.arange(lo, hi) for lo, hi in blocks])
            np.testing.assert_array_equal(covered, np.arange(members))
            sizes = [hi - lo for lo, hi in blocks]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ConfigError):
        process_block(4, 2, 2)


@pytest.mark.slow
def test_four_fake_devices_equal_single_device(tmp_path, reference):
    out = tmp_path / "mesh"
    res = subprocess.run([sys.executable, str(WORKER), "mesh", str(out), str(SEEDS),
                          str(EPOCHS), "4"], env=_env(4), capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["devices"] == 4
    # every output of a sharded epoch (state leaves and snapshots) lies one member per device
    assert info["output_shards"] and all(n == 4 for n in info["output_shards"])
    _assert_same_zoo(load_zoo(out, mmap=False), reference)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, reference):
    out = tmp_path / "dist"
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(WORKER), "dist", str(out), str(SEEDS),
                               str(EPOCHS), coordinator, "2", str(i)], env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [o["process"] for o in outputs] == [0, 1]
    assert all(o["processes"] == 2 and o["local_devices"] == 2 for o in outputs)
    assert (out / "shards" / "process-00000" / "snapshots.npy").is_file()
    assert (out / "shards" / "process-00001" / "snapshots.npy").is_file()
    zoo = load_sharded_zoo(out)
    _assert_same_zoo(zoo, reference)
    _assert_same_zoo(load_zoo(out), reference)  # load_zoo recognises a sharded run
    assert zoo.config["config"]["seeds"] == SEEDS

    (out / "shards" / "process-00001" / "progress.json").write_text('{"complete": false}')
    with pytest.raises(RunDirError, match="process-00001"):
        load_sharded_zoo(out)


def test_cli_rejects_more_devices_than_local():
    from experiments.zoo import main

    with pytest.raises(ConfigError, match="--devices"):
        main(["--arch", "ffnn", "--dataset", "digits", "--seeds", "2", "--epochs", "1",
              "--devices", "64", "--out", "unused", "--no-progress"])
    with pytest.raises(ConfigError, match="--num-processes"):
        main(["--arch", "ffnn", "--dataset", "digits", "--coordinator", "127.0.0.1:1",
              "--out", "unused", "--no-progress"])


def test_use_cpu_cores_makes_one_device_per_core():
    # building the zoo's (fast) trainer first must not start JAX
    code = ("from wsjax.zoo import ZooConfig, make_trainer; make_trainer(ZooConfig()); "
            "from wsjax.sharding import use_cpu_cores; n = use_cpu_cores(3); import jax; "
            "print(n, jax.local_device_count(), use_cpu_cores(2))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["3", "3", "0"]  # too late once JAX has started
    # the user's own device count wins
    out = subprocess.run([sys.executable, "-c", code], env=_env(2), capture_output=True,
                         text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "2", "0"]
