"""stratified: the top (or bottom) fraction of every stratum, where strata are a pool column
(source, cluster) or quantile bins of a score. Learning-percentage selection (Mekala et al.,
ACL 2024) takes the lowest x% per k-means cluster this way."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from selectkit.plugin import (
    DataError,
    SelectContext,
    Selection,
    Selector,
    SelectorParams,
    Shape,
    hookimpl,
    lazy_import,
    unknown_message,
)
from selectkit_plugins.lib.columns import group_codes, rank_fraction

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class StratifiedParams(SelectorParams):
    column: str | None = Field(None, description="pool column whose values are the strata")
    bin_score: str | None = Field(None, description="score (vector) whose quantile bins are the strata")
    bins: int = Field(10, ge=1, description="number of equal-count bins of `bin_score`")
    prefer: Literal["best", "worst"] = Field(
        "best", description="best: top of each stratum by the oriented score; worst: bottom (e.g. hardest)")
    allocation: Literal["proportional", "equal"] = Field(
        "proportional", description="proportional: each stratum gets its share of the budget; equal: strata take "
        "turns, small strata's shortfall going to the others")

    @model_validator(mode="after")
    def _one_stratification(self):
        if (self.column is None) == (self.bin_score is None):
            raise ValueError("stratified needs exactly one of `column` or `bin_score`")
        return self


class Stratified(Selector):
    """Rank candidates within each stratum, then interleave the strata so any prefix of the order
    is balanced: proportional allocation orders by within-stratum quantile (r + 0.5) / n_s, so a
    budget of k keeps about k · n_s / N from each stratum (the top x% of every stratum when the
    budget is x%); equal allocation orders by within-stratum rank r. Ties keep pool order; NaN
    scores go last within their stratum; a NaN `bin_score` forms its own stratum; a null column
    value is a stratum of its own. O(N log N) time, O(N) memory."""

    name = "stratified"
    Params = StratifiedParams
    accepts = frozenset({Shape.VECTOR})
    score_params = {"bin_score": frozenset({Shape.VECTOR})}

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        cands = ctx.candidates
        values = np.asarray(ctx.score.oriented(), dtype=np.float64)[cands]
        values = -values if p.prefer == "worst" else values
        values = np.where(np.isnan(values), -np.inf, values)
        strata, labels = self._strata(ctx)
        # best-first within each stratum (stable: ties keep pool order)
        within = np.lexsort((np.arange(len(cands)), -values, strata))
        sizes = np.bincount(strata, minlength=len(labels))
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        rank = np.empty(len(cands), dtype=np.float64)
        rank[within] = np.arange(len(cands)) - starts[strata[within]]
        key = (rank + 0.5) / sizes[strata] if p.allocation == "proportional" else rank
        order = np.lexsort((strata, key))
        kept = ctx.take(cands[order], p.budget)
        per_stratum = np.bincount(strata[order[: len(kept)]], minlength=len(labels))
        diagnostics = {"strata": len(labels)}
        if len(labels) <= 100:
            diagnostics["kept_per_stratum"] = dict(zip(labels, per_stratum.tolist()))
        return Selection(indices=kept, diagnostics=diagnostics)

    def _strata(self, ctx: SelectContext) -> tuple[np.ndarray, list[str]]:
        """Stratum id per candidate and the strata's labels."""
        p = self.params
        if p.column is not None:
            columns = list(ctx.pool.columns)
            if p.column not in columns:
                raise DataError(f"stratified: {unknown_message('pool column', p.column, columns)}")
            codes, labels = group_codes(ctx.pool.column(p.column))
            used, strata = np.unique(codes[ctx.candidates], return_inverse=True)
            return strata.astype(np.int64), [labels[c] for c in used]
        if p.bin_score not in ctx.scores:
            raise DataError(f"stratified: {unknown_message('score', p.bin_score, ctx.scores)}")
        binned = np.asarray(ctx.scores[p.bin_score].values, dtype=np.float64)[ctx.candidates]
        valid = int((~np.isnan(binned)).sum())
        rank = rank_fraction(binned, "average") * valid  # 1..valid; ties share a rank, hence a bin
        strata = np.where(np.isnan(rank), p.bins, np.clip(np.floor((rank - 0.5) * p.bins / max(valid, 1)),
                                                          0, p.bins - 1)).astype(np.int64)
        used, strata = np.unique(strata, return_inverse=True)
        labels = [f"bin{int(b)}" if b < p.bins else "nan" for b in used]
        return strata.astype(np.int64), labels


@hookimpl
def register_selectors(register):
    register(Stratified)
