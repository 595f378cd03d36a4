"""EL2N for sequences (Paul et al. 2021, "Deep Learning on a Data Diet", arXiv 2107.07075; Fayyaz
et al. 2022, "BERT on a Data Diet", arXiv 2211.05610): per token the L2 distance between the
predicted next-token distribution and the one-hot next token, averaged over the counted tokens.

    EL2N(x) = (1/R) Σ_r (1/T) Σ_t || p_{θ_r}(· | x_<t) - onehot(x_t) ||_2

Paul et al. average over R independently trained models early in training (10 runs, epoch 20 of
200); Fayyaz et al. find sequence models need at least one epoch of fine-tuning first, and that
pruning a small top share (the noisiest examples) before keeping the highest helps.

- `runs: null` (default): one model, the model as given (one forward pass, shared with
  perplexity): score with a model trained on the data the scores are for.
- `runs: R`: R seeded trainings of the model's `warmup` (its epochs set how short; the `train`
  provider trains run r with a seed derived from (seed, r)), EL2N at each run's last checkpoint
  (the `trajectory` provider), averaged over runs.
- `drop_top: f`: the f highest-scoring examples of the pool become NaN (never selected) before a
  `topk` keeps the highest of the rest.

Deviation: per-token EL2N averaged over tokens (the papers classify one label per example).
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from selectkit.plugin import FeatureRequest, Params, Score, ScoreContext, Scorer, hookimpl, lazy_import, row_keys
from selectkit_plugins.scorers._model import DROP_TOP_HELP, RUNS_HELP, drop_top, response_field, store

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class EL2NParams(Params):
    response: str | None = response_field()
    runs: PositiveInt | None = Field(None, description=RUNS_HELP)
    drop_top: float = Field(0.0, ge=0, lt=1, description=DROP_TOP_HELP)


def trajectory_requests(runs: int, response: str | None) -> list[FeatureRequest]:
    """`checkpoint_losses` of training runs 0..runs-1 (run 0: the warmup as configured)."""
    out = []
    for run in range(runs):
        settings = {"response": response, "points": "last", **({"run": run} if run else {})}
        out.append(FeatureRequest("checkpoint_losses", "pool",
                                  tuple(sorted((k, v) for k, v in settings.items() if v is not None))))
    return out


class EL2N(Scorer):
    """Mean token EL2N under a causal LM, optionally averaged over seeded training runs; higher is
    harder (or noisier). Data-diet pruning keeps the highest; `drop_top` first removes the noisiest."""

    name = "el2n"
    Params = EL2NParams
    model_kinds = ("causal-lm",)
    higher_is_better = True

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        if self.params.runs is None:
            return [FeatureRequest.of("el2n", "pool", response=self.params.response)]
        return trajectory_requests(self.params.runs, self.params.response)

    def run(self, ctx: ScoreContext) -> Score:
        features = store(ctx, self.name)
        if self.params.runs is None:
            values = np.asarray(features.get("el2n", "pool", response=self.params.response), np.float64)
        else:
            per_run = [features.get(r.kind, r.data, **dict(r.settings))["el2n"][-1]
                       for r in trajectory_requests(self.params.runs, self.params.response)]
            values = np.mean(np.stack(per_run), axis=0)
        if self.params.drop_top:
            values = drop_top(values, self.params.drop_top, row_keys(ctx.pool.ids))
        return Score(values=values, higher_is_better=True)


@hookimpl
def register_scorers(register):
    register(EL2N)
