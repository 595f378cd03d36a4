"""Pretraining-data (contamination) detection: flag pool examples a model has likely seen in
training, with Min-K% Prob (Shi et al. 2023) or Min-K%++ (Zhang et al. 2024) against a threshold
calibrated on text known to be unseen by the model.

    s(x)   = Min-K% (or Min-K%++) of x, k = 0.2
    tau    = the (1 - fpr) quantile of s over the calibration targets (known-unseen text)
    flag(x) = 1 if s(x) > tau else 0

so at most `fpr` of the known-unseen texts are flagged: the false-positive rate is set on data
the model cannot have seen, instead of a threshold tuned on labelled members (the papers report
AUROC and TPR at a fixed FPR on WikiMIA, whose unseen half plays this role here). The output is a
column to read or to filter on (`threshold` with `max: 0` keeps the unflagged, i.e. decontaminates);
`output: margin` gives s(x) - tau instead.

Passes: `token_logprobs` (or `token_zscores`) of the forward provider over the pool and each
calibration target (one forward step of the model per source). Deviations: the papers report
scores and AUROC, not a calibrated flag; ⌈k·N⌉ tokens per text as in `min_k_prob`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import DataError, FeatureRequest, Params, Score, ScoreContext, Scorer, hookimpl, lazy_import
from selectkit_plugins.scorers._model import response_field, store
from selectkit_plugins.scorers.min_k_prob import KIND, min_k_scores

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class ContaminationParams(Params):
    variant: Literal["standard", "plus"] = Field(
        "plus", description="standard: Min-K% Prob; plus: Min-K%++ (token z-scores)")
    k: float = Field(0.2, gt=0, le=1, description="fraction of the lowest-scoring tokens averaged")
    fpr: float = Field(0.05, gt=0, lt=1, description="share of the known-unseen calibration texts allowed above "
                       "the threshold (the false-positive rate)")
    output: Literal["flag", "margin"] = Field(
        "flag", description="flag: 1 for likely seen, 0 otherwise; margin: score minus the threshold")
    response: str | None = response_field()


class Contamination(Scorer):
    """Flag examples likely seen in pretraining: Min-K% / Min-K%++ above the (1 - fpr) quantile of
    the same score on known-unseen calibration targets; 1 = likely seen."""

    name = "contamination"
    Params = ContaminationParams
    model_kinds = ("causal-lm",)
    needs_targets = True
    higher_is_better = True

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        kind = KIND[self.params.variant]
        return [FeatureRequest.of(kind, data, response=self.params.response) for data in ["pool", *targets]]

    def run(self, ctx: ScoreContext) -> Score:
        p = self.params
        features = store(ctx, self.name)
        kind = KIND[p.variant]
        values = min_k_scores(features.get(kind, "pool", response=p.response), p.k)
        reference = np.concatenate([min_k_scores(features.get(kind, t, response=p.response), p.k)
                                    for t in ctx.targets] or [np.zeros(0)])
        reference = reference[~np.isnan(reference)]
        if not len(reference):
            raise DataError(f"{self.name}: the calibration targets ({', '.join(ctx.targets) or 'none'}) have no "
                            "scored text; name known-unseen text under `targets:`")
        tau = calibrated_threshold(reference, p.fpr)
        if p.output == "margin":
            return Score(values=values - tau, higher_is_better=True)
        flags = np.where(np.isnan(values), np.nan, (values > tau).astype(np.float64))
        return Score(values=flags, higher_is_better=True)


def calibrated_threshold(reference: np.ndarray, fpr: float) -> float:
    """The smallest observed value with at most `fpr` of `reference` strictly above it."""
    ordered = np.sort(np.asarray(reference, np.float64))
    above = int(np.floor(fpr * len(ordered) + 1e-9))  # at most this many may lie above the threshold
    return float(ordered[len(ordered) - 1 - min(above, len(ordered) - 1)])


@hookimpl
def register_scorers(register):
    register(Contamination)
