"""Min-K% Prob (Shi et al. 2023, "Detecting Pretraining Data from Large Language Models"): the mean
log-prob of the ⌈k·N⌉ least likely tokens of an example; and Min-K%++ (Zhang et al. 2024, arXiv
2404.02936, `variant: plus`): the same mean over per-token z-scores

    z_t = (log p(x_t | x_<t) - mu_t) / sigma_t,   mu_t = E_{v~p(.|x_<t)}[log p(v | x_<t)],
    sigma_t^2 = Var_{v~p(.|x_<t)}[log p(v | x_<t)]

over the full next-token distribution (the forward provider's `token_zscores`, computed inside
the pass: logits are never stored). Higher means the example looks seen in training. k = 0.2 for
both (the papers' defaults).

Deviations from the reference codes: they take int(k·N) tokens (none for a text shorter than 1/k
tokens, whose mean is then NaN); we take ⌈k·N⌉, so every example with a counted token gets a
value, and k = 1 gives the mean log-likelihood (or mean z). Min-K%++'s code divides by
sqrt(E[log p^2] - mu^2), which rounding can make negative (NaN) or zero (inf); we use the
two-pass variance and give z = 0 where sigma = 0 (a uniform or one-hot distribution: the token
is as likely as the model's average token).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from selectkit.plugin import FeatureRequest, Params, Score, ScoreContext, Scorer, hookimpl, lazy_import
from selectkit_plugins.scorers._model import response_field, store

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

KIND = {"standard": "token_logprobs", "plus": "token_zscores"}


class MinKProbParams(Params):
    k: float = Field(0.2, gt=0, le=1, description="fraction of the lowest-scoring tokens averaged (papers: 0.2)")
    variant: Literal["standard", "plus"] = Field(
        "standard", description="standard: token log-probs (Min-K%); plus: token z-scores against the model's "
        "next-token distribution (Min-K%++)")
    response: str | None = response_field()


def min_k_mean(logprobs: np.ndarray, k: float) -> float:
    """Mean of the ⌈k·N⌉ smallest values (NaN for an empty array)."""
    n = len(logprobs)
    if n == 0:
        return math.nan
    take = max(1, math.ceil(k * n - 1e-9))
    return float(np.partition(logprobs.astype(np.float64), take - 1)[:take].mean())


def min_k_scores(tokens: list[np.ndarray], k: float) -> np.ndarray:
    return np.array([min_k_mean(t, k) for t in tokens], dtype=np.float64)


class MinKProb(Scorer):
    """Min-K% Prob (or Min-K%++ with `variant: plus`) under a causal LM; higher means the example
    looks seen in training. O(total tokens) after the shared forward pass."""

    name = "min_k_prob"
    Params = MinKProbParams
    model_kinds = ("causal-lm",)
    higher_is_better = True

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [FeatureRequest.of(KIND[self.params.variant], "pool", response=self.params.response)]

    def run(self, ctx: ScoreContext) -> Score:
        tokens = store(ctx, self.name).get(KIND[self.params.variant], "pool", response=self.params.response)
        return Score(values=min_k_scores(tokens, self.params.k), higher_is_better=True)


@hookimpl
def register_scorers(register):
    register(MinKProb)
