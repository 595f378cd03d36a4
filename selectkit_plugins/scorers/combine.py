"""One score from several: a weighted sum of (normalized) scores, or reciprocal-rank fusion.

    scores:
      mix:
        use: combine
        with: {scores: {quality: 1.0, sim: 0.5}, method: weighted_sum}

`weighted_sum`: sum_s w_s * x_s over the oriented inputs (higher is better for each, whatever the
input's own convention), so give inputs a common scale first (`normalize: [zscore]` or `[rank]`).
`rrf` (Cormack et al. 2009): sum_s w_s / (k + rank_s), rank 1 = best of input s, ties broken by
row key; scale-free. A row with NaN in any input gets NaN (never selected), counted in a warning.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from selectkit.plugin import Params, Score, ScoreContext, Scorer, hookimpl, lazy_import, row_keys

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class CombineParams(Params):
    scores: dict[str, float] = Field(description="the vector scores to combine and the weight of each")
    method: Literal["weighted_sum", "rrf"] = Field(
        "weighted_sum", description="weighted_sum of the oriented values, or reciprocal-rank fusion")
    rrf_k: float = Field(60.0, gt=0, description="rrf: the constant k in 1 / (k + rank) (Cormack et al.: 60)")

    @field_validator("scores")
    @classmethod
    def _some(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("name at least one score to combine")
        return value


class Combine(Scorer):
    """A weighted sum of oriented scores, or reciprocal-rank fusion of them; higher is better."""

    name = "combine"
    Params = CombineParams

    def input_scores(self) -> list[str]:
        return list(self.params.scores)

    def input_path(self, ref: str) -> tuple:
        return ("scores", ref)

    def run(self, ctx: ScoreContext) -> Score:

        n = len(ctx.pool)
        total = np.zeros(n)
        for name, weight in self.params.scores.items():
            values = np.asarray(ctx.scores[name].oriented(), dtype=np.float64)
            if self.params.method == "weighted_sum":
                total += weight * values
                continue
            keys = ctx.pool.keys if hasattr(ctx.pool, "keys") and ctx.pool.keys is not None else row_keys(ctx.pool.ids)
            order = np.lexsort((keys, -np.where(np.isnan(values), -np.inf, values)))
            rank = np.empty(n)
            rank[order] = np.arange(1, n + 1)
            total += np.where(np.isnan(values), np.nan, weight / (self.params.rrf_k + rank))
        return Score(values=total, higher_is_better=True)


@hookimpl
def register_scorers(register):
    register(Combine)
