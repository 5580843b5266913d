"""pytest-benchmark settings of `make bench`: a smoke mode, and model-steps/s with the ratio to
torch.func under pytest-benchmark's table and in --benchmark-json."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_addoption(parser):
    parser.addoption("--smoke", action="store_true",
                     help="run every benchmark once at a tiny size, to check that it works "
                          "(with --benchmark-disable: seconds)")


def pytest_configure(config):
    """Before JAX starts: one JAX CPU device per core, as train_table.py and the zoo runner
    use, so that wsjax-fast shards its members over every core; in smoke mode, XLA's backend
    unoptimised, because compiling is then nearly all of the run and speed does not matter."""
    if config.getoption("--smoke"):
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    from wsjax.sharding import use_cpu_cores

    use_cpu_cores()


@pytest.fixture(scope="session")
def smoke(request) -> bool:
    return request.config.getoption("--smoke")


REFERENCE = "torch-func"


def rate_rows(benchmarks) -> list[dict]:
    """One dict per training case that was timed: arch, trainer, model_steps_per_round,
    model_steps_per_s (over the median round) and ratio_to_torch_func (the case's
    model-steps/s over torch.func's on the same arch; absent where torch.func did not run).
    Also written into each case's extra_info. `benchmarks`: pytest-benchmark's
    records of the session (Metadata)."""
    rows = []
    for bench in benchmarks:
        info = bench.extra_info
        if "model_steps_per_round" not in info or not bench:  # not timed
            continue
        info["model_steps_per_s"] = info["model_steps_per_round"] / bench.stats.median
        rows.append(info)
    reference = {r["arch"]: r["model_steps_per_s"] for r in rows if r["trainer"] == REFERENCE}
    for r in rows:
        if r["arch"] in reference:
            r["ratio_to_torch_func"] = r["model_steps_per_s"] / reference[r["arch"]]
    return rows


def pytest_benchmark_update_json(config, benchmarks, output_json):
    by_name = {bench.fullname: bench.extra_info for bench in benchmarks}
    rate_rows(benchmarks)
    for entry in output_json["benchmarks"]:
        entry["extra_info"].update(by_name.get(entry["fullname"], {}))


@pytest.hookimpl(trylast=True)  # under pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter):
    session = getattr(terminalreporter.config, "_benchmarksession", None)
    rows = rate_rows(session.benchmarks) if session else []
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("training speed: model-steps/s (members x optimizer steps / s)")
    write(f"{'model':<9} {'trainer':<14} {'model-steps/round':>17} {'model-steps/s':>15} "
          f"{'/ torch-func':>14}")
    for r in sorted(rows, key=lambda r: (r["arch"], -r["model_steps_per_s"])):
        ratio = r.get("ratio_to_torch_func")
        write(f"{r['arch']:<9} {r['trainer']:<14} {r['model_steps_per_round']:>17,} "
              f"{r['model_steps_per_s']:>15,.0f} "
              f"{f'{ratio:.2f}x' if ratio is not None else '-':>14}")
    write("Every case of a model does the same model-steps per round; model-steps/s is that "
          "over the median round. Above 1x: faster than the torch.func ensemble.")
    where = sorted({f"JAX: {r['jax_devices']} device(s), the members of wsjax-fast and "
                    "wsjax-general sharded over them, the other wsjax trainers on one"
                    for r in rows if "jax_devices" in r})
    where += sorted({f"PyTorch: {r['torch_device']}, {r['torch_threads']} intra-op thread(s)"
                     for r in rows if "torch_device" in r})
    write("; ".join([*where, "rates vary with the machine's load: compare cases of one run."]))
