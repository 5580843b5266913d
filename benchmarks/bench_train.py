"""Zoo training speed under pytest-benchmark: wsjax fast and plain, PyTorch loop and torch.func.

    pytest benchmarks/bench_train.py --benchmark-columns=median,iqr,rounds

A small case (32 seeds, a few hundred optimizer steps) of what benchmarks/train_table.py
measures at full size; see that script for the setup. The PyTorch cases run a tenth of the
steps per round (each case's extra_info holds its model-steps per round: divide by the time
for model-steps/s). PyTorch cases skip without torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_table  # noqa: E402

SEEDS = 32
STEPS = {"ffnn": 200, "cnn": 40, "cnn-bias": 20, "mlp": 40, "lenet": 4}


def _runner(name: str, arch: str):
    if name.startswith("torch"):
        torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
        torch.set_num_threads(1)
    steps = STEPS[arch] if name.startswith("wsjax") else max(1, STEPS[arch] // 10)
    make = {"wsjax-fast": lambda: train_table.wsjax_runner(arch, SEEDS, steps, True),
            "wsjax-fast-1": lambda: train_table.wsjax_runner(arch, SEEDS, steps, True),
            "wsjax-general": lambda: train_table.wsjax_runner(arch, SEEDS, steps, True,
                                                              use_kernels=False),
            "wsjax-plain": lambda: train_table.wsjax_runner(arch, SEEDS, steps, False),
            "torch-loop": lambda: train_table.torch_loop_runner(
                arch, SEEDS, steps, train_table.torch_device()),
            "torch-func": lambda: train_table.torch_func_runner(
                arch, SEEDS, steps, train_table.torch_device())}[name]
    return make(), steps


@pytest.mark.parametrize("arch", list(train_table.ROWS))
@pytest.mark.parametrize("name", train_table.TRAINERS)
def test_train_speed(benchmark, name, arch):
    if arch not in train_table.PAPER_ROWS and name in ("wsjax-general", "torch-loop"):
        pytest.skip("the general path is wsjax-fast there; the loop peer is SGD only")
    run, steps = _runner(name, arch)
    benchmark.extra_info["model_steps_per_round"] = SEEDS * steps
    benchmark.pedantic(run, rounds=3, iterations=1)
