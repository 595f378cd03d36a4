"""whiten (TAROT, Feng et al., ICML 2025): whiten pool and target features with their pooled
covariance so no single dominant direction decides similarity (TAROT's `get_wfd`)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from selectkit.contract.components import NormalizeContext, Normalizer, Params, Score, Shape
from selectkit.contract.hookspecs import hookimpl
from selectkit.errors import DataError

CHUNK_ROWS = 1 << 15


class WhitenParams(Params):
    method: Literal["cholesky", "zca"] = Field(
        "cholesky", description="cholesky (TAROT: W = L^-T) or zca (W = C^-1/2); both give identical dot products")
    ridge: float = Field(1e-5, ge=0, description="added to the covariance diagonal (absolute, as TAROT)")
    center: Literal["pooled", "pool_only", "none"] = Field(
        "pooled", description="subtract the mean of pool+targets (TAROT), of the pool only, or nothing")
    l2_normalize: bool = Field(True, description="scale every whitened row to unit length (TAROT's cosine geometry)")


def fit_whitening(blocks: list[np.ndarray], *, method: str = "cholesky", ridge: float = 1e-5,
                  center: str = "pooled") -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening matrix W (D, D) with (x - mean) @ W white. The covariance
    C = sum (x - mean)(x - mean)^T / n + ridge·I is pooled over every row of every block and
    accumulated in float64 chunks. Cholesky C = L L^T gives W = L^-T; ZCA gives W = C^-1/2.
    Any W with W W^T = C^-1 yields the same inner products, norms and cosines."""
    dim = blocks[0].shape[1]
    rows = sum(len(b) for b in blocks)
    if rows == 0:
        raise DataError("whiten: no feature rows")
    if center == "none":
        mean = np.zeros(dim)
    else:
        source = blocks if center == "pooled" else blocks[:1]
        count = sum(len(b) for b in source)
        mean = sum(_chunked_sum(b) for b in source) / max(count, 1)
    cov = np.zeros((dim, dim))
    for block in blocks:
        for start in range(0, len(block), CHUNK_ROWS):
            chunk = np.asarray(block[start:start + CHUNK_ROWS], dtype=np.float64) - mean
            cov += chunk.T @ chunk
    cov = cov / rows + ridge * np.eye(dim)
    if method == "cholesky":
        try:
            lower = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError as exc:
            raise DataError("whiten: the feature covariance is singular; set `ridge` > 0") from exc
        return mean, np.linalg.solve(lower, np.eye(dim)).T
    eigval, eigvec = np.linalg.eigh(cov)
    if eigval.min() <= 0:
        raise DataError("whiten: the feature covariance is singular; set `ridge` > 0")
    return mean, (eigvec / np.sqrt(eigval)) @ eigvec.T


def apply_whitening(x: np.ndarray, mean: np.ndarray, w: np.ndarray, *, l2_normalize: bool = True,
                    dtype: np.dtype | None = None) -> np.ndarray:
    """(x - mean) @ W chunk by chunk, optionally with rows scaled to unit length (norm clamped at 1e-12)."""
    dtype = dtype or (np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    out = np.empty((len(x), w.shape[1]), dtype=dtype)
    for start in range(0, len(x), CHUNK_ROWS):
        chunk = (np.asarray(x[start:start + CHUNK_ROWS], dtype=np.float64) - mean) @ w
        if l2_normalize:
            chunk /= np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
        out[start:start + CHUNK_ROWS] = chunk
    return out


def _chunked_sum(block: np.ndarray) -> np.ndarray:
    total = np.zeros(block.shape[1])
    for start in range(0, len(block), CHUNK_ROWS):
        total += np.asarray(block[start:start + CHUNK_ROWS], dtype=np.float64).sum(axis=0)
    return total


class Whiten(Normalizer):
    """Whiten FEATURES (pool (N, D) and every target's (M_t, D)) with statistics pooled over pool and
    targets, as TAROT does, then optionally L2-normalize rows. Deviation from the reference: W is
    computed and applied in float64 (TAROT casts it to fp16); output keeps float32 unless the input is
    float64. Scales as O((N + M)·D² + D³) time and O(D² + chunk·D) memory beyond the output."""

    name = "whiten"
    Params = WhitenParams
    accepts = frozenset({Shape.FEATURES})

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        p = self.params
        pool = np.asarray(score.values)
        if pool.ndim != 2:
            raise DataError("whiten needs (N, D) features")
        targets = {name: np.asarray(t) for name, t in score.target_features.items()}
        for name, t in targets.items():
            if t.ndim != 2 or t.shape[1] != pool.shape[1]:
                raise DataError(f"whiten: target {name!r} features have shape {t.shape}, pool has {pool.shape}")
        mean, w = fit_whitening([pool, *targets.values()], method=p.method, ridge=p.ridge, center=p.center)
        whiten = lambda x: apply_whitening(x, mean, w, l2_normalize=p.l2_normalize)  # noqa: E731
        return score.with_values(whiten(pool), target_features={k: whiten(v) for k, v in targets.items()})


@hookimpl
def register_normalizers(register):
    register(Whiten)
