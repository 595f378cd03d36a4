"""The gradients pass provider: per-example gradient features of a causal LM over a data
source, at every checkpoint of the model, and the curvature-based influence methods.

Kinds:
- `grad_features`: per checkpoint, (N, D) projected (optionally Adam-preconditioned) gradient
  features, exact gradient norms and losses. One step per (settings, data source), sharded
  over checkpoints x row shards, so a kill resumes after the last finished shard and the
  work splits over devices or workers. An example with no counted token has NaN rows.
- `ekfac_influence`, `ihvp_influence`: (N, M_t) influence of every pool example on each
  target, by EK-FAC or an inverse (Gauss-Newton) Hessian solved with CG/LiSSA/Cholesky, at
  the last checkpoint. One unsharded step each (they are for small models and adapters).
The checkpoints come from the `train` provider (a warmup, given folders, or the model itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
    StepStore,
    StoredFeatures,
    cache_key,
    checkpoint_shards,
    describe,
    encode_features,
    hookimpl,
    lazy_import,
    prompts_of,
)
from selectkit_plugins.lib.influence.requests import KINDS

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

CHECKPOINTS = FeatureRequest("checkpoints", "pool")
VERSION = "2"


class Gradients(ShardedPass):
    """Per-example gradients (hooks or vmap), their projections, and EK-FAC / iHVP influence."""

    name = "gradients"
    version = VERSION
    kinds = KINDS
    unit = "gradient shard"

    def canonical(self, request: FeatureRequest) -> FeatureRequest:
        from selectkit_plugins.lib.influence.requests import resolved

        return resolved(super().canonical(request))

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        if model.spec.kind != "causal-lm":
            raise SelectkitError(f"model {model.name!r} is a {model.spec.kind}; gradient scorers need a causal-lm")
        _check_support(model, requests, ctx)
        spec = model.spec
        checkpoints = spec.warmup.epochs if spec.warmup is not None else len(spec.checkpoints or []) or 1
        trained = spec.warmup is not None or spec.checkpoints
        out = []
        for r in requests:
            settings = dict(r.settings)
            run = settings.get("run")
            needs = [FeatureRequest("checkpoints", "pool", (("run", run),) if run else ())] if trained or run else []
            tag = cache_key(describe(r))[:8]
            if r.kind == "grad_features":
                rows = ctx.shard_count(r.data)
                estimate = ctx.estimate(model, r.data, backward=True)
                if estimate is not None:
                    estimate = estimate.scaled(checkpoints, f"per-example gradients x {checkpoints} checkpoint(s)",
                                               work="gradients")
                what = "norms" if not settings.get("keep_features", True) else "features"
                adam = f", Adam ({settings['adam']})" if settings.get("adam", "none") != "none" else ""
                out.append(PassPlan(f"{r.data}:{tag}", f"gradient {what} of {model.name} over {r.data} at "
                                    f"{checkpoints} checkpoint(s){adam}", [r], r.data,
                                    ["grad_features", model.fingerprint, ctx.sources[r.data].fingerprint,
                                     ctx.sources[r.data].shard_rows, describe(r), ctx.seed],
                                    needs=needs, shards=checkpoints * rows, row_shards=rows, points=checkpoints,
                                    estimate=estimate, detail={"request": describe(r)}))
            else:
                targets = list(settings.get("targets", ()))
                estimate = ctx.estimate(model, "pool", backward=True)
                if estimate is not None:
                    estimate = estimate.scaled(*_curvature_passes(r, ctx.rows.get("pool")), work="gradients")
                out.append(PassPlan(f"{r.kind}:{tag}", f"{r.kind} of {model.name} for {', '.join(targets)}", [r],
                                    "pool",
                                    [r.kind, model.fingerprint, ctx.sources["pool"].fingerprint,
                                     [(t, ctx.sources[t].fingerprint) for t in targets], describe(r), ctx.seed],
                                    needs=needs, estimate=estimate, reads=targets, detail={"request": describe(r)}))
        return out

    # ---------------------------------------------------------------- running
    def complete(self, work: PassWork, store: StepStore) -> bool:
        return super().complete(work, store) if work.shards else store.has()

    def run(self, work: PassWork, ctx: PassContext, shards: list[int] | None = None) -> None:
        if work.requests[0].kind == "grad_features":
            return super().run(work, ctx, shards)
        return self._influence(work, ctx, work.requests[0])

    def load(self, work: PassWork, ctx: PassContext) -> dict[FeatureRequest, Any]:
        request = work.requests[0]
        if request.kind == "grad_features":
            return super().load(work, ctx)
        got = ctx.store.read()
        if got is None:
            raise SelectkitError(f"{work.label}: the cached result is missing; run again")
        return {request: {k.removeprefix("target:"): v for k, v in got.items()}}

    def model(self, work: PassWork, point: int, ctx: PassContext) -> PointFeaturizer:
        """Checkpoint `point` loaded with what its gradients are taken with (adapter unfrozen, Adam
        state, batch sizes), and the block layout every shard of it records."""
        from selectkit_plugins.lib.influence.adam import AdamState
        from selectkit_plugins.lib.influence.checkpoints import adam_state
        from selectkit_plugins.lib.influence.pipeline import block_layout, lm_featurizer
        from selectkit_plugins.passes.forward import gradient_batches

        settings = dict(work.requests[0].settings)
        checkpoint = _checkpoints(ctx)[point]
        lm = _load(work, ctx, checkpoint, settings["params"])
        gs = _gradient_settings(settings, ctx.seed, lm.max_length)
        feat = lm_featurizer(lm.model, gs)
        mode = settings["adam"]
        if mode != "none":
            adam = adam_state(checkpoint, feat.param_names) if checkpoint.optimizer is not None else \
                AdamState.zeros(feat.raw_dim)
            feat = lm_featurizer(lm.model, gs, adam, mode)
        if settings["batch_size"] == "auto":
            from dataclasses import replace

            tokens, most = gradient_batches(lm, feat.raw_dim)
            gs = replace(gs, batch_tokens=tokens, max_rows=most)
        slices, raw = block_layout(feat)
        layout = np.frombuffer(json.dumps({"slices": slices, "raw_sizes": raw}).encode(), dtype=np.uint8)
        return PointFeaturizer(lm, feat, gs, layout, checkpoint.name)

    def compute(self, work: PassWork, shard: Shard, model: PointFeaturizer, ctx: PassContext) -> dict[str, Any]:
        from selectkit_plugins.lib.influence.pipeline import featurize_texts

        settings = dict(work.requests[0].settings)
        got = featurize_texts(model.lm.model, model.lm.tokenizer, shard.rows.texts, model.settings,
                              prompts=prompts_of(shard.rows, settings.get("response")), featurizer=model.featurizer)
        return {**encode_features(got.features, settings["feature_dtype"]), "norms": got.norms, "losses": got.losses,
                "layout": model.layout}

    def assemble(self, work: PassWork, shards: Shards, ctx: PassContext) -> dict[FeatureRequest, Any]:
        """Per checkpoint: the store's features, read shard by shard when a score streams them (never
        concatenated here), beside the norms and losses (one number per row)."""
        from selectkit_plugins.lib.influence.pipeline import FeatureSet

        rows = work.row_shards
        dtype = dict(work.requests[0].settings)["feature_dtype"]
        value = []
        for c, ck in enumerate(_checkpoints(ctx)):
            indices = checkpoint_shards(c, rows)
            parts = shards.read_all(indices, mmap=True)
            layout = json.loads(bytes(parts[0]["layout"]).decode())
            norms = np.concatenate([np.asarray(p["norms"]) for p in parts])
            losses = np.concatenate([np.asarray(p["losses"]) for p in parts])
            features = StoredFeatures(shards, indices, len(norms), parts[0]["features"].shape[1], dtype)
            del parts  # nothing of the features stays mapped until a score reads them
            value.append(CheckpointGradients(ck, FeatureSet(features, norms, losses,
                                                            [tuple(s) for s in layout["slices"]],
                                                            list(layout["raw_sizes"]))))
        return {work.requests[0]: value}

    def _influence(self, work: PassWork, ctx: PassContext, request: FeatureRequest) -> None:
        from selectkit_plugins.lib.influence.lm import ekfac_lm, inverse_hessian_lm

        settings = dict(request.settings)
        checkpoint = _checkpoints(ctx)[-1]  # influence functions assume a trained model
        lm = _load(work, ctx, checkpoint, settings["params"], eager=request.kind == "ihvp_influence")
        targets = {t: ctx.targets[t] for t in settings.get("targets", ())}
        fn = ekfac_lm if request.kind == "ekfac_influence" else inverse_hessian_lm
        result = fn(lm, ctx.pool, targets, settings, seed=ctx.seed,
                    progress=lambda done, total: ctx.say(done=done, total=total, unit="pool shard"))
        ctx.store.write({f"target:{t}": v for t, v in result.items()}, label=work.label)


@dataclass(frozen=True)
class PointFeaturizer:
    """What one checkpoint's shards are computed with: the model, its featurizer and settings."""

    lm: Model
    featurizer: Any
    settings: Any
    layout: np.ndarray
    name: str


