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
from typing import Any

import numpy as np

from selectkit.contract.components import FeatureRequest
from selectkit.contract.hookspecs import hookimpl
from selectkit.contract.passes import ModelRef, PassContext, PassPlan, PassProvider, PlanContext, describe
from selectkit.errors import SelectkitError

BASE = {"params": "auto", "method": "hooks", "batch_size": "auto", "response": None, "run": None}
FEATURES = {**BASE, "proj_dim": 1024, "proj_kind": "rademacher", "layout": "joint", "factorize_above": 1 << 22,
            "factor_dim": 32, "feature_dtype": "float32", "adam": "none", "keep_features": True}
EKFAC = {**BASE, "damping": None, "fisher": "empirical", "kfac": False, "factor_examples": 1024, "targets": ()}
IHVP = {**BASE, "aggregate": "mean", "solver": "cg", "curvature": "ggn", "damping": 0.01, "hessian_examples": 256,
        "max_iter": 100, "tol": 1e-6, "lissa_scale": 10.0, "explicit_max_params": 4096, "targets": ()}
CHECKPOINTS = FeatureRequest("checkpoints", "pool")
VERSION = "2"


def gradient_request(kind: str, data: str, settings: dict[str, Any]) -> FeatureRequest:
    """A request with settings taken from a scorer's params (only the keys the kind knows)."""
    known = {"grad_features": FEATURES, "ekfac_influence": EKFAC, "ihvp_influence": IHVP}[kind]
    picked = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items() if k in known}
    return FeatureRequest(kind, data, tuple(sorted(picked.items())))


