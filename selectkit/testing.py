"""Conformance kit for plugin authors: checks that a component honours its declarations
(strict params, shapes, determinism, budgets, candidates), and runners that compute a scorer or
pass outside a recipe exactly as a run does. Use from your own tests:

    from selectkit.testing import check_selector
    check_selector(MySelector, {"score": "s", "budget": 10})

It handles components through `selectkit.plugin`, as a plugin does; only the runners reach the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import ValidationError

from selectkit.data.sources import Dataset
from selectkit.plugin import (
    Component,
    NormalizeContext,
    Score,
    ScoreContext,
    Scorer,
    SelectContext,
    Selection,
    Selector,
    Shape,
)

WORDS = ("data selection picks examples for training language models with scores from influence "
         "perplexity embeddings and importance weights across many domains of text").split()


def tiny_dataset(n: int = 60, seed: int = 0, name: str = "pool") -> Dataset:
    """`n` short deterministic texts with ids and a `group` column."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 30)))) for _ in range(n)]
    rows = pl.DataFrame({"id": [f"{name}-{i}" for i in range(n)], "text": texts,
                         "group": [f"g{i % 3}" for i in range(n)]})
    return Dataset(name=name, rows=rows, ids=rows["id"], texts=texts, fingerprint=f"tiny-{name}-{n}-{seed}")


def synthetic_score(shape: Shape, n: int, seed: int = 0, tasks: tuple[str, ...] = ("a", "b")) -> Score:
    """A random score of the given shape over `n` pool rows."""
    rng = np.random.default_rng(seed)
    if shape is Shape.VECTOR:
        return Score(rng.normal(size=n))
    if shape is Shape.MATRIX:
        return Score(rng.normal(size=(n, len(tasks))), Shape.MATRIX, columns=tasks, tasks=tasks)
    return Score(rng.normal(size=(n, 8)), Shape.FEATURES,
                 target_features={t: rng.normal(size=(20, 8)) + i for i, t in enumerate(tasks)})


def check_params_strict(cls: type[Component]) -> None:
    """A component's Params must reject unknown keys (misspellings are never silently ignored)."""
    assert isinstance(cls.name, str) and cls.name, f"{cls} has no name"
    try:
        cls.Params.model_validate({"__surely_not_a_param__": 1})
    except ValidationError as exc:
        assert any(e["type"] == "extra_forbidden" for e in exc.errors()), f"{cls.name}: unknown keys not forbidden"
        return
    raise AssertionError(f"{cls.name}: Params accepted an unknown key")


def check_scorer(cls, params: dict, pool: Dataset | None = None, targets: dict[str, Dataset] | None = None) -> Score:
    """Runs a model-free scorer twice: same result, declared shape, one value per pool row."""
    pool = pool or tiny_dataset()
    targets = targets if targets is not None else ({"t": tiny_dataset(20, 1, "t")} if cls.needs_targets else {})
    scorer = cls(cls.Params.model_validate(params))
    runs = [scorer.run(ScoreContext(pool=pool, targets=targets, seed=0)) for _ in range(2)]
    a, b = runs
    assert isinstance(a, Score), f"{cls.name} returned {type(a)}"
    assert a.shape is scorer.output_shape(), f"{cls.name}: declared {scorer.output_shape()}, returned {a.shape}"
    assert len(a.values) == len(pool)
    np.testing.assert_array_equal(a.values, b.values, err_msg=f"{cls.name} is not deterministic")
    return a


def check_normalizer(cls, params: dict, n: int = 200) -> None:
    """Output keeps the input's shape for every shape the normalizer accepts."""
    normalizer = cls(cls.Params.model_validate(params))
    pool = tiny_dataset(n)
    for shape in cls.accepts:
        score = synthetic_score(shape, n)
        out = normalizer.run(score, NormalizeContext(pool=pool, seed=0))
        assert out.shape is shape and out.values.shape == score.values.shape, f"{cls.name} changed the shape"


def check_selector(cls: type[Selector], params: dict, n: int = 300, shape: Shape | None = None) -> Selection:
    """Kept rows are distinct candidates, the budget holds, and the same seed gives the same result."""
    selector = cls(cls.Params.model_validate(params))
    pool = tiny_dataset(n)
    shape = shape or (next(iter(sorted(cls.accepts, key=lambda s: s.value))) if cls.accepts else None)
    score = synthetic_score(shape, n) if shape else None
    candidates = np.arange(0, n, 2, dtype=np.int64)  # a stage sees a narrowed candidate set

    def once() -> Selection:
        scores = {"s": score} if score is not None else {}
        return selector.run(SelectContext(candidates=candidates, pool=pool, seed=0, stage=cls.name,
                                          score=score, scores=scores))

    first, second = once(), once()
    kept = np.asarray(first.indices)
    assert len(np.unique(kept)) == len(kept), f"{cls.name} returned duplicates"
    assert np.isin(kept, candidates).all(), f"{cls.name} returned non-candidates"
    budget = selector.params.budget
    if budget is not None and budget.kind != "tokens":
        assert len(kept) <= budget.max_count(len(candidates)), f"{cls.name} exceeded its budget"
    np.testing.assert_array_equal(kept, second.indices, err_msg=f"{cls.name} is not reproducible from the seed")
    return first


