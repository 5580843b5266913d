"""Single linkage: wsjax's MST (O(n*d) memory) against scipy (pdist + linkage, O(n^2) memory).

    python benchmarks/bench_linkage.py                    # 12,750 x 2,160, the paper's FFNN zoo
    python benchmarks/bench_linkage.py --n 3000 --d 500 --repeats 3
    pytest benchmarks/bench_linkage.py                    # small case under pytest-benchmark

Both run side by side on the same trajectory-like data (random walks with shrinking steps);
the script prints median times, their ratio and the largest merge-height difference.
"""

from __future__ import annotations

import argparse
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


def _median_time(fn, x, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main() -> None:
    from wsjax.analysis.linkage import single_linkage

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12750)
    p.add_argument("--d", type=int, default=2160)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    x = trajectories(args.n, args.d)
    t_ours, z = _median_time(single_linkage, x, args.repeats)
    t_ref, ref = _median_time(_scipy, x, args.repeats)
    diff = np.max(np.abs(z[:, 2] - ref[:, 2]) / np.maximum(ref[:, 2], 1e-300))
    print(f"n={args.n} d={args.d} repeats={args.repeats} (medians)")
    print(f"wsjax single_linkage : {t_ours:8.2f} s")
    print(f"scipy pdist+linkage  : {t_ref:8.2f} s")
    print(f"ratio wsjax/scipy    : {t_ours / t_ref:8.2f}")
    print(f"max relative merge-height difference: {diff:.2e}")


def test_bench_wsjax_single_linkage(benchmark):
    from wsjax.analysis.linkage import single_linkage

    benchmark(single_linkage, trajectories(1000, 200))


def test_bench_scipy_single_linkage(benchmark):
    benchmark(_scipy, trajectories(1000, 200))


if __name__ == "__main__":
    main()