def _checkpoints(ctx: PassContext) -> list[Any]:
    """The checkpoints the `train` provider planned (the model itself when nothing trains it)."""
    from selectkit_plugins.lib.influence.checkpoints import Checkpoint

    for request, value in ctx.inputs.items():
        if request.kind == "checkpoints":
            return value
    return [Checkpoint("model")]


def _load(work: PassWork, ctx: PassContext, checkpoint: Any, mode: str, eager: bool = False) -> Model:
    """The model at `checkpoint` with what gradients are taken of (`params`) unfrozen."""
    from selectkit_plugins.lib.influence.checkpoints import unfreeze

    options: dict[str, Any] = {"merge_lora": False}
    if checkpoint.adapter is not None:
        options["adapter"] = checkpoint.adapter
    if eager:
        options["attn_implementation"] = "eager"
    lm = ctx.model(work.model, **options)
    unfreeze(lm.model, mode, checkpoint.adapter is not None or work.model.spec.lora is not None)
    return lm


class CheckpointGradients:
    """Gradient features of one data source at one checkpoint (its `lr` weighs it)."""

    def __init__(self, checkpoint: Any, features: Any):
        self.checkpoint, self.features = checkpoint, features

    @property
    def lr(self) -> float:
        return self.checkpoint.lr


def _check_support(model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> None:
    """An architecture the gradient maths cannot handle is a plan-time error naming it (torch-free)."""
    from selectkit_plugins.lib.influence.layers import gradient_support

    config = ctx.config(model)
    if config is None:
        return  # a hub id: checked when it loads
    for params in sorted({dict(r.settings).get("params", "auto") for r in requests}):
        problem = gradient_support(config, params)
        if problem:
            raise SelectkitError(f"model {model.name!r}: {problem}")


def _gradient_settings(settings: dict[str, Any], seed: int, max_length: int) -> Any:
    from selectkit_plugins.lib.influence.pipeline import GradientSettings

    return GradientSettings(proj_dim=settings.get("proj_dim"), proj_kind=settings["proj_kind"], seed=seed,
                            layout=settings["layout"], factorize_above=settings.get("factorize_above"),
                            factor_dim=settings["factor_dim"], method=settings["method"],
                            batch_size=0 if settings["batch_size"] == "auto" else settings["batch_size"],
                            max_length=max_length,  # auto (0): sized from the loaded model, see `run`
                            dtype="float32", keep_features=settings["keep_features"])  # stored by `encode`


def _curvature_passes(request: FeatureRequest, pool_rows: int | None) -> tuple[float, str]:
    """Pool passes of a curvature request, and what they are. iHVP fits on a sample, then scores the
    pool: 2. EK-FAC fits in one pass over `factor_examples` rows, and a pool within them (empirical
    Fisher) is scored from the fit's own gradients: 1 (2 passes of the fit rows when their gradient
    matrices exceed `ekfac.KEEP_BYTES`, which planning does not see)."""
    settings = dict(request.settings)
    if request.kind != "ekfac_influence" or not pool_rows:
        return 2.0, f"{request.kind}: curvature fit + pool and target gradients"
    fit = min(settings.get("factor_examples") or pool_rows, pool_rows)
    if fit == pool_rows and settings.get("fisher") == "empirical":
        return 1.0, "ekfac_influence: one pass fits the factors on the pool and gives its gradients; targets"
    return 1.0 + fit / pool_rows, f"ekfac_influence: factors fit on {fit:,} rows + pool and target gradients"


@hookimpl
def register_passes(register):
    register(Gradients)
