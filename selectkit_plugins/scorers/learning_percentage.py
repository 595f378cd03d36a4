"""Learning percentage (Mekala, Nguyen, Shang, "Smaller Language Models are capable of selecting
Instruction-Tuning Training Data for Larger Language Models", ACL Findings 2024, arXiv 2402.10430).

    LP(x) = (P_0(x) - P_1(x)) / (P_0(x) - P_n(x))        (variant: exact, LP(1) of the paper)
    LP(x) = (P_0(x) - P_1(x)) / P_0(x)                    (variant: approx: one epoch suffices)

P_i is the example's perplexity (exp of its mean token loss) after epoch i of training a small
model on the pool (P_0: before training): the share of everything the model learns about x that
it learns in the first epoch. Lower is harder (learnt late); the paper keeps the lowest x% within
each k-means cluster of sentence embeddings (`kmeans_diverse` with `quality` this score and
`temperature: 0`), and a 350M model's choice transfers to 13B.

Passes: the model's `warmup` is the training (set `fraction: 1.0` to train on the whole pool and
`epochs: n`); the `trajectory` provider reads every example's loss before training and after each
epoch's checkpoint (each epoch a resumable cache shard of the `train` provider).

Deviations from the reference code: P_0 = P_n (no net change) gives NaN, never selected; the code
returns 0 there, which ranks those rows as the hardest. The training is the warmup's LoRA (its
r/alpha settings) rather than full fine-tuning of the small model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import DataError, FeatureRequest, Params, Score, ScoreContext, Scorer, hookimpl, lazy_import
from selectkit_plugins.scorers._model import response_field, store

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class LearningPercentageParams(Params):
    variant: Literal["exact", "approx"] = Field(
        "exact", description="exact: (P0 - P1) / (P0 - Pn), Pn after the last epoch; approx: (P0 - P1) / P0")
    response: str | None = response_field()


class LearningPercentage(Scorer):
    """LP = (P0 - P1) / (P0 - Pn) from per-example perplexity before training and after epochs 1 and n
    (Mekala et al. 2024); lower is harder (higher_is_better false)."""

    name = "learning_percentage"
    Params = LearningPercentageParams
    model_kinds = ("causal-lm",)
    higher_is_better = False

    def request(self) -> FeatureRequest:
        settings = (("response", self.params.response),) if self.params.response is not None else ()
        return FeatureRequest("checkpoint_losses", "pool", settings)

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [self.request()]

    def run(self, ctx: ScoreContext) -> Score:
        r = self.request()
        curve = store(ctx, self.name).get(r.kind, r.data, **dict(r.settings))
        loss = np.asarray(curve["loss"], np.float64)
        if loss.shape[0] < 2 or (self.params.variant == "exact" and loss.shape[0] < 3):
            need = 1 if self.params.variant == "approx" else 2
            raise DataError(f"{self.name} ({self.params.variant}) needs at least {need} training epoch(s); the "
                            f"model's training has {loss.shape[0] - 1}: raise `warmup.epochs`")
        return Score(values=learning_percentage(np.exp(loss), self.params.variant), higher_is_better=False)


def learning_percentage(perplexity: np.ndarray, variant: str = "exact") -> np.ndarray:
    """LP per example from perplexities (epochs + 1, N), row 0 before training; NaN on a zero denominator."""
    p0, p1, pn = perplexity[0], perplexity[1], perplexity[-1]
    denominator = p0 - pn if variant == "exact" else p0
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.abs(denominator) > 1e-12 * np.maximum(np.abs(p0), 1.0)
        return np.where(ok, (p0 - p1) / np.where(ok, denominator, 1.0), np.nan)


@hookimpl
def register_scorers(register):
    register(LearningPercentage)
