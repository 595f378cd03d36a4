"""whiten (TAROT, Feng et al., ICML 2025): whiten pool and target features with their pooled
covariance so no single dominant direction decides similarity (TAROT's `get_wfd`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import DataError, NormalizeContext, Normalizer, Params, Score, Shape, hookimpl, lazy_import
from selectkit_plugins.lib.whitening import apply_whitening, fit_whitening

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class WhitenParams(Params):
    method: Literal["cholesky", "zca"] = Field(
        "cholesky", description="cholesky (TAROT: W = L^-T) or zca (W = C^-1/2); both give identical dot products")
    ridge: float = Field(1e-5, ge=0, description="added to the covariance diagonal (absolute, as TAROT)")
    center: Literal["pooled", "pool_only", "none"] = Field(
        "pooled", description="subtract the mean of pool+targets (TAROT), of the pool only, or nothing")
    l2_normalize: bool = Field(True, description="scale every whitened row to unit length (TAROT's cosine geometry)")


class Whiten(Normalizer):
    """Whiten FEATURES (pool (N, D) and every target's (M_t, D)) with statistics pooled over pool and
    targets, as TAROT does, then optionally L2-normalize rows. Deviation from the reference: W is
    computed and applied in float64 (TAROT casts it to fp16); output keeps float32 unless the input is
    float64. Scales as O((N + M)·D² + D³) time and O(D² + chunk·D) memory beyond the output."""

    name = "whiten"
    Params = WhitenParams
    accepts = frozenset({Shape.FEATURES})

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        p = self.params
        pool = np.asarray(score.values)
        if pool.ndim != 2:
            raise DataError("whiten needs (N, D) features")
        targets = {name: np.asarray(t) for name, t in score.target_features.items()}
        for name, t in targets.items():
            if t.ndim != 2 or t.shape[1] != pool.shape[1]:
                raise DataError(f"whiten: target {name!r} features have shape {t.shape}, pool has {pool.shape}")
        mean, w = fit_whitening([pool, *targets.values()], method=p.method, ridge=p.ridge, center=p.center)
        whiten = lambda x: apply_whitening(x, mean, w, l2_normalize=p.l2_normalize)  # noqa: E731
        return score.with_values(whiten(pool), target_features={k: whiten(v) for k, v in targets.items()})


@hookimpl
def register_normalizers(register):
    register(Whiten)
