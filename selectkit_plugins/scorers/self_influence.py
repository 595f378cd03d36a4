"""Per-example gradient-norm scores: TracIn self-influence (the PRESENCE signal) and GraNd.

Both use exact norms of the unprojected per-example gradients (no JL error) over the model's
checkpoints. Higher = larger gradients: novel, hard or mislabelled examples. To drop noisy
examples keep the lowest (e.g. `topk` with `prefer: worst`); PRESENCE's reweighting uses
softmax(tau * score). Importing this module does not import torch.

GraNd takes `runs: R` (Paul et al. 2021 average over independently trained models: R seeded
repetitions of the model's `warmup`, each run's gradient norms averaged over its checkpoints,
then over runs) and `drop_top: f` (the f highest-scoring examples become NaN, never selected:
Fayyaz et al. 2022 prune the noisiest top before keeping the highest).
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from selectkit.plugin import FeatureRequest, Score, ScoreContext, Scorer, hookimpl, lazy_import, row_keys
from selectkit_plugins.lib.influence.params import NormParams
from selectkit_plugins.scorers._model import DROP_TOP_HELP, RUNS_HELP, drop_top

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class GraNdParams(NormParams):
    runs: PositiveInt | None = Field(None, description=RUNS_HELP)
    drop_top: float = Field(0.0, ge=0, lt=1, description=DROP_TOP_HELP)


class _Norms(Scorer):
    model_kinds = ("causal-lm",)
    Params = NormParams

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        from selectkit_plugins.lib.influence.run import gradient_requests

        return gradient_requests(self.params, [], with_targets=False, keep_features=False, proj_dim=None)

    def norms(self, ctx: ScoreContext):
        from selectkit_plugins.lib.influence.run import gradient_features

        feats = gradient_features(ctx, self.params, with_targets=False, keep_features=False, proj_dim=None)
        return [f.pool.norms for f in feats], [f.checkpoint.lr for f in feats]


class SelfInfluence(_Norms):
    """TracIn self-influence (Pruthi et al. 2020; PRESENCE, Thakkar et al. 2023):
    sum over checkpoints of lr * ||grad loss(z)||^2. Higher = more self-influence."""

    name = "self_influence"

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.lib.influence.scores import self_influence

        return Score(values=self_influence(*self.norms(ctx)))


class GraNd(_Norms):
    """GraNd (Paul et al. 2021): mean over checkpoints (and seeded training runs) of ||grad loss(z)||.
    Higher = harder (data-diet keeps the highest; `drop_top` removes the noisiest first)."""

    name = "grand"
    Params = GraNdParams

    def _runs(self) -> list[int | None]:
        return [None] if self.params.runs is None else [r or None for r in range(self.params.runs)]

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        from selectkit_plugins.lib.influence.run import gradient_requests

        return [r for run in self._runs() for r in gradient_requests(
            self.params, [], with_targets=False, keep_features=False, proj_dim=None, run=run)]

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.lib.influence.run import gradient_features
        from selectkit_plugins.lib.influence.scores import grand

        per_run = []
        for run in self._runs():
            feats = gradient_features(ctx, self.params, with_targets=False, keep_features=False, proj_dim=None,
                                      run=run)
            per_run.append(grand([f.pool.norms for f in feats]))
        values = np.mean(np.stack(per_run), axis=0)
        if self.params.drop_top:
            values = drop_top(values, self.params.drop_top, row_keys(ctx.pool.ids))
        return Score(values=values)


@hookimpl
def register_scorers(register):
    register(SelfInfluence)
    register(GraNd)
