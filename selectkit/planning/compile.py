"""Compile a checked recipe into a Plan (selectkit.planning.steps): an explicit DAG of typed steps.

    read(source) -> pass(provider, model, data) -> score -> normalize -> select -> write

Each step has its inputs (step ids), cache key, cache kind, resources, a cost estimate and,
when it maps over rows, its number of shards (fixed row ranges chosen here, never by an
engine). Every piece of work a run does is a step, so `selectkit plan` shows all of it,
`cache prune --keep` keeps exactly what a recipe needs, and any executor (local, Ray) walks
the same steps with the same keys. Executors read steps, never the checked recipe.

A score with a `surrogate:` becomes  sample (a keyed label sample, a derived data source
`labels:<score>`) -> pass(..., data=labels:<score>) -> oracle (the scorer on those rows) ->
score (the predictor fills in the pool) -> normalize: the oracle's model work covers the sample only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from selectkit import __version__
from selectkit.contract.features import FeatureRequest, describe
from selectkit.contract.passes import ModelRef, PassPlan, PassProvider, PassWork, PlanContext
from selectkit.data.pool import SourceSpec, Table, shard_ranges
from selectkit.errors import (
    MissingExtraError,
    PluginError,
    RecipeError,
    RecipeErrors,
    SelectkitError,
    missing_extras,
    missing_module,
    unknown_message,
)
from selectkit.planning.steps import (
    Checked,
    LazyPayload,
    NormalizePayload,
    OraclePayload,
    PassPayload,
    Plan,
    ReadPayload,
    Resources,
    SamplePayload,
    ScoreNode,
    ScorePayload,
    SelectPayload,
    StageNode,
    Step,
    SurrogatePayload,
    WritePayload,
)
from selectkit.recipe.spec import default_clusters
from selectkit.storage.cache import Cache
from selectkit.storage.digest import cache_key

DEFAULT_SHARD_ROWS_MODEL = 4096
DEFAULT_SHARD_ROWS = 65536
READ_VERSION = "1"
SURROGATE_VERSION = "1"
LAZY_VERSION = "1"


# ---------------------------------------------------------------- compile


def compile_plan(checked: Checked, cache: Cache | None = None, out_dir: Path | None = None, devices: Any = None,
                 options: dict[str, Any] | None = None) -> Plan:
    """Build the Plan; reads file bytes for fingerprints and a few rows for estimates, never a model."""
    options = dict(options or {})
    recipe = checked.loaded.recipe
    for extra, who in checked.missing_extras.items():
        raise MissingExtraError(missing_module(extra), extra, " and ".join(who))
    executor = _executor(checked, options)
    cache = cache or Cache()
    if out_dir is None:
        out_dir = checked.loaded.resolve_path(recipe.output.dir.replace("{name}", recipe.name)).resolve()
    local_out = isinstance(out_dir, str | Path)  # else a URL (ObjectPath): outputs go to object storage
    memo = cache.root / "fingerprints" if cache.root.is_dir() else None
    uses_model = any(node.models() for node in checked.scores.values())
    shard_rows = int(options.get("shard_rows") or recipe.execution.shard_rows
                     or (DEFAULT_SHARD_ROWS_MODEL if uses_model else DEFAULT_SHARD_ROWS))
    sources = _sources(checked, shard_rows, memo)
    fps = {name: s.fingerprint for name, s in sources.items()}
    models = _models(checked, memo)
    planner = Planner(checked.registry, sources, {n: checked.sources[n].rows for n in sources}, models, recipe.seed,
                      devices, cache, memo)
    for name, src in sources.items():
        planner.read(name, src, checked.sources[name])
    planner.stages = list(checked.stages)
    planner.scores(checked.scores)
    planner.selection(checked.stages)
    planner.retrains(checked)
    planner.eval_arms(checked)
    selects = [s.id for s in planner.steps if s.kind == "select"]
    planner.add(Step("write", str(out_dir), WritePayload(Path(out_dir) if local_out else out_dir, recipe.output),
                     inputs=(*selects[-1:], *planner.score_final.values()),
                     detail={"formats": ", ".join(recipe.output.formats)}))
    if planner.errors:
        raise RecipeErrors(planner.errors)
    plan = Plan(planner.steps, cache, Path(out_dir) if local_out else out_dir, recipe.seed, recipe.name, fps,
                checked.registry, devices, checked, options)
    plan.options["shard_rows"] = shard_rows
    plan.options["executor"] = executor.name
    describe = getattr(executor, "describe", None)
    if describe is not None:
        for step in plan.steps:
            step.detail["runs"] = describe(step)
    from selectkit.planning.guard import check_output, output_patterns

    check_output(plan.out_dir, plan.inputs(), output_patterns(recipe.output))
    return plan


def _executor(checked: Checked, options: dict[str, Any]) -> Any:
    """The executor the run will use; one that cannot run a component of the recipe is refused now,
    at the component's line, not after compute began."""

    loaded = checked.loaded
    name = options.get("executor") or loaded.recipe.execution.executor
    known = checked.registry.components["executors"]
    if name not in known:
        raise RecipeError(unknown_message("executor", name, known), loaded.locate(("execution", "executor")))
    cls = known[name].cls
    if name == "ray" and missing_extras(["ray"]):
        raise MissingExtraError("ray", "ray", "executor: ray")
    from selectkit.planning.check import distribution_problems

    problems = distribution_problems(checked, name)
    if problems:
        raise RecipeErrors(problems)
    return cls


