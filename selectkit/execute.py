"""The local executor: runs a Plan in this process, reusing every cached artifact.

It owns the operational concerns (data loading, model passes, caching, progress, timing);
components only compute. The result feeds `selectkit.outputs`."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from selectkit.compiler import ScoreNode
from selectkit.components import NormalizeContext, Score, ScoreContext, SelectContext, Selection, Shape
from selectkit.data import Dataset, load_dataset
from selectkit.errors import PluginError, SelectkitError
from selectkit.plan import Plan

Progress = Callable[[str], None]


@dataclass
class StageReport:
    kind: str
    label: str
    key: str | None
    status: str  # computed | cached
    seconds: float
    detail: dict = field(default_factory=dict)


@dataclass
class RunResult:
    plan: Plan
    pool: Dataset
    targets: dict[str, Dataset]
    scores: dict[str, Score]
    stage_selections: list[Selection]
    dropped_by: list[str | None]  # per pool row
    ranking: np.ndarray  # selected pool indices, best first
    weights: np.ndarray  # per pool row
    counts: np.ndarray  # per pool row
    reports: list[StageReport]


class Executor:
    """Runs a compiled Plan. Subclasses register through `register_executors`."""

    name: ClassVar[str]

    def run(self, plan: Plan, progress: Progress | None = None, options: dict | None = None) -> RunResult:
        raise NotImplementedError  # pragma: no cover


class LocalExecutor(Executor):
    """One process; uses the devices this machine has."""

    name = "local"

    def run(self, plan: Plan, progress: Progress | None = None, options: dict | None = None) -> RunResult:
        say = progress or (lambda message: None)
        checked = plan.checked
        reports: list[StageReport] = []
        readers = {n: e.cls for n, e in checked.registry.components["readers"].items()}
        datasets: dict[str, Dataset] = {}
        for name, src in checked.sources.items():
            started = time.perf_counter()
            datasets[name] = load_dataset(name, src.path, text=src.spec.text, id_column=src.spec.id,
                                          limit=src.spec.limit, fmt=src.spec.format, readers=readers)
            reports.append(StageReport("load", name, None, "computed", time.perf_counter() - started,
                                       {"rows": len(datasets[name])}))
            say(f"read {name}: {len(datasets[name])} rows")
        pool = datasets["pool"]
        targets = {k: v for k, v in datasets.items() if k != "pool"}
        stores = self._feature_passes(plan, datasets, reports, say, options or {})
        self.trust_remote_code = bool((options or {}).get("trust_remote_code"))
        scores = {name: self._score(plan, node, pool, targets, stores, reports, say)
                  for name, node in checked.scores.items()}
        return self._select(plan, pool, targets, scores, reports, say)

    # model passes -----------------------------------------------------------------
    def _feature_passes(self, plan: Plan, datasets, reports, say, options) -> dict:
        stores = {}
        checked = plan.checked
        for model, requests in plan.feature_requests.items():
            pending = [n for n, node in checked.scores.items()
                       if node.model == model and not plan.cache.has("scores", plan.score_keys[n])]
            if not pending:
                continue
            from selectkit.features import compute_features

            started = time.perf_counter()
            say(f"model pass: {model} ({', '.join(sorted({r.kind for r in requests}))})")
            workdir = plan.cache.root / "passes" / model / plan.fingerprints["pool"][:16]
            args = (checked.models[model], checked.loaded.base, datasets, requests)
            devices = pass_devices(plan.devices, checked.models[model].device)
            if len(devices) > 1:  # each device computes every k-th shard; the call below assembles them
                say(f"model pass {model}: splitting shards over {', '.join(devices)}")
                with ThreadPoolExecutor(len(devices)) as pool:
                    jobs = [pool.submit(compute_features, *args, workdir=workdir, progress=say, name=model,
                                        device=d, worker=(i, len(devices)), **options)
                            for i, d in enumerate(devices)]
                    for job in jobs:
                        job.result()
            stores[model] = compute_features(*args, workdir=workdir, progress=say, name=model, **options)
            reports.append(StageReport("model-pass", model, None, "computed", time.perf_counter() - started))
        return stores

    # scores ------------------------------------------------------------------------
    def _score(self, plan: Plan, node: ScoreNode, pool, targets, stores, reports, say) -> Score:
        key = plan.score_keys[node.name]
        cache = plan.cache
        started = time.perf_counter()
        if cache.has("scores", key):
            score = cache.load_score(key)
            reports.append(StageReport("score", node.name, key, "cached", time.perf_counter() - started))
        else:
            say(f"scoring {node.name} ({node.scorer.name})")
            ctx = ScoreContext(pool=pool, targets={t: targets[t] for t in node.targets},
                               seed=plan.recipe.seed, model=plan.checked.models.get(node.model),
                               features=stores.get(node.model), workdir=cache.root / "work" / key,
                               models=plan.checked.models, base=plan.checked.loaded.base,
                               trust_remote_code=self.trust_remote_code)
            score = check_score(node, node.scorer.run(ctx), len(pool))
            cache.save_score(key, score)
            reports.append(StageReport("score", node.name, key, "computed", time.perf_counter() - started))
        for normalizer, nkey in zip(node.normalizers, plan.normalize_keys[node.name]):
            started = time.perf_counter()
            if cache.has("scores", nkey):
                score = cache.load_score(nkey)
                status = "cached"
            else:
                score = check_score(node, normalizer.run(score, NormalizeContext(pool=pool, seed=plan.recipe.seed)),
                                    len(pool), what=f"normalizer {normalizer.name!r}")
                cache.save_score(nkey, score)
                status = "computed"
            reports.append(StageReport("normalize", f"{node.name} <- {normalizer.name}", nkey, status,
                                       time.perf_counter() - started))
        return score

    # selection -----------------------------------------------------------------------
    def _select(self, plan: Plan, pool, targets, scores, reports, say) -> RunResult:
        n = len(pool)
        candidates = np.arange(n, dtype=np.int64)
        dropped_by: list[str | None] = [None] * n
        ranking: np.ndarray | None = None
        weights = counts = None
        selections = []
        for node, key in zip(plan.checked.stages, plan.stage_keys):
            started = time.perf_counter()
            params = node.selector.params
            if plan.cache.has("selections", key):
                selection = plan.cache.load_selection(key)
                status = "cached"
            else:
                say(f"selecting: {node.label} ({node.selector.name}) over {len(candidates)} candidates")
                ctx = SelectContext(candidates=candidates, pool=pool, seed=plan.recipe.seed, stage=node.label,
                                    score=scores.get(params.score) if params.score else None, scores=scores,
                                    targets=targets)
                selection = check_selection(node.selector.name, node.selector.run(ctx), candidates)
                plan.cache.save_selection(key, selection)
                status = "computed"
            kept = np.asarray(selection.indices, dtype=np.int64)
            kept_set = np.zeros(n, dtype=bool)
            kept_set[kept] = True
            for i in candidates[~kept_set[candidates]]:
                dropped_by[i] = node.label
            if params.budget is not None or ranking is None:
                ranking = kept
            else:
                ranking = ranking[kept_set[ranking]]
            if selection.weights is not None:
                weights = np.zeros(n)
                weights[kept] = selection.weights
            elif weights is not None:
                weights = np.where(kept_set, weights, 0.0)
            if selection.counts is not None:
                counts = np.zeros(n, dtype=np.int64)
                counts[kept] = selection.counts
            elif counts is not None:
                counts = np.where(kept_set, counts, 0)
            candidates = np.sort(kept)
            selections.append(selection)
            reports.append(StageReport("select", node.label, key, status, time.perf_counter() - started,
                                       {"kept": len(kept), "diagnostics": selection.diagnostics}))
        selected = np.zeros(n, dtype=bool)
        selected[candidates] = True
        if weights is None:
            weights = selected.astype(np.float64)
        if counts is None:
            counts = selected.astype(np.int64)
        return RunResult(plan, pool, targets, scores, selections, dropped_by, ranking, weights, counts, reports)


def pass_devices(inventory, model_device: str = "auto") -> list[str]:
    """The CUDA devices a model pass is split over: every GPU of a detected or given inventory
    when the model's device is `auto`; one device otherwise (a planned `--assume` is never run)."""
    if inventory is None:
        from selectkit.estimates import detect_inventory  # nvidia-smi, never torch

        inventory = detect_inventory()
    if model_device != "auto" or getattr(inventory, "source", "") == "assumed":
        return []
    return [d.name for d in inventory.devices if d.kind == "cuda" and d.name.startswith("cuda:")]


