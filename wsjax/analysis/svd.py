"""Truncated SVD without centering (as scikit-learn's TruncatedSVD), computed in float64."""

from __future__ import annotations

import dataclasses

import numpy as np

from wsjax.errors import ConfigError

__all__ = ["SVD", "fit_svd", "project"]


@dataclasses.dataclass(frozen=True)
class SVD:
    """x = u * s @ vt, singular values in decreasing order.

    Attributes:
        u: float64 [n, r]; s: float64 [r]; vt: float64 [r, d]; r = min(n, d).
    """

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray


def fit_svd(x: np.ndarray) -> SVD:
    """Thin SVD of x [n, d] in float64, no centering (the rows are weight vectors as they are)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ConfigError(f"fit_svd needs a non-empty 2-D matrix, got shape {x.shape}")
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return SVD(u=u, s=s, vt=vt)


def project(svd: SVD, k: int) -> np.ndarray:
    """float64 [n, k]: the rows in the top-k singular directions (= x @ vt[:k].T)."""
    if not 1 <= k <= svd.s.shape[0]:
        raise ConfigError(f"cannot project to {k} dimensions; choose 1..{svd.s.shape[0]}")
    return svd.u[:, :k] * svd.s[:k]
