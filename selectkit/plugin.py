"""Everything a plugin needs, on one page.

    from selectkit.plugin import Scorer, Score, Params, Field, hookimpl

    class Vowels(Scorer):
        '''Share of vowels in the text.'''
        name = "vowels"
        rowwise = True                      # each row's score depends on its own row only
        def run(self, ctx: ScoreContext) -> Score:
            return Score(np.array([sum(c in "aeiou" for c in t) / max(len(t), 1) for t in ctx.pool.texts]))

    @hookimpl
    def register_scorers(register):
        register(Vowels)

Components: `Scorer` (declares `feature_requests` for model work, never loads a model),
`Normalizer`, `Selector`, `Verifier` (a completion vs a reference answer); pass providers:
`PassProvider` (the only code that loads models, through `PassContext.load_model`); data formats:
`Reader`/`RowSource`. Results: `Score` (with `Shape`), `Selection`. Contexts: `ScoreContext`,
`NormalizeContext`, `SelectContext`, `PassContext`. Errors a user can cause: `SelectkitError` and its
kinds. `selectkit.testing` has the conformance checks.
"""

from pydantic import Field

from selectkit.contract.budget import Budget, BudgetField
from selectkit.contract.components import (
    Component,
    FeatureRequest,
    NormalizeContext,
    Normalizer,
    Params,
    Score,
    ScoreContext,
    Scorer,
    SelectContext,
    Selection,
    Selector,
    SelectorParams,
    Shape,
    Verifier,
)
from selectkit.contract.hookspecs import hookimpl
from selectkit.contract.passes import Features, ModelRef, PassContext, PassPlan, PassProvider, PlanContext
from selectkit.data.sources import Dataset, Reader, RowSource
from selectkit.errors import DataError, MissingExtraError, PluginError, RecipeError, SelectkitError, require

__all__ = [
    "Budget", "BudgetField", "Component", "DataError", "Dataset", "FeatureRequest", "Features", "Field",
    "MissingExtraError", "ModelRef", "NormalizeContext", "Normalizer", "Params", "PassContext", "PassPlan",
    "PassProvider", "PlanContext", "PluginError", "Reader", "RecipeError", "RowSource", "Score", "ScoreContext",
    "Scorer", "SelectContext", "Selection", "Selector", "SelectorParams", "SelectkitError", "Shape", "Verifier",
    "hookimpl", "require",
]
