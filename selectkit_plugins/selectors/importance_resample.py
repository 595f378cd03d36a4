"""Importance resampling: sample without replacement with probability ∝ exp(score / temperature).

The DSIR resampling step (Xie et al., 2023) as a generic selector, via Gumbel top-k: the top k of
score/temperature + Gumbel(0, 1) is a sample of k without replacement ∝ exp(score/temperature).
Unlike the reference package, the noise comes from the recipe seed, never the global RNG, and each
row's noise is a hash of (seed, stage, row id): the sample is the same however the pool is ordered or split.
"""

from __future__ import annotations

from pydantic import Field

from selectkit.plugin import (
    RecipeError,
    SelectContext,
    Selection,
    Selector,
    SelectorParams,
    Shape,
    hookimpl,
    lazy_import,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class ImportanceResampleParams(SelectorParams):
    temperature: float = Field(1.0, gt=0, description="divides the score (a log weight) before sampling; "
                               "lower is greedier, higher is closer to uniform")
    deterministic: bool = Field(False, description="plain top-k by score instead of sampling (DSIR's top_k=True)")


class ImportanceResample(Selector):
    """Sample the budget without replacement ∝ exp(score/temperature) (Gumbel top-k), seeded by
    the recipe. Candidates with a NaN or -inf score are never taken. O(N log N) time, O(N) memory."""

    name = "importance_resample"
    version = "2"
    Params = ImportanceResampleParams
    accepts = frozenset({Shape.VECTOR})
    budget_rule = "required"

    def run(self, ctx: SelectContext) -> Selection:
        if self.params.budget is None:
            raise RecipeError(f"stage {ctx.stage!r}: importance_resample needs a budget")
        candidates = np.asarray(ctx.candidates)
        values = ctx.score.oriented().astype(np.float64)[candidates]
        usable = ~np.isnan(values) & (values > -np.inf)
        keys = values / self.params.temperature
        if not self.params.deterministic:
            keys = keys + ctx.gumbel("gumbel")  # per-row noise keyed by row id: partition-independent
        keys = np.where(usable, keys, -np.inf)
        order = ctx.best_first(keys)
        order = candidates[order[: int(usable.sum())]]
        chosen = ctx.take(order, self.params.budget)
        return Selection(indices=chosen, diagnostics={"unscorable": int((~usable).sum())})


@hookimpl
def register_selectors(register):
    register(ImportanceResample)
