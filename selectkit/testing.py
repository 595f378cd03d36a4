"""Conformance kit for plugin authors: checks that a component honours its declarations
(strict params, shapes, determinism, budgets, candidates). Use from your own tests:

    from selectkit.testing import check_selector
    check_selector(MySelector, {"score": "s", "budget": 10})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import ValidationError

from selectkit.contract.components import (
    Component,
    NormalizeContext,
    Score,
    ScoreContext,
    SelectContext,
    Selection,
    Selector,
    Shape,
)
from selectkit.data.sources import Dataset

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
    from selectkit.planning.check import ScoreNode
    from selectkit.planning.compile import Plan, Planner
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
    from selectkit.contract.components import Scorer

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
