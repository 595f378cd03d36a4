"""Gradient influence of pool examples on target tasks: LESS, TracIn, DataInf, TRAK,
inverse-Hessian and EK-FAC. Each returns one column per target (positive = helpful for that target).

Each scorer declares the gradient features (or curvature results) it needs; the gradients
pass provider computes them at every checkpoint of the model. The maths lives in
`selectkit_plugins.lib.influence`; importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt

from selectkit.plugin import FeatureRequest, InfluenceForm, Score, ScoreContext, Scorer, Shape, hookimpl, lazy_import
from selectkit_plugins.lib.influence.params import Aggregate, GradientBase, PairwiseParams, ProjectedParams

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class _Pairwise(Scorer):
    output = Shape.MATRIX
    needs_targets = True
    model_kinds = ("causal-lm",)
    pool_adam = "none"

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        from selectkit_plugins.lib.influence.run import gradient_requests

        return gradient_requests(self._gradient_params(), targets, pool_adam=self.pool_adam)

    def _gradient_params(self):

        return ProjectedParams.model_validate({k: getattr(self.params, k) for k in ProjectedParams.model_fields})

    def _features(self, ctx: ScoreContext):
        from selectkit_plugins.lib.influence.run import gradient_features

        return gradient_features(ctx, self._gradient_params(), pool_adam=self.pool_adam)

    def _matrix(self, ctx: ScoreContext, per_target: dict[str, np.ndarray]) -> Score:
        """One column per target from each target's (N, M_t) scores (the curvature methods' results)."""
        from selectkit_plugins.lib.influence.run import target_columns

        reduce, names = target_columns(ctx, {t: v.shape[1] for t, v in per_target.items()}, self.params.aggregate)
        values = reduce(np.concatenate(list(per_target.values()), axis=1))
        return Score(values=values, shape=Shape.MATRIX, columns=names, tasks=names)

    def _streamed(self, ctx: ScoreContext, feats: list, score: Any, subtask_field: str | None = None,
                  **options: Any) -> Score:
        """`score(pool features per checkpoint, every target's features side by side per checkpoint,
        ..., reduce=...)`, streamed over the pool's row blocks into one column per target."""
        from selectkit_plugins.lib.influence.run import target_columns

        sizes = {t: len(feats[0].targets[t].features) for t in ctx.targets}
        reduce, names = target_columns(ctx, sizes, self.params.aggregate, subtask_field)
        targets = [np.concatenate([f.targets[t].features for t in ctx.targets]) for f in feats]
        values = score([f.pool.features for f in feats], targets, reduce=reduce, **options)
        return Score(values=values, shape=Shape.MATRIX, columns=names, tasks=names)


class LessParams(PairwiseParams):
    adam_mode: Literal["less", "paper"] = Field(
        "less", description="less: the reference code's Adam feature (eps inside sqrt, no bias correction); "
        "paper: bias-corrected m/(sqrt(v)+eps)")
    subtask_field: str | None = Field(
        None, description="target column naming subtasks: mean (aggregate) within each, then max across them")
    combine: Literal["none", "max"] = Field(
        "none", description="none: one column per target; max: one vector, the max over targets (LESS)")


class Less(_Pairwise):
    """LESS (Xia et al. 2024): lr-weighted cosine between Adam-preconditioned pool gradients and
    SGD target gradients over warmup checkpoints. Positive = aligned (helpful). Cost: one
    gradient pass per checkpoint over pool and targets; N x M dot products."""

    name = "influence.less"
    Params = LessParams
    per_row = True  # a row's cosines need its own gradients and the targets' only: may be `lazy`

    @property
    def pool_adam(self) -> str:
        return self.params.adam_mode

    def output_shape(self) -> Shape:
        return Shape.VECTOR if self.params.combine == "max" else Shape.MATRIX

    def influence_form(self) -> InfluenceForm:
        return InfluenceForm("less", cosine=True, normalize_lrs=True)

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.lib.influence.scores import less

        feats = self._features(ctx)
        score = self._streamed(ctx, feats, less, self.params.subtask_field, lrs=[f.checkpoint.lr for f in feats])
        if self.params.combine == "max":
            return Score(values=score.values.max(axis=1))
        return score


class TracInParams(PairwiseParams):
    normalize: bool = Field(False, description="cosine instead of dot products (grad-cos)")


class TracIn(_Pairwise):
    """TracInCP (Pruthi et al. 2020): sum over checkpoints of lr * <g(pool), g(target)>, on
    projected gradients. Positive = proponent (helpful)."""

    name = "influence.tracin"
    Params = TracInParams
    per_row = True  # a row's products need its own gradients and the targets' only: may be `lazy`

    def influence_form(self) -> InfluenceForm:
        return InfluenceForm("tracin-cos" if self.params.normalize else "tracin", cosine=self.params.normalize,
                             normalize_lrs=False)

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.lib.influence.scores import tracin

        feats = self._features(ctx)
        return self._streamed(ctx, feats, tracin, lrs=[f.checkpoint.lr for f in feats],
                              normalize=self.params.normalize)


class DataInfParams(PairwiseParams):
    layout: Literal["joint", "per_block"] = Field("per_block", description="per_block: DataInf's layer blocks")
    damping: float | None = Field(
        None, gt=0, description="lambda for every block; null: DataInf's layer-wise 0.1 * mean(g^2)")


