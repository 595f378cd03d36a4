"""round_robin_targets (Influence Distillation, Nikdan et al., 2025): targets take turns, each
taking its highest-scoring example not yet selected (reference code
`infdist/distil.py::_perform_selection_rr`)."""

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


class RoundRobinParams(SelectorParams):
    granularity: Literal["instance", "task"] = Field(
        "instance", description="instance: every target column takes turns (the reference); task: one turn per task")
    task_aggregate: Literal["mean", "max"] = Field("mean", description="how a task's columns are aggregated")
    visit_order: Literal["random", "fixed"] = Field(
        "random", description="random: targets visited in a fresh seeded order each round (reference); fixed: "
        "column order")
    memory_mb: float = Field(1024, gt=0, description="memory for the per-column sorted queues")


class RoundRobinTargets(Selector):
    """Each round visits the targets (in a seeded random order); each takes its best unselected
    example until the budget is met, so every target is served equally however its scores are
    scaled. Ties go to the lowest pool index (as the reference's argmax). Deviations: the reference
    uses the unseeded global numpy RNG and never picks scores <= -1e8 (its "taken" marker); here the
    order comes from `ctx.rng` and every score can be picked. Per-column sorted queues make it
    O(N·C + C·k log k) time with k + 1 rows per column (shorter, refilled blocks above
    `memory_mb`), instead of the reference's O(k·N) argmax scans."""

    name = "round_robin_targets"
    Params = RoundRobinParams
    accepts = frozenset({Shape.MATRIX})

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        values, column_task, tasks = task_columns(ctx.score, p.granularity, p.task_aggregate)
        values, nonfinite = finite_columns(values[ctx.candidates])
        limit, tokens, token_budget = pick_limit(ctx, p.budget)
        rng = ctx.rng("round_robin_targets") if p.visit_order == "random" else None
        picks, by = round_robin_order(values, limit, rng, tokens, token_budget, p.memory_mb)
        per_task = np.bincount(column_task[by], minlength=len(tasks))
        diagnostics = {"picks_per_task": dict(zip(tasks, per_task.tolist())),
                       "nonfinite_cells": nonfinite}
        return Selection(indices=ctx.take(ctx.candidates[picks], p.budget), diagnostics=diagnostics)


def round_robin_order(values: np.ndarray, limit: int, rng: np.random.Generator | None = None,
                      tokens: np.ndarray | None = None, token_budget: float = float("inf"),
                      memory_mb: float = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Rows in pick order and the column that picked each. Stops after `limit` picks, when every
    column is exhausted, or before the first pick that would overflow `token_budget`."""
    n, columns = values.shape
    queues = ColumnQueues(values, queue_block(columns, limit, n, memory_mb))
    taken = np.zeros(n, dtype=bool)
    picks: list[int] = []
    by: list[int] = []
    used = 0.0
    while len(picks) < limit:
        visit = rng.permutation(columns) if rng is not None else range(columns)
        progressed = False
        for c in visit:
            if len(picks) >= limit:
                break
            row = queues.head(int(c), taken)
            if row < 0:
                continue
            if tokens is not None:
                used += tokens[row]
                if used > token_budget:
                    return np.asarray(picks, dtype=np.int64), np.asarray(by, dtype=np.int64)
            taken[row] = True
            picks.append(row)
            by.append(int(c))
            progressed = True
        if not progressed:
            break
    return np.asarray(picks, dtype=np.int64), np.asarray(by, dtype=np.int64)


@hookimpl
def register_selectors(register):
    register(RoundRobinTargets)
