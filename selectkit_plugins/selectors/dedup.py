"""Near-duplicate removal by cosine distance on features (after SMART filtering's "similar examples" step;
Gupta et al., NAACL 2025).

Candidates are visited best-first (by the `prefer` score, else pool order); one is dropped when an already
kept candidate lies within `threshold` cosine distance, so each near-duplicate group keeps its best member
and chains (a~b~c with a, c far apart) do not collapse. Deviations from the SMART code: it removes a random
half of each group and picks the threshold from a KDE of neighbour distances; here the threshold is given and
the best (or first) member is kept, which is deterministic. No budget: this stage only narrows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import (
    SelectContext,
    Selection,
    Selector,
    SelectorParams,
    Shape,
    features_of,
    has_faiss,
    hookimpl,
    lazy_import,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class DedupParams(SelectorParams):
    prefer: str | None = Field(None, description="vector score: keep the best-scored member of each group "
                                                 "(default: the first in pool order)")
    threshold: float = Field(0.05, ge=0, le=2, description="cosine distance (1 - cos) at or below which two "
                                                         "candidates are near-duplicates")
    max_neighbors: int = Field(100, ge=1, description="near neighbours examined per candidate (SMART: 100)")
    backend: Literal["auto", "faiss", "numpy"] = Field("auto", description="neighbour search; auto: faiss "
                                                                           "when installed")
    max_block: int = Field(1 << 24, ge=1, description="numpy backend: most similarity entries held at once "
                                                      "(rows per block = max_block // N)")


class Dedup(Selector):
    """Drop candidates within `threshold` cosine distance of a better (or earlier) kept one.
    Neighbour search is exact k-NN: O(N²·D) time, O(N·max_neighbors) memory; the numpy backend computes
    similarities in row blocks of at most `max_block` entries, never an N×N matrix."""

    name = "dedup"
    Params = DedupParams
    accepts = frozenset({Shape.FEATURES})
    score_params = {"prefer": frozenset({Shape.VECTOR})}
    budget_rule = "none"

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        x = features_of(ctx, True, self.name)
        n = len(x)
        if p.prefer is not None:
            v = ctx.scores[p.prefer].oriented()[ctx.candidates].astype(np.float64)
            order = np.argsort(-np.where(np.isnan(v), -np.inf, v), kind="stable")
        else:
            order = np.arange(n)
        use_faiss = p.backend == "faiss" or (p.backend == "auto" and has_faiss())
        indptr, nbrs = near_pairs(x, p.threshold, p.max_neighbors, use_faiss, p.max_block)
        kept = np.zeros(n, dtype=bool)
        absorbed = np.zeros(n, dtype=np.int64)
        for i in order:
            near = nbrs[indptr[i]:indptr[i + 1]]
            hit = near[kept[near]]
            if len(hit):
                absorbed[hit[0]] += 1
            else:
                kept[i] = True
        keep = order[kept[order]]
        diagnostics = {"removed": int(n - len(keep)), "groups": int((absorbed > 0).sum()),
                       "threshold": p.threshold, "backend": "faiss" if use_faiss else "numpy"}
        return Selection(indices=ctx.candidates[keep], diagnostics=diagnostics)


def near_pairs(x: np.ndarray, threshold: float, k: int, use_faiss: bool, max_block: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric near-duplicate graph in CSR form (indptr, neighbours) over unit rows of `x`:
    each row's up-to-k nearest others with cosine distance <= threshold."""
    n = len(x)
    k = min(k + 1, n)  # +1: a row finds itself
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, idx = index.search(x, k)
    else:
        sims = np.empty((n, k), dtype=np.float32)
        idx = np.empty((n, k), dtype=np.int64)
        rows = max(1, max_block // max(n, 1))
        for start in range(0, n, rows):
            block = x[start:start + rows] @ x.T
            top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(block), 1))
            idx[start:start + rows] = top
            sims[start:start + rows] = np.take_along_axis(block, top, axis=1)
    src = np.repeat(np.arange(n), k)
    dst = idx.reshape(-1)
    ok = (dst >= 0) & (dst != src) & (1.0 - sims.reshape(-1) <= threshold + 1e-6)
    src, dst = src[ok], dst[ok]
    pairs = np.unique(np.concatenate([np.stack([src, dst], 1), np.stack([dst, src], 1)]), axis=0)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, pairs[:, 0] + 1, 1)
    return np.cumsum(indptr), pairs[:, 1]


@hookimpl
def register_selectors(register):
    register(Dedup)
