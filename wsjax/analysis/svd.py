"""Truncated SVD without centering (as scikit-learn's TruncatedSVD), in float64 JAX.

The snapshot matrices are tall and skinny (many snapshots, a few thousand parameters) or the
other way round, so the decomposition goes through the smaller Gram matrix: for x [n, d] with
n >= d, x^T x = V diag(s^2) V^T (`eigh`), and x V = U diag(s); for n < d the same with x x^T.
That is one matrix product and one small symmetric eigenproblem, jitted, on whatever device
JAX uses. The Gram matrix squares the condition number, so the singular values are accurate
relative to the largest one (float64: about 1e-16 * s_max^2 / s_k^2 relative), which is ample
for the leading hundreds of directions that the analysis keeps.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from wsjax.errors import ConfigError

__all__ = ["SVD", "fit_svd", "project", "float64_jax"]


@dataclasses.dataclass(frozen=True)
class SVD:
    """x ~ u * s @ vt, the leading r singular triplets, singular values in decreasing order.

    Attributes:
        u: float64 [n, r]; s: float64 [r]; vt: float64 [r, d]; scores: float64 [n, r], the
        rows in the singular directions (u * s = x @ vt.T, computed without dividing by s).
    """

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    scores: np.ndarray


def float64_jax():
    """A context in which JAX computes in float64 (without changing the global setting)."""
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


@functools.cache
def _gram_svd():
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnames=("rank",))
    def gram_svd(x, rank: int):
        """x [n, d] float64 -> (u [n, r], s [r], vt [r, d], scores [n, r]), r = rank."""
        tall = x.shape[0] >= x.shape[1]
        hi = jax.lax.Precision.HIGHEST
        gram = jnp.matmul(x.T, x, precision=hi) if tall else jnp.matmul(x, x.T, precision=hi)
        eigval, eigvec = jnp.linalg.eigh(gram)
        eigval, eigvec = eigval[::-1][:rank], eigvec[:, ::-1][:, :rank]
        s = jnp.sqrt(jnp.maximum(eigval, 0.0))
        # A direction with s = 0 carries nothing: its u (or v) is left at zero.
        inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
        if tall:
            scores = jnp.matmul(x, eigvec, precision=hi)
            return scores * inv[None, :], s, eigvec.T, scores
        vt = jnp.matmul(eigvec.T, x, precision=hi) * inv[:, None]
        return eigvec, s, vt, eigvec * s[None, :]

    return gram_svd


def fit_svd(x: np.ndarray, rank: int | None = None) -> SVD:
    """Leading `rank` singular triplets of x [n, d] in float64, no centering (the rows are
    weight vectors as they are). rank: at most min(n, d), the default."""
    x = np.asarray(x)
    if x.ndim != 2 or x.size == 0:
        raise ConfigError(f"fit_svd needs a non-empty 2-D matrix, got shape {x.shape}")
    full = min(x.shape)
    rank = full if rank is None else int(rank)
    if not 1 <= rank <= full:
        raise ConfigError(f"cannot keep {rank} singular directions of a {x.shape[0]} x "
                          f"{x.shape[1]} matrix; choose 1..{full}")
    if not np.all(np.isfinite(x)):
        raise ConfigError("fit_svd got non-finite values; drop diverged snapshots first")
    with float64_jax():
        u, s, vt, scores = _gram_svd()(np.asarray(x, np.float64), rank=rank)
        return SVD(u=np.asarray(u), s=np.asarray(s), vt=np.asarray(vt),
                   scores=np.asarray(scores))


def project(svd: SVD, k: int) -> np.ndarray:
    """float64 [n, k]: the rows in the top-k singular directions (= x @ vt[:k].T)."""
    if not 1 <= k <= svd.s.shape[0]:
        raise ConfigError(f"cannot project to {k} dimensions; choose 1..{svd.s.shape[0]}")
    return svd.scores[:, :k]
