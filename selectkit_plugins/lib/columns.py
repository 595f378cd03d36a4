"""Column helpers the normalizers and selectors share: dense group codes of a pool column, and
NaN-aware rank fractions."""

from __future__ import annotations

from selectkit.plugin import lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

pl = lazy_import("polars")


def group_codes(series: pl.Series) -> tuple[np.ndarray, list[str]]:
    """Dense group ids 0..G-1 in sorted label order, and the labels (null is the group '<null>')."""
    labels = series.cast(pl.String).fill_null("<null>")
    return (labels.rank("dense") - 1).to_numpy().astype(np.int64), labels.unique().sort().to_list()


def rank_fraction(x: np.ndarray, method: str = "average") -> np.ndarray:
    """Ranks of the non-NaN entries divided by their count (dense: by the number of distinct values)."""
    out = np.full(len(x), np.nan)
    valid = ~np.isnan(x)
    v = x[valid]
    n = len(v)
    if n == 0:
        return out
    order = np.argsort(v, kind="stable")
    ranks = np.empty(n)
    if method == "ordinal":
        ranks[order] = np.arange(1, n + 1)
    else:
        sv = v[order]
        new = np.r_[True, sv[1:] != sv[:-1]]
        group = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], n]
        per_group = {"min": starts + 1.0, "max": ends.astype(float), "average": (starts + 1 + ends) / 2.0,
                     "dense": np.arange(1.0, len(starts) + 1)}[method]
        ranks[order] = per_group[group]
        if method == "dense":
            n = len(starts)
    out[valid] = ranks / n
    return out
