"""The local executor: walks a Plan's steps in this process, reusing every cached artifact.

Steps are pulled on demand from the write step backwards: a step runs only when something
that is not cached needs its output, so a cached score needs no model pass, and an artifact
found corrupt on reading is simply computed again (its inputs are pulled then). The executor
owns the operational concerns (loading models through the one loader, splitting a pass over
devices, progress, timing); components only compute."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from selectkit.contract.components import NormalizeContext, Score, ScoreContext, SelectContext, Selection, Shape
from selectkit.contract.features import FeatureRequest, Features
from selectkit.contract.keyed_random import canonical_order
from selectkit.contract.passes import ModelRef, PassContext
from selectkit.errors import DataError, PluginError, SelectkitError, SelectkitWarning
from selectkit.execution.artifacts import load_score, load_selection, save_score, save_selection, score_meta, score_of
from selectkit.execution.progress import Reporter
from selectkit.planning.steps import (
    LazyPayload,
    NormalizePayload,
    OraclePayload,
    PassPayload,
    Plan,
    ReadPayload,
    SamplePayload,
    ScorePayload,
    SelectPayload,
    Step,
    SurrogatePayload,
    WritePayload,
)
from selectkit.storage.cache import MissingShardError

Progress = Callable[[str], None]
NOT_DROPPED = -1


@dataclass
class StageReport:
    kind: str
    label: str
    key: str | None
    status: str  # computed | resumed | cached | not needed
    seconds: float
    detail: dict = field(default_factory=dict)
    step: str = ""


@dataclass
class RunResult:
    plan: Plan
    pool: Any  # selectkit.data.pool.Pool
    targets: dict[str, Any]
    scores: dict[str, Score]
    stage_selections: list[Selection]
    dropped_code: np.ndarray  # per pool row: index into `dropped_labels`, -1 when kept
    dropped_labels: list[str]
    ranking: np.ndarray  # selected pool indices, best first
    weights: np.ndarray  # per pool row
    counts: np.ndarray  # per pool row
    reports: list[StageReport]
    files: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # stage columns: (rows, values)
    oracle: dict[str, np.ndarray] = field(default_factory=dict)  # surrogate score -> rows holding oracle values
    surrogates: dict[str, dict] = field(default_factory=dict)  # surrogate score -> its held-out agreement
    influence: dict[str, dict] = field(default_factory=dict)  # pairwise influence score -> its gradient stores

    @property
    def dropped_by(self) -> list[str | None]:
        labels = self.dropped_labels
        return [labels[c] if c >= 0 else None for c in self.dropped_code.tolist()]


def execute(run: Run) -> RunResult:
    """Run every step the outputs need, collect selectkit's warnings into the result, then write
    the outputs (so the manifest and report hold every warning of the run)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SelectkitWarning)
        result = run.execute()
    _collect(run, result, caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SelectkitWarning)
        run.write(result)
    _collect(run, result, caught)
    return result


def compute_steps(plan: Plan, step_ids: list[str], progress: Any = None, options: dict | None = None) -> dict[str, str]:
    """Only the steps `step_ids` (and the steps they read) into the cache, with no selection and no
    outputs: how an integration fills the cache ahead of a recipe's run (the Trainer callback's
    gradient store). Returns each step's status (computed | resumed | cached)."""
    from selectkit.execution.progress import as_reporter

    run = Run(plan, as_reporter(progress), dict(options or {}))
    run.cache.ensure_writable()
    for step_id in step_ids:
        for upstream in plan.step(step_id).inputs:
            if plan.step(upstream).kind == "read":
                run.get(upstream)
        run.get(step_id)
    return {step_id: run.status[step_id][0] for step_id in step_ids}


def _collect(run: Run, result: RunResult, caught: list) -> None:
    library: dict[tuple[str, str], int] = {}
    for w in caught:
        if issubclass(w.category, SelectkitWarning):
            text = str(w.message)
            if text not in result.warnings:
                result.warnings.append(text)
                run.reporter.message(f"warning: {text}")
        else:  # a library's warning (a deprecation in transformers...): once, on one line
            first = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
            key = (w.category.__name__, first[:160])
            library[key] = library.get(key, 0) + 1
    for (category, text), count in library.items():
        run.reporter.message(f"note: {category} from a library{f' (x{count})' if count > 1 else ''}: {text}")


