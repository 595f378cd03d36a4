"""The trajectory pass provider: per-example forward features along a training run.

Kind `checkpoint_losses` (settings: `run`, `response`, `points`): for the model before training
and after each checkpoint of a training run (the `train` provider's: the model's `warmup`, one checkpoint
per epoch, or its `checkpoints:` folders), every pool example's mean token loss and mean token
EL2N. Value: {"names": [before, epoch-1, ...], "loss": (C + 1, N), "el2n": (C + 1, N)}; row 0 is
the model the training started from (the model without its `lora`). `points: last` computes only
the last checkpoint's row (value rows: [last]). Learning percentage reads the loss curve; EL2N
averaged over runs reads the last checkpoint of each run.

The forward computation is the forward provider's (`compute_shard`, one forward pass per batch
for both features); this provider only loads the checkpoints. Sharded over (checkpoint x pool
row shard): a killed run resumes after the last finished shard, and shards split over devices.
"""

from __future__ import annotations

from typing import Any

from selectkit.plugin import (
    FeatureRequest,
    Model,
    ModelRef,
    PassContext,
    PassPlan,
    PassWork,
    PlanContext,
    SelectkitError,
    Shard,
    ShardedPass,
    Shards,
    cache_key,
    describe,
    hookimpl,
    lazy_import,
)
from selectkit_plugins.passes.forward import compute_shard, feature_request

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

KINDS: dict[str, dict[str, Any]] = {"checkpoint_losses": {"run": None, "response": None, "points": "all"}}
POINTS = ("all", "last")
VERSION = "1"


class Trajectory(ShardedPass):
    """Per-example loss and EL2N before training and at every checkpoint of a training run."""

    name = "trajectory"
    version = VERSION
    kinds = KINDS

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        spec = model.spec
        if spec.kind != "causal-lm":
            raise SelectkitError(f"model {model.name!r} is a {spec.kind}; losses along training need a causal-lm")
        if spec.warmup is None and not spec.checkpoints:
            raise SelectkitError(f"model {model.name!r} has no training run: give it a `warmup` (trained on the "
                                 "pool, one checkpoint per epoch) or `checkpoints:` folders")
        trained = spec.warmup.epochs if spec.warmup is not None else len(spec.checkpoints)
        rows = ctx.shard_count("pool")
        out = []
        for r in requests:
            run = dict(r.settings).get("run")
            which = dict(r.settings).get("points", "all")
            if which not in POINTS:
                raise SelectkitError(f"checkpoint_losses points {which!r} is not one of {', '.join(POINTS)}")
            points = trained + 1 if which == "all" else 1
            estimate = ctx.estimate(model, "pool")
            if estimate is not None:
                estimate = estimate.scaled(points, f"forward over the pool at {points} points of training")
            out.append(PassPlan(
                name=f"pool:{cache_key(describe(r))[:8]}",
                label=(f"losses of {model.name} over pool before training and at {points - 1} checkpoint(s)"
                       if which == "all" else f"losses of {model.name} over pool at its last checkpoint")
                      + (f" of run {run + 1}" if run else ""),
                requests=[r], data="pool", shards=points * rows, row_shards=rows, points=points,
                needs=[FeatureRequest("checkpoints", "pool", (("run", run),) if run else ())],
                key_parts=["checkpoint_losses", VERSION, model.fingerprint, ctx.sources["pool"].fingerprint,
                           ctx.sources["pool"].shard_rows, describe(r)],
                config=trained + 1 - points,  # the first point it computes: 0 (before training) or the last
                detail={"request": describe(r)}, estimate=estimate))
        return out

    def model(self, work: PassWork, point: int, ctx: PassContext) -> Model:
        """Point 0 of the run: the model before training (without its LoRA); point p: checkpoint p."""
        point += work.config
        if point == 0:
            return ctx.model(work.model.without_lora())
        adapter = ctx.input("checkpoints")[point - 1].adapter
        return ctx.model(work.model, **({"adapter": adapter} if adapter is not None else {}))

    def compute(self, work: PassWork, shard: Shard, model: Model, ctx: PassContext) -> dict[str, np.ndarray]:
        response = dict(work.requests[0].settings).get("response")
        reqs = [feature_request("loss", response=response), feature_request("el2n", response=response)]
        arrays = compute_shard(model, shard.rows, reqs, self.stats, ctx.batch_tokens, ctx.batch_size)
        return {"loss": arrays["f0"], "el2n": arrays["f1"]}

    def assemble(self, work: PassWork, shards: Shards, ctx: PassContext) -> dict[FeatureRequest, Any]:
        rows = work.row_shards
        names = ["before"] + [c.name for c in ctx.input("checkpoints")]
        value: dict[str, Any] = {"names": names[work.config:]}
        for name in ("loss", "el2n"):
            value[name] = np.stack([np.concatenate([part[name] for part in shards.read_all(range(c * rows,
                                                                                               (c + 1) * rows))])
                                    for c in range(work.points)])
        return {work.requests[0]: value}


@hookimpl
def register_passes(register):
    register(Trajectory)
