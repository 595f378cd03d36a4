"""Collapsing a per-target (matrix) score into one value per example: the recipe's `combine:` on
a score (max, mean, min, sum, or a weighted sum of named target columns), and one column of a
matrix picked by a selector as `score: name.column`."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from selectkit.contract.components import NormalizeContext, Normalizer, Params, Score, Shape


class CollapseParams(Params):
    how: str = "max"
    weights: dict[str, float] | None = None


class Collapse(Normalizer):
    """A matrix score -> a vector: its task columns reduced by `how`, or weighted by `weights`."""

    name: ClassVar[str] = "combine"
    Params = CollapseParams
    accepts = frozenset({Shape.MATRIX})

    @classmethod
    def of(cls, spec: Any) -> Collapse:
        weights = getattr(spec, "weights", None)
        return cls(CollapseParams(how="weights" if weights is not None else str(spec), weights=weights))

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        values, names = score.task_matrix("mean")
        values = np.asarray(values, dtype=np.float64)
        if self.params.weights is not None:
            w = np.array([self.params.weights.get(n, 0.0) for n in names])
            out = values @ w
        else:
            reduce = {"max": np.max, "mean": np.mean, "min": np.min, "sum": np.sum}[self.params.how]
            out = reduce(values, axis=1)
        return Score(values=out, shape=Shape.VECTOR, higher_is_better=score.higher_is_better)


def column(score: Score, name: str) -> Score:
    """One task column of a matrix score, as a vector."""
    values, names = score.task_matrix("mean")
    return Score(values=np.asarray(values[:, list(names).index(name)], dtype=np.float64),
                 higher_is_better=score.higher_is_better)
