"""Cosine similarity of each pool example's embedding to each target: to the target's centroid,
to its most similar example (max), or the mean over its k most similar examples (topk).

Top-k search uses faiss (exact inner-product index) when installed, else blocked numpy matmuls;
both hold at most `memory_mb` of pool x target similarities at once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import (
    FeatureRequest,
    MissingExtraError,
    Params,
    Score,
    ScoreContext,
    Scorer,
    Shape,
    hookimpl,
    lazy_import,
)
from selectkit_plugins.scorers._model import POOLING_HELP, store

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class EmbeddingSimilarityParams(Params):
    aggregate: Literal["centroid", "max", "topk"] = Field(
        "centroid", description="centroid: cosine to the target's mean embedding; max: to the most similar "
        "target example; topk: mean over the k most similar target examples")
    k: int = Field(10, ge=1, description="neighbours averaged by aggregate: topk")
    pooling: Literal["auto", "mean", "cls", "last"] = Field("auto", description=POOLING_HELP)
    backend: Literal["auto", "faiss", "numpy"] = Field(
        "auto", description="nearest-neighbour search for max/topk: faiss when installed (auto), or numpy")
    memory_mb: int = Field(256, ge=1, description="most pool x target similarities held at once, in MiB")


def topk_mean(queries: np.ndarray, keys: np.ndarray, k: int, memory_mb: int = 256,
              backend: str = "auto") -> np.ndarray:
    """For each query row, the mean of its k largest inner products with the key rows."""
    k = min(k, len(keys))
    if backend in ("auto", "faiss"):
        try:
            import faiss
        except ImportError:
            if backend == "faiss":

                raise MissingExtraError("faiss", "faiss", "embedding_similarity") from None
        else:
            index = faiss.IndexFlatIP(keys.shape[1])
            index.add(np.ascontiguousarray(keys, dtype=np.float32))
            rows = max(1, (memory_mb << 20) // (4 * max(k, 1024) * 2))
            out = np.empty(len(queries), dtype=np.float64)
            for a in range(0, len(queries), rows):
                sims, _ = index.search(np.ascontiguousarray(queries[a: a + rows], dtype=np.float32), k)
                out[a: a + rows] = sims.astype(np.float64).mean(axis=1)
            return out
    return _topk_numpy(queries, keys, k, memory_mb)


def _topk_numpy(queries: np.ndarray, keys: np.ndarray, k: int, memory_mb: int) -> np.ndarray:
    """Blocked matmuls keeping a running top-k per row, so no block exceeds the budget."""
    budget = max(1, (memory_mb << 20) // 4)
    cols = min(len(keys), max(k, budget // max(1, min(len(queries), 1024))))
    rows = max(1, budget // (cols + k))
    out = np.empty(len(queries), dtype=np.float64)
    keys = keys.astype(np.float32, copy=False)
    for a in range(0, len(queries), rows):
        q = queries[a: a + rows].astype(np.float32, copy=False)
        best = np.full((len(q), k), -np.inf, dtype=np.float32)
        for c in range(0, len(keys), cols):
            block = np.concatenate([best, q @ keys[c: c + cols].T], axis=1)
            best = np.partition(block, block.shape[1] - k, axis=1)[:, -k:]
        out[a: a + rows] = best.astype(np.float64).mean(axis=1)
    return out


class EmbeddingSimilarity(Scorer):
    """Cosine similarity of pool embeddings to each target (one column per target); higher is
    closer. O(N·M·D) for max/topk (exact search), O((N+M)·D) for centroid."""

    name = "embedding_similarity"
    Params = EmbeddingSimilarityParams
    model_kinds = ("embedding", "masked-lm", "causal-lm")
    needs_targets = True
    output = Shape.MATRIX
    higher_is_better = True
    per_row = True  # a row's similarity needs its own embedding and the targets' only: may be `lazy`

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [FeatureRequest.of("embedding", data, pooling=self.params.pooling, normalize=True)
                for data in ["pool", *targets]]

    def run(self, ctx: ScoreContext) -> Score:
        features = store(ctx, self.name)
        pool = features.get("embedding", "pool", pooling=self.params.pooling, normalize=True)
        names = tuple(ctx.targets)
        columns = []
        for target in names:
            emb = features.get("embedding", target, pooling=self.params.pooling, normalize=True)
            if self.params.aggregate == "centroid":
                centroid = emb.astype(np.float64).mean(axis=0)
                centroid /= max(np.linalg.norm(centroid), 1e-12)
                columns.append(pool.astype(np.float64) @ centroid)
            else:
                k = 1 if self.params.aggregate == "max" else self.params.k
                columns.append(topk_mean(pool, emb, k, self.params.memory_mb, self.params.backend))
        values = np.stack(columns, axis=1) if columns else np.zeros((len(pool), 0))
        return Score(values=values, shape=Shape.MATRIX, higher_is_better=True, columns=names, tasks=names)


@hookimpl
def register_scorers(register):
    register(EmbeddingSimilarity)
