"""Keep candidates whose score lies inside bounds (absolute values or pool quantiles)."""

from __future__ import annotations

from pydantic import Field, model_validator

from selectkit.plugin import SelectContext, Selection, Selector, SelectorParams, hookimpl, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class ThresholdParams(SelectorParams):
    min: float | None = Field(None, description="keep scores >= min (raw score values)")
    max: float | None = Field(None, description="keep scores <= max (raw score values)")
    min_quantile: float | None = Field(None, ge=0, le=1, description="keep scores >= this quantile of the candidates")
    max_quantile: float | None = Field(None, ge=0, le=1, description="keep scores <= this quantile of the candidates")

    @model_validator(mode="after")
    def _some_bound(self):
        if all(v is None for v in (self.min, self.max, self.min_quantile, self.max_quantile)):
            raise ValueError("threshold needs at least one of min, max, min_quantile, max_quantile")
        return self


class Threshold(Selector):
    """Filter by raw score bounds; quantiles are taken over the current candidates. NaN scores
    are dropped. Keeps the candidates' order. O(N)."""

    name = "threshold"
    Params = ThresholdParams
    budget_rule = "optional"

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        values = ctx.score.values[ctx.candidates].astype(np.float64)
        keep = ~np.isnan(values)
        valid = values[keep]
        bounds_low = [b for b in (p.min, _quantile(valid, p.min_quantile)) if b is not None]
        bounds_high = [b for b in (p.max, _quantile(valid, p.max_quantile)) if b is not None]
        for low in bounds_low:
            keep &= values >= low
        for high in bounds_high:
            keep &= values <= high
        kept = ctx.candidates[keep]
        if p.budget is not None:
            order = kept[np.argsort(-ctx.score.oriented()[kept], kind="stable")]  # ties: candidate (key) order
            kept = np.sort(ctx.take(order, p.budget))
        cutoff = {"low": max(bounds_low) if bounds_low else None, "high": min(bounds_high) if bounds_high else None}
        return Selection(indices=kept, diagnostics={"cutoff": cutoff, "nan": int(np.isnan(values).sum())})


def _quantile(values: np.ndarray, q: float | None) -> float | None:
    if q is None or len(values) == 0:
        return None
    return float(np.quantile(values, q))


@hookimpl
def register_selectors(register):
    register(Threshold)
