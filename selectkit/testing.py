"""Conformance kit for plugin authors: checks that a component honours its declarations
(strict params, shapes, determinism, budgets, candidates). Use from your own tests:

    from selectkit.testing import check_selector
    check_selector(MySelector, {"score": "s", "budget": 10})
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import ValidationError

from selectkit.components import (
    Component,
    NormalizeContext,
    Score,
    ScoreContext,
    SelectContext,
    Selection,
    Selector,
    Shape,
)
from selectkit.data import Dataset

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
