"""Group-level unlearning selection: keep whole groups (sources, clusters) best-first by their UnTrac score.

Pairs with the `unlearning.group` scorer (Isonuma & Titov, ACL 2024), which gives every example its group's
target-loss rise after gradient ascent on the group. The selector never touches a model (DESIGN: selectors
read scores only). Groups are a pool column (`group_by`) or, by default, the runs of equal score values the
group scorer writes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import DataError, SelectContext, Selection, Selector, SelectorParams, Shape, hookimpl, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class UnlearningParams(SelectorParams):
    group_by: str | None = Field(None, description="pool column naming each example's group (default: examples "
                                                   "with the same score form a group)")
    last_group: Literal["fill", "stop"] = Field("fill", description="the first group that does not fit the budget: "
                                                                    "fill the rest with a random part of it, or stop "
                                                                    "before it (only whole groups)")
    min_score: float | None = Field(None, description="never keep groups scoring below this (e.g. 0: only groups "
                                                      "that helped the target)")


class Unlearning(Selector):
    """Keep whole groups in order of their (group-level) score until the budget; members of a group are
    in seeded random order, so a partly kept last group is a uniform sample of it. O(N log N)."""

    name = "unlearning"
    version = "2"
    Params = UnlearningParams
    accepts = frozenset({Shape.VECTOR})

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        cand = ctx.candidates
        values = ctx.score.oriented()[cand].astype(np.float64)
        if p.group_by is not None:
            if p.group_by not in ctx.pool.columns:
                raise DataError(f"{self.name}: pool has no column {p.group_by!r}")
            keys = ctx.pool.column(p.group_by).cast(str).fill_null("").to_numpy()[cand]
        else:
            keys = values
        names, group = np.unique(keys, return_inverse=True)
        finite = np.isfinite(values)
        total = np.bincount(group, weights=np.where(finite, values, 0.0), minlength=len(names))
        count = np.bincount(group, weights=finite.astype(np.float64), minlength=len(names))
        group_mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
        ranked = np.lexsort((np.arange(len(names)), -group_mean))  # best group first, ties by group key
        if p.min_score is not None:
            ranked = ranked[group_mean[ranked] >= p.min_score]
        shuffle = ctx.rng("members").permutation(len(cand))
        within = np.lexsort((shuffle, group))  # positions grouped by group, random inside
        starts = np.searchsorted(group[within], np.arange(len(names)))
        sizes = np.bincount(group, minlength=len(names))
        tokens = ctx.pool.token_counts[cand] if p.budget.kind == "tokens" else None
        capacity = p.budget.value if tokens is not None else p.budget.max_count(len(cand))
        order, used = [], 0.0
        for g in ranked:
            members = within[starts[g]:starts[g] + sizes[g]]
            cost = float(tokens[members].sum()) if tokens is not None else float(len(members))
            if used + cost > capacity:
                if p.last_group == "fill":
                    order.append(members)
                break
            order.append(members)
            used += cost
            if used >= capacity:
                break
        picked = cand[np.concatenate(order)] if order else np.empty(0, dtype=np.int64)
        diagnostics = {"groups": int(len(names)), "groups_kept": len(order),
                       "group_scores": {str(names[g]): float(group_mean[g]) for g in ranked[:50]}}
        return Selection(indices=ctx.take(picked, p.budget), diagnostics=diagnostics)


@hookimpl
def register_selectors(register):
    register(Unlearning)