class Run:
    """The state of one run: values of the steps pulled so far, and the selection being built."""

    def __init__(self, plan: Plan, reporter: Reporter, options: dict):
        self.plan, self.reporter, self.options = plan, reporter, options
        self.cache = plan.cache
        self.values: dict[str, Any] = {}
        self.status: dict[str, tuple[str, float, dict]] = {}
        self.pool: Any = None
        self.targets: dict[str, Any] = {}
        self.loader = ModelLoader(bool(options.get("trust_remote_code")), reporter.message)
        self.surrogate_fits: dict[str, dict] = {}  # surrogate step -> {"oracle": mask, "report": agreement}
        self.oracles: dict[str, Any] = {}  # lazy score step -> its LazyOracle

    # ------------------------------------------------------------ driving
    def execute(self) -> RunResult:
        self.cache.ensure_writable()
        for step in self.plan.steps:
            if step.kind == "read":
                self.get(step.id)
        finals = [s for s in self.plan.steps if s.kind == "select"]
        selection = self.get(finals[-1].id) if finals else self._initial()
        selected = np.zeros(selection["n"], dtype=bool)
        selected[selection["candidates"]] = True
        weights = selection["weights"] if selection["weights"] is not None else selected.astype(np.float64)
        counts = selection["counts"] if selection["counts"] is not None else selected.astype(np.int64)
        scores = {}
        for step in self.plan.steps:
            payload = step.payload
            if isinstance(payload, ScorePayload | SurrogatePayload | NormalizePayload):
                name = payload.score if isinstance(payload, NormalizePayload) else payload.node.name
                scores[name] = self.get(step.id)  # the last one of a chain wins: the normalized values
        result = RunResult(self.plan, self.pool, self.targets, scores, selection["selections"],
                           selection["dropped"], selection["labels"], selection["ranking"], weights, counts, [],
                           columns=selection.get("columns", {}))
        for step in self.plan.steps:
            if isinstance(step.payload, SurrogatePayload):
                fit = self.surrogate_fits[step.id]
                result.oracle[step.payload.node.name] = fit["oracle"]
                result.surrogates[step.payload.node.name] = fit["report"]
        from selectkit.execution.influence import influence_entries

        result.influence = influence_entries(self)
        result.reports = self.reports()
        return result

    def write(self, result: RunResult) -> None:
        """The write step: the outputs as one set (when the plan has one)."""
        write = [s for s in self.plan.steps if s.kind == "write"]
        if write:
            started = time.perf_counter()
            self.reporter.step_started(write[0])
            from selectkit.execution.outputs import write_outputs

            self.status[write[0].id] = ("computed", 0.0, {})
            result.reports = self.reports()
            result.files = write_outputs(result, write[0].payload.out_dir)
            self.status[write[0].id] = ("computed", time.perf_counter() - started, {})
            self.reporter.step_finished(write[0], "computed", time.perf_counter() - started)
        result.reports = self.reports()

    def reports(self) -> list[StageReport]:
        out = []
        for step in self.plan.steps:
            status, seconds, detail = self.status.get(step.id, ("not needed", 0.0, {}))
            kind = "model-pass" if step.kind == "pass" else ("load" if step.kind == "read" else step.kind)
            label = step.label if step.kind != "read" else step.id.split(":", 1)[1]
            out.append(StageReport(kind, label, step.key, status, seconds, detail, step.id))
        return out

    def get(self, step_id: str) -> Any:
        if step_id in self.values:
            return self.values[step_id]
        step = self.plan.step(step_id)
        started = time.perf_counter()
        self.reporter.step_started(step)
        value, status, detail = self.handler(step.payload)(step)
        seconds = time.perf_counter() - started
        self.values[step_id] = value
        self.status[step_id] = (status, seconds, detail)
        self.reporter.step_finished(step, status, seconds)
        return value

    def handler(self, payload: Any) -> Callable[[Step], tuple[Any, str, dict]]:
        """The method that runs a step, by the type of its payload."""
        handlers = {ReadPayload: self._read, PassPayload: self._pass, SamplePayload: self._sample,
                    OraclePayload: self._oracle, ScorePayload: self._score, SurrogatePayload: self._surrogate,
                    LazyPayload: self._lazy,
                    NormalizePayload: self._normalize, SelectPayload: self._select, WritePayload: self._write}
        return handlers[type(payload)]

    # ------------------------------------------------------------ where shards are computed (a cluster overrides)
    def map_index(self, step: Step, table: Any, missing: list[int]) -> None:
        """Index the listed shards of the pool into the step's cache entry."""
        from selectkit.data.pool import index_into, shard_ranges

        ranges = shard_ranges(table.rows, table.spec.shard_rows)
        for done, i in enumerate(missing, 1):
            index_into(self.cache.sharded("pool", step.key, step.shards), table, i, ranges[i])
            self.reporter.advance(step.id, done, len(missing), unit="index shard")

    def map_pass(self, step: Step, missing: list[int]) -> None:
        """Compute the listed shards of a sharded pass (split over this machine's GPUs, each with a loader
        of its own)."""
        payload = step.payload
        devices = pass_devices(self.plan.devices, payload.work.model.spec.device) if len(missing) > 1 else []
        if len(devices) > 1:  # each device computes every k-th missing shard
            self.reporter.message(f"{step.label}: splitting {len(missing)} shards over {', '.join(devices)}")
            loaders = [ModelLoader(self.loader.allow_remote_code, self.reporter.message) for _ in devices]
            with ThreadPoolExecutor(len(devices)) as workers:
                jobs = [workers.submit(payload.provider.run, payload.work, self.pass_context(step, d, loader),
                                       missing[i::len(devices)]) for i, (d, loader) in enumerate(zip(devices, loaders))]
                for job in jobs:
                    job.result()
        payload.provider.run(payload.work, self.pass_context(step), missing)

    def map_scores(self, step: Step, phase: str, entry: Any, missing: list[int], base: dict, stats: Any) -> None:
        """Compute a rowwise scorer's `statistics` or `values` for the listed shards into `entry`."""
        node = step.payload.node
        for done, i in enumerate(missing, 1):
            entry.write(i, shard_score(node, phase, self.pool.shard(i), base, stats))
            self.reporter.advance(step.id, done, len(missing), unit=f"{phase} shard")

    # ------------------------------------------------------------ read
    def _read(self, step: Step):
        try:
            return self._read_source(step)
        except DataError as exc:  # a bad row found while reading: say which recipe key reads it, too
            source = step.payload.source
            key = ("data", "pool") if source.name == "pool" else ("data", "targets", source.name)
            raise DataError(exc.message, exc.location or self.plan.locate((*key, "text")), exc.hint) from None

    def _read_source(self, step: Step):
        from selectkit.data.pool import Pool, Table, build_index, read_shard

        source = step.payload.source
        table = Table(source)
        if source.name != "pool":
            ds = read_shard(table, 0, table.rows)
            if len(ds) == 0:
                raise DataError(f"{source.name}: {', '.join(map(str, source.files))} has no rows")
            from selectkit.data.sources import check_unique, warn_missing

            check_unique(ds.ids, source.id_column, source.name, table.where)
            warn_missing(source.name, ds.meta["missing"], source.on_missing)
            self.targets[source.name] = ds
            return ds, "computed", {"rows": len(ds)}
        entry = self.cache.sharded("pool", step.key, step.shards)
        missing = entry.missing()
        status = "cached" if entry.complete() else ("resumed" if len(missing) < step.shards else "computed")
        if missing:
            self.map_index(step, table, missing)
        index = build_index(table, self.cache, step.key)
        self.pool = Pool(source, table, index)
        return self.pool, status, {"rows": len(self.pool)}

    # ------------------------------------------------------------ passes
    def pass_context(self, step: Step, device: str | None = None, loader: ModelLoader | None = None) -> PassContext:
        return pass_context(self.cache, step, self.pool, self.targets, self.plan.seed, loader or self.loader,
                            self._inputs(step), self.options, device,
                            progress=lambda **info: self._pass_event(step, info))

    def _pass_event(self, step: Step, info: dict) -> None:
        done, total = info.pop("done", 0), info.pop("total", None)
        info.pop("step", None)
        self.reporter.advance(step.id, done, total, **info)

    def _inputs(self, step: Step) -> dict:
        return {request: self.get(step_id)[request] for request, step_id in step.payload.needs.items()}

    def _pass(self, step: Step):
        payload = step.payload
        provider, work = payload.provider, payload.work
        for upstream in step.inputs:  # a pass over a label sample needs the sample's rows
            if isinstance(self.plan.step(upstream).payload, SamplePayload):
                self.get(upstream)
        store = self.cache.store(step.artifact, step.key)
        if provider.complete(work, store):
            try:
                return provider.load(work, self.pass_context(step)), "cached", {}
            except MissingShardError:  # a shard was found corrupt and removed: find every such shard now,
                store.shards(step.shards).scrub()  # and compute them again below
        missing = store.shards(step.shards).missing() if step.shards else []
        before = step.shards - len(missing) if step.shards else 0
        ctx = self.pass_context(step)
        if step.shards and missing and provider.parallel:
            self.map_pass(step, missing)
        elif missing or not step.shards:
            provider.run(work, ctx)
        if step.shards:
            entry = store.shards(step.shards)
            if not entry.complete():
                entry.finish(label=step.label)
        status = "resumed" if before else "computed"
        return provider.load(work, ctx), status, {"shards_reused": before} if step.shards else {}

    # ------------------------------------------------------------ scores
    # ------------------------------------------------------------ surrogates
    def _sample(self, step: Step):
        """The label sample: rows (keyed by row id, cluster-stratified), held in `targets` under its
        source name so that pass providers map over it like any other source."""
        from selectkit.data.pool import take
        from selectkit.execution.surrogate import LabelSample, label_sample

        payload = step.payload
        got = self.cache.read_arrays("scores", step.key)
        status = "cached"
        if got is not None:
            sample = LabelSample.of(got[0])
        else:
            spec = payload.spec
            features = self.get(payload.features)
            usable = np.asarray(self.pool.usable, dtype=bool)
            if int(usable.sum()) < payload.labels:
                raise SelectkitError(f"surrogate for {payload.name!r}: {payload.labels} labels asked, but the pool "
                                     f"has only {int(usable.sum())} usable rows")
            sample = label_sample(self.pool.keys, np.asarray(features.values), usable, payload.labels, spec.holdout,
                                  self.plan.seed, payload.name, spec.stratify, spec.clusters)
            self.cache.write_arrays("scores", step.key, sample.arrays(), label=f"label sample of {payload.name}")
            status = "computed"
        ds = take(self.pool, sample.rows)
        ds.name = payload.source
        self.targets[payload.source] = ds
        return sample, status, {"labels": len(sample.rows), "holdout": int(sample.holdout.sum()),
                                "clusters": sample.n_clusters}

    def _oracle(self, step: Step):
        """The expensive scorer on the label sample only; its features were planned over the sample."""
        from dataclasses import replace

        payload = step.payload
        node = payload.node
        self.get(step.inputs[0])  # the sample
        ds = self.targets[payload.rows]
        cached = load_score(self.cache, step.key)
        if cached is not None:
            return cached, "cached", {}
        values = {}
        for request, step_id in payload.requests.items():
            seen_as = replace(request, data="pool") if request.data == payload.rows else request
            values[seen_as] = self.get(step_id)[request]
        score = self._score_rows(payload, values, ds)
        save_score(self.cache, step.key, score, label=f"oracle {node.name} ({node.scorer.name}) on its label sample")
        return score, "computed", {"rows": len(ds)}

    def _score_rows(self, payload: Any, values: dict, ds: Any) -> Score:
        """A scorer on some rows of the pool only (a label sample, a lazy score's batch), its pool
        features computed over those rows and handed to it as the pool's."""
        node = payload.node
        features = Features(values, canonical_request, node.model, f"scorer {node.scorer.name!r}")
        targets = {t: self.targets[t] for t in payload.targets}
        base = dict(targets=targets, seed=self.plan.seed, model=payload.model.spec if payload.model else None,
                    features=features)
        stats = None
        if node.scorer.rowwise and node.scorer.has_statistics():
            ctx = ScoreContext(pool=ds, **base)
            stats = node.scorer.merge([node.scorer.statistics(ctx) or {}], ctx)
        score = node.scorer.run(ScoreContext(pool=ds, stats=stats, **base))
        return check_score(node, score, len(ds), what=f"scorer {node.scorer.name!r}")

    # ------------------------------------------------------------ lazy scores
    def _lazy(self, step: Step):
        """A lazy score's value is its oracle: nothing runs until a stage asks for rows."""
        from selectkit.execution.lazy import LazyOracle

        oracle = LazyOracle(self, step)
        self.oracles[step.id] = oracle
        return oracle, "not needed", oracle.report()

    def lazy_progress(self, oracle: Any) -> None:
        """After each batch: the lazy step's status and counts, for the report and the manifest."""
        status = "computed" if oracle.batches > oracle.cached_batches else "cached"
        self.status[oracle.step.id] = (status, self.status.get(oracle.step.id, ("", 0.0, {}))[1], oracle.report())

    def score_on_rows(self, step: Step, rows: np.ndarray, digest: str) -> Score:
        """One batch of a lazy score: its planned pool passes run on `rows` alone (each a step of its own,
        keyed by the rows), the target passes read whole, then the scorer on those rows."""
        from dataclasses import replace

        from selectkit.data.pool import take
        from selectkit.execution.lazy import pass_on_rows

        payload = step.payload
        started = time.perf_counter()
        ds = take(self.pool, rows)
        ds.name = payload.rows
        values, done = {}, {}
        for request, step_id in payload.requests.items():
            if request.data != payload.rows:
                values[request] = self.get(step_id)[request]
        self.targets[payload.rows] = ds  # what the batch's passes map over, while they run
        try:
            for request, step_id in payload.requests.items():
                if request.data != payload.rows:
                    continue
                if step_id not in done:
                    batch = pass_on_rows(self.plan.step(step_id), len(rows), digest)
                    t0 = time.perf_counter()
                    self.reporter.step_started(batch)
                    done[step_id], status, _ = self._pass(batch)
                    seconds = time.perf_counter() - t0
                    self.reporter.step_finished(batch, status, seconds)
                    before, spent, counts = self.status.get(step_id, ("cached", 0.0, {}))
                    counts = {"batches": counts.get("batches", 0) + 1, "rows": counts.get("rows", 0) + len(rows)}
                    self.status[step_id] = ("computed" if "computed" in (before, status) else status,
                                            spent + seconds, counts)
                values[replace(request, data="pool")] = done[step_id][request]
        finally:
            self.targets.pop(payload.rows, None)
        score = self._score_rows(payload, values, ds)
        status, seconds, detail = self.status.get(step.id, ("computed", 0.0, {}))
        self.status[step.id] = (status, seconds + time.perf_counter() - started, detail)
        return score

    def _surrogate(self, step: Step):
        from selectkit.execution.surrogate import agreement_warnings, fit_predict

        payload = step.payload
        node = payload.node
        sample = self.get(payload.sample)
        got = self.cache.read_arrays("scores", step.key)
        if got is not None:
            arrays, meta = got
            score = score_of(arrays, meta)
            fit = {"oracle": arrays["oracle"].astype(bool), "report": meta["surrogate"]}
            self.surrogate_fits[step.id] = fit
            self._report_surrogate(node.name, fit["report"], payload.spec)
            return score, "cached", {"surrogate": fit["report"]}
        oracle = self.get(payload.oracle)
        features = self.get(payload.features)
        budget = payload.budget
        n = int(np.asarray(self.pool.usable, dtype=bool).sum())
        if budget is None:
            share = 0.1
        elif budget.kind == "count":
            share = min(1.0, budget.value / max(1, n))
        elif budget.kind == "fraction":
            share = float(budget.value)
        else:
            share = min(1.0, budget.value / max(1, int(np.asarray(self.pool.token_counts).sum())))
        values = np.asarray(oracle.values, dtype=np.float64)
        oriented = values if oracle.higher_is_better else -values
        fit = fit_predict(np.asarray(features.values), oriented, sample, self.pool.keys, payload.spec.model,
                          payload.spec.folds, self.plan.seed, node.name, share, tuple(oracle.columns))
        fit.report["budget"] = {"stage": payload.budget_stage, "share": round(share, 6)}
        fit.report["warnings"] = agreement_warnings(node.name, fit.report, payload.spec.warn_below)
        out = fit.values if oracle.higher_is_better else -fit.values
        score = check_score(node, oracle.with_values(out), len(self.pool), what=f"surrogate {node.name!r}")

        self.cache.write_arrays("scores", step.key, {"values": np.asarray(score.values), "oracle": fit.oracle},
                                label=f"surrogate {node.name}", surrogate=fit.report, **score_meta(score))
        self.surrogate_fits[step.id] = {"oracle": fit.oracle, "report": fit.report}
        self._report_surrogate(node.name, fit.report, payload.spec)
        return score, "computed", {"surrogate": fit.report}

    def _report_surrogate(self, name: str, report: dict, spec: Any) -> None:
        from selectkit.execution.surrogate import describe_agreement

        for line in describe_agreement(name, report):
            self.reporter.message(line)
        for text in report.get("warnings", []):
            warnings.warn(text, SelectkitWarning, stacklevel=2)

    def _score(self, step: Step):
        payload = step.payload
        node = payload.node
        cached = load_score(self.cache, step.key)
        if cached is not None:
            return cached, "cached", {}
        values = {}
        for request, step_id in payload.requests.items():
            values[request] = self.get(step_id)[request]
        features = Features(values, canonical_request, node.model, f"scorer {node.scorer.name!r}")
        targets = {t: self.targets[t] for t in payload.targets}
        model = payload.model.spec if payload.model is not None else None
        inputs = {ref: self.get(self._final(ref)) for ref in node.inputs}
        if node.scorer.rowwise:
            score, status = self._rowwise(step, features, targets, model)
        else:
            ctx = ScoreContext(pool=self.pool, targets=targets, seed=self.plan.seed, model=model, features=features,
                               scores=inputs)
            score, status = check_score(node, node.scorer.run(ctx), len(self.pool)), "computed"
        self._warn_nan(node.name, score)
        save_score(self.cache, step.key, score, label=f"score {node.name} ({node.scorer.name})")
        return score, status, {}

    def _rowwise(self, step: Step, features: Features, targets: dict, model: Any) -> tuple[Score, str]:
        """A rowwise scorer shard by shard: statistics of every shard (merged in shard order),
        then the scores of every shard; both kept per shard, so a killed run resumes."""
        node = step.payload.node
        scorer = node.scorer
        shards = len(self.pool.shard_ranges)
        stats = None
        resumed = False
        base = dict(targets=targets, seed=self.plan.seed, model=model, features=features)
        if scorer.has_statistics():
            entry = self.cache.sharded("score-parts", f"{step.key}-stats", shards, label=f"{node.name}: statistics")
            missing = entry.missing()
            resumed |= len(missing) < shards
            if missing:
                self.map_scores(step, "statistics", entry, missing, base, None)
            stats = scorer.merge(entry.read_all(), ScoreContext(pool=self.pool, **base))  # in shard order
        entry = self.cache.sharded("score-parts", f"{step.key}-values", shards, label=f"{node.name}: values")
        missing = entry.missing()
        resumed |= len(missing) < shards
        if missing:
            self.map_scores(step, "values", entry, missing, base, stats)
        parts = entry.read_all()
        meta = json.loads(bytes(parts[0]["meta"]).decode())  # shape, orientation, columns: as the scorer said
        if not entry.complete():
            entry.finish(**meta)
        values = np.concatenate([p["values"] for p in parts])
        score = Score(values=values, shape=Shape(meta["shape"]), higher_is_better=meta["higher_is_better"],
                      columns=tuple(meta["columns"]), tasks=tuple(meta["tasks"]))
        return check_score(node, score, len(self.pool)), "resumed" if resumed else "computed"

    def _warn_nan(self, name: str, score: Score) -> None:
        if score.shape is Shape.FEATURES:
            return
        values = np.asarray(score.values, dtype=np.float64)
        bad = np.isnan(values) if values.ndim == 1 else np.isnan(values).all(axis=1)
        count = int(bad.sum())
        if count:
            warnings.warn(f"score {name!r}: {count} of {len(bad)} examples have no value (NaN, e.g. no scored "
                          "tokens); stages that read it never select them", SelectkitWarning, stacklevel=2)

    def _normalize(self, step: Step):
        payload = step.payload
        score = self.get(step.inputs[0])
        cached = load_score(self.cache, step.key)
        if cached is not None:
            return cached, "cached", {}
        node = self._node(payload.score)
        out = check_score(node, payload.normalizer.run(score, NormalizeContext(pool=self.pool, seed=self.plan.seed)),
                          len(self.pool), what=f"normalizer {payload.normalizer.name!r}")
        save_score(self.cache, step.key, out, label=f"{step.label}")
        return out, "computed", {}

    def _final(self, name: str) -> str:
        """The step holding score `name`'s final values (after its normalizers and combine)."""
        last = f"score:{name}"
        for s in self.plan.steps:
            if s.kind == "normalize" and s.payload.score == name:
                last = s.id
        return last

    def _node(self, name: str):
        for s in self.plan.steps:
            if s.kind == "score" and s.payload.node.name == name:
                return s.payload.node
        raise KeyError(name)

    # ------------------------------------------------------------ selection
    def _initial(self) -> dict:
        n = len(self.pool)
        labels = []
        dropped = np.full(n, NOT_DROPPED, dtype=np.int16)
        usable = np.asarray(self.pool.usable, dtype=bool)
        if not usable.all():
            labels.append("on_missing")
            dropped[~usable] = 0
        candidates = np.flatnonzero(usable).astype(np.int64)
        return {"candidates": candidates, "dropped": dropped, "labels": labels, "ranking": candidates,
                "ranked": False, "weights": None, "counts": None, "selections": [], "n": n, "columns": {}}

    def _select(self, step: Step):
        payload = step.payload
        node = payload.node
        previous = payload.previous
        state = self._initial() if previous.startswith("read:") else dict(self.get(previous))
        state["selections"] = list(state["selections"])
        state["dropped"] = state["dropped"].copy()
        state["labels"] = list(state["labels"])
        params = node.selector.params
        scores = {name: self.get(final) for name, final in payload.scores.items()
                  if final in step.inputs or name == params.score}
        oracles = {name: scores.pop(name) for name, final in payload.scores.items()
                   if name in scores and isinstance(self.plan.step(final).payload, LazyPayload)}
        for ref, (name, col) in payload.columns.items():  # `score: name.column`
            from selectkit.planning.collapse import column

            if isinstance(self.plan.step(payload.scores[name]).payload, LazyPayload):
                oracles[ref] = partial(_column_at, self.get(payload.scores[name]), col)
            else:
                scores[ref] = column(self.get(payload.scores[name]), col)
        n = state["n"]
        candidates = state["candidates"]
        selection = load_selection(self.cache, step.key)
        status = "cached"
        unscorable = 0
        if selection is None:
            score = scores.get(params.score) if params.score else None
            usable = scorable(score, candidates)
            unscorable = len(candidates) - len(usable)
            usable = usable[canonical_order(self.pool.keys[usable])]  # row-key order: never the pool's order
            ctx = SelectContext(candidates=usable, pool=self.pool, seed=self.plan.seed, stage=node.label,
                                score=score, scores=scores, targets=self.targets, keys=self.pool.keys,
                                oracles=oracles)
            selection = check_selection(node.selector.name, node.selector.run(ctx), usable)
            if unscorable:
                selection = Selection(selection.indices, selection.weights, selection.counts,
                                      {**selection.diagnostics, "unscorable": unscorable}, selection.columns)
            save_selection(self.cache, step.key, selection, label=f"stage {node.label} ({node.selector.name})")
            status = "computed"
        kept = np.asarray(selection.indices, dtype=np.int64)
        kept_set = np.zeros(n, dtype=bool)
        kept_set[kept] = True
        gone = candidates[~kept_set[candidates]]
        if len(gone):
            state["labels"].append(node.label)
            state["dropped"][gone] = len(state["labels"]) - 1
        if params.budget is not None or not state["ranked"]:
            state["ranking"] = kept
            state["ranked"] = True
        else:
            ranking = state["ranking"]
            state["ranking"] = ranking[kept_set[ranking]]
        if selection.weights is not None:
            weights = np.zeros(n)
            weights[kept] = selection.weights
            state["weights"] = weights
        elif state["weights"] is not None:
            state["weights"] = np.where(kept_set, state["weights"], 0.0)
        if selection.counts is not None:
            counts = np.zeros(n, dtype=np.int64)
            counts[kept] = selection.counts
            state["counts"] = counts
        elif state["counts"] is not None:
            state["counts"] = np.where(kept_set, state["counts"], 0)
        columns = {name: (rows[kept_set[rows]], values[kept_set[rows]])
                   for name, (rows, values) in state.get("columns", {}).items()}
        columns.update({name: (kept, np.asarray(values)) for name, values in selection.columns.items()})
        state["columns"] = columns
        state["candidates"] = np.sort(kept)
        state["selections"].append(selection)
        return state, status, {"kept": len(kept), "diagnostics": selection.diagnostics}

    def _write(self, step: Step):  # pragma: no cover - the write step is run by `execute`
        raise AssertionError("write is run by execute()")


