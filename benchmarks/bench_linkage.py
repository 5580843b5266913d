"""Single linkage: wsjax's exact MST against scipy (pdist + linkage), side by side.

    python benchmarks/bench_linkage.py                    # 12,750 x 2,160, the paper's FFNN zoo
    python benchmarks/bench_linkage.py --n 3000 --d 500 --repeats 3
    pytest benchmarks/bench_linkage.py                    # small case under pytest-benchmark

Both run on the same trajectory-like data (random walks with shrinking steps, one walk after
another, as a zoo stores its snapshots). Each run happens in a fresh process, so that its peak
resident memory can be read; the script prints median times, their ratio, the peak memory
above the process's baseline and the largest merge-height difference.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np


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


def _wsjax(x: np.ndarray) -> np.ndarray:
    from wsjax.analysis.linkage import single_linkage

    return single_linkage(x)


def _child(name: str, n: int, d: int, out) -> None:
    x = trajectories(n, d)
    fn = {"wsjax": _wsjax, "scipy": _scipy}[name]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    z = fn(x)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put((seconds, (peak - base) / 1024.0, z[:, 2]))


def run_isolated(name: str, n: int, d: int) -> tuple[float, float, np.ndarray]:
    """(seconds, peak MiB above the data's baseline, merge heights) of one run in a new process."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_child, args=(name, n, d, out))
    p.start()
    result = out.get()
    p.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12750)
    p.add_argument("--d", type=int, default=2160)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    runs = {"wsjax": [], "scipy": []}
    for _ in range(args.repeats):
        for name in runs:  # alternate, so that both see the same machine load
            runs[name].append(run_isolated(name, args.n, args.d))
    med = {k: float(np.median([r[0] for r in v])) for k, v in runs.items()}
    mem = {k: max(r[1] for r in v) for k, v in runs.items()}
    ours, ref = runs["wsjax"][0][2], runs["scipy"][0][2]
    diff = np.max(np.abs(ours - ref) / np.maximum(ref, 1e-300))
    print(f"n={args.n} d={args.d} repeats={args.repeats} (median seconds, peak MiB above "
          f"the data)")
    print(f"wsjax single_linkage : {med['wsjax']:8.2f} s  {mem['wsjax']:8.0f} MiB")
    print(f"scipy pdist+linkage  : {med['scipy']:8.2f} s  {mem['scipy']:8.0f} MiB")
    print(f"speed-up scipy/wsjax : {med['scipy'] / med['wsjax']:8.2f}x")
    print(f"max relative merge-height difference: {diff:.2e}")


def test_bench_wsjax_single_linkage(benchmark):
    benchmark(_wsjax, trajectories(2000, 500))


def test_bench_scipy_single_linkage(benchmark):
    benchmark(_scipy, trajectories(2000, 500))


if __name__ == "__main__":
    main()