def check_score(node: ScoreNode, score: Score, n: int, what: str | None = None) -> Score:
    """A component must return what it declared; say which one broke the contract."""
    who = what or f"scorer {node.scorer.name!r}"
    if not isinstance(score, Score):
        raise PluginError(f"{who} returned {type(score).__name__}, not a Score")
    values = np.asarray(score.values)
    if values.shape[:1] != (n,):
        raise PluginError(f"{who} returned {values.shape[0] if values.ndim else 0} values for {n} pool examples")
    if score.shape is Shape.VECTOR and values.ndim != 1:
        raise PluginError(f"{who} declared a vector but returned shape {values.shape}")
    if score.shape in (Shape.MATRIX, Shape.FEATURES) and values.ndim != 2:
        raise PluginError(f"{who} declared a {score.shape.value} but returned shape {values.shape}")
    if score.shape is Shape.MATRIX and not (len(score.columns) == len(score.tasks) == values.shape[1]):
        raise PluginError(f"{who} returned a matrix without one column name and task per column")
    if score.shape is not node.shape and what is None:
        raise PluginError(f"{who} declared a {node.shape.value} score but returned a {score.shape.value}")
    return score


def check_selection(name: str, selection: Selection, candidates: np.ndarray) -> Selection:
    if not isinstance(selection, Selection):
        raise PluginError(f"selector {name!r} returned {type(selection).__name__}, not a Selection")
    kept = np.asarray(selection.indices)
    if len(np.unique(kept)) != len(kept):
        raise PluginError(f"selector {name!r} returned the same example twice (use `counts` for repeats)")
    if not np.isin(kept, candidates).all():
        raise PluginError(f"selector {name!r} returned examples that are not candidates of its stage")
    for field_name in ("weights", "counts"):
        value = getattr(selection, field_name)
        if value is not None and len(value) != len(kept):
            raise PluginError(f"selector {name!r} returned {len(value)} {field_name} for {len(kept)} examples")
    return selection


__all__ = ["Executor", "LocalExecutor", "RunResult", "SelectkitError", "StageReport"]
