"""log: log(x + eps), for positive scores best compared on a log scale (DSIR importance weights)."""

from __future__ import annotations

from pydantic import Field

from selectkit.plugin import DataError, NormalizeContext, Normalizer, Score, Shape, hookimpl, lazy_import
from selectkit_plugins.normalizers._common import NanParams, as_matrix, check_nan, fill_nan

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class LogParams(NanParams):
    eps: float = Field(0.0, ge=0, description="added before the log; x + eps must be positive")


class Log(Normalizer):
    """Natural log of x + eps. Monotone, so orientation and order are unchanged. Values with
    x + eps <= 0 are an error naming how many there are (not a silent NaN). O(N·C)."""

    name = "log"
    Params = LogParams
    accepts = frozenset({Shape.VECTOR, Shape.MATRIX})

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        p = self.params
        values = as_matrix(score)
        check_nan(values, p.nan, self.name)
        values = fill_nan(values, p.nan, score.higher_is_better) + p.eps
        bad = int((values <= 0).sum())
        if bad:
            raise DataError(f"log: {bad} value(s) have x + eps <= 0 (smallest {np.nanmin(values) - p.eps:.4g}); "
                            "raise `eps`, or use rank / minmax for scores that can be negative")
        return score.with_values(np.log(values).reshape(np.shape(score.values)))


@hookimpl
def register_normalizers(register):
    register(Log)