def score(scorer: Any, pool: Dataset, *, targets: dict[str, Dataset] | None = None, model: Any = None,
          models: dict[str, Any] | None = None, seed: int = 0, cache_dir: str | Path | None = None,
          base: str | Path = ".", options: dict | None = None) -> Score:
    """Run one configured scorer as a recipe would: the passes it requests are planned, computed
    through the pass providers (cached under `cache_dir`) and handed to its `run`. `model` is its
    ModelSpec; `models` names further specs its params refer to (e.g. a reference model)."""
    import tempfile

    from selectkit.contract.passes import ModelRef
    from selectkit.contract.registry import default_registry
    from selectkit.execution.local import Run
    from selectkit.execution.progress import Reporter
    from selectkit.planning.compile import Planner
    from selectkit.planning.steps import Plan, ScoreNode
    from selectkit.storage.cache import Cache

    root = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="selectkit-test-"))
    registry = default_registry()
    cache = Cache(root / "cache")
    targets = dict(targets or {})
    sources = {name: _as_source(name, ds, root / "data", registry) for name, ds in {"pool": pool, **targets}.items()}
    specs = dict(models or {})
    if model is not None:
        specs.setdefault("model", model)
    refs = {}
    for name, spec in specs.items():
        from selectkit.models.loader import model_fingerprint

        refs[name] = ModelRef(name, spec, Path(base), model_fingerprint(spec, base))
    rows = {name: len(ds) for name, ds in {"pool": pool, **targets}.items()}
    planner = Planner(registry, sources, rows, refs, seed, None, cache)
    for name, src in sources.items():
        planner.read(name, src, None)
    node = ScoreNode("score", scorer, scorer.output_shape(), list(targets), "model" if model is not None else None, [])
    planner.scores({"score": node})
    if planner.errors:
        raise planner.errors[0]
    plan = Plan(planner.steps, cache, root / "out", seed, "test", {n: s.fingerprint for n, s in sources.items()},
                registry, options=dict(options or {}))
    run = Run(plan, Reporter(), dict(options or {}))
    for step in plan.of_kind("read"):
        run.get(step.id)
    return run.get("score:score")


def _as_source(name: str, ds: Dataset, folder: Path, registry: Any) -> Any:
    """An in-memory Dataset as a parquet source (its texts and ids as columns of their own)."""
    import hashlib

    from selectkit.data.pool import SourceSpec

    frame = ds.rows.with_columns(pl.Series("__text__", list(ds.texts), dtype=pl.String),
                                 ds.ids.alias("__id__"))
    folder.mkdir(parents=True, exist_ok=True)
    buffer_path = folder / f"{name}.tmp.parquet"
    frame.write_parquet(buffer_path, statistics=False)
    digest = hashlib.sha256(buffer_path.read_bytes()).hexdigest()
    path = folder / f"{name}-{digest[:16]}.parquet"
    buffer_path.replace(path)
    reader = registry.components["readers"]["parquet"].cls
    return SourceSpec(name, (path,), reader, "__text__", "__id__", None, "error", digest, 1024)


def run_scorer(scorer: Any, ctx: ScoreContext, *, cache_dir: str | Path | None = None, models: dict | None = None,
               options: dict | None = None) -> Score:
    """`score` for a ScoreContext built by hand (pool, targets, seed, model)."""
    return score(scorer, ctx.pool, targets=ctx.targets, model=ctx.model, models=models, seed=ctx.seed,
                 cache_dir=cache_dir, options=options)


def features(requests: list, pool: Dataset, *, targets: dict[str, Dataset] | None = None, model: Any = None,
             seed: int = 0, cache_dir: str | Path | None = None, options: dict | None = None) -> Any:
    """The pass outputs of `requests` (each with `model=None` for `model`), as a scorer would see them."""

    class _Reader(Scorer):
        name = "testing.features"
        model_kinds = ("causal-lm", "masked-lm", "embedding")
        needs_targets = bool(targets)

        def feature_requests(self, names):
            return list(requests)

        def run(self, ctx):
            _Reader.seen = ctx.features
            return Score(np.zeros(len(ctx.pool)))

    score(_Reader(), pool, targets=targets, model=model, seed=seed, cache_dir=cache_dir, options=options)
    return _Reader.seen


