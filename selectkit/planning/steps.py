"""What passes between the stages of planning and execution: the checked recipe's nodes
(`Checked`, what `check` produces and `compile` reads) and the `Plan`, a DAG of `Step`s, each
carrying one typed payload per kind of work. Executors dispatch on the payload's type and read
steps, never the checked recipe.

    read(source) -> pass(provider, model, data) -> score -> normalize -> select -> write
    (a surrogate score: sample -> pass over the sample -> oracle -> score)
    (a lazy score: pass over a stand-in for the rows its readers ask -> score, run batch by batch)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from selectkit.contract.components import Normalizer, Scorer, Selector, Shape
from selectkit.contract.features import FeatureRequest
from selectkit.contract.passes import ModelRef, PassProvider, PassWork

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from selectkit.contract.registry import Registry
    from selectkit.data.pool import SourceSpec
    from selectkit.planning.collapse import Collapse
    from selectkit.planning.estimates import Inventory, PassEstimate
    from selectkit.recipe.spec import LoadedRecipe, ModelSpec, OutputSpec, SurrogateSpec
    from selectkit.storage.cache import Cache


# ---------------------------------------------------------------- the checked recipe


@dataclass
class SourceNode:
    name: str  # "pool" or the target name
    path: Path
    reader: str
    spec: Any  # the recipe's SourceSpec entry
    rows: int | None  # known without reading the data, when the format allows
    files: tuple = ()  # the files found (objects in a store come pinned to the version seen)


@dataclass
class ScoreNode:
    name: str
    scorer: Scorer
    shape: Shape  # what the recipe's name stands for: after `combine`, a vector
    targets: list[str]
    model: str | None
    normalizers: list[Normalizer]
    combine: Any = None  # how a matrix collapses to a vector (recipe `combine:`), or None
    inputs: list[str] = field(default_factory=list)  # other scores this scorer reads (e.g. `combine`)
    surrogate: SurrogateSpec | None = None  # the scorer runs on a label sample only
    features: str | None = None  # the surrogate's features score (`<model>.embedding` when it names a model)
    lazy: bool = False  # computed only at the rows its readers ask for (an oracle served by the executor)

    @property
    def after(self) -> list[str]:
        """Scores computed before this one: its inputs, and its surrogate's features."""
        return [*self.inputs, *([self.features or self.surrogate.features] if self.surrogate is not None else [])]

    @property
    def columns(self) -> list[str]:
        """Column names of a matrix score, known before running (its targets), else []."""
        return list(self.targets) if self.shape is Shape.MATRIX else []

    def models(self) -> list[str]:
        """Every model this score reads: its own and those its params name."""
        return [m for m in [self.model, *named_models(self.scorer)] if m]


def named_models(scorer: Any) -> list[str]:
    """The model names a scorer's `model_params` hold (each param one name or a list of names)."""
    out: list[str] = []
    for param in scorer.model_params:
        value = getattr(scorer.params, param, None)
        out.extend(value if isinstance(value, (list, tuple)) else [value] if value else [])
    return out


@dataclass
class StageNode:
    label: str
    selector: Selector
    index: int


@dataclass
class Checked:
    """A recipe that type-checks, with every component instantiated from its params."""

    loaded: LoadedRecipe
    registry: Registry
    sources: dict[str, SourceNode]
    models: dict[str, ModelSpec]
    scores: dict[str, ScoreNode]
    stages: list[StageNode]
    warnings: list[str] = field(default_factory=list)
    missing_extras: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------- the payloads, one class per kind of step


@dataclass
class ReadPayload:
    """Read a data source (the pool: build its index, shard by shard)."""

    KIND: ClassVar[str] = "read"
    source: SourceSpec


@dataclass
class PassPayload:
    """Model work: the provider runs `work`; `needs` maps each upstream request to its step."""

    KIND: ClassVar[str] = "pass"
    provider: PassProvider
    work: PassWork
    needs: dict[FeatureRequest, str]


@dataclass
class ScorePayload:
    """A scorer over the pool, reading the pass outputs of `requests` (canonical request -> step)."""

    KIND: ClassVar[str] = "score"
    node: ScoreNode
    requests: dict[FeatureRequest, str]
    model: ModelRef | None
    targets: list[str]


@dataclass
class SamplePayload:
    """The label sample of a surrogate score: which pool rows its oracle runs on."""

    KIND: ClassVar[str] = "sample"
    name: str
    spec: SurrogateSpec
    labels: int
    features: str  # the step holding the features score
    source: str  # the data source name its passes map over ("labels:<score>")


@dataclass
class OraclePayload:
    """A surrogate's scorer on its label sample only (its pool requests were planned over `rows`)."""

    KIND: ClassVar[str] = "oracle"
    node: ScoreNode
    requests: dict[FeatureRequest, str]
    model: ModelRef | None
    targets: list[str]
    rows: str  # the label-sample source


@dataclass
class SurrogatePayload:
    """A surrogate score: the oracle's values on the sample, a predictor's on the rest of the pool."""

    KIND: ClassVar[str] = "score"
    node: ScoreNode
    spec: SurrogateSpec
    sample: str
    oracle: str
    features: str
    budget: Any = None  # the budget of the first stage that reads this score (precision@budget), or None
    budget_stage: str | None = None