def _column_at(oracle: Any, name: str, rows: np.ndarray) -> Score:
    """One task column of a lazy matrix score, at `rows`."""
    from selectkit.planning.collapse import column

    return column(oracle(rows), name)


def scorable(score: Score | None, candidates: np.ndarray) -> np.ndarray:
    """The candidates with a value in `score` (all of them for a feature score or none): NaN rows
    are never selected. Its temporaries die here, before the selector runs."""
    if score is None or score.shape is Shape.FEATURES:
        return candidates
    values = np.asarray(score.values)
    bad = np.isnan(values[candidates]) if values.ndim == 1 else np.isnan(values[candidates]).all(axis=1)
    return candidates[~bad] if bad.any() else candidates


def canonical_request(request: FeatureRequest) -> FeatureRequest:
    """The request with its provider's defaults filled in (module-level: it travels to workers)."""
    from selectkit.contract.registry import default_registry

    try:
        return default_registry().provider(request.kind)().canonical(request)
    except PluginError:
        return request


class ModelLoader:
    """The one loader as a run uses it: the command line's remote-code opt-in applied, and recently
    used models kept while passes ask for them again (one loader per worker or device). A few are
    kept, not one: a lazy oracle visits every checkpoint of a model for each batch of rows, and with
    one model kept it would load each checkpoint again per batch. What is kept is bounded by count and
    by the models' parameter bytes (`KEEP_MODELS`, `KEEP_BYTES`); the least recently used goes first."""

    KEEP_MODELS = 4
    KEEP_BYTES = 1 << 30

    def __init__(self, allow_remote_code: bool = False, say: Callable[[str], None] | None = None):
        self.allow_remote_code, self.say = allow_remote_code, say
        self.kept: dict[tuple, tuple[Any, int]] = {}  # what was asked -> (the model, its parameter bytes)

    def __call__(self, ref: ModelRef, private: bool = False, **options: Any) -> Any:
        """The model `ref` with `options`; `private`: a fresh copy that is never reused (it will change)."""
        from selectkit.models.loader import load_model

        asked = (ref.name, ref.fingerprint, tuple(sorted((k, str(v)) for k, v in options.items())))
        if not private and asked in self.kept:
            self.kept[asked] = self.kept.pop(asked)  # most recently used last
            return self.kept[asked][0]
        if self.say is not None:
            self.say(f"loading model {ref.name}")
        if private:
            return load_model(ref.spec, ref.base, allow_remote_code=self.allow_remote_code, name=ref.name, **options)
        # a checkpoint of a kept model is as large as it: make room before it loads (peak memory bounded)
        size = max((b for (name, *_), (_, b) in self.kept.items() if name == ref.name), default=0)
        while self.kept and (len(self.kept) >= self.KEEP_MODELS
                             or sum(b for _, b in self.kept.values()) + size > self.KEEP_BYTES):
            self.kept.pop(next(iter(self.kept)))
        loaded = load_model(ref.spec, ref.base, allow_remote_code=self.allow_remote_code, name=ref.name, **options)
        self.kept[asked] = (loaded, _nbytes(loaded.model))
        return loaded


