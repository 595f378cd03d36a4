"""The basic normalizers: zscore, minmax, rank, clip and sign_flip.

Each keeps the score's shape; a matrix is normalized per column over the pool rows (`axis: pool`)
or over all entries (`axis: all`), optionally within groups of a pool column (`group_by`), so
BIDS-style per-task normalization of a vector is `zscore` with `group_by: task`. All are O(N·C)
time; rank is O(N log N) per column. NaN follows the explicit `nan` policy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from selectkit.plugin import NormalizeContext, Normalizer, Params, Score, Shape, hookimpl, lazy_import
from selectkit_plugins.lib.columns import rank_fraction
from selectkit_plugins.normalizers._common import ColumnParams, centered, transform_columns

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

MATRIX_OR_VECTOR = frozenset({Shape.VECTOR, Shape.MATRIX})


class ZScoreParams(ColumnParams):
    eps: float = Field(1e-12, ge=0, description="added to the standard deviation; a constant column maps to 0")


class ZScore(Normalizer):
    """(x - mean) / (std + eps), std with ddof=0: puts scores of different scale on one footing."""

    name = "zscore"
    Params = ZScoreParams
    accepts = MATRIX_OR_VECTOR

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        eps = self.params.eps

        def fn(block: np.ndarray) -> np.ndarray:
            deviation, std = centered(block)
            return deviation / (std + eps)

        return transform_columns(score, ctx, self.params, self.name, fn)


class MinMaxParams(ColumnParams):
    constant_value: float = Field(0.0, description="what a constant column (max == min) maps to")


class MinMax(Normalizer):
    """(x - min) / (max - min) into [0, 1]; monotone, so the order is unchanged."""

    name = "minmax"
    Params = MinMaxParams
    accepts = MATRIX_OR_VECTOR

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        constant = self.params.constant_value

        def fn(block: np.ndarray) -> np.ndarray:
            low, high = np.fmin.reduce(block, axis=0), np.fmax.reduce(block, axis=0)
            span = high - low
            with np.errstate(invalid="ignore", divide="ignore"):
                scaled = (block - low) / np.where(span > 0, span, 1.0)
            return np.where((span > 0) | np.isnan(block), scaled, constant)

        return transform_columns(score, ctx, self.params, self.name, fn)


class RankParams(ColumnParams):
    method: Literal["average", "min", "max", "dense", "ordinal"] = Field(
        "average", description="how ties are ranked (as scipy.stats.rankdata)")


class Rank(Normalizer):
    """rank / n in (0, 1] (ascending in the raw value, as scipy's rankdata): invariant to any
    strictly increasing transform, the robust ground for fusing scores. NaN ranks stay NaN."""

    name = "rank"
    Params = RankParams
    accepts = MATRIX_OR_VECTOR

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        method = self.params.method

        def fn(block: np.ndarray) -> np.ndarray:
            return np.stack([rank_fraction(block[:, j], method) for j in range(block.shape[1])], axis=1)

        return transform_columns(score, ctx, self.params, self.name, fn)


class ClipParams(ColumnParams):
    lower: float | None = Field(None, description="lower bound (a quantile in [0, 1] when `quantile` is true)")
    upper: float | None = Field(None, description="upper bound (a quantile in [0, 1] when `quantile` is true)")
    quantile: bool = Field(False, description="bounds are quantiles of each column (winsorizing)")

    @model_validator(mode="after")
    def _bounds(self):
        if self.lower is None and self.upper is None:
            raise ValueError("clip needs `lower`, `upper` or both")
        if self.quantile and any(b is not None and not 0 <= b <= 1 for b in (self.lower, self.upper)):
            raise ValueError("with quantile: true, lower and upper must lie in [0, 1]")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError("clip lower bound is above the upper bound")
        return self


class Clip(Normalizer):
    """Clip to absolute bounds or to per-column quantiles (winsorize), e.g. before softmax or
    zscore. Quantile bounds are order statistics (numpy's 'lower'/'higher' methods), so clipping
    twice changes nothing (idempotent)."""

    name = "clip"
    Params = ClipParams
    accepts = MATRIX_OR_VECTOR

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        p = self.params

        def bound(block: np.ndarray, value: float | None, method: str) -> np.ndarray | None:
            if value is None:
                return None
            if not p.quantile:
                return np.full(block.shape[1], value)
            out = np.full(block.shape[1], np.nan)
            for j in range(block.shape[1]):
                col = block[:, j][~np.isnan(block[:, j])]
                if len(col):
                    out[j] = np.quantile(col, value, method=method)
            return out

        def fn(block: np.ndarray) -> np.ndarray:
            low, high = bound(block, p.lower, "lower"), bound(block, p.upper, "higher")
            out = block if low is None else np.where(block < low, low, block)
            return out if high is None else np.where(out > high, high, out)

        return transform_columns(score, ctx, p, self.name, fn)


class SignFlip(Normalizer):
    """x -> -x AND flip `higher_is_better`: the oriented order is unchanged, but the score now reads
    higher-is-better, which is what a combiner adding scores needs (e.g. perplexity, MATES' oracle
    loss, pass rate). The only normalizer that changes orientation; an involution."""

    name = "sign_flip"
    Params = Params
    accepts = MATRIX_OR_VECTOR

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        return score.with_values(-np.asarray(score.values, dtype=np.float64),
                                 higher_is_better=not score.higher_is_better)


@hookimpl
def register_normalizers(register):
    for cls in (ZScore, MinMax, Rank, Clip, SignFlip):
        register(cls)