class Gradients(PassProvider):
    """Per-example gradients (hooks or vmap), their projections, and EK-FAC / iHVP influence."""

    name = "gradients"
    version = VERSION
    kinds = {"grad_features": FEATURES, "ekfac_influence": EKFAC, "ihvp_influence": IHVP}

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        from selectkit.planning.estimates import model_pass

        if model.spec.kind != "causal-lm":
            raise SelectkitError(f"model {model.name!r} is a {model.spec.kind}; gradient scorers need a causal-lm")
        _check_support(model, requests)
        spec = model.spec
        checkpoints = spec.warmup.epochs if spec.warmup is not None else len(spec.checkpoints or []) or 1
        trained = spec.warmup is not None or spec.checkpoints
        out = []
        for r in requests:
            settings = dict(r.settings)
            run = settings.get("run")
            needs = [FeatureRequest("checkpoints", "pool", (("run", run),) if run else ())] if trained or run else []
            tag = _tag(r)
            if r.kind == "grad_features":
                rows = ctx.shard_count(r.data)
                estimate = model_pass(model, r.data, ctx, backward=True)
                if estimate is not None:
                    from selectkit.planning.estimates import GRADIENT_OVERHEAD

                    estimate = estimate.scaled(checkpoints, f"per-example gradients x {checkpoints} checkpoint(s)",
                                               GRADIENT_OVERHEAD)
                what = "norms" if not settings.get("keep_features", True) else "features"
                adam = f", Adam ({settings['adam']})" if settings.get("adam", "none") != "none" else ""
                out.append(PassPlan(f"{r.data}:{tag}", f"gradient {what} of {model.name} over {r.data} at "
                                    f"{checkpoints} checkpoint(s){adam}", [r], r.data,
                                    ["grad_features", model.fingerprint, ctx.sources[r.data].fingerprint,
                                     ctx.sources[r.data].shard_rows, describe(r), ctx.seed],
                                    needs=needs, shards=checkpoints * rows, estimate=estimate,
                                    settings={"checkpoints": checkpoints, "row_shards": rows,
                                              "detail": {"request": describe(r)}}))
            else:
                targets = list(settings.get("targets", ()))
                estimate = model_pass(model, "pool", ctx, backward=True)
                if estimate is not None:
                    from selectkit.planning.estimates import GRADIENT_OVERHEAD

                    estimate = estimate.scaled(2.0, f"{r.kind}: curvature fit + pool and target gradients",
                                               GRADIENT_OVERHEAD)
                out.append(PassPlan(f"{r.kind}:{tag}", f"{r.kind} of {model.name} for {', '.join(targets)}", [r],
                                    "pool",
                                    [r.kind, model.fingerprint, ctx.sources["pool"].fingerprint,
                                     [(t, ctx.sources[t].fingerprint) for t in targets], describe(r), ctx.seed],
                                    needs=needs, shards=0, estimate=estimate, artifact="passes", reads=targets,
                                    settings={"targets": targets, "detail": {"request": describe(r)}}))
        return out

    # ---------------------------------------------------------------- running
    def complete(self, step: Any, cache: Any) -> bool:
        if step.shards:
            return cache.sharded("passes", step.key, step.shards).complete()
        return cache.has("passes", step.key)

    def _checkpoints(self, step: Any, ctx: PassContext) -> list[Any]:
        from selectkit_plugins.lib.influence.checkpoints import Checkpoint

        for request, value in ctx.inputs.items():
            if request.kind == "checkpoints":
                return value
        return [Checkpoint("model")]

    def _model(self, step: Any, ctx: PassContext, checkpoint: Any, mode: str, eager: bool = False) -> Any:
        from selectkit_plugins.lib.influence.checkpoints import unfreeze

        kwargs: dict[str, Any] = {"merge_lora": False}
        if checkpoint.adapter is not None:
            kwargs["adapter"] = checkpoint.adapter
        if eager:
            kwargs["attn_implementation"] = "eager"
        lm = ctx.load_model(step.payload.model, **kwargs)
        has_adapter = checkpoint.adapter is not None or step.payload.model.spec.lora is not None
        unfreeze(lm.model, mode, has_adapter)
        return lm

    def run(self, step: Any, ctx: PassContext, shards: list[int] | None = None) -> None:
        request = step.payload.requests[0]
        if request.kind != "grad_features":
            return self._influence(step, ctx, request)
        from selectkit.models.lm import prompts_of
        from selectkit_plugins.lib.influence.adam import AdamState
        from selectkit_plugins.lib.influence.checkpoints import adam_state
        from selectkit_plugins.lib.influence.pipeline import block_layout, featurize_texts, lm_featurizer

        settings = dict(request.settings)
        entry = ctx.cache.sharded("passes", step.key, step.shards, label=step.label)
        todo = entry.missing() if shards is None else [i for i in shards if not entry.done(i)]
        rows = step.payload.settings["row_shards"]
        checkpoints = self._checkpoints(step, ctx)
        for c in sorted({i // rows for i in todo}):
            lm = self._model(step, ctx, checkpoints[c], settings["params"])
            gs = _gradient_settings(settings, ctx.seed, lm.max_length)
            feat = lm_featurizer(lm.model, gs)
            mode = settings["adam"]
            if mode != "none":
                ck = checkpoints[c]
                adam = adam_state(ck, feat.param_names) if ck.optimizer is not None else AdamState.zeros(feat.raw_dim)
                feat = lm_featurizer(lm.model, gs, adam, mode)
            if settings["batch_size"] == "auto":
                from dataclasses import replace

                from selectkit_plugins.passes.forward import gradient_batches

                tokens, most = gradient_batches(lm, feat.raw_dim)
                gs = replace(gs, batch_tokens=tokens, max_rows=most)
            slices, raw = block_layout(feat)
            layout = json.dumps({"slices": slices, "raw_sizes": raw}).encode()
            for i in (i for i in todo if i // rows == c):
                ds = ctx.shard(step.payload.data, i % rows, step.payload.shard_rows)
                got = featurize_texts(lm.model, lm.tokenizer, ds.texts, gs, prompts=prompts_of(ds, settings.get(
                    "response")), featurizer=feat)
                entry.write(i, {"features": got.features, "norms": got.norms, "losses": got.losses,
                                "layout": np.frombuffer(layout, dtype=np.uint8)})
                ctx.say(done=i + 1, total=step.shards, unit="gradient shard", checkpoint=checkpoints[c].name)
        return None

    def load(self, step: Any, ctx: PassContext) -> dict[FeatureRequest, Any]:
        request = step.payload.requests[0]
        if request.kind != "grad_features":
            got = ctx.cache.read_arrays("passes", step.key)
            if got is None:
                raise SelectkitError(f"{step.label}: the cached result is missing; run again")
            return {request: {k.removeprefix("target:"): v for k, v in got[0].items()}}
        from selectkit_plugins.lib.influence.pipeline import FeatureSet

        rows = step.payload.settings["row_shards"]
        checkpoints = self._checkpoints(step, ctx)
        entry = ctx.cache.sharded("passes", step.key, step.shards)
        value = []
        for c, ck in enumerate(checkpoints):
            parts = entry.read_all(range(c * rows, (c + 1) * rows))
            layout = json.loads(bytes(parts[0]["layout"]).decode())
            fs = FeatureSet(np.concatenate([p["features"] for p in parts]), np.concatenate([p["norms"] for p in parts]),
                            np.concatenate([p["losses"] for p in parts]),
                            [tuple(s) for s in layout["slices"]], list(layout["raw_sizes"]))
            value.append(CheckpointGradients(ck, fs))
        return {request: value}

    def _influence(self, step: Any, ctx: PassContext, request: FeatureRequest) -> None:
        from selectkit_plugins.lib.influence.lm import ekfac_lm, inverse_hessian_lm

        settings = dict(request.settings)
        checkpoint = self._checkpoints(step, ctx)[-1]  # influence functions assume a trained model
        eager = request.kind == "ihvp_influence"
        lm = self._model(step, ctx, checkpoint, settings["params"], eager=eager)
        targets = {t: ctx.targets[t] for t in settings.get("targets", ())}
        fn = ekfac_lm if request.kind == "ekfac_influence" else inverse_hessian_lm
        result = fn(lm, ctx.pool, targets, settings, seed=ctx.seed,
                    progress=lambda done, total: ctx.say(done=done, total=total, unit="pool shard"))
        ctx.cache.write_arrays("passes", step.key, {f"target:{t}": v for t, v in result.items()}, label=step.label)


class CheckpointGradients:
    """Gradient features of one data source at one checkpoint (its `lr` weighs it)."""

    def __init__(self, checkpoint: Any, features: Any):
        self.checkpoint, self.features = checkpoint, features

    @property
    def lr(self) -> float:
        return self.checkpoint.lr


def _check_support(model: ModelRef, requests: list[FeatureRequest]) -> None:
    """An architecture the gradient maths cannot handle is a plan-time error naming it (torch-free)."""
    from selectkit.models.loader import read_config, resolve_model_path
    from selectkit_plugins.lib.influence.layers import gradient_support

    folder = resolve_model_path(model.spec.path, model.base)
    if isinstance(folder, str):
        return  # a hub id: checked when it loads
    config = read_config(folder, f"model {model.name!r}")
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
                            dtype=settings["feature_dtype"], keep_features=settings["keep_features"])


def _tag(request: FeatureRequest) -> str:
    from selectkit.storage.cache import cache_key

    return cache_key(describe(request))[:8]


@hookimpl
def register_passes(register):
    register(Gradients)
