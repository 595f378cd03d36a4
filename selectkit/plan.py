"""Compile a checked recipe into a Plan: the stages in order (load data, model passes,
scores, normalizers, selection stages, outputs), each with its cache key and whether the
cache already holds it. `selectkit plan` prints it; `selectkit run` executes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectkit import __version__
from selectkit.cache import Cache, cache_key
from selectkit.compiler import Checked
from selectkit.components import FeatureRequest
from selectkit.data import source_fingerprint


@dataclass
class PlanStage:
    kind: str  # load | model-pass | score | normalize | select | write
    label: str
    key: str | None = None
    cached: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    checked: Checked
    cache: Cache
    out_dir: Path
    fingerprints: dict[str, str]
    score_keys: dict[str, str]  # raw score
    normalize_keys: dict[str, list[str]]  # the key after each normalizer of a score, in order
    stage_keys: list[str]
    feature_requests: dict[str, list[FeatureRequest]]  # model name -> requests (all its scorers)
    stages: list[PlanStage]
    devices: Any = None

    @property
    def recipe(self):
        return self.checked.loaded.recipe

    def render(self) -> str:
        """A human-readable plan with resolved defaults and cache status."""
        lines = [f"plan for {self.recipe.name} ({self.checked.loaded.file})", f"  seed: {self.recipe.seed}",
                 f"  cache: {self.cache.root}", f"  output: {self.out_dir}", ""]
        for i, stage in enumerate(self.stages, 1):
            status = "cached" if stage.cached else ("to compute" if stage.key else "")
            lines.append(f"{i:>2}. [{stage.kind}] {stage.label}" + (f"  ({status})" if status else ""))
            for name, value in stage.detail.items():
                lines.append(f"      {name}: {value}")
        return "\n".join(lines)


def _model_fingerprint(checked: Checked, name: str) -> str:
    spec = checked.models[name]
    try:
        from selectkit.models import model_fingerprint
    except ImportError:  # pragma: no cover
        return cache_key(spec.model_dump(mode="json"))
    return model_fingerprint(spec, checked.loaded.base)


def compile(checked: Checked, cache: Cache | None = None, out_dir: Path | None = None,
            devices: Any = None) -> Plan:
    """Build the Plan; reads file bytes for fingerprints, never the model."""
    recipe = checked.loaded.recipe
    cache = cache or Cache()
    if out_dir is None:
        out_dir = checked.loaded.resolve_path(recipe.output.dir.replace("{name}", recipe.name)).resolve()
    fps = {name: source_fingerprint(src.path, text=src.spec.text, id_column=src.spec.id, limit=src.spec.limit,
                                    reader=src.reader) for name, src in checked.sources.items()}
    stages = [PlanStage("load", f"{name}: {src.path.name}",
                        detail={"rows": src.rows if src.rows is not None else "unknown until read",
                                "text": src.spec.text, "id": src.spec.id or "row number"})
              for name, src in checked.sources.items()]

    model_fps = {name: _model_fingerprint(checked, name)
                 for node in checked.scores.values() for name in node.models()}
    requests: dict[str, list[FeatureRequest]] = {}
    for node in checked.scores.values():
        if node.model:
            for req in node.scorer.feature_requests(node.targets):
                if req not in requests.setdefault(node.model, []):
                    requests[node.model].append(req)
    score_keys: dict[str, str] = {}
    normalize_keys: dict[str, list[str]] = {}
    score_stages = []
    for name, node in checked.scores.items():
        scorer = node.scorer
        key = cache_key("score", scorer.name, scorer.version, scorer.params.model_dump(mode="json"),
                        fps["pool"], [(t, fps.get(t)) for t in node.targets],
                        [model_fps[m] for m in node.models()], recipe.seed)
        score_keys[name] = key
        detail = {"scorer": scorer.name, "params": scorer.params.model_dump(mode="json"), "shape": node.shape.value}
        if node.targets:
            detail["targets"] = ", ".join(node.targets)
        if node.model:
            detail["model"] = node.model
        score_stages.append(PlanStage("score", name, key, cache.has("scores", key), detail))
        nkey = key
        normalize_keys[name] = []
        for normalizer in node.normalizers:
            nkey = cache_key("normalize", nkey, normalizer.name, normalizer.version,
                             normalizer.params.model_dump(mode="json"), recipe.seed)
            score_stages.append(PlanStage("normalize", f"{name} <- {normalizer.name}", nkey,
                                          cache.has("scores", nkey),
                                          {"params": normalizer.params.model_dump(mode="json")}))
            normalize_keys[name].append(nkey)

    for name, spec in checked.models.items():
        if spec.warmup is not None and any(name in node.models() for node in checked.scores.values()):
            warm = spec.warmup
            stages.append(PlanStage("warmup", f"{name}: LoRA on {warm.fraction:.0%} of the pool", detail={
                "epochs": warm.epochs, "learning_rate": warm.learning_rate, "lora": warm.lora.model_dump(),
                "runs": "once, inside the first scorer that reads the model; checkpoints cached"}))
    for model, reqs in requests.items():
        pending = any(not cache.has("scores", score_keys[n]) for n, node in checked.scores.items()
                      if node.model == model)
        detail = {"model": checked.models[model].path,
                  "features": ", ".join(sorted({f"{r.kind}[{r.data}]" for r in reqs}))}
        detail.update(_estimates(checked, model, reqs, devices))
        stages.append(PlanStage("model-pass", f"{model} ({checked.models[model].kind})",
                                cache_key("pass", model_fps[model], [repr(r) for r in reqs]),
                                not pending, detail))
    stages += score_stages

    stage_keys: list[str] = []
    previous = cache_key("candidates", fps["pool"])
    all_scores = sorted((name, plan_keys[-1] if plan_keys else score_keys[name])
                        for name, plan_keys in normalize_keys.items())
    for node in checked.stages:
        selector = node.selector
        key = cache_key("select", previous, node.label, selector.name, selector.version,
                        selector.params.model_dump(mode="json"), all_scores, recipe.seed, __version__)
        stage_keys.append(key)
        detail = {"selector": selector.name, "params": selector.params.model_dump(mode="json")}
        stages.append(PlanStage("select", node.label, key, cache.has("selections", key), detail))
        previous = key
    stages.append(PlanStage("write", str(out_dir), detail={"formats": ", ".join(recipe.output.formats)}))
    return Plan(checked, cache, out_dir, fps, score_keys, normalize_keys, stage_keys, requests, stages, devices)


def _estimates(checked: Checked, model: str, reqs: list[FeatureRequest], devices: Any) -> dict[str, Any]:
    """Cost estimates of one model's pass (FLOPs, memory, batch size, time) from its config."""
    try:
        from selectkit.estimates import estimate_pass
    except ImportError:
        return {}
    try:
        return estimate_pass(checked, model, reqs, devices)
    except Exception as exc:  # an estimate must never block a plan
        return {"estimate": f"unavailable ({exc})"}
