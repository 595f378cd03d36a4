"""EL2N for sequences (Paul et al. 2021; Fayyaz et al. 2022, "BERT on a Data Diet"): per token
the L2 distance between the predicted next-token distribution and the one-hot next token,
averaged over the counted tokens.

One model, no averaging over training runs: score with a model trained (or fine-tuned for at
least an epoch, as Fayyaz et al. advise) on the data the scores are used for.
"""

from __future__ import annotations

import numpy as np

from selectkit.components import FeatureRequest, Params, Score, ScoreContext, Scorer
from selectkit.hookspecs import hookimpl
from selectkit_plugins.passes.forward import feature_request
from selectkit_plugins.scorers._model import response_field, store


class EL2NParams(Params):
    response: str | None = response_field()


class EL2N(Scorer):
    """Mean token EL2N under a causal LM; higher is harder (or noisier). Data-diet pruning keeps
    the highest; Fayyaz et al. drop a small top fraction as noise. Same forward pass as perplexity."""

    name = "el2n"
    Params = EL2NParams
    model_kinds = ("causal-lm",)
    higher_is_better = True

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [feature_request("el2n", "pool", response=self.params.response)]

    def run(self, ctx: ScoreContext) -> Score:
        values = store(ctx, self.name).get("el2n", "pool", response=self.params.response)
        return Score(values=np.asarray(values, np.float64), higher_is_better=True)


@hookimpl
def register_scorers(register):
    register(EL2N)
