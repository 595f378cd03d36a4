"""The component contract: what a scorer, normalizer or selector declares and how it runs.

A component is a small class: a `name`, a pydantic `Params` model (unknown keys forbidden),
declared shapes, and one `run`. Caching, devices, progress and resume belong to the executor.
Importing a component module must stay cheap: import torch & co. inside `run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from selectkit.contract.budget import BudgetField
from selectkit.contract.features import FeatureRequest
from selectkit.contract.keyed_random import gumbel, rng_for, row_keys, uniform
from selectkit.contract.lazy import lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

if TYPE_CHECKING:  # pragma: no cover - annotations only: importing components stays cheap
    from selectkit.contract.features import Features
    from selectkit.contract.protocols import Pool, Rows


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
    """What a selector stage keeps: pool indices best-first, optional weights and repeat counts, and
    optional `columns`: per kept row, further values the run writes into selection.parquet and the
    subset under their names (a 1-D array: one value per row; a 2-D integer array: a list per row,
    negative entries being padding), e.g. rs2's `round`. A later stage's columns replace them."""

    indices: np.ndarray
    weights: np.ndarray | None = None
    counts: np.ndarray | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)


class Component:
    """Common declarations. Subclasses set `name` and `Params`; `version` enters cache keys."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]] = Params
    extras: ClassVar[tuple[str, ...]] = ()  # optional extras it needs (models, ot, cluster, ...): checked by validate
    distributed: ClassVar[bool] = True  # False: cannot run on a cluster executor (say why in distributed_reason)
    distributed_reason: ClassVar[str] = ""

    def __init__(self, params: Params | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


# ---------------------------------------------------------------- scorers


@dataclass
class ScoreContext:
    """What a scorer may read. `targets` holds only the targets the score names. For a `rowwise`
    scorer `pool` is one shard (Rows) and `stats` the merged `statistics` of every shard;
    otherwise `pool` is the whole pool (a `Pool`: ids, keys, columns, shards) and
    `features` answers the scorer's `feature_requests`."""

    pool: Pool | Rows
    targets: dict[str, Rows]
    seed: int
    model: Any = None  # the ModelSpec of the scorer's model, for scorers that declare `model_kinds`
    features: Features | None = None  # values of the requested pass outputs
    stats: dict[str, Any] | None = None  # merged per-shard statistics (rowwise scorers that declare them)
    scores: dict[str, Score] = field(default_factory=dict)  # the scores named by `input_scores`

    def rng(self, *labels: str) -> np.random.Generator:
        return rng_for(self.seed, *labels)


@dataclass(frozen=True)
class InfluenceForm:
    """What a pairwise gradient-influence scorer declares when its score of pool row z against one
    target example z' is sum_c w_c <f_c(z), g_c(z')> over checkpoints c (of unit rows with `cosine`),
    with w_c the checkpoint's lr (`normalize_lrs`: lr / sum lr): then `selectkit explain --influence`
    answers "which pool rows most influence this target example" from the gradient store alone."""

    method: str  # what the manifest names it: less, tracin, ...
    cosine: bool
    normalize_lrs: bool
    kind: str = "grad_features"  # the feature kind of the pool's and the targets' requests


class Scorer(Component):
    """Turns pool (and target) data into a Score. A scorer computes; it never loads a model
    (it declares `feature_requests` and a pass provider computes them)."""

    kind: ClassVar[str] = "scorer"
    output: ClassVar[Shape] = Shape.VECTOR
    needs_targets: ClassVar[bool] = False
    targets_optional: ClassVar[bool] = False  # with needs_targets: runs without targets too
    model_kinds: ClassVar[tuple[str, ...]] = ()  # model kinds it accepts; empty: needs no model
    model_params: ClassVar[tuple[str, ...]] = ()  # params naming further entries under `models`
    higher_is_better: ClassVar[bool] = True
    rowwise: ClassVar[bool] = False  # each row's score depends on its own row (and `stats`) only
    # each row's value depends on its own row, the targets and the models only (never on the other pool
    # rows), so the score may be computed on any subset of rows: `lazy: true`, an oracle read at a few rows
    per_row: ClassVar[bool] = False

    def check_pool(self, frame: Any) -> list[tuple[str, str, str]]:
        """At validate, on the pool's first rows (`FirstRows`: plain dicts, no polars): problems this
        scorer can see before any compute, as (level "error" or "warning", the param, the message):
        a column or template that names no column, a reference that is missing. Default: none."""
        return []

    @classmethod
    def reads_rows_alone(cls) -> bool:
        """True when a row's value does not depend on the other pool rows (what a lazy score needs):
        declared `per_row`, or `rowwise` without pool-wide statistics."""
        return cls.per_row or (cls.rowwise and not cls.has_statistics())

    def output_shape(self) -> Shape:
        """The shape this configured scorer produces (may depend on params)."""
        return self.output

    def feature_requests(self, targets: list[str]) -> list[FeatureRequest]:
        """Pass outputs this scorer reads through `ctx.features` (none by default)."""
        return []

    def influence_form(self) -> InfluenceForm | None:
        """A pairwise influence scorer's inner-product form (see InfluenceForm); None: it has none."""
        return None

    def input_scores(self) -> list[str]:
        """Other scores of the recipe this scorer reads through `ctx.scores` (none by default)."""
        return []

    def input_path(self, ref: str) -> tuple:
        """Where under `with:` the reference `ref` is written (for error locations)."""
        return ()

    @classmethod
    def has_statistics(cls) -> bool:
        """True when the scorer computes pool-wide `statistics` (rowwise scorers: a pass before its values)."""
        return cls.statistics is not Scorer.statistics

    def statistics(self, ctx: ScoreContext) -> dict[str, np.ndarray] | None:
        """Rowwise scorers that need pool-wide statistics: this shard's part (arrays that `merge` combines)."""
        return None

    def merge(self, parts: list[dict[str, np.ndarray]], ctx: ScoreContext) -> Any:
        """Combine shards' statistics, in shard order (default: sum each array)."""
        return {name: sum(p[name] for p in parts) for name in parts[0]} if parts else {}

    def run(self, ctx: ScoreContext) -> Score:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------- normalizers


@dataclass
class NormalizeContext:
    pool: Pool | Rows  # ids and `column(name)` for per-group statistics
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
    """What a selector stage sees: the surviving candidates (pool indices, in the order of their
    row keys, so an algorithm that walks them in order gives the same result however the pool's
    rows are ordered or split), the score it names (over the whole pool), every score, its budget.

    Random draws about rows come from `uniform`/`gumbel`: each candidate's value is a hash of
    (seed, stage, labels, row id), so a selection does not depend on row order or sharding.
    Ties are broken by `keys` too (see `best_first`).

    A score the recipe marks `lazy: true` is not in `scores`: `oracles` holds it, a callable the
    executor serves (pool rows -> a Score over those rows, its passes run on them alone). Read any
    score at a few rows with `values_at`, whichever it is."""

    candidates: np.ndarray
    pool: Pool | Rows  # token_counts, column(name), ids
    seed: int
    stage: str
    score: Score | None = None
    scores: dict[str, Score] = field(default_factory=dict)
    targets: dict[str, Rows] = field(default_factory=dict)
    keys: np.ndarray | None = None  # a stable uint64 per pool row (`row_keys` of the ids)
    oracles: dict[str, Callable[[np.ndarray], Score]] = field(default_factory=dict)  # lazy scores

    def rng(self, *labels: str) -> np.random.Generator:
        """A generator for draws that do not belong to rows (a k-means seed, a permutation of clusters)."""
        return rng_for(self.seed, self.stage, *labels)

    def values_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Score `name` at pool indices `rows` as float64, higher meaning better: read from the computed
        score, or, for a lazy score, computed now for those rows alone (ask for a batch at once: each
        call is one run of its passes)."""
        rows = np.asarray(rows, dtype=np.int64)
        if name in self.oracles:
            score = self.oracles[name](rows)
        elif name in self.scores:
            score = self.scores[name]
            score = score.with_values(score.values[rows])
        else:
            raise KeyError(f"score {name!r} is neither computed nor lazy for stage {self.stage!r}")
        values = np.asarray(score.values, dtype=np.float64)
        return values if score.higher_is_better else -values

    def row_keys(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Keys of `rows` (pool indices; default: the candidates)."""
        if self.keys is None:
            self.keys = row_keys(self.pool.ids)
        return self.keys[self.candidates if rows is None else rows]

    def uniform(self, *labels: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Per-row uniform (0, 1) draws for `rows` (default: the candidates), keyed by row id."""
        return uniform(self.seed, (self.stage, *labels), self.row_keys(rows))

    def gumbel(self, *labels: str, rows: np.ndarray | None = None) -> np.ndarray:
        return gumbel(self.seed, (self.stage, *labels), self.row_keys(rows))

    def best_first(self, values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Positions into `values` (one per row of `rows`, default the candidates) from best to
        worst; equal values are ordered by row key, never by position."""
        keys = self.row_keys(rows)
        return np.lexsort((keys, -np.asarray(values, dtype=np.float64)))

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
    # score params it can read lazily, only at the rows it asks for (`SelectContext.values_at`): a score
    # with `lazy: true` may be named there, nowhere else; `oracle_rows` bounds what it asks for
    lazy_scores: ClassVar[tuple[str, ...]] = ()
    # columns its Selection may carry (Selection.columns), e.g. rs2's ("round",): what output.split_by
    # may name, checked at validate
    writes_columns: ClassVar[tuple[str, ...]] = ()

    def oracle_rows(self, param: str, candidates: int) -> int:
        """At most how many rows it reads of the lazy score named by `param` among `candidates` rows
        (what `plan` sizes the lazy score's passes by). Default: every candidate."""
        return candidates

    def run(self, ctx: SelectContext) -> Selection:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------- verifiers


class Verifier(Component):
    """Checks one generated completion against an example's reference answer (a verifiable reward:
    exact match, a regex, a number). Scorers that sample completions (e.g. `pass_rate`) name one
    in their params; it runs on the CPU, after the generation pass."""

    kind: ClassVar[str] = "verifier"

    def check(self, completion: str, reference: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_references(self, references: list[str]) -> str | None:
        """At validate, on the real reference answers of the pool's first rows: why this verifier
        cannot check them (a pattern that breaks with a real reference), if it cannot."""
        return None

    def advice(self) -> list[str]:
        """Warnings validate prints about the configuration (e.g. a pattern with nested quantifiers)."""
        return []
