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

from dataclasses import replace
from typing import Any

import numpy as np

from selectkit.contract.components import FeatureRequest
from selectkit.contract.hookspecs import hookimpl
from selectkit.contract.passes import ModelRef, PassContext, PassPlan, PassProvider, PlanContext, describe
from selectkit.errors import SelectkitError

KINDS: dict[str, dict[str, Any]] = {"checkpoint_losses": {"run": None, "response": None, "points": "all"}}
POINTS = ("all", "last")
VERSION = "1"


class Trajectory(PassProvider):
    """Per-example loss and EL2N before training and at every checkpoint of a training run."""

    name = "trajectory"
    version = VERSION
    kinds = KINDS

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        from selectkit.planning.estimates import model_pass
        from selectkit.storage.cache import cache_key

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
            estimate = model_pass(model, "pool", ctx)
            if estimate is not None:
                estimate = estimate.scaled(points, f"forward over the pool at {points} points of training")
            out.append(PassPlan(
                name=f"pool:{cache_key(describe(r))[:8]}",
                label=(f"losses of {model.name} over pool before training and at {points - 1} checkpoint(s)"
                       if which == "all" else f"losses of {model.name} over pool at its last checkpoint")
                      + (f" of run {run + 1}" if run else ""),
                requests=[r], data="pool", shards=points * rows,
                needs=[FeatureRequest("checkpoints", "pool", (("run", run),) if run else ())],
                key_parts=["checkpoint_losses", VERSION, model.fingerprint, ctx.sources["pool"].fingerprint,
                           ctx.sources["pool"].shard_rows, describe(r)],
                settings={"points": points, "first": trained + 1 - points, "row_shards": rows,
                          "detail": {"request": describe(r)}},
                estimate=estimate))
        return out

    def complete(self, step: Any, cache: Any) -> bool:
        return cache.sharded("passes", step.key, step.shards).complete()

    def _checkpoints(self, ctx: PassContext) -> list[Any]:
        return next(v for r, v in ctx.inputs.items() if r.kind == "checkpoints")

    def run(self, step: Any, ctx: PassContext, shards: list[int] | None = None) -> None:
        from selectkit_plugins.passes.forward import PassStats, compute_shard, feature_request

        request = step.payload.requests[0]
        response = dict(request.settings).get("response")
        reqs = [feature_request("loss", response=response), feature_request("el2n", response=response)]
        entry = ctx.cache.sharded("passes", step.key, step.shards, label=step.label)
        todo = entry.missing() if shards is None else [i for i in shards if not entry.done(i)]
        rows = step.payload.settings["row_shards"]
        checkpoints = self._checkpoints(ctx)
        ref = step.payload.model
        start = replace(ref, spec=ref.spec.model_copy(update={"lora": None}), fingerprint=ref.fingerprint + ":no-lora")
        device = ctx.options.get("device")
        stats = PassStats()
        first = step.payload.settings.get("first", 0)
        for point in sorted({first + i // rows for i in todo}):
            if point == 0:
                lm = ctx.load_model(start, device=device)
            else:
                adapter = checkpoints[point - 1].adapter
                lm = ctx.load_model(ref, device=device, **({"adapter": adapter} if adapter is not None else {}))
            for i in (i for i in todo if first + i // rows == point):
                ds = ctx.shard("pool", i % rows, step.payload.shard_rows)
                arrays = compute_shard(lm, ds, reqs, stats, ctx.options.get("batch_tokens"),
                                       ctx.options.get("batch_size"))
                entry.write(i, {"loss": arrays["f0"], "el2n": arrays["f1"]})
                ctx.say(done=i + 1, total=step.shards, unit="shard", checkpoint=point)

    def load(self, step: Any, ctx: PassContext) -> dict[FeatureRequest, Any]:
        rows = step.payload.settings["row_shards"]
        points = step.payload.settings["points"]
        entry = ctx.cache.sharded("passes", step.key, step.shards)
        first = step.payload.settings.get("first", 0)
        value: dict[str, Any] = {"names": (["before"] + [c.name for c in self._checkpoints(ctx)])[first:]}
        for name in ("loss", "el2n"):
            value[name] = np.stack([np.concatenate([part[name] for part in entry.read_all(range(c * rows,
                                                                                             (c + 1) * rows))])
                                    for c in range(points)])
        return {step.payload.requests[0]: value}


@hookimpl
def register_passes(register):
    register(Trajectory)