@dataclass
class LazyPayload:
    """A lazy score: its scorer computed only at the rows its readers ask for, one batch at a time.
    Its pool requests were planned over `rows`, a stand-in source of at most `most` rows; each batch
    runs those pass steps on its own rows (keyed by them), the target requests are read whole."""

    KIND: ClassVar[str] = "score"
    node: ScoreNode
    requests: dict[FeatureRequest, str]
    model: ModelRef | None
    targets: list[str]
    rows: str  # the stand-in source ("probes:<score>") its pool passes map over
    most: int  # rows its readers may ask for, at most (what the plan's estimates cover)


@dataclass
class NormalizePayload:
    """A normalizer (or the recipe's `combine:` collapse) on a score's previous values."""

    KIND: ClassVar[str] = "normalize"
    score: str
    normalizer: Normalizer | Collapse


@dataclass
class SelectPayload:
    """A selector stage on the candidates its previous stage kept."""

    KIND: ClassVar[str] = "select"
    node: StageNode
    scores: dict[str, str]  # score name -> the step holding its final (normalized) values
    previous: str  # the stage before (or read:pool for the first)
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)  # "name.column" -> (name, column)


@dataclass
class WritePayload:
    """The output set: selection.parquet, the subset, manifest.json, report.html."""

    KIND: ClassVar[str] = "write"
    out_dir: Path
    output: OutputSpec | None


Payload = (ReadPayload | PassPayload | ScorePayload | SamplePayload | OraclePayload | SurrogatePayload
           | LazyPayload | NormalizePayload | SelectPayload | WritePayload)


# ---------------------------------------------------------------- steps and the plan


@dataclass(frozen=True)
class Resources:
    device: str = "cpu"  # cpu | cuda
    memory_bytes: int | None = None
    gpus: int = 0


@dataclass
class Step:
    """One piece of work: its inputs (step ids), cache key and kind of entry (`artifact`), shards
    (> 0: computed and resumed by shards), resources, cost estimate, and its typed payload."""

    id: str
    label: str
    payload: Payload
    inputs: tuple[str, ...] = ()
    key: str | None = None
    artifact: str | None = None
    shards: int = 0
    resources: Resources = field(default_factory=Resources)
    estimate: PassEstimate | None = None
    cached: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """read | pass | sample | oracle | score | normalize | select | write (from the payload)."""
        return self.payload.KIND

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "kind": self.kind, "label": self.label, "inputs": list(self.inputs), "key": self.key,
               "artifact": self.artifact, "shards": self.shards, "cached": self.cached,
               "resources": {"device": self.resources.device, "memory_bytes": self.resources.memory_bytes,
                             "gpus": self.resources.gpus},
               "detail": json.loads(json.dumps(self.detail, default=str))}
        if self.estimate is not None:
            out["estimate"] = self.estimate.as_json()
        return out


@dataclass
class Plan:
    steps: list[Step]
    cache: Cache
    out_dir: Path
    seed: int
    name: str
    fingerprints: dict[str, str]
    registry: Registry
    devices: Inventory | None = None
    checked: Checked | None = None  # for rendering and the manifest only: executors read steps
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self):
        return self.checked.loaded.recipe if self.checked is not None else None

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def locate(self, path: tuple) -> Any:
        """The recipe location of a key path (None for a plan built without a recipe file)."""
        return self.checked.loaded.locate(path) if self.checked is not None else None

    def of_kind(self, kind: str) -> list[Step]:
        return [s for s in self.steps if s.kind == kind]

    def payloads(self, kind: type) -> list[Any]:
        """The payloads of one type, in step order."""
        return [s.payload for s in self.steps if isinstance(s.payload, kind)]

    def inputs(self) -> dict[str, Path]:
        """Every file or folder the plan reads (sources, models, adapters, checkpoints)."""
        from selectkit.planning.guard import recipe_inputs

        sources = {p.source.name: p.source.files for p in self.payloads(ReadPayload)}
        models = {p.work.model.name: (p.work.model.spec, p.work.model.base) for p in self.payloads(PassPayload)}
        if self.checked is not None:
            base = Path(self.checked.loaded.base)
            models = {name: (spec, base) for name, spec in self.checked.models.items()} | models
        return recipe_inputs(sources, models)

    def keys(self) -> set[str]:
        """Every cache key the plan reads or writes (what `cache prune --keep` keeps)."""
        return {s.key for s in self.steps if s.key}

    def render(self) -> str:
        """The DAG as text: each step with its inputs, cache status, resolved settings and costs."""
        head = [f"plan for {self.name}" + (f" ({self.checked.loaded.file})" if self.checked else ""),
                f"  seed: {self.seed}", f"  cache: {self.cache.location}", f"  output: {self.out_dir}"]
        if self.devices is not None:
            head.append(f"  devices: {self.devices}")
        lines = head + [""]
        index = {s.id: i for i, s in enumerate(self.steps, 1)}
        for i, step in enumerate(self.steps, 1):
            status = "cached" if step.cached else ("to compute" if step.key else "")
            lines.append(f"{i:>2}. [{step.kind}] {step.label}" + (f"  ({status})" if status else ""))
            if step.inputs:
                lines.append(f"      after: {', '.join(str(index[x]) for x in step.inputs if x in index)}")
            if step.shards:
                lines.append(f"      shards: {step.shards}")
            for name, value in step.detail.items():
                lines.append(f"      {name}: {value}")
            if step.estimate is not None:
                for name, value in step.estimate.as_detail().items():
                    lines.append(f"      {name}: {value}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": 1, "recipe": self.name, "seed": self.seed, "cache": self.cache.location,
                "output": str(self.out_dir), "devices": str(self.devices) if self.devices is not None else None,
                "steps": [s.as_dict() for s in self.steps]}
