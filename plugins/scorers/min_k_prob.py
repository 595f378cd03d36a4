"""Min-K% Prob (Shi et al. 2023, "Detecting Pretraining Data from Large Language Models"):
the mean log-prob of the ⌈k·N⌉ least likely tokens of an example.

Deviation: the reference code takes int(k·N) tokens (none for short texts); we take ⌈k·N⌉ so
every example with a counted token gets a value. k = 1 gives the mean log-likelihood.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from selectkit.components import FeatureRequest, Params, Score, ScoreContext, Scorer
from selectkit.hookspecs import hookimpl
from selectkit_plugins.passes.forward import feature_request
from selectkit_plugins.scorers._model import response_field, store


class MinKProbParams(Params):
    k: float = Field(0.2, gt=0, le=1, description="fraction of the lowest-probability tokens averaged (paper: 0.2)")
    response: str | None = response_field()


def min_k_mean(logprobs: np.ndarray, k: float) -> float:
    """Mean of the ⌈k·N⌉ smallest values (NaN for an empty array)."""
    n = len(logprobs)
    if n == 0:
        return math.nan
    take = max(1, math.ceil(k * n - 1e-9))
    return float(np.partition(logprobs.astype(np.float64), take - 1)[:take].mean())


class MinKProb(Scorer):
    """Min-K% Prob under a causal LM; higher means the example looks seen in training.
    O(total tokens) after the shared forward pass."""

    name = "min_k_prob"
    Params = MinKProbParams
    model_kinds = ("causal-lm",)
    higher_is_better = True

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [feature_request("token_logprobs", "pool", response=self.params.response)]

    def run(self, ctx: ScoreContext) -> Score:
        tokens = store(ctx, self.name).get("token_logprobs", "pool", response=self.params.response)
        values = np.array([min_k_mean(lp, self.params.k) for lp in tokens], dtype=np.float64)
        return Score(values=values, higher_is_better=True)


@hookimpl
def register_scorers(register):
    register(MinKProb)
