"""Zoo training speed under pytest-benchmark: every trainer of benchmarks/train_table.py.

    pytest benchmarks/bench_train.py -o python_files="bench_*.py"      # or: make bench
    pytest benchmarks -o python_files="bench_*.py" --smoke --benchmark-disable   # seconds

A small case (32 members, a few optimizer steps) of what train_table.py measures at full size;
see that script for the trainers and their setup. The cases are generated from its trainers
and rows. Every case of a row does the same work per round (members x optimizer steps, its
`model_steps_per_round`), sized so that the slowest trainer's round takes about a second, so
that pytest-benchmark's time columns compare like with like; the summary under its table
(benchmarks/conftest.py) adds model-steps/s and the ratio to torch.func. PyTorch cases skip
without torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_table  # noqa: E402

MEMBERS = 32
# Optimizer steps per round and row, for every trainer alike: the slowest trainer of a row
# (the per-seed PyTorch loop, or the plain vmapped trainer on LeNet) sets the row's size.
STEPS = {"ffnn": 50, "cnn": 10, "cnn-bias": 10, "mlp": 20, "lenet": 1}
ROUNDS = 5
# --smoke: every case runs once at a size that only checks it works.
SMOKE_MEMBERS, SMOKE_STEPS = 2, 1


@pytest.mark.parametrize("arch", train_table.ROWS)
@pytest.mark.parametrize("name", train_table.TRAINERS)
def test_train_speed(benchmark, smoke, name, arch):
    import jax

    devices = len(jax.local_devices())
    why = train_table.skip_reason(name, arch, devices)
    if why:
        pytest.skip(why)
    device = None
    if name.startswith("torch"):
        torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
        torch.set_num_threads(1)
        device = train_table.torch_device()
    members, steps = (SMOKE_MEMBERS, SMOKE_STEPS) if smoke else (MEMBERS, STEPS[arch])
    run = train_table.RUNNERS[name](arch, members, steps, devices, device)
    benchmark.group = f"{arch}: {members} members x {steps} optimizer steps per round"
    benchmark.extra_info.update(arch=arch, trainer=name, members=members, steps=steps,
                                model_steps_per_round=members * steps, jax_devices=devices)
    if device:
        benchmark.extra_info.update(torch_device=device, torch_threads=1)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
