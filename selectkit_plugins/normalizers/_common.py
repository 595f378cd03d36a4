"""Shared machinery of the column-wise normalizers: the NaN policy, per-column and per-group
statistics. Every statistic is computed on the pool the score covers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field

from selectkit.plugin import DataError, NormalizeContext, Params, Score, lazy_import, unknown_message
from selectkit_plugins.lib.columns import group_codes

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

pl = lazy_import("polars")  # polars loads when data is read, not when a recipe is validated

NanPolicy = Literal["keep", "raise", "fill_worst", "fill_mean"]

NAN_HELP = ("what to do with NaN scores: keep (stay NaN, left out of the statistics), raise, "
            "fill_worst (the column's worst value, by the score's orientation), fill_mean")


class NanParams(Params):
    nan: NanPolicy = Field("keep", description=NAN_HELP)


class ColumnParams(NanParams):
    """Params of a normalizer whose statistics are per column (a vector is one column)."""

    axis: Literal["pool", "all"] = Field(
        "pool", description="pool: statistics per column over the pool rows; all: one statistic over every entry")
    group_by: str | None = Field(None, description="pool column: statistics computed separately within each group")


Block = Callable[["np.ndarray"], "np.ndarray"]


def as_matrix(score: Score) -> np.ndarray:
    """The score as a float64 (N, C) matrix; a vector becomes one column."""
    values = np.asarray(score.values, dtype=np.float64)
    return values.reshape(-1, 1) if values.ndim == 1 else values


def check_nan(values: np.ndarray, policy: str, name: str) -> None:
    if policy == "raise":
        bad = int(np.isnan(values).sum())
        if bad:
            raise DataError(f"{name}: the score has {bad} NaN value(s); set `nan:` to keep, fill_worst or fill_mean")


def fill_nan(block: np.ndarray, policy: str, higher_is_better: bool) -> np.ndarray:
    """Replace NaN per column by the column's worst or mean value (all-NaN columns stay NaN)."""
    if policy not in ("fill_worst", "fill_mean"):
        return block
    nan = np.isnan(block)
    if not nan.any():
        return block
    if policy == "fill_mean":
        fill = nan_mean(block)
    else:
        fill = np.fmin.reduce(block, axis=0) if higher_is_better else np.fmax.reduce(block, axis=0)
    return np.where(nan, fill, block)


def nan_mean(block: np.ndarray) -> np.ndarray:
    """Column means over the non-NaN entries, NaN for an all-NaN column, without warnings."""
    valid = ~np.isnan(block)
    count = valid.sum(axis=0)
    total = np.where(valid, block, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def nan_std(block: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Population standard deviation (ddof=0) per column over the non-NaN entries."""
    valid = ~np.isnan(block)
    count = valid.sum(axis=0)
    sq = np.where(valid, (block - mean) ** 2, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.sqrt(sq / np.maximum(count, 1)), np.nan)


def centered(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deviations from the column means and the column stds (ddof=0). Computed on data shifted by
    the column minimum, so a constant column gives exactly 0 deviations (no rounding residue)."""
    shift = np.fmin.reduce(block, axis=0)
    shifted = block - np.where(np.isnan(shift), 0.0, shift)
    mean = nan_mean(shifted)
    return shifted - mean, nan_std(shifted, mean)


def group_rows(ctx: NormalizeContext, column: str | None, n: int, name: str) -> list[np.ndarray] | None:
    """Row indices of each group of a pool column, or None when there is no grouping."""
    if column is None:
        return None
    columns = list(ctx.pool.columns)
    if column not in columns:
        raise DataError(f"{name}: {unknown_message('pool column', column, columns)}")
    series = ctx.pool.column(column)
    if len(series) != n:
        raise DataError(f"{name}: group_by column has {len(series)} rows but the score has {n}")
    codes, _ = group_codes(series)
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes))[:-1])


def transform_columns(score: Score, ctx: NormalizeContext, params: ColumnParams, name: str, fn: Block) -> Score:
    """Apply `fn` ((n, c) block -> same-shape block, NaN-aware) per group and per column (axis: pool)
    or to every entry at once (axis: all), after the NaN policy. Keeps shape and orientation."""
    values = as_matrix(score)
    check_nan(values, params.nan, name)
    out = np.empty_like(values)
    groups = group_rows(ctx, params.group_by, len(values), name)
    for rows in groups if groups is not None else [slice(None)]:
        block = values[rows]
        flat = block.reshape(-1, 1) if params.axis == "all" else block
        out[rows] = fn(fill_nan(flat, params.nan, score.higher_is_better)).reshape(block.shape)
    return score.with_values(out.reshape(np.shape(score.values)))
