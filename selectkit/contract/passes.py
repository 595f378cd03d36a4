"""Pass providers: the only code that loads models. A scorer declares `FeatureRequest`s; the
planner hands each provider the requests it serves (by kind), the provider groups them into
`PassPlan`s (fusing what one pass can compute together), and the executor runs each planned
step, handing the provider its typed `PassWork` and a `PassContext`.

Most passes map over rows: subclass `ShardedPass` and write the per-shard computation
(`compute(work, shard, model, ctx) -> arrays`) and how the shards are read back (`assemble`);
the base owns the cache entry, the missing shards, atomic writes, the models per point
(checkpoint), progress and devices, so a killed run resumes after its last finished shard and
disjoint shard lists can run on several devices or workers at once. A pass that does not map
over rows (a training run, a curvature fit) subclasses `PassProvider` and implements `run`,
`load` and `complete` on its step's store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from selectkit.contract.features import FeatureRequest
from selectkit.errors import SelectkitError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np

    from selectkit.contract.protocols import Model, Pool, Rows, Shards, Source, StepStore


@dataclass(frozen=True)
class ModelRef:
    """A model as the planner resolved it: its name, spec (the recipe's ModelSpec), folder base
    and content fingerprint."""

    name: str
    spec: Any
    base: Path
    fingerprint: str

    def without_lora(self) -> ModelRef:
        """The same model without its `lora` (what a warmup trains from, a trajectory starts at)."""
        spec = self.spec.model_copy(update={"lora": None})
        return replace(self, spec=spec, fingerprint=self.fingerprint + ":no-lora")


@dataclass
class PassPlan:
    """One step a provider proposes: which requests it answers, over which data, and its cost.

    A row-sharded step over `data` has `shards = points x row_shards` (row_shards: the source's
    shard count, `PlanContext.shard_count`); shard i is row shard i % row_shards of point
    i // row_shards (points: the checkpoints or runs it maps over). A step with `shards` but no
    row shards (a training run's epochs) sets `row_shards = 0`; an unsharded step sets neither."""

    name: str  # unique within the provider and model, e.g. "pool" or "epoch-2:pool"
    label: str
    requests: list[FeatureRequest]
    data: str | None  # the data source it maps over or reads (None: neither)
    key_parts: list[Any]
    needs: list[FeatureRequest] = field(default_factory=list)  # outputs of other providers it reads
    reads: list[str] = field(default_factory=list)  # further data sources it reads whole (targets)
    shards: int = 0
    row_shards: int = 0
    points: int = 1
    estimate: Any = None  # from PlanContext.estimate (and its .scaled)
    detail: dict[str, Any] = field(default_factory=dict)  # lines `selectkit plan` shows
    config: Any = None  # the provider's own values fixed at plan time (it reads them back from PassWork)
    artifact: str = "passes"


@dataclass(frozen=True)
class PassWork:
    """A planned pass step as its provider sees it when running: what the PassPlan fixed, typed."""

    label: str
    model: ModelRef
    requests: tuple[FeatureRequest, ...]
    data: str | None
    shards: int = 0
    row_shards: int = 0
    points: int = 1
    shard_rows: int = 0  # rows per shard of `data`
    reads: tuple[str, ...] = ()
    config: Any = None
    artifact: str = "passes"

    def point(self, index: int) -> int:
        """The point (checkpoint, run) shard `index` belongs to."""
        return index // self.row_shards if self.row_shards else 0

    def row_shard(self, index: int) -> int:
        """The shard of rows shard `index` covers."""
        return index % self.row_shards if self.row_shards else index


@dataclass
class PlanContext:
    """What a provider may consult while planning (no model is loaded, no data row is read beyond
    a sample): the models and sources, row counts, the seed, and the planner's estimates."""

    models: dict[str, ModelRef]
    sources: dict[str, Source]
    rows: dict[str, int | None]
    seed: int
    estimator: Callable[..., Any] = field(default=lambda *args, **kwargs: None, repr=False)
    configs: Callable[[ModelRef], dict | None] = field(default=lambda model: None, repr=False)
    fingerprints: Callable[[ModelRef], str] = field(default=lambda model: model.fingerprint, repr=False)
    counter: Callable[[str, str], int | None] = field(default=lambda data, column: None, repr=False)
    shard_counter: Callable[[str], int] = field(default=lambda data: 1, repr=False)

    def shard_count(self, data: str) -> int:
        """Row shards of source `data` (the unit of resume and parallel work)."""
        return self.shard_counter(data)

    def estimate(self, model: ModelRef, data: str, *, backward: bool = False, hidden_states: bool = False,
                 examples: int | None = None) -> Any:
        """Cost of one pass of `model` over `examples` rows (default: all) of `data`, or None when
        the model's size is unknown. Scale it with `.scaled(times, what, work="gradients")`."""
        return self.estimator(model, data, self, backward=backward, hidden_states=hidden_states, examples=examples)

    def config(self, model: ModelRef) -> dict | None:
        """The model's config.json (None for a hub id not on disk): torch-free checks of what it supports."""
        return self.configs(model)

    def fingerprint(self, model: ModelRef) -> str:
        """The content fingerprint of `model` (e.g. of `model.without_lora()`, for keys of what trains from it)."""
        return self.fingerprints(model)

    def distinct(self, data: str, column: str) -> int | None:
        """Distinct values of a column of `data` (None when it cannot be read now)."""
        return self.counter(data, column)


@dataclass
class PassContext:
    """What a provider sees while running its step: the step's store, the data, upstream pass
    outputs, the one model loader, and the run's device and batch settings."""

    store: StepStore
    pool: Pool
    targets: dict[str, Rows]
    seed: int
    loader: Callable[..., Model] = field(repr=False, default=None)  # (ModelRef, **options): the one loader
    inputs: dict[FeatureRequest, Any] = field(default_factory=dict)  # upstream requests -> their values
    device: str | None = None  # where this worker's models go (None: the model spec's device)
    batch_tokens: int | None = None  # the run's batch settings (None: sized from the model's memory)
    batch_size: int | None = None
    progress: Callable[..., None] | None = None

    def model(self, ref: ModelRef, *, private: bool = False, **options: Any) -> Model:
        """Load `ref` through the one loader (on this worker's device); the last model is reused by
        the next pass that asks for the same one, unless `private` (a model this pass changes, e.g.
        trains an adapter into, must never be handed to another)."""
        if self.device is not None:
            options.setdefault("device", self.device)
        return self.loader(ref, private=private, **options)

    def data(self, name: str) -> Pool | Rows:
        return self.pool if name == "pool" else self.targets[name]

    def shard(self, name: str, index: int, shard_rows: int) -> Rows:
        """Rows of shard `index` of a data source (shards of `shard_rows` rows: PassWork.shard_rows)."""
        return self.data(name).slice(index * shard_rows, (index + 1) * shard_rows)

    def input(self, kind: str) -> Any:
        """The value of the upstream request of `kind` this step reads (see PassPlan.needs)."""
        for request, value in self.inputs.items():
            if request.kind == kind:
                return value
        raise SelectkitError(f"no upstream {kind!r} was planned for this step (has: "
                             f"{', '.join(r.kind for r in self.inputs) or 'none'})")

    def say(self, **info: Any) -> None:
        """Progress inside the step: done=, total=, unit=, and any figures worth showing."""
        if self.progress is not None:
            self.progress(**info)


@dataclass(frozen=True)
class Shard:
    """One shard of a ShardedPass: its index in the step's entry, the point (checkpoint, run) it
    belongs to, the row shard it covers, and those rows."""

    index: int
    point: int
    row_shard: int
    rows: Rows


@dataclass
class PassStats:
    """What a pass did (tests read it to check fusion and resume); `compute` may add to the counters."""

    forward_passes: int = 0
    batches: int = 0
    examples: int = 0
    tokens: int = 0  # real tokens fed to the model
    padded_tokens: int = 0  # tokens including padding (batch rows x longest row)
    shards_computed: int = 0
    shards_reused: int = 0
    model_loaded: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PassProvider:
    """Computes the model work behind some request kinds. Subclasses set `name`, `kinds`
    (kind -> default settings) and implement `plan`, `run`, `load` (and `complete` when the
    step's output is not one array entry)."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    kinds: ClassVar[dict[str, dict[str, Any]]] = {}
    parallel: ClassVar[bool] = True  # its shards are independent (False: in order, e.g. training epochs)

    def __init__(self) -> None:
        self.stats = PassStats()

    def canonical(self, request: FeatureRequest) -> FeatureRequest:
        """The request with defaults filled in, so equal work compares equal."""
        defaults = self.kinds[request.kind]
        unknown = set(dict(request.settings)) - set(defaults)
        if unknown:
            raise SelectkitError(f"request {request.kind!r} has no setting {sorted(unknown)[0]!r} "
                                 f"(settings: {', '.join(defaults) or 'none'})")
        merged = {**defaults, **dict(request.settings)}
        return FeatureRequest(request.kind, request.data, tuple(sorted((k, v) for k, v in merged.items()
                                                                       if v is not None)), request.model)

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        raise NotImplementedError  # pragma: no cover

    def run(self, work: PassWork, ctx: PassContext, shards: list[int] | None = None) -> None:
        raise NotImplementedError  # pragma: no cover

    def load(self, work: PassWork, ctx: PassContext) -> dict[FeatureRequest, Any]:
        raise NotImplementedError  # pragma: no cover

    def complete(self, work: PassWork, store: StepStore) -> bool:
        """True when the step's output is in the cache."""
        return store.has()


class ShardedPass(PassProvider):
    """A pass that maps over shards of rows (x points). A subclass writes `plan` (PassPlans with
    `shards`, `row_shards`, `points`), `compute` and `assemble`; `model` when a point needs a
    model of its own (a checkpoint)."""

    unit: ClassVar[str] = "shard"  # what progress lines count

    def model(self, work: PassWork, point: int, ctx: PassContext) -> Any:
        """The model shards of `point` run on (default: the step's model, for every point)."""
        return ctx.model(work.model)

    def compute(self, work: PassWork, shard: Shard, model: Any, ctx: PassContext) -> dict[str, np.ndarray]:
        """The arrays of one shard (written atomically as its cache sub-entry)."""
        raise NotImplementedError  # pragma: no cover

    def assemble(self, work: PassWork, shards: Shards, ctx: PassContext) -> dict[FeatureRequest, Any]:
        """The values of the requests, read back from the complete entry (in shard order)."""
        raise NotImplementedError  # pragma: no cover

    def write(self, shards: Shards, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one shard (a seam: tests kill a run here)."""
        shards.write(index, arrays)

    def run(self, work: PassWork, ctx: PassContext, shards: list[int] | None = None) -> None:
        """Compute the missing shards among `shards` (default: all), point by point, each model
        loaded once; every shard is written as soon as it is done."""
        started = time.perf_counter()
        entry = ctx.store.shards(work.shards, label=work.label)
        wanted = list(range(work.shards) if shards is None else shards)
        todo = [i for i in wanted if entry.open(i) is None]  # a torn or altered shard is computed again
        self.stats.shards_reused += len(wanted) - len(todo)
        done = 0
        for point in sorted({work.point(i) for i in todo}):
            model = self.model(work, point, ctx)
            self.stats.model_loaded = True
            for i in (i for i in todo if work.point(i) == point):
                rows = ctx.shard(work.data, work.row_shard(i), work.shard_rows) if work.data else None
                t0, tokens0 = time.perf_counter(), self.stats.tokens
                self.write(entry, i, self.compute(work, Shard(i, point, work.row_shard(i), rows), model, ctx))
                self.stats.shards_computed += 1
                done += 1
                figures: dict[str, Any] = {"rows": len(rows)} if rows is not None else {}
                if self.stats.tokens > tokens0:
                    figures["tokens_per_s"] = (self.stats.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
                if work.points > 1:
                    figures["point"] = point
                ctx.say(done=done, total=len(todo), unit=self.unit, **figures)
        self.stats.seconds += time.perf_counter() - started

    def load(self, work: PassWork, ctx: PassContext) -> dict[FeatureRequest, Any]:
        return self.assemble(work, ctx.store.shards(work.shards), ctx)

    def complete(self, work: PassWork, store: StepStore) -> bool:
        return store.shards(work.shards).complete()
