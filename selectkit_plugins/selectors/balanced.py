"""balanced (BIDS, Dai, Zhang, Ma, Peng; arXiv 2501.12147): pick, step by step, the example that
most helps the task the selection currently serves worst.

No BIDS code is public; the iterative utility is reconstructed from the paper's description
(spec §1, [inferred]), so both readings are offered: `rule: marginal` takes
argmax_i max_t (U[i,t] - m_t), `rule: argmin_task` serves t* = argmin_t m_t with its best example,
where m_t is the mean utility for task t of what is selected so far (0 before the first pick).
Normalize the matrix first (`instance_zscore`), as BIDS does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import SelectContext, Selection, Selector, SelectorParams, Shape, hookimpl, lazy_import
from selectkit_plugins.selectors._column_queues import (
    ColumnQueues,
    finite_columns,
    pick_limit,
    queue_block,
    task_columns,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class BalancedParams(SelectorParams):
    rule: Literal["marginal", "argmin_task"] = Field(
        "marginal", description="marginal: highest gain over the current task means; argmin_task: serve the "
        "task with the lowest mean")
    granularity: Literal["task", "instance"] = Field(
        "task", description="task: balance tasks (columns aggregated per task); instance: balance every column")
    task_aggregate: Literal["mean", "max"] = Field("mean", description="how a task's columns are aggregated")
    memory_mb: float = Field(1024, gt=0, description="memory for the per-column sorted queues")


class Balanced(Selector):
    """Balanced selection across tasks on a MATRIX score. Exact fast algorithm (spec §1): since
    max_i max_t (U[i,t] - m_t) = max_t (max_{i unpicked} U[i,t] - m_t), each column keeps a sorted
    queue whose pointer skips picked rows, so a step is O(C) and the run O(N·C + C·k log k) — or
    O(N·C·log N) when k ~ N — instead of brute force O(k·N·C). Ties go to the lowest pool index,
    exactly as brute force. Memory: the (N, T) utility plus queues of k + 1 rows per column; above
    `memory_mb` the queues hold shorter blocks and refill with one O(N) partition when they run out.
    NaN/inf cells count as the column's worst/best finite value (`nonfinite_cells` in diagnostics)."""

    name = "balanced"
    Params = BalancedParams
    accepts = frozenset({Shape.MATRIX})

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        utility, column_task, tasks = task_columns(ctx.score, p.granularity, p.task_aggregate)
        utility, nonfinite = finite_columns(utility[ctx.candidates])
        limit, tokens, token_budget = pick_limit(ctx, p.budget)
        picks, served, means = balanced_order(utility, limit, p.rule, tokens, token_budget, p.memory_mb)
        order = ctx.candidates[picks]
        task_means = np.bincount(column_task, weights=means, minlength=len(tasks)) / np.bincount(
            column_task, minlength=len(tasks))
        diagnostics = {  # per task, whatever the granularity
            "task_means": dict(zip(tasks, task_means.tolist())),
            "served": dict(zip(tasks, np.bincount(column_task[served], minlength=len(tasks)).tolist())),
            "nonfinite_cells": nonfinite,
        }
        return Selection(indices=ctx.take(order, p.budget), diagnostics=diagnostics)


def balanced_order(utility: np.ndarray, limit: int, rule: str = "marginal", tokens: np.ndarray | None = None,
                   token_budget: float = float("inf"),
                   memory_mb: float = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of `utility` (n, C; finite, higher better) in pick order, the column each pick served,
    and the final per-column means of the picked rows. Stops after `limit` picks, or before the
    first pick whose tokens would overflow `token_budget`."""
    n, columns = utility.shape
    queues = ColumnQueues(utility, queue_block(columns, limit, n, memory_mb))
    taken = np.zeros(n, dtype=bool)
    heads = np.array([queues.head(c, taken) for c in range(columns)], dtype=np.int64)
    head_val = np.where(heads >= 0, utility[np.maximum(heads, 0), np.arange(columns)], -np.inf)
    sums = np.zeros(columns)
    picks: list[int] = []
    served: list[int] = []
    used = 0.0
    while len(picks) < limit:
        count = len(picks)
        if rule == "marginal":  # exhausted columns have head_val = -inf and never win
            gains = head_val - sums / count if count else head_val
            column = int(gains.argmax())
            if gains[column] == -np.inf:
                break
            tied = gains == gains[column]
            if np.count_nonzero(tied) > 1:
                tied = tied.nonzero()[0]
                column = int(tied[np.argmin(heads[tied])])
        else:
            means = np.where(heads >= 0, sums / count if count else 0.0, np.inf)
            column = int(means.argmin())
            if heads[column] < 0:
                break
        row = int(heads[column])
        if tokens is not None:
            used += tokens[row]
            if used > token_budget:
                break
        taken[row] = True
        picks.append(row)
        served.append(column)
        sums += utility[row]
        for c in (heads == row).nonzero()[0]:
            heads[c] = queues.head(int(c), taken)
            head_val[c] = utility[heads[c], c] if heads[c] >= 0 else -np.inf
    means = sums / max(len(picks), 1)
    return np.asarray(picks, dtype=np.int64), np.asarray(served, dtype=np.int64), means


@hookimpl
def register_selectors(register):
    register(Balanced)
