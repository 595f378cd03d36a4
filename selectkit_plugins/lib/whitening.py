"""Whitening of feature rows with their pooled covariance (TAROT's `get_wfd`), in float64 chunks:
the `whiten` normalizer and the `optimal_transport` selector share it."""

from __future__ import annotations

from selectkit.plugin import DataError, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

CHUNK_ROWS = 1 << 15


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
