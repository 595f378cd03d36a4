"""Pooled embeddings as a FEATURES score: pool (N, D) plus each target's (M_t, D), so
feature-based selectors (optimal transport, k-means, dedup) run on real model embeddings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import FeatureRequest, Params, Score, ScoreContext, Scorer, Shape, hookimpl, lazy_import
from selectkit_plugins.scorers._model import POOLING_HELP, store

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class EmbeddingParams(Params):
    pooling: Literal["auto", "mean", "cls", "last"] = Field("auto", description=POOLING_HELP)
    normalize: bool = Field(True, description="L2-normalise each embedding (cosine geometry)")


class Embedding(Scorer):
    """Model embeddings of the pool and of the targets it names (all by default, none when the
    recipe has none), for feature-based selectors. One forward pass over pool and targets,
    shared with the other scorers of the model."""

    name = "embedding"
    Params = EmbeddingParams
    model_kinds = ("embedding", "masked-lm", "causal-lm")
    needs_targets = True
    targets_optional = True  # pool-only features serve k-means, dedup and bandit selectors
    output = Shape.FEATURES

    def _request(self, data: str) -> FeatureRequest:
        return FeatureRequest.of("embedding", data, pooling=self.params.pooling, normalize=self.params.normalize)

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [self._request(data) for data in ["pool", *targets]]

    def run(self, ctx: ScoreContext) -> Score:
        features = store(ctx, self.name)
        settings = {"pooling": self.params.pooling, "normalize": self.params.normalize}
        pool = np.asarray(features.get("embedding", "pool", **settings), np.float32)
        targets = {t: np.asarray(features.get("embedding", t, **settings), np.float32) for t in ctx.targets}
        names = tuple(ctx.targets)
        return Score(values=pool, shape=Shape.FEATURES, higher_is_better=True, tasks=names, target_features=targets)


@hookimpl
def register_scorers(register):
    register(Embedding)