def _sources(checked: Checked, shard_rows: int, memo: Path | None) -> dict[str, SourceSpec]:
    from selectkit.data.sources import source_files, source_fingerprint

    readers = {n: e.cls for n, e in checked.registry.components["readers"].items()}
    out = {}
    for name, node in checked.sources.items():
        files = tuple(node.files or source_files(node.path))
        spec = node.spec
        fp = source_fingerprint(list(files), text=spec.text, id_column=spec.id, limit=spec.limit, reader=node.reader,
                                on_missing=spec.on_missing, memo=memo)
        out[name] = SourceSpec(name, files, readers[node.reader], spec.text, spec.id, spec.limit, spec.on_missing, fp,
                               shard_rows)
    return out


def _models(checked: Checked, memo: Path | None) -> dict[str, ModelRef]:
    from selectkit.models.loader import model_fingerprint

    used = {m for node in checked.scores.values() for m in node.models()}
    for name in (_lds_model(checked), _proxy_model(checked)):
        if name is not None:
            used.add(name)
    base = Path(checked.loaded.base)
    return {name: ModelRef(name, checked.models[name], base, model_fingerprint(checked.models[name], base, memo))
            for name in sorted(used)}


def _lds_model(checked: Checked) -> str | None:
    from selectkit.planning import retrain

    spec = checked.loaded.recipe.evaluate
    if spec is None or spec.lds is None:
        return None
    name = retrain.lds_model(spec.lds, checked.scores, checked.registry)
    return name if name in checked.models else None


def _proxy_model(checked: Checked) -> str | None:
    """`evaluate.proxy.model`, when it names a model of the recipe."""
    spec = checked.loaded.recipe.evaluate
    name = spec.proxy.model if spec is not None else None
    return name if name in checked.models else None


