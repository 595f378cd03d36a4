"""The component contract: what a scorer, normalizer or selector declares and how it runs.

A component is a small class: a `name`, a pydantic `Params` model (unknown keys forbidden),
declared shapes, and one `run`. Caching, devices, progress and resume belong to the executor.
Importing a component module must stay cheap: import torch & co. inside `run`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selectkit.budget import BudgetField

if TYPE_CHECKING:  # pragma: no cover
    from selectkit.data import Dataset


class Shape(str, Enum):
    """What a score holds, so the compiler can type-check a chain before running it."""

    VECTOR = "vector"  # one float per pool example: (N,)
    MATRIX = "matrix"  # pool x target columns: (N, C), each column belongs to a target task
    FEATURES = "features"  # pool feature vectors (N, D) plus each target's (M_t, D)


class Params(BaseModel):
    """Base of every component's params: unknown keys are errors, defaults are explicit.
    Validators build on first use (`defer_build`), so loading many plugins stays cheap."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class SelectorParams(Params):
    """Params every selector understands: the score it reads and the budget it keeps."""

    score: str | None = Field(None, description="name of the entry under `scores` this stage reads")
    budget: BudgetField | None = Field(None, description="how many to keep: 500, '5%', {fraction|count|tokens: N}")


@dataclass(frozen=True)
class Score:
    """A computed score over the whole pool.

    `values` is (N,) for a vector, (N, C) for a matrix whose column j belongs to task
    `tasks[j]` and is named `columns[j]`, and (N, D) pool features for FEATURES, with
    `target_features[t]` (M_t, D) beside it.
    """

    values: np.ndarray
    shape: Shape = Shape.VECTOR
    higher_is_better: bool = True
    columns: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    target_features: dict[str, np.ndarray] = field(default_factory=dict)

    def with_values(self, values: np.ndarray, **changes: Any) -> Score:
        return replace(self, values=values, **changes)

    def oriented(self) -> np.ndarray:
        """Values with higher meaning better, whatever the scorer's convention."""
        return self.values if self.higher_is_better else -self.values

    def task_matrix(self, aggregate: str = "mean") -> tuple[np.ndarray, tuple[str, ...]]:
        """Collapse instance columns to one column per task (mean or max); returns (N, T), names."""
        if self.shape is not Shape.MATRIX:
            raise ValueError("task_matrix needs a matrix score")
        names = tuple(dict.fromkeys(self.tasks))
        if names == self.tasks:
            return self.values, names
        reduce = np.mean if aggregate == "mean" else np.max
        tasks = np.asarray(self.tasks)
        cols = [reduce(self.values[:, tasks == t], axis=1) for t in names]
        return np.stack(cols, axis=1), names


@dataclass(frozen=True)
class Selection:
    """What a selector stage keeps: pool indices best-first, optional weights and repeat counts."""

    indices: np.ndarray
    weights: np.ndarray | None = None
    counts: np.ndarray | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Component:
    """Common declarations. Subclasses set `name` and `Params`; `version` enters cache keys."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """A generator seeded from the recipe seed and stable labels (stage name, shard...),
    so every random choice is reproducible and independent of process count."""
    digest = hashlib.sha256("\x1f".join(labels).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


# ---------------------------------------------------------------- scorers


@dataclass(frozen=True)
class FeatureRequest:
    """A per-example feature a scorer needs from a model pass over one data source.

    `data` is "pool" or a target name; `settings` are hashable (name, value) pairs
    (e.g. (("pooling", "mean"),)). The planner runs each distinct (model, data, kind,
    settings) once and fuses the forward-only kinds of one model into one pass.
    """

    kind: str  # token_logprobs | loss | embedding | ... (see selectkit.features)
    data: str = "pool"
    settings: tuple[tuple[str, Any], ...] = ()


@dataclass
class ScoreContext:
    """What a scorer may read. `targets` holds only the targets the score names."""

    pool: Dataset
    targets: dict[str, Dataset]
    seed: int
    model: Any = None  # a resolved model spec, for scorers that declare `model_kinds`
    features: Any = None  # feature store of the model passes (see the model issue)
    workdir: Any = None  # a scratch folder for shards that survive a killed run
    models: dict[str, Any] = field(default_factory=dict)  # every ModelSpec of the recipe (for `model_params`)
    base: Any = None  # the recipe's folder: relative model and data paths resolve against it
    trust_remote_code: bool = False  # the command line's --trust-remote-code (the recipe must allow it too)

    def rng(self, *labels: str) -> np.random.Generator:
        return rng_for(self.seed, *labels)


class Scorer(Component):
    """Turns pool (and target) data into a Score."""

    kind: ClassVar[str] = "scorer"
    output: ClassVar[Shape] = Shape.VECTOR
    needs_targets: ClassVar[bool] = False
    targets_optional: ClassVar[bool] = False  # with needs_targets: runs without targets too
    model_kinds: ClassVar[tuple[str, ...]] = ()  # model kinds it accepts; empty: needs no model
    model_params: ClassVar[tuple[str, ...]] = ()  # params naming further entries under `models`
    higher_is_better: ClassVar[bool] = True

    def output_shape(self) -> Shape:
        """The shape this configured scorer produces (may depend on params)."""
        return self.output

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        """Model-pass features this scorer reads through `ctx.features` (none by default)."""
        return []

    def run(self, ctx: ScoreContext) -> Score:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------- normalizers


@dataclass
class NormalizeContext:
    pool: Dataset
    seed: int


class Normalizer(Component):
    """Maps a score to a score of the same shape (z-score, rank, ...)."""

    kind: ClassVar[str] = "normalizer"
    accepts: ClassVar[frozenset[Shape]] = frozenset({Shape.VECTOR, Shape.MATRIX})

    def run(self, score: Score, ctx: NormalizeContext) -> Score:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------- selectors


@dataclass
class SelectContext:
    """What a selector stage sees: the surviving candidates (pool indices, ascending),
    the score it names (over the whole pool), every score, and its budget."""

    candidates: np.ndarray
    pool: Dataset
    seed: int
    stage: str
    score: Score | None = None
    scores: dict[str, Score] = field(default_factory=dict)
    targets: dict[str, Dataset] = field(default_factory=dict)

    def rng(self, *labels: str) -> np.random.Generator:
        return rng_for(self.seed, self.stage, *labels)

    def take(self, order: np.ndarray, budget=None) -> np.ndarray:
        """Cut a best-first order of pool indices to the stage's budget (count, fraction, tokens)."""
        if budget is None:
            return np.asarray(order)
        counts = self.pool.token_counts if budget.kind == "tokens" else None
        if budget.kind == "fraction":
            return np.asarray(order)[: budget.max_count(len(self.candidates))]
        return budget.take(order, counts)


class Selector(Component):
    """Narrows the candidate set; the stage with a budget fixes the final size."""

    kind: ClassVar[str] = "selector"
    Params: ClassVar[type[SelectorParams]] = SelectorParams
    accepts: ClassVar[frozenset[Shape]] = frozenset({Shape.VECTOR})  # shapes of `with.score`
    needs_score: ClassVar[bool] = True
    # further params that name scores, with the shapes each accepts (e.g. {"quality": {VECTOR}})
    score_params: ClassVar[dict[str, frozenset[Shape]]] = {}
    budget_rule: ClassVar[str] = "required"  # required | optional | none: is `with.budget` needed?
    draws_with_replacement: ClassVar[bool] = False  # a count budget may then exceed the pool

    def run(self, ctx: SelectContext) -> Selection:  # pragma: no cover - abstract
        raise NotImplementedError
