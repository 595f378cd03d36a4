"""balanced (BIDS): the spec's E1 / E1b known answers and fast == brute force, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from _pools import norm_ctx, pool, select_ctx

from selectkit.contract.components import Score, Shape
from selectkit_plugins.normalizers.instance_zscore import InstanceZScore
from selectkit_plugins.selectors._column_queues import ColumnQueues
from selectkit_plugins.selectors.balanced import Balanced, balanced_order
from selectkit_plugins.selectors.topk import TopK

TASKS, PER_TASK, COLS = 3, 1000, 10


def biased_pool(seed: int = 0):
    """E1: 3 tasks, 1000 pool examples helpful to each; task 0's influence scale is 10x, task 2's 0.3x."""
    rng = np.random.default_rng(seed)
    member = np.repeat(np.arange(TASKS), PER_TASK)
    col_task = np.repeat(np.arange(TASKS), COLS)
    scale = np.array([10.0, 1.0, 0.3])
    am = scale[col_task] * ((member[:, None] == col_task[None, :]) + rng.normal(size=(len(member), len(col_task))))
    score = Score(values=am, shape=Shape.MATRIX, columns=tuple(f"v{j}" for j in range(len(col_task))),
                  tasks=tuple(f"task{t}" for t in col_task))
    return score, member


def shares(indices: np.ndarray, member: np.ndarray) -> np.ndarray:
    return np.bincount(member[indices], minlength=TASKS) / len(indices)


def balanced(score: Score, budget=300, **params):
    return Balanced(Balanced.Params(budget=budget, **params)).run(select_ctx(score))


def test_e1_balances_tasks_where_less_topk_takes_one():
    score, member = biased_pool()
    less, _ = score.task_matrix("mean")  # LESS: task mean, then max over tasks, then top-k
    top = TopK(TopK.Params(budget=300)).run(select_ctx(Score(values=less.max(axis=1))))
    assert shares(top.indices, member)[0] >= 0.95
    normalized = InstanceZScore().run(score, norm_ctx(len(member)))
    for rule in ("marginal", "argmin_task"):
        picked = balanced(normalized, rule=rule)
        assert len(picked.indices) == 300 and len(np.unique(picked.indices)) == 300
        np.testing.assert_allclose(shares(picked.indices, member), 1 / 3, atol=0.07)
    assert set(picked.diagnostics["served"]) == {"task0", "task1", "task2"}


def test_e1b_heavy_tail_the_iteration_matters():
    score, member = biased_pool(1)
    utility, _ = InstanceZScore().run(score, norm_ctx(len(member))).task_matrix("mean")
    rng = np.random.default_rng(2)
    tail = rng.choice(np.flatnonzero(member == 0), 600, replace=False)
    utility[tail, 0] += rng.exponential(3.0, size=600)
    tasks = Score(values=utility, shape=Shape.MATRIX, columns=("a", "b", "c"), tasks=("a", "b", "c"))
    top = TopK(TopK.Params(budget=300)).run(select_ctx(Score(values=utility.max(axis=1))))
    bids = balanced(tasks, rule="marginal")
    top_share, bids_share = shares(top.indices, member).max(), shares(bids.indices, member).max()
    assert top_share >= 0.85 and top_share - bids_share >= 0.3


def brute_force(u: np.ndarray, k: int, rule: str) -> np.ndarray:
    """The spec's definition, O(k·N·C): ties to the lowest row via argmax."""
    taken = np.zeros(len(u), dtype=bool)
    sums, out = np.zeros(u.shape[1]), []
    for _ in range(k):
        m = sums / len(out) if out else np.zeros(u.shape[1])
        if rule == "marginal":
            gain = (u - m).max(axis=1)
        else:
            gain = u[:, int(np.argmin(m))].copy()
        gain[taken] = -np.inf
        i = int(np.argmax(gain))
        taken[i] = True
        out.append(i)
        sums += u[i]
    return np.asarray(out)


