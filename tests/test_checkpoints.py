"""Checkpoints of every format as named arrays; folders indexed; layouts checked; adding models."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from jax.flatten_util import ravel_pytree

from wsjax.checkpoints import Layout, read_checkpoint, read_named, scan_folder
from wsjax.errors import ConfigError, DataError
from wsjax.identify import (
    add_folders,
    build_index,
    identify,
    index_from_folders,
    load_checkpoints,
    load_index,
    save_index,
)

FORMATS = ("msgpack", "orbax", "safetensors", "npz")
SHAPES = {"Dense_0": {"kernel": (4, 3), "bias": (3,)}, "Dense_1": {"kernel": (3, 2)}}
P = 4 * 3 + 3 + 3 * 2
MODELS, STEPS = 3, 6


def _params(vec: np.ndarray) -> dict:
    """A nested params dict of SHAPES filled from vec [P] in ravel_pytree order."""
    template = {k: {n: np.zeros(s, np.float32) for n, s in v.items()} for k, v in SHAPES.items()}
    return ravel_pytree(template)[1](np.asarray(vec, np.float32))


def _named(params: dict) -> dict[str, np.ndarray]:
    return {f"{k}/{n}": np.asarray(a) for k, v in params.items() for n, a in v.items()}


def write(path, params: dict, fmt: str, step: int | None = None):
    """Writes params in `fmt` with each framework's own writer; returns the path written."""
    if fmt == "msgpack":
        from flax import serialization

        path = path.with_suffix(".msgpack")
        path.write_bytes(serialization.to_bytes(params))
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        path = path.with_suffix(".safetensors")
        save_file(_named(params), str(path),
                  metadata=None if step is None else {"step": str(step)})
    elif fmt == "npz":
        path = path.with_suffix(".npz")
        np.savez(path, **_named(params))
    elif fmt == "npy":
        path = path.with_suffix(".npy")
        np.save(path, ravel_pytree(params)[0])
    else:
        import orbax.checkpoint as ocp

        ck = ocp.StandardCheckpointer()
        ck.save(path.absolute(), params)
        ck.wait_until_finished()
    return path


@pytest.fixture(scope="module")
def walks():
    """Trajectories [MODELS, STEPS + 2, P]: far-apart starts, random steps."""
    rng = np.random.default_rng(0)
    return (np.cumsum(rng.normal(size=(MODELS, STEPS + 2, P)), axis=1)
            + 30 * rng.normal(size=(MODELS, 1, P))).astype(np.float32)


def _folder(root, walks, fmt, models=range(MODELS), named_steps=True):
    """root/model{m}/step_{e} for epochs 0..STEPS-1 of each model (every other one numbered
    only through the safetensors metadata when fmt is safetensors)."""
    for m in models:
        (root / f"model{m}").mkdir(parents=True, exist_ok=True)
        for e in range(STEPS):
            name = f"step_{e}" if named_steps else f"ck_{'abcdefgh'[(e * 5) % STEPS]}"
            write(root / f"model{m}" / name, _params(walks[m, e]), fmt)
    return root


@pytest.mark.parametrize("fmt", [*FORMATS, "npy"])
def test_round_trip(tmp_path, walks, fmt):
    params = _params(walks[0, 0])
    path = write(tmp_path / "c", params, fmt)
    x, layout, _ = read_checkpoint(path)
    np.testing.assert_array_equal(x[0], np.asarray(ravel_pytree(params)[0], np.float64))
    if fmt == "npy":
        assert layout.flat and layout.size == P
        return
    (named,), _ = read_named(path)
    want = _named(params)
    assert sorted(named) == sorted(want)
    for k, v in want.items():
        assert named[k].dtype == np.float32
        np.testing.assert_array_equal(named[k], v)
    assert layout.names == ("Dense_0/bias", "Dense_0/kernel", "Dense_1/kernel")
    assert layout.shapes == ((3,), (4, 3), (3, 2)) and layout.size == P


def test_every_format_gives_the_same_index_and_answer(tmp_path, walks):
    """The same weights saved in each format: the same index points and identification."""
    answers = []
    for fmt in ("orbax", "msgpack", "safetensors", "npz"):
        index = index_from_folders([_folder(tmp_path / fmt, walks, fmt)])
        assert index.labels == ("model0", "model1", "model2")
        assert index.layout.names[0] == "Dense_0/bias"
        np.testing.assert_array_equal(index.epoch[:STEPS], np.arange(STEPS))
        q = write(tmp_path / f"q_{fmt}", _params((walks[1, 2] + walks[1, 3]) / 2), fmt)
        x, _, layout = load_checkpoints([q], index.layout)
        answers.append((index.points, identify(index, x)[0]))
    for points, ans in answers[1:]:
        np.testing.assert_array_equal(points, answers[0][0])
        assert ans == answers[0][1]
    assert answers[0][1].model == "model1" and 2 < answers[0][1].epoch < 3


def test_steps_from_names_metadata_or_weights(tmp_path, walks):
    root = tmp_path / "r"
    (root / "m").mkdir(parents=True)
    for e in range(STEPS):  # the step only in the metadata, names without numbers
        write(root / "m" / f"ck_{'abcdef'[(e * 5) % STEPS]}", _params(walks[0, e]),
              "safetensors", step=100 * e)
    assert all(c.step is None for c in scan_folder(root))
    index = index_from_folders([root])
    order = np.argsort(index.epoch)
    np.testing.assert_array_equal(index.epoch[order], 100 * np.arange(STEPS))
    assert index.origins["m"]["order"] == "steps"
    # no numbers anywhere: the order comes from the weights (start and direction may flip)
    plain = _folder(tmp_path / "p", walks, "npz", models=[0], named_steps=False)
    index = index_from_folders([plain], order_method="endpoint")
    assert index.origins["model0"]["order"] == "weights:endpoint"
    truth = [(letter * 5) % STEPS for letter in range(STEPS)]   # files ck_a..ck_f in order
    tau = scipy.stats.kendalltau(index.epoch, truth).statistic
    assert sorted(index.epoch) == list(range(STEPS)) and abs(tau) > 0.6