def _nbytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def pass_context(cache: Any, step: Step, pool: Any, targets: dict, seed: int, loader: ModelLoader, inputs: dict,
                 options: dict, device: str | None = None, progress: Callable[..., None] | None = None) -> PassContext:
    """What a provider sees running `step` (here or on a worker): its store, the data, its upstream
    values, the loader, and the run's device and batch settings."""
    return PassContext(cache.store(step.artifact, step.key), pool, targets, seed, loader, inputs=inputs,
                       device=device or options.get("device"), batch_tokens=options.get("batch_tokens"),
                       batch_size=options.get("batch_size"), progress=progress)


def shard_score(node: Any, phase: str, ds: Any, base: dict, stats: Any) -> dict[str, np.ndarray]:
    """One shard of a rowwise scorer: its statistics, or its values (checked against the declaration)."""
    scorer = node.scorer
    if phase == "statistics":
        return {k: np.asarray(v) for k, v in (scorer.statistics(ScoreContext(pool=ds, **base)) or {}).items()}
    score = check_score(node, scorer.run(ScoreContext(pool=ds, stats=stats, **base)), len(ds))
    return {"values": np.asarray(score.values),
            "meta": np.frombuffer(json.dumps(score_meta(score)).encode(), dtype=np.uint8)}


def pass_devices(inventory, model_device: str = "auto") -> list[str]:
    """The CUDA devices a model pass is split over: every GPU of a detected or given inventory
    when the model's device is `auto`; one device otherwise (a planned `--assume` is never run)."""
    if inventory is None:
        from selectkit.planning.estimates import detect_inventory  # nvidia-smi, never torch

        inventory = detect_inventory()
    if model_device != "auto" or getattr(inventory, "source", "") == "assumed":
        return []
    return [d.name for d in inventory.devices if d.kind == "cuda" and d.name.startswith("cuda:")]


def check_score(node: Any, score: Score, n: int, what: str | None = None) -> Score:
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
    if what is None and score.shape is not node.scorer.output_shape():  # node.shape is after `combine`
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
    for column, value in selection.columns.items():
        if np.ndim(value) not in (1, 2) or len(value) != len(kept):
            raise PluginError(f"selector {name!r} returned column {column!r} of shape {np.shape(value)} for "
                              f"{len(kept)} examples (one value or one list per kept example)")
    return selection


__all__ = ["Run", "RunResult", "StageReport", "execute"]
