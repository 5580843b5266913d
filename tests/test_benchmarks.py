"""`make bench` stays in step with benchmarks/train_table.py, and its summary's numbers are
the work per round over the median round."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table():
    return _module("train_table")


def test_bench_cases_are_the_tables_trainers_and_rows(table):
    bench = _module("bench_train")
    params = {m.args[0]: list(m.args[1]) for m in bench.test_train_speed.pytestmark
              if m.name == "parametrize"}
    cases = set(itertools.product(params["name"], params["arch"]))
    assert cases == set(itertools.product(table.TRAINERS, table.ROWS))
    assert set(bench.STEPS) == set(table.ROWS)


def test_every_trainer_has_steps_and_a_column_in_the_table(table):
    assert list(table.table_steps(400)) == list(table.TRAINERS)
    rates = {name: 1000.0 * (i + 1) for i, name in enumerate(table.TRAINERS)}
    row = {"arch": "ffnn", "seeds": 8, "rates": rates, "skipped": {}, "torch": None}
    text = table.format_table([row], [])
    for rate in rates.values():
        assert f"| {rate:,.0f} |" in text


FAKE_BENCH = '''
import time

import pytest


@pytest.mark.parametrize("trainer,work,sleep", [("torch-func", 10, 0.004), ("fast", 30, 0.002)])
def test_case(benchmark, trainer, work, sleep):
    benchmark.extra_info.update(arch="ffnn", trainer=trainer, model_steps_per_round=work)
    benchmark.pedantic(time.sleep, args=(sleep,), rounds=3, iterations=1)
'''


def test_summary_and_json_carry_rates_and_the_ratio_to_torch_func(tmp_path):
    pytest.importorskip("pytest_benchmark")
    shutil.copy(BENCH / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "bench_fake.py").write_text(FAKE_BENCH)
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent), "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path), "-q", "-p", "no:cacheprovider",
         "-o", "python_files=bench_*.py", f"--benchmark-json={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    cases = {b["extra_info"]["trainer"]: b for b in json.loads(out.read_text())["benchmarks"]}
    rate = {k: b["extra_info"]["model_steps_per_round"] / b["stats"]["median"]
            for k, b in cases.items()}
    for k, b in cases.items():
        assert b["extra_info"]["model_steps_per_s"] == pytest.approx(rate[k])
        assert b["extra_info"]["ratio_to_torch_func"] == pytest.approx(
            rate[k] / rate["torch-func"])
    summary = res.stdout.split("model-steps/s (members x optimizer steps / s)", 1)[1]
    line = next(s for s in summary.splitlines() if s.startswith("ffnn") and " fast " in s)
    assert line.split()[-1] == f"{rate['fast'] / rate['torch-func']:.2f}x"
