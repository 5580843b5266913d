"""Fault injection on run directories and indexes: kills, damaged files, NaN, two commands on
one folder, a full disk.

Every fault ends either in one line that names the file and the fix (exit status 2 from the
command-line tools) with no file changed, or in a rerun of the same command that ends
bit-identical to an uninterrupted run. The moments of a save are named fault points of
wsjax.store (WSJAX_FAULT), so every case is deterministic.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import wsjax.store
import wsjax.zoo
from wsjax.cli import run_cli
from wsjax.errors import RunDirError
from wsjax.store import DiskFullError, finish_run, load_zoo
from wsjax.zoo import ZooConfig, run_zoo

CFG = dict(arch="ffnn", dataset="digits", seeds=2, epochs=2)
ZOO_ARGS = ["--arch", "ffnn", "--dataset", "digits", "--seeds", "2", "--epochs", "2",
            "--no-progress"]
RUN_FILES = {".lock", "config.json", "metrics.npz", "progress.json", "snapshots.npy"}

# Ten moments of a 2-epoch run, in the order it reaches them ("POINT N": the N-th time).
KILL_MOMENTS = [
    "config.json:half 1",            # inside the first save: half of config.json written
    "snapshots.npy:epoch 1",         # epoch 0 written into snapshots.npy, not committed
    "progress.json:written 1",       # inside the first commit, before its rename
    "snapshots.npy:epoch 2",         # epoch 1 in snapshots.npy, its state not saved
    "state-000001.npz:written 1",    # inside the state save, before its rename
    "state-000001.npz:replaced 1",   # state saved, progress.json not yet
    "progress.json:half 2",          # inside epoch 1's commit
    "progress.json:replaced 3",      # epoch 2 committed, epoch 1's state not yet removed
    "metrics.npz:replaced 1",        # the finish: metrics written, not committed
    "progress.json:replaced 4",      # committed complete, the last state not yet removed
]


@pytest.fixture(scope="module")
def train(digits):
    """run_zoo of the tiny zoo; one trainer per configuration for the whole module, so that
    its programs compile once (the trainer holds no state between runs that changes results)."""
    trainers = {}
    real = wsjax.zoo.make_trainer
    patch = pytest.MonkeyPatch()
    patch.setattr(wsjax.zoo, "make_trainer",
                  lambda config, **kw: trainers.setdefault(config, real(config, **kw)))

    def run(out, **kw):
        kw.setdefault("log", lambda *_: None)
        return run_zoo(ZooConfig(**CFG), out, dataset=digits, progress=False, **kw)

    yield run
    patch.undo()


@pytest.fixture(scope="module")
def reference(train, tmp_path_factory):
    return train(tmp_path_factory.mktemp("faults") / "reference")


def assert_same_run(run: Path, reference: Path) -> None:
    """A complete run, nothing left over, equal to the reference bit for bit."""
    assert {p.name for p in run.iterdir()} == RUN_FILES
    a, b = load_zoo(run), load_zoo(reference)
    for name in ("snapshots", "test_accuracy", "test_loss", "train_loss", "diverged_epoch",
                 "seeds"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (run / "config.json").read_bytes() == (reference / "config.json").read_bytes()


def contents(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# ----- kills -------------------------------------------------------------------------------


def test_a_kill_at_each_of_ten_moments_resumes_bit_identical(train, reference, tmp_path,
                                                             monkeypatch):
    """What a SIGKILL at a moment leaves is the folder as it is at that moment (every write
    before it went to the OS): a copy taken there, resumed, must end as the uninterrupted run.
    The real kills below check this model on moments inside the saves."""
    wanted: dict[str, set[int]] = {}
    for m in KILL_MOMENTS:
        point, n = m.split()
        wanted.setdefault(point, set()).add(int(n))
    seen: dict[str, int] = {}
    out = tmp_path / "run"
    copies = []

    def capture(name):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] in wanted.get(name, ()):
            copies.append((f"{name} {seen[name]}", tmp_path / f"kill{len(copies)}"))
            shutil.copytree(out, copies[-1][1])

    monkeypatch.setattr(wsjax.store, "fault_point", capture)
    monkeypatch.setattr(wsjax.zoo, "fault_point", capture)
    train(out)
    assert sorted(m for m, _ in copies) == sorted(KILL_MOMENTS)
    monkeypatch.undo()
    for _, copy in copies:
        train(copy)
        assert_same_run(copy, reference)


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """Child processes forked from a server that has imported wsjax (not started JAX), sharing
    compiled programs through a persistent cache warmed by one uninterrupted child run."""
    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import _fault_worker

    # The server imports what it preloads from its own path, which PYTHONPATH sets.
    patch = pytest.MonkeyPatch()
    patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["_fault_worker"])
    cache = str(tmp_path_factory.mktemp("jax-cache"))

    def start(out, fault=None, release=None):
        p = ctx.Process(target=_fault_worker.train,
                        args=(str(out), fault, cache, CFG, None if release is None
                              else str(release)))
        p.start()
        return p

    warm = start(tmp_path_factory.mktemp("warm") / "run")
    warm.join(timeout=300)
    assert warm.exitcode == 0
    yield start
    patch.undo()


@pytest.mark.parametrize("moment", ["state-000001.npz:written 1", "progress.json:half 2",
                                    "progress.json:replaced 4"])
def test_sigkill_inside_a_save_resumes_bit_identical(children, train, reference, tmp_path,
                                                     moment):
    out = tmp_path / "run"
    child = children(out, f"kill {moment}")
    child.join(timeout=120)
    assert child.exitcode == -9
    train(out)
    assert_same_run(out, reference)


# ----- two commands on one folder -----------------------------------------------------------


def test_a_second_command_exits_at_once_naming_the_holder_or_waits(children, train, reference,
                                                                   tmp_path, capsys):
    from experiments.zoo import main as zoo_main

    out, release = tmp_path / "run", tmp_path / "release"
    child = children(out, "pause progress.json:replaced 2", release)
    deadline = time.monotonic() + 120
    while not Path(f"{release}.paused").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.is_alive()
    before = contents(out)
    assert run_cli(zoo_main, [*ZOO_ARGS, "--out", str(out)]) == 2
    assert f"(pid {child.pid}) is writing this run directory" in one_line_error(capsys)
    assert contents(out) == before

    messages = []
    waiter = threading.Thread(target=lambda: train(out, wait=True, log=messages.append))
    waiter.start()
    while not messages and time.monotonic() < deadline:
        time.sleep(0.01)
    assert messages == [f"{out}: waiting for pid {child.pid}, which is writing it"]
    release.touch()
    child.join(timeout=120)
    waiter.join(timeout=120)
    assert child.exitcode == 0 and "already complete" in messages[-1]
    assert_same_run(out, reference)


# ----- damaged files ------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(bytes(path.stat().st_size))


def _cli(name):
    if name == "zoo":
        from experiments.zoo import main
    elif name == "tables":
        from experiments.tables import main
    elif name == "figures":
        from experiments.figures import main
    elif name == "report":
        from experiments.report import main
    else:
        from wsjax.__main__ import main
    return main


@pytest.fixture(scope="module")
def incomplete(train, tmp_path_factory):
    return train(tmp_path_factory.mktemp("faults") / "incomplete", stop_after_epoch=1)


@pytest.mark.parametrize("how", ["truncated", "zeroed", "deleted"])
@pytest.mark.parametrize("name", ["config.json", "snapshots.npy", "metrics.npz",
                                  "progress.json"])
def test_a_damaged_file_of_a_complete_run_is_named_and_nothing_changes(reference, tmp_path,
                                                                       capsys, name, how):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    _damage(run / name, how)
    before = contents(run)
    for cli, argv in [("zoo", [*ZOO_ARGS, "--out", str(run)]),
                      ("tables", ["--run", str(run), "--no-progress"]),
                      ("figures", ["--run", str(run), "--no-progress", "--no-umap"]),
                      ("report", ["--run", str(run), "--no-progress", "--no-umap"]),
                      ("wsjax", ["index", "--run", str(run), "--out", str(tmp_path / "ix")])]:
        assert run_cli(_cli(cli), argv) == 2, cli
        err = one_line_error(capsys)
        assert f"{run / name}" in err and "--restart" in err, (cli, err)
        assert contents(run) == before
    assert not (tmp_path / "ix").exists()


@pytest.mark.parametrize("how", ["truncated", "zeroed", "deleted"])
@pytest.mark.parametrize("name", ["config.json", "snapshots.npy", "state-000001.npz",
                                  "progress.json"])
def test_a_damaged_file_of_an_interrupted_run_is_named_and_nothing_changes(
        incomplete, tmp_path, capsys, name, how):
    run = tmp_path / "run"
    shutil.copytree(incomplete, run)
    _damage(run / name, how)
    before = contents(run)
    assert run_cli(_cli("zoo"), [*ZOO_ARGS, "--out", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{run / name}" in err and "--restart" in err, err
    assert contents(run) == before


def test_restart_retrains_a_damaged_run_bit_identical(incomplete, reference, tmp_path, capsys):
    """The case that ended in a traceback: the training state cut to 100 bytes."""
    run = tmp_path / "run"
    shutil.copytree(incomplete, run)
    _damage(run / "state-000001.npz", "truncated")
    assert run_cli(_cli("zoo"), [*ZOO_ARGS, "--out", str(run)]) == 2
    assert one_line_error(capsys) == (
        f"error: {run / 'state-000001.npz'} is damaged (100 bytes, "
        f"{(incomplete / 'state-000001.npz').stat().st_size} recorded); "
        f"{wsjax.store.RESTART_FIX}\n")
    assert run_cli(_cli("zoo"), [*ZOO_ARGS, "--out", str(run), "--restart"]) == 0
    assert_same_run(run, reference)


@pytest.mark.parametrize("how", ["truncated", "zeroed", "deleted"])
@pytest.mark.parametrize("name", ["sharded.json", "shards/process-00000/snapshots.npy"])
def test_a_damaged_file_of_a_sharded_run_is_named_and_nothing_changes(reference, tmp_path,
                                                                      capsys, name, how):
    run = tmp_path / "run"
    shutil.copytree(reference, run / "shards" / "process-00000")
    (run / "sharded.json").write_text(json.dumps({
        "format": "wsjax-sharded-run/1", "num_processes": 1, "seeds": [0, 1],
        "shards": [{"dir": "shards/process-00000", "seeds": [0, 2]}]}))
    assert load_zoo(run).seeds.tolist() == [0, 1]
    _damage(run / name, how)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert run_cli(_cli("tables"), ["--run", str(run), "--no-progress"]) == 2
    assert f"{run / name}" in one_line_error(capsys)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.fixture(scope="module")
def index(reference, tmp_path_factory):
    from wsjax.identify import index_from_zoos, save_index

    out = save_index(index_from_zoos([reference]), tmp_path_factory.mktemp("faults") / "ix")
    ckpt = out.parent / "ckpt.npy"
    np.save(ckpt, load_zoo(reference).snapshots[0, 1])
    return out, ckpt


@pytest.mark.parametrize("how", ["truncated", "zeroed", "deleted"])
@pytest.mark.parametrize("name", ["index.json", "index.npz"])
def test_a_damaged_file_of_an_index_is_named_and_nothing_changes(index, tmp_path, capsys,
                                                                 name, how):
    main = _cli("wsjax")
    ix = tmp_path / "ix"
    shutil.copytree(index[0], ix)
    assert run_cli(main, ["identify", "--index", str(ix), str(index[1])]) == 0
    capsys.readouterr()
    _damage(ix / name, how)
    before = contents(ix)
    assert run_cli(main, ["identify", "--index", str(ix), str(index[1])]) == 2
    err = one_line_error(capsys)
    assert f"{ix / name}" in err and "python -m wsjax index" in err, err
    assert contents(ix) == before


# ----- non-finite values ----------------------------------------------------------------------


def test_nan_in_a_member_not_marked_diverged_is_refused_naming_member_and_epoch(
        reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    snaps = np.load(run / "snapshots.npy", mmap_mode="r+")
    snaps[1, 1, 5] = np.nan
    snaps.flush()
    del snaps
    tables = _cli("tables")
    assert run_cli(tables, ["--run", str(run), "--no-progress"]) == 2
    assert "snapshots.npy is damaged at epoch(s) 1 (SHA-256" in one_line_error(capsys)

    # Recorded as it is (as a faulty writer would have): the values themselves are refused.
    zoo = load_zoo(run, verify=False)
    metrics = {k: getattr(zoo, k) for k in wsjax.store.METRIC_KEYS}
    finish_run(run, None, 2, metrics)
    assert run_cli(tables, ["--run", str(run), "--no-progress"]) == 2
    assert ("member 1 (seed 1) has non-finite weights at epoch 1 but is not marked as "
            "diverged" in one_line_error(capsys))
    assert run_cli(_cli("wsjax"), ["index", "--run", str(run), "--out", str(tmp_path / "i")]) == 2
    assert "member 1 (seed 1)" in one_line_error(capsys)

    # The same NaN in a member marked as diverged at that epoch is what training writes; an
    # inf before that epoch is not.
    diverged = {**metrics, "diverged_epoch": np.array([-1, 1], np.int32)}
    finish_run(run, None, 2, diverged)
    assert load_zoo(run).diverged_epoch.tolist() == [-1, 1]
    snaps = np.load(run / "snapshots.npy", mmap_mode="r+")
    snaps[1, 0, 0] = np.inf
    snaps.flush()
    del snaps
    finish_run(run, None, 2, diverged)
    with pytest.raises(RunDirError, match="member 1 .* at epoch 0 "):
        load_zoo(run)


# ----- full disk ------------------------------------------------------------------------------


@pytest.mark.parametrize("save", [
    "config.json:written", "snapshots.npy:allocate", "progress.json:written 1",
    "state-000001.npz:written", "progress.json:written 2", "state-000002.npz:written",
    "metrics.npz:written", "progress.json:written 4"])
def test_a_full_disk_at_each_save_stops_cleanly_and_the_rerun_completes(
        train, reference, tmp_path, monkeypatch, save):
    out = tmp_path / "run"
    monkeypatch.setenv("WSJAX_FAULT", f"enospc {save}")
    with pytest.raises(DiskFullError) as e:
        train(out)
    message = str(e.value)
    assert "\n" not in message and "no space left on the disk" in message
    assert message.endswith("free some space and rerun the same command to resume")
    assert not list(out.glob(".*.tmp"))
    progress = out / "progress.json"
    if progress.exists():  # the last commit is whole and names only files that are there
        for name in json.loads(progress.read_text())["files"]:
            assert (out / name).is_file()
    monkeypatch.delenv("WSJAX_FAULT")
    train(out)
    assert_same_run(out, reference)


def test_a_full_disk_from_the_command_line_is_one_line_and_exit_2(reference, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("WSJAX_FAULT", "enospc state-000002.npz:written")
    assert run_cli(_cli("zoo"), [*ZOO_ARGS, "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert "state-000002.npz: no space left on the disk" in err
