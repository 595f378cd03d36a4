"""robust_zscore: (x - median) / (1.4826 · MAD), a z-score that a few outliers cannot move (spec §9)."""

from __future__ import annotations

import warnings

from pydantic import Field

from selectkit.plugin import NormalizeContext, Normalizer, Score, Shape, hookimpl, lazy_import
from selectkit_plugins.normalizers._common import ColumnParams, transform_columns

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal sample estimates 0.6745 sigma
MEANAD_TO_SIGMA = 1.2533  # sqrt(pi / 2): the mean absolute deviation of a normal is 0.798 sigma


class RobustZScoreParams(ColumnParams):
    eps: float = Field(1e-12, ge=0, description="added to the scale; a constant column maps to 0")


class RobustZScore(Normalizer):
    """Median/MAD standardisation for outlier-heavy scores. When more than half of a column is one
    value (MAD = 0) the scale falls back to 1.2533 · mean absolute deviation from the median, so
    the few differing entries still get finite, ordered values. O(N·C) per column (median by
    partition)."""

    name = "robust_zscore"
    Params = RobustZScoreParams
    accepts = frozenset({Shape.VECTOR, Shape.MATRIX})

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        eps = self.params.eps

        def fn(block: np.ndarray) -> np.ndarray:
            with warnings.catch_warnings():  # all-NaN columns stay NaN, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(block, axis=0)
                dev = np.abs(block - median)
                scale = MAD_TO_SIGMA * np.nanmedian(dev, axis=0)
                scale = np.where(scale > 0, scale, MEANAD_TO_SIGMA * np.nanmean(dev, axis=0))
            return (block - median) / (scale + eps)

        return transform_columns(score, ctx, self.params, self.name, fn)


@hookimpl
def register_normalizers(register):
    register(RobustZScore)
