"""Cluster-diverse selection (Diversify and Conquer, kMQ; Yu et al., arXiv 2409.11378).

k-means on the candidates' features, a quota per cluster, and within each cluster a sample
(by quality when a quality score is named). Reference: `for-ai/iterative-data-selection`
(`methods/deita/kmeansrandom.py`). Deviations: quotas are proportional to cluster size by default
(the reference gives every cluster `floor(b/K)`; `allocation: uniform` restores that), every non-empty
cluster gets one example first when the budget allows, and the shortfall of clusters smaller than their
quota is shared among the others (`redistribute: false` drops it, as the reference does).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import (
    KMeansParams,
    SelectContext,
    Selection,
    Selector,
    SelectorParams,
    Shape,
    allocate,
    cluster_members,
    features_of,
    gumbel_top,
    hookimpl,
    kmeans,
    lazy_import,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class KMeansDiverseParams(SelectorParams):
    k: int = Field(1024, ge=1, description="k-means clusters (capped at the number of candidates)")
    allocation: Literal["proportional", "uniform"] = Field(
        "proportional", description="per-cluster quota: proportional to cluster size, or equal (kMQ code)")
    cover: bool = Field(True, description="give every non-empty cluster one example first when the budget allows")
    redistribute: bool = Field(True, description="share the quota small clusters cannot fill among the others")
    quality: str | None = Field(None, description="a vector score to sample by within each cluster (else uniform)")
    temperature: float = Field(1.0, ge=0, description="within-cluster p ∝ exp(quality / temperature); 0: top quality")
    l2_normalize: bool = Field(True, description="cluster unit-length features (cosine geometry)")
    kmeans: KMeansParams = Field(default_factory=KMeansParams)


class KMeansDiverse(Selector):
    """k-means clusters of the features, quotas per cluster, quality- or uniform sampling within.
    The order puts each cluster's first pick first, then interleaves clusters in proportion to their quotas,
    so any prefix (a token budget, a later stage) stays diverse.
    Scales as k-means (O(N·k·D·niter), faiss from `kmeans.faiss_min_points`) plus O(N log N); no N×N matrix."""

    name = "kmeans_diverse"
    extras = ("cluster",)
    version = "2"
    Params = KMeansDiverseParams
    accepts = frozenset({Shape.FEATURES})
    score_params = {"quality": frozenset({Shape.VECTOR})}

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        x = features_of(ctx, p.l2_normalize, self.name)
        labels, _ = kmeans(x, p.k, ctx.rng("kmeans"), p.kmeans)
        sizes = np.bincount(labels, minlength=labels.max() + 1)
        budget = p.budget.max_count(len(ctx.candidates)) if p.budget is not None else len(ctx.candidates)
        quota = cluster_quotas(sizes, budget, p.allocation, p.cover, p.redistribute, ctx.rng("clusters"))
        quality = None
        if p.quality is not None:
            quality = ctx.scores[p.quality].oriented()[ctx.candidates].astype(np.float64)
            quality = np.where(np.isnan(quality), -np.inf, quality)
        picks, keys = [], []
        groups = cluster_members(labels, len(sizes))
        for c in np.flatnonzero(quota):
            members = groups[c]
            chosen = members[_within(quality, members, int(quota[c]), p.temperature, ctx.rng("cluster", str(c)))]
            picks.append(chosen)
            rank = np.arange(len(chosen))
            key = rank.astype(np.float64) if p.allocation == "uniform" else (rank + 0.5) / quota[c]
            if p.cover:
                key[0] = -1.0  # every cluster's first pick leads, so short prefixes cover too
            keys.append(key)
        if not picks:
            return Selection(indices=np.empty(0, dtype=np.int64))
        chosen, key = np.concatenate(picks), np.concatenate(keys)
        order = ctx.candidates[chosen[np.argsort(key, kind="stable")]]
        diagnostics = {"clusters": int((sizes > 0).sum()), "covered": int((quota > 0).sum())}
        if len(sizes) <= 1024:  # per-cluster detail only while it stays readable in the manifest
            diagnostics.update(quota=quota.tolist(), sizes=sizes.tolist())
        return Selection(indices=ctx.take(order, p.budget), diagnostics=diagnostics)


def cluster_quotas(sizes: np.ndarray, budget: int, allocation: str, cover: bool, redistribute: bool,
                   rng: np.random.Generator) -> np.ndarray:
    """Per-cluster counts summing to the budget (or to the capacity left without redistribution).

    With `cover` and a budget of at least the number of non-empty clusters, each gets one first and
    the rest is allocated; with a smaller budget, `budget` clusters are drawn (∝ size when proportional).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    weights = (sizes if allocation == "proportional" else (sizes > 0)).astype(np.float64)
    nonempty = int((sizes > 0).sum())
    if budget < nonempty:
        logits = np.where(sizes > 0, np.log(np.maximum(weights, 1e-300)), -np.inf)
        quota = np.zeros(len(sizes), dtype=np.int64)
        quota[gumbel_top(logits, budget, rng)] = 1
        return quota
    base = (sizes > 0).astype(np.int64) if cover else np.zeros(len(sizes), dtype=np.int64)
    tiebreak = rng.permutation(len(sizes))  # equal shares: the extra units go to random clusters, not low ids
    return base + allocate(sizes - base, budget - int(base.sum()), weights, redistribute, tiebreak)


def _within(quality: np.ndarray | None, members: np.ndarray, q: int, temperature: float,
            rng: np.random.Generator) -> np.ndarray:
    """Positions within `members`: q of them, best first (kMQ: p ∝ softmax(quality / T))."""
    if quality is None:
        return rng.permutation(len(members))[:q]
    values = quality[members]
    if temperature == 0:
        return np.argsort(-values, kind="stable")[:q]
    return gumbel_top(values / temperature, q, rng)


@hookimpl
def register_selectors(register):
    register(KMeansDiverse)
