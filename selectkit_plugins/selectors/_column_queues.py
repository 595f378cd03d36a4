"""Shared pieces of the iterative selectors (balanced, round_robin_targets): per-column best-first
queues that skip already-taken rows, the budget as a pick limit, and non-finite cleaning."""

from __future__ import annotations

from selectkit.plugin import Budget, Score, SelectContext, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

SCAN = 64  # rows inspected per vectorised step when skipping taken rows


class ColumnQueues:
    """For each column of `values` (n, C), the rows in descending value order, ties by lower row
    first, served lazily: each column holds one sorted block of at most `block` rows and refills it
    (one O(n) partition) when the block runs out. A column's pointer only passes taken rows, so with
    k picks a block of k + 1 rows never refills; memory is O(C · block)."""

    def __init__(self, values: np.ndarray, block: int):
        self.values = values
        n, columns = values.shape
        self.block = int(max(1, min(block, n)))
        self.rows = np.zeros((columns, self.block), dtype=np.int64)
        self.fill = np.zeros(columns, dtype=np.int64)
        self.pos = np.zeros(columns, dtype=np.int64)
        self.done = np.zeros(columns, dtype=bool)  # no rows beyond the current block
        self.refills = 0
        for c in range(columns):
            self._refill(c, None)

    def _refill(self, c: int, after: tuple[float, int] | None) -> None:
        """Load the next block of column c: the best rows strictly after `after` = (value, row)."""
        col = self.values[:, c]
        if after is None:
            rest = np.arange(len(col))
        else:
            value, row = after
            rest = np.flatnonzero((col < value) | ((col == value) & (np.arange(len(col)) > row)))
        if len(rest) > self.block:
            vals = col[rest]
            cut = vals[np.argpartition(-vals, self.block - 1)[self.block - 1]]  # block-th largest value
            above = rest[vals > cut]
            rest = np.concatenate([above, rest[vals == cut][: self.block - len(above)]])
        else:
            self.done[c] = True
        order = np.lexsort((rest, -col[rest]))
        self.rows[c, : len(rest)] = rest[order]
        self.fill[c], self.pos[c] = len(rest), 0
        self.refills += after is not None

    def head(self, c: int, taken: np.ndarray) -> int:
        """The best untaken row of column c (-1 when none is left); advances past taken rows."""
        rows, start, f = self.rows[c], int(self.pos[c]), int(self.fill[c])
        for p in range(start, min(start + 4, f)):  # fast path: a free row within the next few
            if not taken[rows[p]]:
                self.pos[c] = p
                return int(rows[p])
        while True:
            p, f = self.pos[c], self.fill[c]
            if p >= f:
                if self.done[c]:
                    return -1
                last = self.rows[c, f - 1]
                self._refill(c, (self.values[last, c], last))
                continue
            seg = self.rows[c, p: min(p + SCAN, f)]
            free = ~taken[seg]
            if free.any():
                j = int(np.argmax(free))
                self.pos[c] = p + j
                return int(seg[j])
            self.pos[c] = p + len(seg)


def pick_limit(ctx: SelectContext, budget: Budget | None) -> tuple[int, np.ndarray | None, float]:
    """How many picks the budget allows at most, and for a token budget the candidates' token
    counts and the token budget (iterative selectors stop at the first pick that overflows it)."""
    n = len(ctx.candidates)
    if budget is None:
        return n, None, np.inf
    if budget.kind == "tokens":
        return n, np.asarray(ctx.pool.token_counts)[ctx.candidates], float(budget.value)
    return budget.max_count(n), None, np.inf


def queue_block(columns: int, picks: int, n: int, memory_mb: float) -> int:
    """Block length per column: k + 1 rows when that fits in `memory_mb`, else what does."""
    affordable = int(memory_mb * 2**20 // (8 * max(columns, 1)))
    return max(1, min(n, picks + 1, max(affordable, 1024)))


def finite_columns(values: np.ndarray) -> tuple[np.ndarray, int]:
    """float64 copy where NaN and -inf become the column's worst finite value and +inf its best,
    so iterative rules stay well defined; returns the count of replaced cells."""
    values = np.array(values, dtype=np.float64, copy=True)
    bad = ~np.isfinite(values)
    count = int(bad.sum())
    if count:
        finite = np.where(bad, np.nan, values)
        with np.errstate(all="ignore"):
            low = np.nan_to_num(np.fmin.reduce(finite, axis=0), nan=0.0)
            high = np.nan_to_num(np.fmax.reduce(finite, axis=0), nan=0.0)
        values = np.where(np.isposinf(values), high, np.where(bad, low, values))
    return values, count


def task_columns(score: Score, granularity: str, aggregate: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The oriented (higher-better) matrix a selector works on, each column's task id and the task
    names. `task` granularity aggregates columns per task (mean or max); without task labels every
    column is its own task."""
    values = np.asarray(score.values)
    if not score.tasks:
        names = score.columns or tuple(f"c{j}" for j in range(values.shape[1]))
        column_task = np.arange(values.shape[1])
    elif granularity == "task":
        values, names = score.task_matrix(aggregate)
        column_task = np.arange(len(names))
    else:
        names = tuple(dict.fromkeys(score.tasks))
        column_task = np.array([names.index(t) for t in score.tasks], dtype=np.int64)
    return (values if score.higher_is_better else -values), column_task, names
