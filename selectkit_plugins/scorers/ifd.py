"""Instruction-Following Difficulty (Li et al., "From Quantity to Quality", Cherry LLM, arXiv
2308.12032; Superfiltering, Li et al., arXiv 2402.00530).

    IFD(Q, A) = s(A | Q) / s(A),    s = mean token cross-entropy of the answer's tokens

s(A | Q) scores the answer's tokens after the question (the example's text, which must end with
the rendered `response`); s(A) scores the answer's tokens alone (the rendered `response` as its
own text). High IFD: the question helps little to predict the answer, so the example is hard to
follow and worth training on; Cherry LLM keeps the highest. IFD >= 1 means the question does not
help at all (the answer is no more likely with it): Superfiltering drops IFD > 1 first, which is a
`threshold` stage with `max: 1` before the stage that keeps the highest (IFD = 1 exactly stays).

Passes: two `loss` requests of the forward provider, `loss(response=R)` over the example texts
and `loss(text=R)` over the answers alone; both sit in the model's one forward step over the
pool, with its other forward features.

Deviations from the reference code (`cherry_seletion/data_analysis.py`, `data_by_IFD.py`):
- The code ranks by `ppl(A|Q) / ppl(A)`, a ratio of perplexities, i.e. by exp(s(A|Q) - s(A)),
  the loss DIFFERENCE; the paper defines the ratio of losses. We follow the paper;
  `unit: perplexity` gives the code's ratio (same IFD >= 1 filter, different ranking).
- The code finds the answer by `text.rfind(answer)` and counts the prefix's tokens; we tokenise
  prompt and answer separately and take the longest common token prefix (`selectkit.models.lm.encode`),
  so a repeated answer string or a merge across the boundary cannot misplace the span.
- A zero or missing s(A) gives NaN (never selected), not the code's 0. With a tokenizer that adds
  no beginning-of-sequence token, the answer's first token has no context alone and is not scored
  in s(A) (it is in s(A | Q)).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import FeatureRequest, Params, Score, ScoreContext, Scorer, hookimpl, lazy_import
from selectkit_plugins.scorers._model import RESPONSE_HELP, store

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class IFDParams(Params):
    response: str = Field(description=RESPONSE_HELP.replace(" (default: every token)", "") +
                          "; IFD scores it after the question and alone")
    unit: Literal["loss", "perplexity"] = Field(
        "loss", description="loss: s(A|Q) / s(A), the paper's ratio of mean token losses; perplexity: "
        "ppl(A|Q) / ppl(A), the reference code's ratio")


class IFD(Scorer):
    """IFD = loss(answer | question) / loss(answer) (Cherry LLM; Superfiltering); higher means the
    question helps less. Two loss passes over the same model, fused in its forward step."""

    name = "ifd"
    Params = IFDParams
    model_kinds = ("causal-lm",)
    higher_is_better = True

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [FeatureRequest.of("loss", "pool", response=self.params.response),
                FeatureRequest.of("loss", "pool", text=self.params.response)]

    def run(self, ctx: ScoreContext) -> Score:
        features = store(ctx, self.name)
        conditioned = np.asarray(features.get("loss", "pool", response=self.params.response), np.float64)
        alone = np.asarray(features.get("loss", "pool", text=self.params.response), np.float64)
        return Score(values=ifd(conditioned, alone, self.params.unit), higher_is_better=True)


def ifd(conditioned: np.ndarray, alone: np.ndarray, unit: str = "loss") -> np.ndarray:
    """IFD from mean token losses (nats); NaN where the answer alone has no (or zero) loss."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if unit == "perplexity":
            out = np.exp(conditioned - alone)
            return np.where(np.isfinite(alone) & np.isfinite(conditioned), out, np.nan)
        return np.where(np.isfinite(alone) & (alone > 0), conditioned / alone, np.nan)


@hookimpl
def register_scorers(register):
    register(IFD)