class DataInf(_Pairwise):
    """DataInf (Kwon et al. 2024): closed-form Sherman-Morrison inverse of the damped per-block
    empirical Fisher, on per-block (projected) gradients; checkpoints combined with weights
    lr / sum(lr). Positive = helpful (the reference code returns the negation)."""

    name = "influence.datainf"
    Params = DataInfParams

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.lib.influence.scores import checkpoint_weights, datainf

        feats = self._features(ctx)
        pool = feats[0].pool
        return self._streamed(ctx, feats, datainf, slices=[(a, b) for _, a, b in pool.slices],
                              raw_sizes=pool.raw_sizes, damping=self.params.damping,
                              weights=checkpoint_weights([f.checkpoint.lr for f in feats]))


class TrakParams(PairwiseParams):
    proj_dim: PositiveInt = Field(
        2048, le=16384, description="random projection width k (traker's default 2048); TRAK inverts a k x k "
        "matrix per checkpoint, so raw gradients (null) are not an option")
    damping: float = Field(
        0.1, gt=0, description="lambda as a fraction of the mean eigenvalue of X^T X (trace / k): "
        "(X^T X + damping * trace/k * I)^-1; larger ranks like TracIn")


class Trak(_Pairwise):
    """TRAK (Park et al. 2023), output f = -loss so Q = 1: sum over checkpoints of w_c * <g(pool),
    (X^T X + lambda I)^-1 g(target)> on projected gradients, X the pool's; w = lr / sum(lr).

    X^T X is streamed over the pool's store (k x k memory); w is TRAK's uniform mean over models when
    the checkpoints share a learning rate. Positive = helpful. Cost: TracIn's gradient passes, plus
    N k^2 for X^T X and a k x k solve per checkpoint."""

    name = "influence.trak"
    Params = TrakParams

    def run(self, ctx: ScoreContext) -> Score:
        from selectkit_plugins.lib.influence.scores import checkpoint_weights, trak

        feats = self._features(ctx)
        return self._streamed(ctx, feats, trak, weights=checkpoint_weights([f.checkpoint.lr for f in feats]),
                              damping=self.params.damping)


class InverseHessianParams(GradientBase, Aggregate):
    solver: Literal["cg", "lissa", "explicit"] = Field(
        "cg", description="cg or lissa from Hessian-vector products; explicit builds H (small models only)")
    curvature: Literal["ggn", "hessian"] = Field(
        "ggn", description="ggn: Gauss-Newton J^T H_logits J (positive semi-definite; a LoRA's Hessian is "
        "indefinite); hessian: the exact Hessian (convex models, or large damping)")
    damping: float = Field(0.01, gt=0, description="added to the mean-loss curvature: (H + damping I)^-1")
    hessian_examples: PositiveInt | None = Field(256, description="pool rows (seeded sample) the Hessian averages")
    max_iter: PositiveInt = Field(100, description="CG iterations, or LiSSA depth")
    tol: float = Field(1e-6, gt=0, description="CG relative residual")
    lissa_scale: float = Field(10.0, gt=0, description="LiSSA scale (above the largest eigenvalue of H + damping)")
    explicit_max_params: PositiveInt = Field(4096, description="refuse `explicit` above this many parameters")


class _Curvature(_Pairwise):
    """Influence functions whose whole computation (curvature fit, solves) is one provider step."""

    kind = ""

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        from selectkit_plugins.lib.influence.requests import gradient_request

        return [gradient_request(self.kind, "pool", {**self.params.model_dump(mode="json"), "targets": targets})]

    def run(self, ctx: ScoreContext) -> Score:
        request = self.feature_requests(list(ctx.targets))[0]
        per_target = ctx.features.get(request.kind, "pool", **dict(request.settings))
        return self._matrix(ctx, {t: per_target[t] for t in ctx.targets})


class InverseHessian(_Curvature):
    """Influence functions (Koh & Liang 2017): g_pool^T (H + damping I)^-1 g_target with H the
    Gauss-Newton matrix (default) or exact Hessian of the mean loss over a pool sample, at the
    last checkpoint, w.r.t. the trainable (LoRA) parameters. Positive = helpful. For small
    models or adapters: one iHVP per target task (mean aggregation) or per target example (max)."""

    name = "influence.inverse_hessian"
    Params = InverseHessianParams
    kind = "ihvp_influence"


class EKFACParams(GradientBase, Aggregate):
    damping: float | None = Field(None, gt=0, description="added to Lambda; null: 0.1 * mean(Lambda) (kronfluence)")
    fisher: Literal["empirical", "sampled"] = Field(
        "empirical", description="gradients for the factors: true labels, or labels sampled from the model")
    kfac: bool = Field(False, description="K-FAC eigenvalues (no eigenvalue correction)")
    factor_examples: PositiveInt | None = Field(
        1024, description="pool rows (seeded sample) the factors are fit on; a pool within it (empirical fisher, "
                          "gradient matrices within 512 MiB) "
                          "is scored from the fit's own gradients, with no further pass")


class EKFAC(_Curvature):
    """EK-FAC influence (George et al. 2018; Grosse et al. 2023) on the trainable Linear layers
    (LoRA leaves), at the last checkpoint, with kronfluence's conventions (per-token covariances,
    per-example eigenvalue correction). Positive = helpful."""

    name = "influence.ekfac"
    Params = EKFACParams
    kind = "ekfac_influence"


@hookimpl
def register_scorers(register):
    for cls in (Less, TracIn, DataInf, Trak, InverseHessian, EKFAC):
        register(cls)
