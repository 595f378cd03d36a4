"""Uniform random subset, seeded from the recipe: the baseline every method must beat."""

from __future__ import annotations

from selectkit.plugin import SelectContext, Selection, Selector, SelectorParams, hookimpl, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class Random(Selector):
    """A uniformly random subset of the candidates: each row's draw is keyed by (seed, stage, row id),
    so the subset does not depend on row order or sharding. O(N log N)."""

    name = "random"
    version = "2"
    Params = SelectorParams
    needs_score = False
    accepts = frozenset()

    def run(self, ctx: SelectContext) -> Selection:
        order = ctx.candidates[np.argsort(ctx.uniform("random"), kind="stable")]
        return Selection(indices=ctx.take(order, self.params.budget))


@hookimpl
def register_selectors(register):
    register(Random)
