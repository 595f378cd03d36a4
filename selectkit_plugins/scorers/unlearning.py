"""Unlearning-based influence scores: UnTrac and UnTrac-Inv (Isonuma & Titov, ACL 2024).
The gradient ascent runs in the `unlearn` pass provider (selectkit_plugins.passes.unlearn); these
scorers declare it and map its results to pool rows.

* `unlearning.group` (UnTrac): for each candidate group (a pool column such as `source`, or a
  k-means cluster), run a few steps of gradient ascent on the group from the model and measure
  how much the target loss rises. Every example gets its group's score; positive means the group
  helped the target. Pair it with the `unlearning` selector, which keeps whole groups best-first.
* `unlearning.untrac_inv` (UnTrac-Inv): one gradient-ascent run on the target, then each pool
  example's loss change `l(theta_unlearned, x) - l(theta, x)`; high means x shares what the target taught.

Reference code: `misonuma/untrac` (`unlearner.py`: `loss = -loss`; Adafactor, lr 5e-5, no grad clipping).
Deviations, all for reproducibility and cost: the model stays in eval mode (no dropout) so runs are
deterministic; no warmup; a fixed number of `steps` (the reference runs one epoch for UnTrac); the loss change
is averaged over evaluation checkpoints (`aggregate: mean`) because the paper finds single-step readings
sensitive to lr and step count.

Cost: UnTrac is G groups x (steps x batch forward/backward + checkpoints x target forward passes);
UnTrac-Inv is steps x batch forward/backward + (checkpoints + 1) forward passes over the pool.
Memory: one extra copy of the weights (UnTrac restores the model between groups).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from selectkit.plugin import FeatureRequest, Params, Score, ScoreContext, Scorer, Shape, hookimpl, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

if TYPE_CHECKING:  # pragma: no cover
    pass


# ---------------------------------------------------------------- components


class UnlearnParams(Params):
    optimizer: Literal["adafactor", "adam", "sgd"] = Field(
        "sgd", description="sgd: matched leave-one-source-out truth in 5/5 seeds on our toy; reference: adafactor")
    lr: float = Field(3e-4, gt=0, description="learning rate of the ascent (reference: 5e-5 with adafactor)")
    steps: int = Field(16, ge=1, description="optimizer steps of gradient ascent")
    batch_size: int = Field(8, ge=1, description="texts per forward/backward pass")
    grad_accum: int = Field(1, ge=1, description="passes accumulated per step (effective batch = batch_size x this)")
    max_grad_norm: float | None = Field(None, gt=0, description="gradient clipping; none like the reference")
    eval_every: int | None = Field(4, ge=1, description="read the loss change every this many steps (and at the end)")
    aggregate: Literal["mean", "last"] = Field("mean", description="mean over checkpoints (area under the curve) "
                                                                   "or the last one")
    eval_batch_size: int = Field(32, ge=1, description="texts per forward pass when measuring losses")
    max_target_examples: int | None = Field(256, ge=1, description="seeded subsample of the target texts used")


def _request(kind: str, params: Params, targets: list[str]) -> FeatureRequest:
    """The unlearn provider's request: every param of the scorer, plus the targets it reads."""
    settings = {**params.model_dump(mode="json"), "targets": tuple(sorted(targets))}
    return FeatureRequest(kind, "pool", tuple(sorted(settings.items())))


class GroupParams(UnlearnParams):
    group_by: str | None = Field(None, description="pool column whose values are the groups (e.g. source)")
    clusters: int | None = Field(None, ge=2, description="or: k-means clusters of the model's mean hidden states")
    max_groups: int = Field(256, ge=1, description="refuse more groups than this (each costs an ascent run)")

    @model_validator(mode="after")
    def _one_grouping(self):
        if (self.group_by is None) == (self.clusters is None):
            raise ValueError("set exactly one of `group_by` (a pool column) or `clusters` (k)")
        return self


class UnlearningGroup(Scorer):
    """UnTrac per group: target-loss rise after gradient ascent on the group; each example gets its group's
    score (higher: the group taught the target more). Groups from a pool column or k-means clusters."""

    name = "unlearning.group"
    Params = GroupParams
    needs_targets = True
    model_kinds = ("causal-lm",)

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [_request("unlearn_groups", self.params, targets)]

    def run(self, ctx: ScoreContext) -> Score:
        got = ctx.features.get("unlearn_groups", "pool", **dict(self.feature_requests(list(ctx.targets))[0].settings))
        return Score(values=got["scores"][got["inverse"]].astype(np.float64), higher_is_better=True)


class InvParams(UnlearnParams):
    steps: int = Field(50, ge=1, description="optimizer steps of gradient ascent on the target (reference 50)")
    grad_accum: int = Field(32, ge=1, description="passes per step; reference effective batch 256")
    eval_every: int | None = Field(10, ge=1, description="read pool losses every this many steps (each reading "
                                                         "is a forward pass over the pool)")
    max_target_examples: int | None = Field(None, ge=1, description="seeded subsample of the target texts "
                                                                    "ascended on (default: all)")
    relative: bool = Field(False, description="divide each loss change by the example's starting loss")
    per_target: bool = Field(False, description="one ascent run per target: a pool x target matrix")


class UnlearningInv(Scorer):
    """UnTrac-Inv: gradient ascent on the target, then each pool example's loss change (higher: the example
    shares what the target taught). One ascent run + (checkpoints + 1) forward passes over the pool."""

    name = "unlearning.untrac_inv"
    Params = InvParams
    needs_targets = True
    model_kinds = ("causal-lm",)

    def output_shape(self) -> Shape:
        return Shape.MATRIX if self.params.per_target else Shape.VECTOR

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        return [_request("unlearn_inv", self.params, targets)]

    def run(self, ctx: ScoreContext) -> Score:
        got = ctx.features.get("unlearn_inv", "pool", **dict(self.feature_requests(list(ctx.targets))[0].settings))
        values = got["values"]
        if not self.params.per_target:
            return Score(values=values[:, 0], higher_is_better=True)
        names = tuple(str(n) for n in got["names"])
        return Score(values=values, shape=Shape.MATRIX, higher_is_better=True, columns=names, tasks=names)


@hookimpl
def register_scorers(register):
    register(UnlearningGroup)
    register(UnlearningInv)
