"""Exact quantiles of a run's columns without holding a column: each pass reads the selection table shard by
shard and either counts an interval's values into BINS equal bins (the bin holding the wanted order statistic
becomes the next interval) or, once an interval holds at most GATHER values, gathers and sorts them. A far
outlier only costs a pass or two more; memory is bounded by BINS and GATHER, not by the pool."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from selectkit.results.rundir import Run

BINS = 1024  # bins of the histograms that narrow an order statistic down
GATHER = 1 << 14  # values of an interval gathered and sorted to settle an order statistic exactly
SELECTED = "selection"  # the set label (second item of a key) of the selected rows; any other: every row


@dataclass
class _Target:
    """One order statistic being narrowed down: it lies in [lo, hi] (hi excluded unless `closed`), above
    `below` finite values of its set; `count` values share the interval."""

    key: tuple[str, str]
    rank: int
    lo: float
    hi: float
    count: int
    closed: bool = True
    below: int = 0
    value: float | None = None


@dataclass
class _Interval:
    gather: bool
    n: int = 0
    low: float = np.inf
    high: float = -np.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    values: list = field(default_factory=list)


def order_statistics(run: Run, wanted: dict[tuple[str, str], tuple[list[int], int, float, float]]
                     ) -> dict[tuple[str, str], dict[int, float]]:
    """Exact order statistics (0-based ranks among the finite values) of (column, pool|selection) sets, given
    each set's finite count, min and max: each pass reads the table shard by shard and either histograms an
    interval into BINS bins (the statistic's bin becomes the next interval) or, once an interval holds at most
    GATHER values, gathers and sorts them. Memory is bounded by BINS and GATHER, not by the pool."""
    import polars as pl

    targets = [_Target(key, r, lo, hi, n, value=lo if lo == hi else None)  # one value: nothing to narrow
               for key, (ranks, n, lo, hi) in wanted.items() for r in ranks]
    columns = sorted({key[0] for key in wanted})
    for _ in range(80):  # each histogram pass narrows an interval 1024-fold: float64 runs out long before
        open_ = [t for t in targets if t.value is None]
        if not open_:
            break
        intervals = {(t.key, t.lo, t.hi, t.closed): _Interval(t.count <= GATHER) for t in open_}
        for shard in run.shards([*columns, "__selected"]):
            chosen = shard["__selected"].to_numpy()
            values = {}
            for (key, lo, hi, closed), state in intervals.items():
                if key not in values:
                    x = shard[key[0]].cast(pl.Float64, strict=False).fill_null(np.nan).to_numpy()
                    values[key] = x[np.isfinite(x) & (chosen if key[1] == SELECTED else True)]
                x = values[key]
                x = x[(x >= lo) & ((x <= hi) if closed else (x < hi))]
                if not len(x):
                    continue
                state.n += len(x)
                state.low, state.high = min(state.low, float(x.min())), max(state.high, float(x.max()))
                if state.gather:
                    state.values.append(x)
                else:
                    state.hist += np.bincount(_bins(x, lo, hi), minlength=BINS)
        for t in open_:
            state = intervals[(t.key, t.lo, t.hi, t.closed)]
            within = t.rank - t.below
            if state.gather:
                t.value = float(np.sort(np.concatenate(state.values))[within])
            elif state.low == state.high:
                t.value = state.low
            else:
                cumulative = np.cumsum(state.hist)
                b = int(np.searchsorted(cumulative, within, side="right"))
                edges = _edges(t.lo, t.hi)
                t.below += int(cumulative[b - 1]) if b else 0
                t.count, t.closed = int(state.hist[b]), t.closed and b == BINS - 1
                t.lo, t.hi = float(edges[b]), float(edges[b + 1])
    out: dict[tuple[str, str], dict[int, float]] = {}
    for t in targets:
        out.setdefault(t.key, {})[t.rank] = t.value if t.value is not None else t.lo
    return out


def _edges(lo: float, hi: float) -> np.ndarray:
    """BINS + 1 equal steps from lo to hi (halved and doubled back where hi - lo overflows float64: exact)."""
    if math.isfinite(hi - lo):
        return np.linspace(lo, hi, BINS + 1)
    return np.linspace(lo / 2, hi / 2, BINS + 1) * 2


def _bins(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The bin of each value among BINS equal bins over [lo, hi] (edges as np.linspace gives them, the last bin
    closed): estimated arithmetically, then settled against the edges, so a bin is exactly [edge, next edge)."""
    edges = _edges(lo, hi)
    width = hi - lo
    if not math.isfinite(width) or width <= 0:
        return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, BINS - 1)
    i = np.clip(((x - lo) * (BINS / width)).astype(np.int64), 0, BINS - 1)
    for _ in range(3):  # the estimate is off by at most one bin (rounding): settle it
        i -= (i > 0) & (x < edges[i])
        i += (i < BINS - 1) & (x >= edges[i + 1])
    return i


def lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation between neighbouring order statistics (the same float result)."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t
