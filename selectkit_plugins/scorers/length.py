"""Length of each example, in characters or whitespace tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import Params, Score, ScoreContext, Scorer, hookimpl, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class LengthParams(Params):
    unit: Literal["chars", "tokens"] = Field("tokens", description="characters, or whitespace-separated tokens")


class Length(Scorer):
    """Example length (chars or whitespace tokens); higher is longer. Useful for thresholds
    and as a control score. O(total characters)."""

    name = "length"
    Params = LengthParams
    rowwise = True

    def run(self, ctx: ScoreContext) -> Score:
        if self.params.unit == "tokens":
            values = ctx.pool.token_counts.astype(np.float64)
        else:
            values = np.fromiter((len(t) for t in ctx.pool.texts), dtype=np.float64, count=len(ctx.pool))
        return Score(values=values, higher_is_better=True)


@hookimpl
def register_scorers(register):
    register(Length)