def test_layout_mismatch_names_the_parameter(tmp_path, walks, capsys):
    from wsjax.__main__ import main
    from wsjax.cli import run_cli

    src = _folder(tmp_path / "src", walks, "safetensors", models=[0, 1])
    assert run_cli(main, ["index", str(src), "--out", str(tmp_path / "idx")]) == 0
    from safetensors.numpy import save_file

    named = _named(_params(walks[0, 2]))
    named["Dense_0/kernel"] = named["Dense_0/kernel"].T.copy()   # same size, other shape
    save_file(named, str(tmp_path / "t.safetensors"))
    capsys.readouterr()
    assert run_cli(main, ["identify", "--index", str(tmp_path / "idx"),
                          str(tmp_path / "t.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Dense_0/kernel" in err and "(3, 4)" in err
    named = _named(_params(walks[0, 2]))
    named["Dense_9/kernel"] = named.pop("Dense_1/kernel")        # same shapes, other name
    np.savez(tmp_path / "r.npz", **named)
    assert run_cli(main, ["identify", "--index", str(tmp_path / "idx"),
                          str(tmp_path / "r.npz")]) == 2
    err = capsys.readouterr().err
    assert "Dense_1/kernel" in err and "missing" in err and len(err.strip().splitlines()) == 1
    # and a folder of another layout cannot be added to the index
    other = tmp_path / "other" / "x"
    other.mkdir(parents=True)
    np.savez(other / "c_1.npz", **named)
    assert run_cli(main, ["add", str(tmp_path / "idx"), str(tmp_path / "other")]) == 2
    assert "Dense_1/kernel" in capsys.readouterr().err


def _damage(path, how):
    """Corrupts (overwrites bytes in the middle) or truncates (to half) the file, or in an
    Orbax folder its data file (OCDBT keeps checksums)."""
    if path.is_dir():
        path = max((path / "d").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        mid = len(data) // 2
        data[mid - 8: mid + 8] = b"\xff" * 16
        data[:4] = b"\x00\xff\x00\xff"
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", ["msgpack", "safetensors", "npz", "npy", "orbax"])
@pytest.mark.parametrize("how", ["corrupted", "truncated"])
def test_damaged_checkpoint_one_line_no_index(tmp_path, walks, fmt, how, capsys):
    from wsjax.__main__ import main
    from wsjax.cli import run_cli

    root = tmp_path / "f"
    (root / "m").mkdir(parents=True)
    for e in range(3):
        path = write(root / "m" / f"s{e}", _params(walks[0, e]), fmt)
    _damage(path, how)
    args = ["index", str(root), "--out", str(tmp_path / "idx")]
    if fmt == "orbax":
        # in a process of its own: a failed Orbax read leaves its other arrays' reads in
        # flight, and their errors, logged whenever they are garbage-collected, can land
        # inside a later test (on Python 3.11 a traceback formatted during numpy's header
        # parse breaks that parse with a SystemError)
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-m", "wsjax", *args], capture_output=True,
                             text=True, timeout=120)
        rc, err = out.returncode, out.stderr
    else:
        capsys.readouterr()
        rc, err = run_cli(main, args), capsys.readouterr().err
        with pytest.raises(DataError):
            read_checkpoint(path)
    assert rc == 2, err[-2000:]
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert (path.name if fmt != "orbax" else "s2") in err
    assert not (tmp_path / "idx").exists()


def test_add_equals_rebuild(tmp_path, walks):
    _folder(tmp_path / "a", walks, "npz", models=[0, 1])
    _folder(tmp_path / "b", walks, "npz", models=[2])
    whole = index_from_folders([tmp_path / "a", tmp_path / "b"])
    part = save_index(index_from_folders([tmp_path / "a"]), tmp_path / "idx")
    grown = add_folders(load_index(part), [tmp_path / "b"])
    assert grown.labels == whole.labels and grown.threshold == pytest.approx(whole.threshold)
    for k in ("points", "model", "epoch"):
        np.testing.assert_array_equal(getattr(grown, k), getattr(whole, k))
    for k in ("loo", "other", "pos", "neg"):
        np.testing.assert_allclose(getattr(grown.stats, k), getattr(whole.stats, k))
    for k, v in whole.calibration.items():
        assert grown.calibration[k] == pytest.approx(v), k
    with pytest.raises(ConfigError, match="already in the index"):
        add_folders(grown, [tmp_path / "b"])


def test_flat_vectors_only_compare_lengths():
    index = build_index(np.eye(4), [0, 0, 1, 1], [0, 1, 0, 1], threshold=1.0)
    assert index.layout.flat
    assert index.layout.difference(Layout(("a",), ((2, 2),), ("float32",))) is None
    assert "5 weights" in index.layout.difference(Layout.flat_of(5))


def test_layout_unflatten_inverts_flatten_named():
    from wsjax.checkpoints import flatten_named

    rng = np.random.default_rng(0)
    arrays = {"Dense_0/kernel": rng.normal(size=(4, 3)).astype(np.float32),
              "Dense_0/bias": rng.normal(size=(3,)).astype(np.float32),
              "Conv_0/kernel": rng.normal(size=(2, 2, 1, 2)).astype(np.float32)}
    x, layout = flatten_named(arrays)
    back = layout.unflatten(x)
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)
