"""Perplexity (or mean token NLL) of each pool example under a causal LM, optionally minus a
reference model's (cross-entropy difference, Moore & Lewis 2010).

PPL(x) = exp(-(1/T) Σ_t log p(x_t | x_<t)) over the counted tokens.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import FeatureRequest, Params, Score, ScoreContext, Scorer, hookimpl, lazy_import
from selectkit_plugins.scorers._model import response_field, store

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class PerplexityParams(Params):
    unit: Literal["perplexity", "nll"] = Field(
        "perplexity", description="perplexity: exp of the mean token NLL; nll: the mean token NLL (nats)")
    response: str | None = response_field()
    reference_model: str | None = Field(
        None, description="another causal-lm under `models`; the score becomes nll(model) - nll(reference) "
        "(unit nll) or ppl(model) / ppl(reference) (unit perplexity): low means more like `model`")


class Perplexity(Scorer):
    """Perplexity under a causal LM; lower is more likely (higher_is_better false). One
    forward pass per batch, shared with the other scorers of the same model; a reference model
    gets its own planned pass."""

    name = "perplexity"
    Params = PerplexityParams
    model_kinds = ("causal-lm",)
    model_params = ("reference_model",)
    higher_is_better = False

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        own = [FeatureRequest.of("loss", "pool", response=self.params.response)]
        if self.params.reference_model is None:
            return own
        return own + [FeatureRequest.of("loss", "pool", model=self.params.reference_model,
                                        response=self.params.response)]

    def run(self, ctx: ScoreContext) -> Score:
        features = store(ctx, self.name)
        nll = np.asarray(features.get("loss", "pool", response=self.params.response), np.float64)
        if self.params.reference_model is not None:
            nll = nll - np.asarray(features.get("loss", "pool", model=self.params.reference_model,
                                                response=self.params.response), np.float64)
        values = np.exp(nll) if self.params.unit == "perplexity" else nll
        return Score(values=values, higher_is_better=False)


@hookimpl
def register_scorers(register):
    register(Perplexity)
