"""Nearest neighbours over the gradient store: which pool rows most influence one target example,
without scoring every pool row against it (issue 21, part 4).

The score is LESS's (or grad-cos TracIn's) sum over checkpoints c of w_c cos(f_c(z), g_c(z')),
which is one inner product of concatenated vectors: [sqrt(w_c) f_c(z)/|f_c(z)|]_c with
[sqrt(w_c) g_c(z')/|g_c(z')|]_c. Those are C x k wide (32,768 at LESS's 4 x 8192), too wide to
index whole, so the index holds a sparse JL sketch of them (`sketch_dim`, default 1024; inner
products are preserved in expectation, as for the store's own projection) in faiss: exact
(IndexFlatIP) for small pools, IVF-PQ (64 bytes a row) once the pool is large enough to train one.
A search asks the index for `candidates` rows and re-ranks them by their exact scores, read from
the store's memory-mapped shards, so the answer's scores are exact and only its recall is
approximate (benchmarks/bench_influence_index.py measures recall@k against the exact product).

Memory: the index is built shard by shard (rows are sketched a block at a time); it holds
sketch_dim x 4 bytes a row when flat, 64 bytes a row as IVF-PQ (17 MB at LESS's 270k rows).

It lives in `results` (it began in the built-in plugins' influence library) because what it serves is
`selectkit explain --influence` on a finished run (selectkit.results.influence); it reads the gradient
store (selectkit.storage.gradient_store) and sketches with the core's seeded projections
(selectkit.contract.projection). numpy, torch and faiss are imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selectkit.contract.lazy import lazy_import
from selectkit.errors import MissingExtraError
from selectkit.storage.gradient_store import aligned_blocks, row_blocks, unit_rows

np = lazy_import("numpy")

FLAT_BELOW = 20_000  # rows: below this an exact flat index over the sketch (IVF-PQ needs ~40 rows a centroid)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingExtraError("faiss", "faiss", "influence neighbours") from None
    return faiss


class InfluenceIndex:
    """An approximate nearest-neighbour index over one data source's gradient features at every
    checkpoint (`train`: one StoredFeatures or array per checkpoint), for the checkpoint weights
    `weights` (LESS: lr_c / sum lr)."""

    def __init__(self, train: Sequence[Any], weights: Sequence[float], *, sketch_dim: int = 1024, seed: int = 0,
                 nlist: int | None = None, pq_bytes: int = 64, flat_below: int = FLAT_BELOW, cosine: bool = True,
                 saved: Any = None):
        from selectkit.contract.projection import SparseProjector

        if len(train) != len(weights) or not train:
            raise ValueError(f"need one feature set per checkpoint weight: {len(train)} and {len(weights)}")
        self.train, self.weights, self.cosine = list(train), np.asarray(weights, np.float64), cosine
        self.rows, dim = len(train[0]), int(np.shape(train[0])[1])
        self.sketch = SparseProjector(dim * len(train), sketch_dim, seed=seed, label="neighbours")
        faiss = _faiss()
        if saved is not None:  # an index built before (`to_bytes`) over these same rows and settings
            self.index = faiss.deserialize_index(np.asarray(saved, np.uint8))
            if self.index.ntotal != self.rows or self.index.d != sketch_dim:
                raise ValueError(f"a saved index of {self.index.ntotal} rows x {self.index.d} for {self.rows} "
                                 f"rows x {sketch_dim}")
            return
        if self.rows < flat_below:
            self.index = faiss.IndexFlatIP(sketch_dim)
        else:
            nlist = nlist or int(min(4096, max(16, 4 * np.sqrt(self.rows))))
            quantizer = faiss.IndexFlatIP(sketch_dim)
            self.index = faiss.IndexIVFPQ(quantizer, sketch_dim, nlist, pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
            self.index.pq.cp.niter = 10  # product-quantizer k-means: candidates are re-ranked exactly anyway
            self.index.train(self._training_sample(seed, max(nlist * 40, 256 * 32)))
            self.index.nprobe = max(1, nlist // 16)
        for _, _, vectors in self._sketched_blocks():
            self.index.add(vectors)

    def to_bytes(self) -> Any:
        """The built faiss index as a uint8 array (to cache it; `saved=` restores it)."""
        return np.asarray(_faiss().serialize_index(self.index), np.uint8)

    def _rows_of(self, x: Any, dtype: Any = None) -> Any:
        """Rows as the score sees them: unit rows (cosine) or as stored (inner product)."""
        return unit_rows(x, dtype) if self.cosine else np.asarray(x, dtype or np.float64)

    def _joined(self, per_checkpoint: Sequence[Any]) -> Any:
        """Rows of every checkpoint as the score sees them, scaled by sqrt(w_c), side by side; a row without a
        gradient (NaN) is indexed as zeros (its exact score stays NaN and ranks last)."""
        return np.nan_to_num(np.concatenate([self._rows_of(x, np.float32) * np.float32(np.sqrt(w))
                                             for x, w in zip(per_checkpoint, self.weights)], axis=1), nan=0.0)

    def _sketch(self, joined: Any) -> Any:
        import torch

        return self.sketch(torch.from_numpy(np.ascontiguousarray(joined, np.float32))).numpy()

    def _sketched_blocks(self):
        for blocks in aligned_blocks(self.train):
            lo, hi = blocks[0][0], blocks[0][1]
            yield lo, hi, np.ascontiguousarray(self._sketch(self._joined([b for _, _, b in blocks])), np.float32)

    def _training_sample(self, seed: int, count: int) -> Any:
        """A keyed sample of sketched rows to train the coarse quantizer and the product quantizer on."""
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(self.rows, size=min(count, self.rows), replace=False))
        parts = []
        for lo, hi, vectors in self._sketched_blocks():
            inside = keep[(keep >= lo) & (keep < hi)] - lo
            parts.append(vectors[inside])
        return np.ascontiguousarray(np.concatenate(parts), np.float32)

    def exact_scores(self, rows: Any, queries: Sequence[Any]) -> Any:
        """The exact scores (len(rows), M) of pool rows `rows` against `queries` (one (M, D) array a checkpoint)."""
        rows = np.asarray(rows, np.int64)
        out = np.zeros((len(rows), len(queries[0])))
        order = np.argsort(rows, kind="stable")
        for x, y, w in zip(self.train, queries, self.weights):
            picked = _rows(x, rows[order])
            part = np.empty_like(out)
            part[order] = self._rows_of(picked) @ self._rows_of(y).T
            out += w * part
        return out

    def search(self, queries: Sequence[Any], k: int = 10, *, candidates: int | None = None) -> tuple[Any, Any]:
        """The `k` pool rows with the highest exact score for each query row: (scores (M, k), rows (M, k)),
        best first. `queries`: one (M, D) array per checkpoint, the target features."""
        k = min(k, self.rows)
        candidates = min(self.rows, candidates or max(4 * k, 100))
        _, found = self.index.search(np.ascontiguousarray(self._sketch(self._joined(queries)), np.float32),
                                     candidates)
        union = np.unique(found[found >= 0])
        exact = self.exact_scores(union, queries)  # every candidate row read once, for all queries
        scores, rows = np.zeros((len(found), k)), np.zeros((len(found), k), np.int64)
        for j, ids in enumerate(found):
            ids = ids[ids >= 0]
            mine = exact[np.searchsorted(union, ids), j]
            best = np.lexsort((ids, -np.nan_to_num(mine, nan=-np.inf)))[:k]
            scores[j, :len(best)], rows[j, :len(best)] = mine[best], ids[best]
        return scores, rows


def _rows(features: Any, rows: Any) -> Any:
    """Rows `rows` (sorted) of stored or in-memory features, reading only the rows asked for."""
    if hasattr(features, "take"):
        return features.take(rows)
    out = np.zeros((len(rows), int(np.shape(features)[1])), np.float32)
    for lo, hi, block in row_blocks(features):
        at = np.nonzero((rows >= lo) & (rows < hi))[0]
        if len(at):
            out[at] = block[rows[at] - lo]
    return out


def exact_top_k(train: Sequence[Any], queries: Sequence[Any], weights: Sequence[float], k: int, *,
                cosine: bool = True) -> tuple[Any, Any]:
    """The reference: every pool row scored against every query, streamed by row block, the top `k`
    kept (ties broken by row number; rows without a gradient last): (scores (M, k), rows (M, k))."""
    m = len(queries[0])
    best_s, best_r = np.full((m, 0), -np.inf), np.zeros((m, 0), np.int64)
    rows_of = unit_rows if cosine else (lambda a: np.asarray(a, np.float64))
    ys = [rows_of(y) for y in queries]
    for blocks in aligned_blocks(train):
        lo, hi = blocks[0][0], blocks[0][1]
        acc = np.zeros((hi - lo, m))
        for (_, _, x), y, w in zip(blocks, ys, weights):
            acc += w * (rows_of(x) @ y.T)
        s = np.concatenate([best_s, np.nan_to_num(acc.T, nan=-np.inf)], axis=1)
        r = np.concatenate([best_r, np.broadcast_to(np.arange(lo, hi), (m, hi - lo))], axis=1)
        order = np.lexsort((r, -s), axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    return best_s, best_r