class FeatureStore:
    """What `compute_features` computed: `get(kind, data, **settings)`, and the providers' `stats`."""

    def __init__(self, model: str, values: dict, stats: Any):
        self.model, self.values, self.stats = model, values, stats

    def get(self, kind: str, data: str = "pool", **settings: Any) -> Any:
        from selectkit.contract.features import FeatureRequest, describe
        from selectkit.contract.registry import default_registry
        from selectkit.errors import SelectkitError

        request = default_registry().provider(kind)().canonical(FeatureRequest.of(kind, data, **settings))
        if request not in self.values:
            known = ", ".join(describe(r) for r in self.values) or "none"
            raise SelectkitError(f"model {self.model!r}: feature {describe(request)} was not computed "
                                 f"(computed: {known})")
        return self.values[request]


def compute_features(model_spec: Any, base_dir: str | Path, datasets: dict[str, Dataset], requests: list,
                     workdir: str | Path, *, batch_tokens: int | None = None, batch_size: int | None = None,
                     shard_size: int = 1024, progress: Any = None, trust_remote_code: bool = False,
                     device: str | None = None, model: Any = None, name: str | None = None,
                     worker: tuple[int, int] = (0, 1)) -> FeatureStore:
    """Sharded passes outside a recipe: `requests` (one model's) over in-memory `datasets`, planned and
    computed by their providers exactly as a run does (the provider's own loop), cached under `workdir`.
    `model` reuses a loaded model; `worker=(i, k)` computes only shards i, i+k, ... (one of k devices),
    and a later call with the default assembles them without loading the model."""
    from dataclasses import dataclass

    from selectkit.contract.features import FeatureRequest
    from selectkit.contract.passes import ModelRef, PassContext, PassStats, PassWork, PlanContext
    from selectkit.contract.registry import default_registry
    from selectkit.errors import SelectkitError
    from selectkit.execution.local import ModelLoader
    from selectkit.models.loader import model_fingerprint
    from selectkit.storage.cache import Cache
    from selectkit.storage.digest import cache_key

    @dataclass(frozen=True)
    class Source:  # what keys and plans need of an in-memory data source
        name: str
        fingerprint: str
        shard_rows: int
        files: tuple = ()

    label = name or str(model_spec.path)
    registry = default_registry()
    ref = ModelRef(label, model_spec, Path(base_dir), model_fingerprint(model_spec, base_dir))
    wanted = [registry.provider(r.kind)().canonical(FeatureRequest(r.kind, r.data, r.settings, label))
              for r in requests]
    for r in wanted:
        if r.data not in datasets:
            raise SelectkitError(f"feature {r.kind}[{r.data}]: no data source {r.data!r} was given to the pass")
    sources = {n: Source(n, ds.fingerprint or _texts_identity(ds), shard_size) for n, ds in datasets.items()}
    rows = {n: len(ds) for n, ds in datasets.items()}
    plan_ctx = PlanContext({label: ref}, sources, rows, 0,
                           shard_counter=lambda data: max(1, -(-rows[data] // shard_size)))
    loader = (lambda ref, **options: model) if model is not None else ModelLoader(trust_remote_code, progress)
    cache = Cache(Path(workdir))
    stats = PassStats()
    values: dict = {}
    by_provider: dict[type, list] = {}
    for r in dict.fromkeys(wanted):
        by_provider.setdefault(registry.provider(r.kind), []).append(r)
    for cls, reqs in by_provider.items():
        provider = cls()
        for plan in provider.plan(ref, reqs, plan_ctx):
            key = cache_key("pass", provider.name, provider.version, [*plan.key_parts, []])
            work = PassWork(plan.label, ref, tuple(plan.requests), plan.data, plan.shards, plan.row_shards,
                            plan.points, shard_size, tuple(plan.reads), plan.config, plan.artifact)
            store = cache.store(plan.artifact, key)
            ctx = PassContext(store, datasets.get("pool"), dict(datasets), 0, loader, device=device,
                              batch_tokens=batch_tokens, batch_size=batch_size)
            provider.run(work, ctx, list(range(worker[0], work.shards, worker[1])))
            if worker == (0, 1):
                entry = store.shards(work.shards)
                if not entry.complete():
                    entry.finish(label=work.label)
                values.update(provider.load(work, ctx))
        for field_name, value in provider.stats.as_dict().items():
            setattr(stats, field_name, getattr(stats, field_name) + value if field_name != "model_loaded"
                    else getattr(stats, field_name) or value)
    values = {FeatureRequest(r.kind, r.data, r.settings, None): v for r, v in values.items()}
    return FeatureStore(label, values, stats)


def _texts_identity(ds: Dataset) -> str:
    import hashlib

    digest = hashlib.sha256()
    for text in ds.texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x1f")
    return digest.hexdigest()
