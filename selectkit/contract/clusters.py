"""Clustering numerics shared by the core and the cluster-based selectors: k-means with a seeded
backend choice, feature access, capped quota allocation and Gumbel-top-k.

It lives in the core (it began in the built-in plugins' library) because the core uses it too: the
surrogate's cluster-stratified label sample (selectkit.execution.surrogate) runs `kmeans`,
`cluster_members` and `allocate`. Plugins reach it through `selectkit.plugin`. It imports nothing of
selectkit above the contract; numpy, scikit-learn and faiss are imported on first use."""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field

from selectkit.contract.components import Params, SelectContext, Shape
from selectkit.contract.lazy import lazy_import
from selectkit.errors import RecipeError

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class KMeansParams(Params):
    """How the features are clustered (faiss for large pools when installed, scikit-learn otherwise)."""

    niter: int = Field(50, ge=1, description="Lloyd iterations (Diversify-and-Conquer used 300)")
    n_init: int = Field(1, ge=1, description="restarts, best inertia kept (faiss `nredo`; D&C used 5)")
    backend: Literal["auto", "sklearn", "faiss"] = Field(
        "auto", description="auto: faiss from `faiss_min_points` candidates when installed, else scikit-learn")
    faiss_min_points: int = Field(100_000, ge=1, description="pool size from which `auto` uses faiss")
    minibatch_min_points: int = Field(50_000, ge=1, description="scikit-learn switches to MiniBatchKMeans here")


def features_of(ctx: SelectContext, l2_normalize: bool, who: str) -> np.ndarray:
    """The candidates' rows of the FEATURES score the stage reads, as float32 (optionally unit-length)."""
    score = ctx.score
    if score is None or score.shape is not Shape.FEATURES:
        raise RecipeError(f"{who} reads a features score (pool embeddings) as `score`")
    x = np.ascontiguousarray(np.asarray(score.values)[ctx.candidates], dtype=np.float32)
    if l2_normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    return x


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, params: KMeansParams | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Cluster rows of `x` into at most k clusters: (labels (N,), centers (k, D)), seeded by `rng`.

    scikit-learn's Lloyd k-means gives the same labels whatever the thread count; faiss (used only
    above `faiss_min_points`) is faster at 1e5-1e8 points but may differ slightly across thread counts.
    Memory: O(N·D + k·D) plus the backend's chunked distance blocks (no N×N matrix).
    """
    params = params or KMeansParams()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    k = max(1, min(int(k), n))
    seed = int(rng.integers(2**31 - 1))
    if k == 1:
        return np.zeros(n, dtype=np.int64), x.mean(axis=0, keepdims=True)
    if params.backend == "faiss" or (params.backend == "auto" and n >= params.faiss_min_points and has_faiss()):
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=params.niter, nredo=params.n_init, seed=seed, verbose=False)
        km.train(x)
        _, labels = km.index.search(x, 1)
        return labels[:, 0].astype(np.int64), np.asarray(km.centroids)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than k: empty clusters are fine
        if n >= params.minibatch_min_points:
            km = MiniBatchKMeans(n_clusters=k, n_init=params.n_init, max_iter=params.niter, random_state=seed,
                                 batch_size=4096).fit(x)
        else:
            km = KMeans(n_clusters=k, n_init=params.n_init, max_iter=params.niter, random_state=seed).fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def cluster_members(labels: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """Positions of each cluster's rows, ascending (one stable sort: O(N log N), not O(N·k))."""
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels, minlength=n_clusters))[:-1])


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return True


def allocate(capacity: np.ndarray, budget: int, weights: np.ndarray, redistribute: bool = True,
             tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Integer quotas summing to `budget` (when capacity allows), proportional to `weights`,
    capped by `capacity`; remainders go to the largest fractional shares (ties: lowest `tiebreak`).

    With `redistribute`, what a full cluster cannot take is shared among the others (water-filling);
    without it, capped quotas are simply lost, as in the kMQ reference code.
    """
    capacity = np.asarray(capacity, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    quota = np.zeros(len(capacity), dtype=np.int64)
    budget = int(min(budget, capacity[weights > 0].sum()))
    while True:
        remaining = budget - int(quota.sum())
        open_ = (quota < capacity) & (weights > 0)
        if remaining <= 0 or not open_.any():
            return quota
        quota += np.minimum(largest_remainder(remaining, np.where(open_, weights, 0.0), tiebreak), capacity - quota)
        if not redistribute:
            return quota


def largest_remainder(total: int, weights: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Integers summing to `total`, proportional to `weights` (Hamilton's method; ties: lowest `tiebreak`,
    else lowest index)."""
    share = total * weights / weights.sum()
    out = np.floor(share + 1e-9).astype(np.int64)
    left = total - int(out.sum())
    if left > 0:
        frac = np.where(weights > 0, share - out, -np.inf)
        tie = np.arange(len(weights)) if tiebreak is None else tiebreak
        out[np.lexsort((tie, -frac))[:left]] += 1
    return out


def gumbel_top(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k positions sampled without replacement with p ∝ exp(logits), in draw order (Gumbel-top-k)."""
    keys = logits + rng.gumbel(size=len(logits))
    if k >= len(keys):
        return np.argsort(-keys, kind="stable")
    top = np.argpartition(-keys, k - 1)[:k]
    return top[np.argsort(-keys[top], kind="stable")]
