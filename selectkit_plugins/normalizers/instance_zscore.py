"""instance_zscore (BIDS, Dai et al., arXiv 2501.12147): z-score every target column of a
pool x target matrix over the pool rows, so targets and tasks whose influence is intrinsically
larger stop dominating."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from selectkit.plugin import NormalizeContext, Normalizer, Score, Shape, hookimpl, lazy_import
from selectkit_plugins.normalizers._common import NanParams, check_nan, fill_nan

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

CHUNK_ROWS = 1 << 16


@dataclass
class ColumnMoments:
    """Per-column count, mean and sum of squared deviations over non-NaN entries, updated chunk by
    chunk and mergeable across shards (Chan et al.'s parallel variance), in float64."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, columns: int) -> ColumnMoments:
        return cls(np.zeros(columns), np.zeros(columns), np.zeros(columns))

    @classmethod
    def of(cls, chunk: np.ndarray) -> ColumnMoments:
        chunk = np.asarray(chunk, dtype=np.float64)
        valid = ~np.isnan(chunk)
        count = valid.sum(axis=0).astype(np.float64)
        mean = np.where(valid, chunk, 0.0).sum(axis=0) / np.maximum(count, 1)
        m2 = np.where(valid, (chunk - mean) ** 2, 0.0).sum(axis=0)
        return cls(count, mean, m2)

    def merge(self, other: ColumnMoments) -> ColumnMoments:
        count = self.count + other.count
        delta = other.mean - self.mean
        share = np.divide(other.count, count, out=np.zeros_like(count), where=count > 0)
        mean = self.mean + delta * share
        m2 = self.m2 + other.m2 + delta**2 * self.count * share
        return ColumnMoments(count, mean, m2)

    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0); NaN for a column with no values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, np.sqrt(self.m2 / self.count), np.nan)


class InstanceZScoreParams(NanParams):
    eps: float = Field(1e-12, ge=0, description="added to each column's standard deviation")


class InstanceZScore(Normalizer):
    """A'(i,j) = (A(i,j) - mu_j) / (sigma_j + eps), mu_j and sigma_j over the pool rows of target
    column j (not per row, not per task after aggregation: the BIDS axis). Statistics come from one
    streaming pass of mergeable moments over row chunks, so the matrix could arrive in shards;
    memory beyond the output is O(chunk · C). Float32 input stays float32. O(N·C) time."""

    name = "instance_zscore"
    Params = InstanceZScoreParams
    accepts = frozenset({Shape.MATRIX})

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        p = self.params
        values = np.asarray(score.values)
        if values.ndim != 2:
            raise ValueError("instance_zscore needs an (N, C) matrix score")
        check_nan(values, p.nan, self.name)
        if p.nan in ("fill_worst", "fill_mean"):
            values = fill_nan(values.astype(np.float64), p.nan, score.higher_is_better)
        # shift by the first chunk's column minimum: a constant column then gives exact zeros
        shift = np.fmin.reduce(np.asarray(values[:CHUNK_ROWS], dtype=np.float64), axis=0)
        shift = np.where(np.isnan(shift), 0.0, shift)
        moments = ColumnMoments.empty(values.shape[1])
        for start in range(0, len(values), CHUNK_ROWS):
            moments = moments.merge(ColumnMoments.of(values[start:start + CHUNK_ROWS] - shift))
        dtype = values.dtype if values.dtype in (np.float32, np.float64) else np.float64
        out = np.empty(values.shape, dtype=dtype)
        scale = moments.std() + p.eps
        for start in range(0, len(values), CHUNK_ROWS):
            chunk = values[start:start + CHUNK_ROWS].astype(np.float64)
            out[start:start + CHUNK_ROWS] = (chunk - shift - moments.mean) / scale
        return score.with_values(out)


@hookimpl
def register_normalizers(register):
    register(InstanceZScore)