@pytest.mark.parametrize("rule", ["marginal", "argmin_task"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_equals_brute_force_with_ties(rule, seed):
    rng = np.random.default_rng(seed)
    u = np.round(rng.normal(size=(2000, 5)), 1)  # a coarse grid: many exact ties
    u[:50] = u[50:100]  # duplicated rows tie in every column
    np.testing.assert_array_equal(balanced_order(u, 200, rule)[0], brute_force(u, 200, rule))


def test_fast_equals_brute_force_when_queues_refill():
    u = np.round(np.random.default_rng(3).normal(size=(1600, 3)), 1)
    fast = balanced_order(u, 1400, "marginal", memory_mb=1e-6)[0]  # blocks of 1024 < k + 1: refills
    np.testing.assert_array_equal(fast, brute_force(u, 1400, "marginal"))


def test_column_queues_serve_sorted_order_across_refills():
    rng = np.random.default_rng(4)
    values = np.round(rng.normal(size=(60, 2)), 0)
    queues = ColumnQueues(values, block=4)
    taken = np.zeros(60, dtype=bool)
    taken[rng.choice(60, 20, replace=False)] = True
    for c in range(2):
        expected = [r for r in np.lexsort((np.arange(60), -values[:, c])) if not taken[r]]
        served = []
        while (row := queues.head(c, taken)) >= 0:
            served.append(row)
            taken[row] = True
        np.testing.assert_array_equal(served, expected)
        taken[expected] = False
    assert queues.refills > 0


def test_instance_granularity_candidates_orientation_and_budgets():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(400, 6))
    score = Score(values=values, shape=Shape.MATRIX, tasks=("a", "a", "b", "b", "c", "c"),
                  columns=tuple("uvwxyz"))
    cands = np.arange(0, 400, 2)
    ctx = select_ctx(score, candidates=cands)
    inst = Balanced(Balanced.Params(budget="10%", granularity="instance")).run(ctx)
    assert len(inst.indices) == 20 and set(inst.indices) <= set(cands)
    np.testing.assert_array_equal(cands[balanced_order(values[cands], 20)[0]], inst.indices)
    flipped = Score(values=-values, shape=Shape.MATRIX, tasks=score.tasks, columns=score.columns,
                    higher_is_better=False)
    again = Balanced(Balanced.Params(budget="10%", granularity="instance")).run(select_ctx(flipped, candidates=cands))
    np.testing.assert_array_equal(again.indices, inst.indices)
    texts = ["w " * (i % 7 + 1) for i in range(400)]
    token_ctx = select_ctx(score, data=pool(400, texts=texts))
    by_tokens = Balanced(Balanced.Params(budget={"tokens": 100})).run(token_ctx)
    used = np.asarray(token_ctx.pool.token_counts)[by_tokens.indices].sum()
    assert 0 < used <= 100
    order = balanced_order(Score(values=values, shape=Shape.MATRIX, tasks=score.tasks).task_matrix()[0], 400)[0]
    np.testing.assert_array_equal(by_tokens.indices, order[: len(by_tokens.indices)])


def test_nan_cells_count_as_worst_and_are_reported():
    values = np.random.default_rng(6).normal(size=(50, 2))
    values[0, 0] = np.nan
    score = Score(values=values, shape=Shape.MATRIX, tasks=("a", "b"), columns=("a", "b"))
    picked = balanced(score, budget=49)
    assert picked.diagnostics["nonfinite_cells"] == 1 and len(picked.indices) == 49


def test_matrix_without_task_labels_balances_columns():
    values = np.random.default_rng(7).normal(size=(300, 3))
    served = balanced(Score(values=values, shape=Shape.MATRIX), budget=30).diagnostics["served"]
    assert set(served) == {"c0", "c1", "c2"} and sum(served.values()) == 30 and min(served.values()) >= 5
