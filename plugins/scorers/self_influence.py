"""Per-example gradient-norm scores: TracIn self-influence (the PRESENCE signal) and GraNd.

Both use exact norms of the unprojected per-example gradients (no JL error) over the model's
checkpoints. Higher = larger gradients: novel, hard or mislabelled examples. To drop noisy
examples keep the lowest (e.g. `topk` with `prefer: worst`); PRESENCE's reweighting uses
softmax(tau * score). Importing this module does not import torch.
"""

from __future__ import annotations

from selectkit.components import FeatureRequest, Score, ScoreContext, Scorer
from selectkit.hookspecs import hookimpl
from selectkit_plugins.influence.params import NormParams


class _Norms(Scorer):
    model_kinds = ("causal-lm",)
    Params = NormParams

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        from selectkit_plugins.influence.run import gradient_requests

        return gradient_requests(self.params, [], with_targets=False, keep_features=False, proj_dim=None)

    def norms(self, ctx: ScoreContext):
        from selectkit_plugins.influence.run import gradient_features

        feats = gradient_features(ctx, self.params, with_targets=False, keep_features=False, proj_dim=None)
        return [f.pool.norms for f in feats], [f.checkpoint.lr for f in feats]


class SelfInfluence(_Norms):
    """TracIn self-influence (Pruthi et al. 2020; PRESENCE, Thakkar et al. 2023):
    sum over checkpoints of lr * ||grad loss(z)||^2. Higher = more self-influence."""

    name = "self_influence"

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.influence.scores import self_influence

        return Score(values=self_influence(*self.norms(ctx)))


class GraNd(_Norms):
    """GraNd (Paul et al. 2021): mean over checkpoints of ||grad loss(z)||. Higher = harder
    (data-diet keeps the highest; drop a small top share to remove noise)."""

    name = "grand"

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.influence.scores import grand

        return Score(values=grand(self.norms(ctx)[0]))


@hookimpl
def register_scorers(register):
    register(SelfInfluence)
    register(GraNd)
