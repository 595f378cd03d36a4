"""Pass providers: the only code that loads models. A scorer declares `FeatureRequest`s; the
planner hands each provider the requests it serves (by kind), the provider groups them into
steps (fusing what one pass can compute together), and the executor runs those steps.

A provider step is sharded when it maps over rows of one data source: `run(step, ctx, shards)`
computes the listed shards into the step's cache entry (each shard atomic, so a killed run
resumes), and can be called for disjoint shard lists on several devices or workers at once.
`load(step, ctx)` reads the values back for the scorers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from selectkit.contract.components import FeatureRequest
from selectkit.errors import SelectkitError

if TYPE_CHECKING:  # pragma: no cover
    from selectkit.contract.registry import Registry
    from selectkit.data.pool import Pool, SourceSpec
    from selectkit.data.sources import Dataset
    from selectkit.models.loader import LoadedModel
    from selectkit.planning.estimates import Inventory, PassEstimate
    from selectkit.recipe.spec import ModelSpec
    from selectkit.storage.cache import Cache


@dataclass(frozen=True)
class ModelRef:
    """A model as the planner resolved it: its name, spec, folder base and content fingerprint."""

    name: str
    spec: ModelSpec
    base: Path
    fingerprint: str


@dataclass
class PassPlan:
    """One step a provider proposes: which requests it answers, over which data, and its cost."""

    name: str  # unique within the provider and model, e.g. "pool" or "epoch-2:pool"
    label: str
    requests: list[FeatureRequest]
    data: str | None  # the data source it maps over (None: not row-sharded)
    key_parts: list[Any]
    needs: list[FeatureRequest] = field(default_factory=list)  # outputs of other providers it reads
    reads: list[str] = field(default_factory=list)  # further data sources it reads whole (targets)
    shards: int = 0
    estimate: PassEstimate | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    artifact: str = "passes"


@dataclass
class PlanContext:
    """What a provider may consult while planning (no model is loaded)."""

    models: dict[str, ModelRef]
    sources: dict[str, SourceSpec]
    rows: dict[str, int | None]
    seed: int
    inventory: Inventory | None
    registry: Registry

    def shard_count(self, data: str) -> int:
        from selectkit.data.pool import shard_ranges

        rows = self.rows.get(data)
        return len(shard_ranges(rows, self.sources[data].shard_rows)) if rows else 1


@dataclass
class PassContext:
    """What a provider sees while running: data, the cache, upstream pass outputs, the loader."""

    cache: Cache
    pool: Pool
    targets: dict[str, Dataset]
    seed: int
    load_model: Callable[..., LoadedModel]  # (ModelRef, **options), with the remote-code rule applied
    inputs: dict[FeatureRequest, Any] = field(default_factory=dict)  # upstream requests -> their values
    devices: list[str] = field(default_factory=list)
    progress: Callable[..., None] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def data(self, name: str) -> Any:
        return self.pool if name == "pool" else self.targets[name]

    def shard(self, name: str, index: int, shard_rows: int) -> Any:
        """Rows of shard `index` of a data source, as a Dataset."""
        if name == "pool":
            return self.pool.shard(index)
        return slice_dataset(self.targets[name], index * shard_rows, (index + 1) * shard_rows)

    def say(self, **info: Any) -> None:
        """Progress inside the step: done=, total=, unit=, and any figures worth showing."""
        if self.progress is not None:
            self.progress(**info)


def slice_dataset(ds: Any, lo: int, hi: int) -> Any:
    from selectkit.data.sources import Dataset

    hi = min(hi, len(ds))
    return Dataset(name=ds.name, rows=ds.rows.slice(lo, hi - lo), ids=ds.ids.slice(lo, hi - lo),
                   texts=ds.texts[lo:hi], fingerprint=ds.fingerprint, path=ds.path,
                   usable=None if ds.usable is None else ds.usable[lo:hi], meta={"first_row": lo})


class PassProvider:
    """Computes the model work behind some request kinds. Subclasses set `name`, `kinds`
    (kind -> default settings) and implement `plan`, `run` and `load`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    kinds: ClassVar[dict[str, dict[str, Any]]] = {}
    parallel: ClassVar[bool] = True  # its shards are independent (False: in order, e.g. training epochs)

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

    def run(self, step: Any, ctx: PassContext, shards: list[int] | None = None) -> None:
        raise NotImplementedError  # pragma: no cover

    def load(self, step: Any, ctx: PassContext) -> dict[FeatureRequest, Any]:
        raise NotImplementedError  # pragma: no cover

    def complete(self, step: Any, cache: Any) -> bool:
        """True when the step's output is in the cache (a sharded step: every shard)."""
        return cache.has(step.artifact, step.key)


def describe(request: FeatureRequest) -> str:
    settings = ",".join(f"{k}={v}" for k, v in request.settings)
    model = f"{request.model}:" if request.model else ""
    return f"{model}{request.kind}[{request.data}]" + (f"({settings})" if settings else "")


class Features:
    """A scorer's view of the pass outputs it requested: `get(kind, data, model=None, **settings)`."""

    def __init__(self, values: dict[FeatureRequest, Any], canonical: Callable[[FeatureRequest], FeatureRequest],
                 model: str | None = None, label: str = ""):
        self.values, self.canonical, self.model, self.label = values, canonical, model, label

    def request(self, kind: str, data: str = "pool", model: str | None = None, **settings: Any) -> FeatureRequest:
        return self.canonical(FeatureRequest(kind, data, tuple(sorted(settings.items())), model or self.model))

    def has(self, kind: str, data: str = "pool", model: str | None = None, **settings: Any) -> bool:
        return self.request(kind, data, model, **settings) in self.values

    def get(self, kind: str, data: str = "pool", model: str | None = None, **settings: Any) -> Any:
        request = self.request(kind, data, model, **settings)
        if request not in self.values:
            known = ", ".join(describe(r) for r in self.values) or "none"
            raise SelectkitError(f"{self.label}: {describe(request)} was not computed (computed: {known}); "
                                 "the scorer must list it in feature_requests()")
        value = self.values[request]
        return value() if callable(value) else value
