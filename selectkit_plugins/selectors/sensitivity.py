"""Clustering-based sensitivity sampling (Axiotis, Cohen-Addad, Henzinger et al., ICML 2024, arXiv 2402.17327).

Cluster the features with k-means, read an (expensive) loss only at a few representatives per cluster,
bound every example's loss by `v(x) = λ·d(x, c(x))^z + l̂_c(x)` (Hölder continuity of the loss in the
embedding), then draw `m` examples i.i.d. with `p ∝ v` and weight each draw `1/(m·p)`: the weighted sum
`Σ counts·weights·loss` is an unbiased estimate of the candidates' total loss (divide by N for the mean).
No reference code is public: the formula follows the paper's abstract and standard sensitivity sampling
(our reading, not checked against an implementation); `mixture` is the half-and-half variant of the coreset literature.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from selectkit.plugin import (
    KMeansParams,
    RecipeError,
    SelectContext,
    Selection,
    Selector,
    SelectorParams,
    Shape,
    features_of,
    hookimpl,
    kmeans,
    lazy_import,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class SensitivityParams(SelectorParams):
    k: int = Field(100, ge=1, description="k-means clusters")
    loss: str | None = Field(None, description="vector score holding a per-example loss (>= 0), read only at "
                                               "the representatives; without it every cluster counts 1")
    representatives: int = Field(1, ge=1, description="points nearest each center whose loss is averaged")
    holder_lambda: float = Field(1.0, ge=0, description="λ, the Hölder constant scaling the distance term")
    z: float = Field(2.0, gt=0, description="distance exponent (2: k-means cost)")
    mixture: float | None = Field(None, gt=0, lt=1, description="p = mixture·(λd/Σλd) + (1-mixture)·(l̂/Σl̂); "
                                                                "null: p ∝ λd + l̂")
    l2_normalize: bool = Field(False, description="cluster unit-length features")
    kmeans: KMeansParams = Field(default_factory=KMeansParams)

    @model_validator(mode="after")
    def _draw_count(self):
        if self.budget is not None and self.budget.kind == "tokens":
            raise ValueError("sensitivity_sampling draws a number of examples: give a count or fraction budget")
        return self


class SensitivitySampling(Selector):
    """Draw the budget i.i.d. ∝ a cluster-distance + representative-loss bound; `weights` are 1/(m·p) per draw
    and `counts` the draws, so weighted losses are unbiased. Reads the loss at k·representatives points only.
    Scales as k-means plus O(N); no N×N matrix."""

    name = "sensitivity_sampling"
    extras = ("cluster",)
    version = "2"
    Params = SensitivityParams
    accepts = frozenset({Shape.FEATURES})
    score_params = {"loss": frozenset({Shape.VECTOR})}

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        x = features_of(ctx, p.l2_normalize, self.name)
        labels, centers = kmeans(x, p.k, ctx.rng("kmeans"), p.kmeans)
        dist = np.linalg.norm(x - centers[labels], axis=1).astype(np.float64) ** p.z
        reps = representatives(labels, dist, p.representatives)
        cluster_loss = np.ones(len(centers))
        if p.loss is not None:
            values = ctx.scores[p.loss].values  # read at the representatives only (the expensive score)
            for c, members in reps.items():
                cluster_loss[c] = float(np.mean(np.asarray(values[ctx.candidates[members]], dtype=np.float64)))
            if not np.all(np.isfinite(cluster_loss)) or cluster_loss.min() < 0:
                raise RecipeError(f"{self.name}: the loss score {p.loss!r} must be finite and >= 0 "
                                  "at the cluster representatives")
        prob = sampling_probabilities(dist, cluster_loss[labels], p.holder_lambda, p.mixture)
        m = p.budget.max_count(len(ctx.candidates))
        draws = ctx.rng("draws").choice(len(prob), size=m, replace=True, p=prob)
        picked, first, counts = np.unique(draws, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")  # best-first = draw order
        picked, counts = picked[order], counts[order]
        weights = 1.0 / (m * prob[picked])
        diagnostics = {"draws": int(m), "unique": int(len(picked)), "clusters": int(len(reps)),
                       "loss_reads": int(sum(len(v) for v in reps.values())) if p.loss else 0}
        return Selection(indices=ctx.candidates[picked], weights=weights, counts=counts.astype(np.int64),
                         diagnostics=diagnostics)


def representatives(labels: np.ndarray, dist: np.ndarray, r: int) -> dict[int, np.ndarray]:
    """For each non-empty cluster, the positions of its r points nearest the center."""
    order = np.lexsort((dist, labels))
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return {int(labels[g[0]]): g[:r] for g in np.split(order, bounds) if len(g)}


def sampling_probabilities(dist: np.ndarray, cluster_loss: np.ndarray, holder_lambda: float,
                           mixture: float | None) -> np.ndarray:
    """p(x) from the Hölder bound v(x) = λ·d(x) + l̂_c(x), or the `mixture` of its two normalized terms.
    A floor keeps every p > 0 (a zero probability would bias the estimate)."""
    near = holder_lambda * dist
    if mixture is None:
        v = near + cluster_loss
    else:
        v = mixture * near / max(near.sum(), 1e-300) + (1 - mixture) * cluster_loss / max(cluster_loss.sum(), 1e-300)
    total = v.sum()
    if total <= 0:
        return np.full(len(v), 1.0 / len(v))
    v = np.maximum(v, 1e-9 * total / len(v))
    return v / v.sum()


@hookimpl
def register_selectors(register):
    register(SensitivitySampling)
