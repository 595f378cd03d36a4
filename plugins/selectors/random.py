"""Uniform random subset, seeded from the recipe: the baseline every method must beat."""

from __future__ import annotations

from selectkit.components import SelectContext, Selection, Selector, SelectorParams
from selectkit.hookspecs import hookimpl


class Random(Selector):
    """A uniformly random subset of the candidates (seeded by the recipe seed and stage). O(N)."""

    name = "random"
    Params = SelectorParams
    needs_score = False
    accepts = frozenset()

    def run(self, ctx: SelectContext) -> Selection:
        order = ctx.rng("random").permutation(ctx.candidates)
        return Selection(indices=ctx.take(order, self.params.budget))


@hookimpl
def register_selectors(register):
    register(Random)