def plan_context(models: dict[str, ModelRef], sources: dict[str, SourceSpec], rows: dict[str, int | None], seed: int,
                 devices: Any, memo: Path | None = None) -> PlanContext:
    """What providers consult while planning, with the planner's estimates and torch-free model facts."""
    from selectkit.models.loader import model_fingerprint, read_config, resolve_model_path
    from selectkit.planning.estimates import model_pass

    def config(model: ModelRef) -> dict | None:
        folder = resolve_model_path(model.spec.path, model.base)
        return None if isinstance(folder, str) else read_config(folder, f"model {model.name!r}")

    def distinct(data: str, column: str) -> int | None:
        try:
            return Table(sources[data]).column(column).n_unique()
        except Exception:  # noqa: BLE001 - an estimate never fails a plan
            return None

    def shard_count(data: str) -> int:
        count = rows.get(data)
        return len(shard_ranges(count, sources[data].shard_rows)) if count else 1

    ctx = PlanContext(models, sources, rows, seed, configs=config, counter=distinct, shard_counter=shard_count,
                      fingerprints=lambda model: model_fingerprint(model.spec, model.base, memo))
    ctx.estimator = lambda model, data, context, **kwargs: model_pass(model, data, context, devices, **kwargs)
    return ctx


class Planner:
    """Accumulates steps; finds shared pass work once (same provider step -> same id)."""

    def __init__(self, registry: Any, sources: dict[str, SourceSpec], rows: dict[str, int | None],
                 models: dict[str, ModelRef], seed: int, devices: Any, cache: Cache, memo: Path | None = None):
        self.registry, self.sources, self.rows, self.models = registry, sources, rows, models
        self.seed, self.devices, self.cache = seed, devices, cache
        self.steps: list[Step] = []
        self.by_id: dict[str, Step] = {}
        self.score_final: dict[str, str] = {}
        self.errors: list[SelectkitError] = []
        self.serving: dict[FeatureRequest, str] = {}  # canonical request -> pass step id
        self.ctx = plan_context(models, sources, rows, seed, devices, memo)
        self.stages: list[StageNode] = []  # for a surrogate's precision@budget
        self.data_steps: dict[str, str] = {}  # derived data sources (label samples) -> the step making them

    def data_step(self, data: str) -> str:
        return self.data_steps.get(data, f"read:{data}")

    def add(self, step: Step) -> Step:
        if step.id in self.by_id:
            return self.by_id[step.id]
        order = {s.id: i for i, s in enumerate(self.steps)}
        step.inputs = tuple(sorted(dict.fromkeys(step.inputs), key=lambda x: order.get(x, len(order))))
        self.steps.append(step)
        self.by_id[step.id] = step
        return step

    # -------------------------------------------------------------- read
    def read(self, name: str, src: SourceSpec, node: Any) -> None:
        rows = self.rows.get(name)
        shards = len(shard_ranges(rows, src.shard_rows)) if rows and name == "pool" else 0
        key = cache_key("pool", READ_VERSION, src.fingerprint, src.shard_rows) if name == "pool" else None
        cached = key is not None and self.cache.sharded("pool", key, shards).complete()
        detail = {"files": ", ".join(str(f) for f in src.files), "rows": rows if rows is not None else
                  "unknown until read", "text": src.text, "id": src.id_column or "row number"}
        if src.on_missing != "error":
            detail["on_missing"] = src.on_missing
        self.add(Step(f"read:{name}", f"{name}: {', '.join(f.name for f in src.files)}", ReadPayload(src), key=key,
                      artifact="pool" if key else None, shards=shards, cached=cached, detail=detail))

    # -------------------------------------------------------------- passes
    def provider_for(self, kind: str) -> PassProvider:
        return self.registry.provider(kind)()

    def passes(self, model: ModelRef, requests: list[FeatureRequest]) -> dict[FeatureRequest, str]:
        """Plan the steps that answer `requests` (canonical, one model); returns request -> step id."""
        answer: dict[FeatureRequest, str] = {}
        todo = [r for r in requests if r not in self.serving]
        by_provider: dict[str, tuple[PassProvider, list[FeatureRequest]]] = {}
        for r in todo:
            provider = self.provider_for(r.kind)
            by_provider.setdefault(provider.name, (provider, []))[1].append(r)
        for provider, reqs in by_provider.values():
            for plan in provider.plan(model, reqs, self.ctx):
                self._pass_step(provider, model, plan)
        for r in requests:
            answer[r] = self.serving[r]
        return answer

    def _pass_step(self, provider: PassProvider, model: ModelRef, plan: PassPlan) -> None:
        needs: dict[FeatureRequest, str] = {}
        if plan.needs:
            needed = [self.provider_for(r.kind).canonical(FeatureRequest(r.kind, r.data, r.settings, model.name))
                      for r in plan.needs]
            needs = self.passes(model, needed)
        upstream = sorted({*needs.values(), *([self.data_step(plan.data)] if plan.data else []),
                           *(self.data_step(t) for t in plan.reads)})
        key_parts = [*plan.key_parts, sorted(self.by_id[s].key or s for s in needs.values())]
        key = cache_key("pass", provider.name, provider.version, key_parts)
        step_id = f"pass:{provider.name}:{model.name}:{plan.name}"
        shard_rows = self.sources[plan.data].shard_rows if plan.data else 0
        estimate = plan.estimate
        resources = Resources()
        if estimate is not None:
            resources = Resources(estimate.device_kind, estimate.peak_bytes, estimate.gpus)
            if not estimate.fits:
                self.errors.append(RecipeError(f"model {model.name!r}: {estimate.note or 'does not fit'} "
                                               f"({estimate.device_label})"))
        work = PassWork(plan.label, model, tuple(plan.requests), plan.data, plan.shards, plan.row_shards, plan.points,
                        shard_rows, tuple(plan.reads), plan.config, plan.artifact)
        step = Step(step_id, plan.label, PassPayload(provider, work, needs), inputs=tuple(upstream), key=key,
                    artifact=plan.artifact, shards=plan.shards, resources=resources, estimate=estimate,
                    detail={"model": f"{model.name} ({model.spec.path})", **plan.detail})
        step.cached = provider.complete(work, self.cache.store(plan.artifact, key))
        self.add(step)
        for r in plan.requests:
            self.serving[r] = step_id

    # -------------------------------------------------------------- scores
    def scores(self, nodes: dict[str, ScoreNode]) -> None:
        """Collect every scorer's requests first, so each provider plans all the work of one model
        at once (one fused forward pass per model and source), then add the score steps."""
        wanted: dict[str, list[FeatureRequest]] = {}
        for name, node in nodes.items():
            try:
                wanted[name] = self._requests(node)
            except SelectkitError as exc:
                self.errors.append(exc)
        by_model: dict[str, list[FeatureRequest]] = {}
        for name, reqs in wanted.items():
            if nodes[name].surrogate is not None or nodes[name].lazy:
                continue  # planned over its label sample (or its readers' rows), once that source exists
            for r in reqs:
                if r not in by_model.setdefault(r.model, []):
                    by_model[r.model].append(r)
        for model, reqs in by_model.items():
            try:
                self.passes(self.models[model], reqs)
            except SelectkitError as exc:
                self.errors.append(exc)
        for name in _dependency_order(nodes):
            node = nodes[name]
            planner = self.surrogate if node.surrogate is not None else self.lazy if node.lazy else None
            if planner is not None:  # a score planned its own way: on a label sample, or at sampled rows
                if name in wanted:
                    try:
                        planner(name, node, wanted[name])
                    except SelectkitError as exc:
                        self.errors.append(exc)
                continue
            if name in wanted and all(r in self.serving for r in wanted[name]):
                self.score(name, node, {r: self.serving[r] for r in wanted[name]})

    def _requests(self, node: ScoreNode) -> list[FeatureRequest]:
        out = []
        for r in node.scorer.feature_requests(node.targets):
            owner = r.model or node.model
            if owner is None or owner not in self.models:
                raise PluginError(f"scorer {node.scorer.name!r} requested {describe(r)}, but model {owner!r} "
                                  "is not under `models`")
            out.append(self.provider_for(r.kind).canonical(FeatureRequest(r.kind, r.data, r.settings, owner)))
        return out

    def score(self, name: str, node: ScoreNode, requests: dict[FeatureRequest, str]) -> None:
        scorer = node.scorer
        model = self.models.get(node.model) if node.model else None
        inputs = sorted({"read:pool", *(f"read:{t}" for t in node.targets), *requests.values(),
                         *(self.score_final[r] for r in node.inputs if r in self.score_final)})
        key = cache_key("score", scorer.name, scorer.version, scorer.params.model_dump(mode="json"),
                        self.sources["pool"].fingerprint, [(t, self.sources[t].fingerprint) for t in node.targets],
                        [self.models[m].fingerprint for m in node.models()], self.seed,
                        self.sources["pool"].shard_rows if scorer.rowwise else None)
        detail: dict[str, Any] = {"scorer": scorer.name, "params": scorer.params.model_dump(mode="json"),
                                  "shape": node.shape.value}
        if node.targets:
            detail["targets"] = ", ".join(node.targets)
        if node.model:
            detail["model"] = node.model
        if scorer.rowwise:
            detail["runs"] = "per shard of the pool" + (" (with pool statistics)" if scorer.has_statistics() else "")
        shards = self.by_id["read:pool"].shards if scorer.rowwise else 0
        self.add(Step(f"score:{name}", name, ScorePayload(node, requests, model, node.targets), inputs=tuple(inputs),
                      key=key, artifact="scores", shards=shards, cached=self.cache.has("scores", key), detail=detail))
        self._normalizers(name, node, f"score:{name}", key)

    def stand_in(self, source: str, fingerprint: str, rows: int, data_step: str,
                 requests: list[FeatureRequest]) -> list[FeatureRequest]:
        """Plan `requests`' pool passes over a stand-in source of `rows` rows instead of the pool (a
        surrogate's label sample, a lazy score's probes); the requests as moved onto it."""
        self.sources[source] = replace(self.sources["pool"], name=source, fingerprint=fingerprint)
        self.rows[source] = rows
        self.data_steps[source] = data_step
        moved = [replace(r, data=source) if r.data == "pool" else r for r in requests]
        by_model: dict[str, list[FeatureRequest]] = {}
        for r in moved:
            by_model.setdefault(r.model, []).append(r)
        for model, reqs in by_model.items():
            self.passes(self.models[model], reqs)
        return moved

    def surrogate(self, name: str, node: ScoreNode, requests: list[FeatureRequest]) -> None:
        """sample -> the oracle's passes over the sample only -> oracle -> surrogate score -> normalizers."""
        spec = node.surrogate
        feature_score = node.features or spec.features
        if feature_score not in self.score_final:
            return  # the features score failed its own planning (reported there)
        rows = self.rows.get("pool")
        if rows is None:
            raise RecipeError(f"score {name!r}: a surrogate needs the pool's row count before reading")
        labels = spec.labels.max_count(rows) if spec.labels.kind == "fraction" else min(int(spec.labels.value), rows)
        features = self.score_final[feature_score]
        source = f"labels:{name}"
        sample_id = f"sample:{name}"
        settings = spec.model_dump(mode="json", include={"labels", "holdout", "stratify", "clusters"})
        skey = cache_key("sample", SURROGATE_VERSION, self.by_id[features].key, self.by_id["read:pool"].key, settings,
                         labels, self.seed)
        clusters = spec.clusters or default_clusters(labels)
        self.add(Step(sample_id, f"{name}: label sample for its oracle",
                      SamplePayload(name, spec, labels, features, source), inputs=(features, "read:pool"),
                      key=skey, artifact="scores", cached=self.cache.has("scores", skey),
                      detail={"labels": f"{labels} of {rows} pool rows ({labels / rows:.1%})",
                              "holdout": f"{round(spec.holdout * labels)} of them (never used to fit or tune)",
                              "stratify": f"k-means on {feature_score}, {clusters} clusters" if spec.stratify ==
                              "cluster" else "none (keyed draw)"}))
        moved = self.stand_in(source, skey, labels, sample_id, requests)
        for r in moved:
            step = self.by_id[self.serving[r]]
            if r.data == source and step.payload.work.data != source:
                raise RecipeError(f"scorer {node.scorer.name!r} cannot run on a label sample: its {step.label!r} "
                                  "reads the whole pool at once; remove `surrogate:`")
        scorer = node.scorer
        served = {r: self.serving[r] for r in moved}
        okey = cache_key("oracle", scorer.name, scorer.version, scorer.params.model_dump(mode="json"), skey,
                         [(t, self.sources[t].fingerprint) for t in node.targets],
                         [self.models[m].fingerprint for m in node.models()], self.seed)
        model = self.models.get(node.model) if node.model else None
        oracle_id = f"oracle:{name}"
        self.add(Step(oracle_id, f"{name}: {scorer.name} on its label sample only",
                      OraclePayload(node, served, model, node.targets, rows=source),
                      inputs=(sample_id, *(f"read:{t}" for t in node.targets), *served.values()), key=okey,
                      artifact="scores", cached=self.cache.has("scores", okey),
                      detail={"scorer": scorer.name, "params": scorer.params.model_dump(mode="json"),
                              "rows": f"{labels} (the label sample)", **({"model": node.model} if node.model else {})}))
        budget, stage = self._budget_of(name)
        key = cache_key("surrogate", SURROGATE_VERSION, okey, self.by_id[features].key,
                        spec.model_dump(mode="json", include={"model", "folds"}), self.seed,
                        budget.model_dump(mode="json") if budget is not None else None)
        detail = {"predictor": f"{spec.model} on {feature_score} (settings by {spec.folds}-fold CV in the training "
                               "part)", "shape": node.shape.value,
                  "agreement": "held-out Spearman, Pearson, precision@" + (f"budget of {stage}" if stage else "10%")}
        self.add(Step(f"score:{name}", f"{name} (surrogate of {scorer.name})",
                      SurrogatePayload(node, spec, sample_id, oracle_id, features, budget, stage),
                      inputs=(oracle_id, sample_id, features), key=key, artifact="scores",
                      cached=self.cache.has("scores", key), detail=detail))
        self._normalizers(name, node, f"score:{name}", key)

    def lazy(self, name: str, node: ScoreNode, requests: list[FeatureRequest]) -> None:
        """A lazy score: its pool passes planned over `probes:<name>`, a stand-in for the rows its readers
        may ask for (at most what they declare), so the estimates cover those rows, not the pool's; the
        score step runs them batch by batch on the rows asked."""
        rows = self.rows.get("pool")
        if rows is None:
            raise RecipeError(f"score {name!r}: a lazy score needs the pool's row count before reading")
        readers = []
        for stage in self.stages:
            selector = stage.selector
            for param in selector.lazy_scores:
                if (getattr(selector.params, param, None) or "").partition(".")[0] == name:
                    readers.append((stage.label, param, min(rows, int(selector.oracle_rows(param, rows)))))
        most = min(rows, sum(n for _, _, n in readers))
        source = f"probes:{name}"
        fingerprint = cache_key("probes", LAZY_VERSION, self.by_id["read:pool"].key, name)
        moved = self.stand_in(source, fingerprint, max(most, 1), "read:pool", requests)
        asked = "; ".join(f"stage {label} (`{param}`): at most {n}" for label, param, n in readers)
        for r in moved:
            step = self.by_id[self.serving[r]]
            if r.data == source and step.payload.work.data != source:
                raise RecipeError(f"scorer {node.scorer.name!r} cannot be lazy: its {step.label!r} reads the whole "
                                  "pool at once; remove `lazy: true`")
            if r.data == source:
                step.detail["rows"] = f"only the rows asked for, on demand, each batch cached by its rows ({asked})"
        scorer = node.scorer
        served = {r: self.serving[r] for r in moved}
        key = cache_key("lazy", LAZY_VERSION, scorer.name, scorer.version, scorer.params.model_dump(mode="json"),
                        fingerprint, [(t, self.sources[t].fingerprint) for t in node.targets],
                        [self.models[m].fingerprint for m in node.models()], self.seed)
        model = self.models.get(node.model) if node.model else None
        detail: dict[str, Any] = {"scorer": scorer.name, "params": scorer.params.model_dump(mode="json"),
                                  "shape": node.shape.value,
                                  "rows": f"at most {most} of {rows} pool rows ({most / max(rows, 1):.1%}), asked by "
                                          f"{asked or 'no stage'}"}
        if node.targets:
            detail["targets"] = ", ".join(node.targets)
        if node.model:
            detail["model"] = node.model
        detail["runs"] = "lazily: once per batch of rows a stage asks for, passes on those rows only"
        self.add(Step(f"score:{name}", f"{name} (lazy {scorer.name})",
                      LazyPayload(node, served, model, node.targets, source, most),
                      inputs=("read:pool", *(f"read:{t}" for t in node.targets), *served.values()), key=key,
                      artifact="scores", detail=detail))
        self.score_final[name] = f"score:{name}"

    def _budget_of(self, name: str) -> tuple[Any, str | None]:
        """The budget of the first stage that reads score `name` and sets one."""
        for stage in self.stages:
            refs = [r.partition(".")[0] for r in _score_refs(stage.selector)]
            if name in refs and stage.selector.params.budget is not None:
                return stage.selector.params.budget, stage.label
        return None, None

    def _normalizers(self, name: str, node: ScoreNode, previous: str, prev_key: str) -> None:
        for i, normalizer in enumerate(node.normalizers, 1):
            nkey = cache_key("normalize", prev_key, normalizer.name, normalizer.version,
                             normalizer.params.model_dump(mode="json"), self.seed)
            step_id = f"normalize:{name}:{i}"
            self.add(Step(step_id, f"{name} <- {normalizer.name}", NormalizePayload(name, normalizer),
                          inputs=(previous,), key=nkey, artifact="scores", cached=self.cache.has("scores", nkey),
                          detail={"params": normalizer.params.model_dump(mode="json")}))
            previous, prev_key = step_id, nkey
        if node.combine is not None:
            from selectkit.planning.collapse import Collapse

            collapse = Collapse.of(node.combine)
            nkey = cache_key("combine", prev_key, collapse.params.model_dump(mode="json"))
            step_id = f"normalize:{name}:combine"
            self.add(Step(step_id, f"{name} <- combine ({collapse.params.how})", NormalizePayload(name, collapse),
                          inputs=(previous,), key=nkey, artifact="scores", cached=self.cache.has("scores", nkey),
                          detail={"params": collapse.params.model_dump(mode="json")}))
            previous = step_id
        self.score_final[name] = previous

    # -------------------------------------------------------------- retraining (evaluate.lds)
    def retrains(self, checked: Checked) -> None:
        """The LoRA retrains of `evaluate.lds`, one step per subset (no output needs them: `run` skips
        them, `eval` pulls them, `plan` shows their cost)."""
        from selectkit.planning import retrain

        recipe = checked.loaded.recipe
        name = _lds_model(checked)
        if name is None:
            return
        spec = recipe.evaluate.lds
        model = self.models[name]
        train = retrain.train_settings(spec, model.spec)
        wanted = [self.provider_for(r.kind).canonical(r)
                  for r in retrain.requests(spec, name, train, retrain.lds_seed(recipe))]
        try:
            self.passes(model, wanted)
        except SelectkitError as exc:
            self.errors.append(exc)

    def eval_arms(self, checked: Checked) -> None:
        """`evaluate.proxy.model`: eval's arms as LoRA retrains of that model, one step per (seed pair,
        arm), keyed by the selection they are drawn against (no output needs them: `run` skips them,
        `eval` fixes their rows and pulls them, `plan` shows their cost)."""
        from selectkit.planning import retrain

        recipe = checked.loaded.recipe
        name = _proxy_model(checked)
        selects = [s for s in self.steps if s.kind == "select"]
        if name is None or not selects:
            return
        spec = recipe.evaluate
        model = self.models[name]
        train = retrain.arm_train_settings(spec.proxy, model.spec)
        rows = self.rows.get("pool")
        budget = next((s.selector.params.budget for s in reversed(self.stages)
                       if s.selector.params.budget is not None), None)
        examples = budget.max_count(rows) if rows and budget is not None and budget.kind != "tokens" else rows
        seed = spec.seed if spec.seed is not None else recipe.seed
        wanted = [self.provider_for(r.kind).canonical(r)
                  for r in retrain.arm_requests(spec, recipe.output.summarize_by, name, train, seed, selects[-1].key,
                                                examples)]
        try:
            self.passes(model, wanted)
        except SelectkitError as exc:
            self.errors.append(exc)

    # -------------------------------------------------------------- selection
    def selection(self, stages: list[StageNode]) -> None:
        finals = {n: self.by_id[s].key for n, s in self.score_final.items()}
        all_scores = sorted(finals.items())
        previous_id, previous = "read:pool", cache_key("candidates", self.by_id["read:pool"].key)
        rows = self.rows.get("pool")
        from selectkit.planning.check import resolve_score

        nodes = {s.payload.node.name: s.payload.node for s in self.steps if s.kind == "score"}
        for node in stages:
            selector = node.selector
            refs = {ref: resolve_score(ref, nodes) for ref in _score_refs(selector)}
            columns = {ref: r for ref, r in refs.items() if r is not None and r[1] is not None}
            used = sorted({r[0] for r in refs.values() if r is not None and r[0] in self.score_final})
            key = cache_key("select", previous, node.label, selector.name, selector.version,
                            selector.params.model_dump(mode="json"), all_scores, self.seed, __version__)
            detail = {"selector": selector.name, "params": selector.params.model_dump(mode="json")}
            budget = selector.params.budget
            if budget is not None:
                detail["budget"] = _describe_budget(budget, rows, first=previous_id == "read:pool")
            step_id = f"select:{node.index}:{node.label}"
            self.add(Step(step_id, node.label, SelectPayload(node, dict(self.score_final), previous_id, columns),
                          inputs=(previous_id, *(self.score_final[s] for s in used)), key=key, artifact="selections",
                          cached=self.cache.has("selections", key), detail=detail))
            previous_id, previous = step_id, key


def _dependency_order(nodes: dict[str, ScoreNode]) -> list[str]:
    """Score names with every score a scorer reads before it (recipe order otherwise)."""
    done: list[str] = []

    def visit(name: str, depth: int = 0) -> None:
        if name in done or name not in nodes or depth > len(nodes):
            return
        for ref in nodes[name].after:
            visit(ref, depth + 1)
        done.append(name)

    for name in nodes:
        visit(name)
    return done


def _score_refs(selector: Any) -> list[str]:
    names = [getattr(selector.params, "score", None)]
    names += [getattr(selector.params, p, None) for p in getattr(selector, "score_params", {})]
    return [n for n in names if n]


def _describe_budget(budget: Any, rows: int | None, first: bool) -> str:
    if budget.kind == "count":
        return f"{int(budget.value)} examples"
    if budget.kind == "tokens":
        return f"{int(budget.value):,} whitespace tokens"
    text = f"{budget.value:.4g} of the stage's candidates"
    if first and rows:
        text += f" = {budget.max_count(rows)} of {rows} rows"
    elif rows:
        text += f" (at most {budget.max_count(rows)} of the pool's {rows} rows)"
    return text
