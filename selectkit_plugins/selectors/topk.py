"""Greedy top-k on one score, with deterministic tie-breaking and optional per-group caps."""

from __future__ import annotations

from pydantic import Field

from selectkit.plugin import SelectContext, Selection, Selector, SelectorParams, Shape, hookimpl, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


def best_first(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidates ordered by value, highest first; ties keep candidate order (row-key order), NaN last."""
    v = values[candidates]
    np.negative(v, out=v)  # one temporary (pools of 10M rows: each copy is 80 MB)
    v[np.isnan(v)] = np.inf
    return candidates[np.argsort(v, kind="stable")]


class TopKParams(SelectorParams):
    prefer: str = Field("best", pattern="^(best|worst)$",
                        description="best: highest oriented score first; worst: the opposite (e.g. hardest examples)")
    group_by: str | None = Field(None, description="pool column whose groups are capped by `max_group_fraction`")
    max_group_fraction: float | None = Field(None, gt=0, le=1,
                                             description="at most this share of the selection from one group")


class TopK(Selector):
    """Keep the highest-scoring candidates. Ties break by row key (stable over the candidates' order),
    so results are deterministic and independent of row order. O(N log N) time, O(N) memory."""

    name = "topk"
    Params = TopKParams
    accepts = frozenset({Shape.VECTOR})

    def run(self, ctx: SelectContext) -> Selection:
        values = np.asarray(ctx.score.values, dtype=np.float64)
        if ctx.score.higher_is_better == (self.params.prefer == "worst"):
            values = -values
        order = best_first(values, ctx.candidates)
        if self.params.max_group_fraction is not None:
            order = _cap_groups(order, ctx, self.params)
        kept = ctx.take(order, self.params.budget)
        return Selection(indices=kept, diagnostics={"cutoff": _cutoff(ctx, kept, self.params.prefer)})


def _cutoff(ctx: SelectContext, kept: np.ndarray, prefer: str) -> dict:
    """The last kept value, in the score's own units: kept rows lie on its `low` side or `high` side."""
    raw = np.asarray(ctx.score.values, dtype=np.float64)[kept]
    raw = raw[~np.isnan(raw)]
    if not len(raw):
        return {"low": None, "high": None}
    high_side = ctx.score.higher_is_better != (prefer == "worst")  # kept are the high values
    return {"low": float(raw.min()), "high": None} if high_side else {"low": None, "high": float(raw.max())}


def _cap_groups(order: np.ndarray, ctx: SelectContext, params: TopKParams) -> np.ndarray:
    """Drop candidates from groups that already hold their share of the final selection."""
    if params.group_by is None:
        raise ValueError("max_group_fraction needs group_by")
    limit = params.budget.max_count(len(ctx.candidates)) if params.budget else len(order)
    cap = max(1, int(np.floor(params.max_group_fraction * limit)))
    groups = ctx.pool.column(params.group_by).cast(str).to_numpy()[order]
    _, inverse = np.unique(groups, return_inverse=True)
    seen = np.zeros(inverse.max() + 1, dtype=np.int64)
    keep = np.zeros(len(order), dtype=bool)
    for i, g in enumerate(inverse):
        if seen[g] < cap:
            seen[g] += 1
            keep[i] = True
    return order[keep]


@hookimpl
def register_selectors(register):
    register(TopK)
