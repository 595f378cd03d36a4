"""softmax: p = softmax(x / temperature) per column or within groups, computed in log space
(MATES uses temperature 0.5, FLYT 1, kMQ within each cluster)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import NormalizeContext, Normalizer, Score, Shape, hookimpl, lazy_import
from selectkit_plugins.normalizers._common import ColumnParams, transform_columns

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class SoftmaxParams(ColumnParams):
    temperature: float = Field(1.0, gt=0, description="divides the scores first: small = peaked, large = flat")
    output: Literal["prob", "log_prob"] = Field(
        "prob", description="prob sums to 1 per column (per group); log_prob avoids underflow on large pools")


class Softmax(Normalizer):
    """Turn scores into sampling probabilities that sum to 1 per column (and per `group_by` group).
    Softmax is increasing in x, so orientation is kept: `sign_flip` a lower-is-better score first
    if the probabilities should favour good examples. NaN entries (nan: keep) get NaN and are left
    out of the normalisation. O(N·C) time, no extra copies beyond one block."""

    name = "softmax"
    Params = SoftmaxParams
    accepts = frozenset({Shape.VECTOR, Shape.MATRIX})

    def run(self, score: Score, ctx: NormalizeContext) -> Score:
        p = self.params

        def fn(block: np.ndarray) -> np.ndarray:
            z = block / p.temperature
            top = np.fmax.reduce(z, axis=0)
            top = np.where(np.isfinite(top), top, 0.0)
            with np.errstate(divide="ignore"):
                lse = top + np.log(np.nansum(np.exp(z - top), axis=0))
            log_p = z - lse
            return log_p if p.output == "log_prob" else np.exp(log_p)

        return transform_columns(score, ctx, p, self.name, fn)


@hookimpl
def register_normalizers(register):
    register(Softmax)
