"""Single linkage: wsjax's two exact engines against scipy (pdist + linkage), side by side.

    python benchmarks/bench_linkage.py                    # 12,750 x 2,160, the paper's FFNN zoo
    python benchmarks/bench_linkage.py --n 3000 --d 500 --repeats 3
    python benchmarks/bench_linkage.py --n 100000 --only jax --cold  # a scale run, wsjax only
    python benchmarks/bench_linkage.py --table            # SVD + seven linkages (Table 2/3)
    python benchmarks/bench_linkage.py --n 4000 --devices 1 2 4 --repeats 3  # jax on D devices
    pytest benchmarks/bench_linkage.py                    # small case under pytest-benchmark

All run on the same trajectory-like data (random walks with shrinking steps, one walk after
another, as a zoo stores its snapshots). Each run happens in a fresh process, so that its peak
resident memory can be read; the script prints median times, their ratio to scipy's, the peak
memory above the process's baseline and the largest merge-height difference to scipy's.
`--table` times what `experiments.tables` does for one zoo: the SVD and single linkage in the
full space and at SVD 500, 100, 50, 25, 10, 5, for each engine, after one warm-up run in the
same process (compilation excluded).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import resource
import time

import numpy as np
import pytest


def trajectories(n: int, d: int, steps: int = 51, seed: int = 0) -> np.ndarray:
    """float64 [n, d]: ceil(n / steps) random walks of `steps` shrinking steps, truncated to n."""
    rng = np.random.default_rng(seed)
    models = -(-n // steps)
    scale = 0.9 ** np.arange(steps)[None, :, None]
    walk = np.cumsum(rng.normal(size=(models, steps, d)) * scale, axis=1)
    x = rng.normal(size=(models, 1, d)) * 3.0 + walk
    return x.reshape(-1, d)[:n]


def _scipy(x: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    return linkage(pdist(x), method="single")


def _wsjax(x: np.ndarray, engine: str) -> np.ndarray:
    from wsjax.analysis.linkage import single_linkage

    return single_linkage(x, engine=engine)


RUNNERS = {"numpy": functools.partial(_wsjax, engine="numpy"),
           "jax": functools.partial(_wsjax, engine="jax"), "scipy": _scipy}
KS = (500, 100, 50, 25, 10, 5)


def _table(x: np.ndarray, engine: str) -> None:
    """What experiments.tables computes for one zoo: one SVD, seven single linkages."""
    from wsjax.analysis.linkage import single_linkage
    from wsjax.analysis.svd import fit_svd, project

    ks = [k for k in KS if k < min(x.shape)]
    svd = fit_svd(x, rank=max(ks))
    for space in (None, *ks):
        single_linkage(x if space is None else project(svd, space), engine=engine)


def _child(name: str, n: int, d: int, table: bool, cold: bool, out) -> None:
    if name.startswith("jax x"):  # D devices: set before JAX starts in this new process
        import os

        devices = int(name.split("x")[-1])
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={devices}")
        RUNNERS[name] = RUNNERS["jax"]
    try:
        out.put(_measure(name, n, d, table, cold))
    except BaseException as e:  # the parent waits for one answer: send the failure instead
        out.put(e)
        raise


def _measure(name: str, n: int, d: int, table: bool,
             cold: bool = False) -> tuple[float, float, np.ndarray | None]:
    x = trajectories(n, d)
    # Warm-up, not timed: imports and JAX's start for all; for the jax engine and the table
    # also compilation, which needs a run at the same size (a cold run skips that and times
    # compilation too, where a second run at the size would cost too long).
    if cold:
        RUNNERS[name](x[:50])
    elif table:
        _table(x, name)
    elif name == "jax":
        RUNNERS[name](x)
    elif name == "numpy":
        RUNNERS[name](x[:50])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    z = _table(x, name) if table else RUNNERS[name](x)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, (peak - base) / 1024.0, None if table else z[:, 2]


def run_isolated(name: str, n: int, d: int, table: bool = False,
                 cold: bool = False) -> tuple[float, float, np.ndarray | None]:
    """(seconds, peak MiB above the data's baseline, merge heights) of one run in a new process."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_child, args=(name, n, d, table, cold, out))
    p.start()
    result = out.get()
    p.join()
    if isinstance(result, BaseException):
        raise SystemExit(f"{name} failed: {result!r}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12750)
    p.add_argument("--d", type=int, default=2160)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--only", nargs="+", choices=list(RUNNERS), default=list(RUNNERS),
                   help="which of numpy, jax (wsjax's engines) and scipy to run")
    p.add_argument("--table", action="store_true",
                   help="time the SVD and seven linkages of one zoo's table (wsjax engines)")
    p.add_argument("--devices", type=int, nargs="+", default=None,
                   help="time the jax engine on each of these numbers of devices (on a CPU, "
                        "that many host devices), instead of --only")
    p.add_argument("--cold", action="store_true",
                   help="no warm-up at the full size: the time includes compilation (scale runs)")
    args = p.parse_args()
    names = [k for k in args.only if not (args.table and k == "scipy")]
    if args.devices:
        names = [f"jax x{k}" for k in args.devices]
    runs = {k: [] for k in names}
    for _ in range(args.repeats):
        for name in runs:  # alternate, so that all see the same machine load
            runs[name].append(run_isolated(name, args.n, args.d, args.table, args.cold))
            print(f"  {name}: {runs[name][-1][0]:.2f} s", flush=True)
    med = {k: float(np.median([r[0] for r in v])) for k, v in runs.items()}
    mem = {k: max(r[1] for r in v) for k, v in runs.items()}
    what = "SVD + 7 single linkages" if args.table else "single linkage"
    print(f"{what} of n={args.n} d={args.d}, repeats={args.repeats} (median seconds, peak MiB "
          f"above the data)")
    ref_label = f"{next(iter(runs))}" if args.devices else "scipy"
    print(f"| run | seconds | peak MiB | vs {ref_label} | max rel. height diff to {ref_label} |")
    print("| --- | --- | --- | --- | --- |")
    for k in runs:
        ratio = diff = "-"
        first = next(iter(runs))
        ref_name = "scipy" if "scipy" in runs else first if args.devices else None
        if ref_name is not None and not args.table:
            ratio = f"{med[ref_name] / med[k]:.2f}x"
            ref = runs[ref_name][0][2]
            diff = f"{np.max(np.abs(runs[k][0][2] - ref) / np.maximum(ref, 1e-300)):.1e}"
        label = k if k == "scipy" or args.devices else f"wsjax {k} engine"
        print(f"| {label} | {med[k]:.2f} | {mem[k]:.0f} | {ratio} | {diff} |")


@pytest.mark.parametrize("name", list(RUNNERS))
def test_bench_single_linkage(benchmark, name):
    x = trajectories(2000, 500)
    RUNNERS[name](x)  # compile outside the timing
    benchmark(RUNNERS[name], x)


if __name__ == "__main__":
    main()
