"""The recipe format (version 1) as pydantic models, and `load()`: YAML file -> Recipe.

Strict everywhere: unknown keys are errors with a did-you-mean, and every error points at
`file:line:col`. Component params (`with:`) are checked later by the component's own model.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from selectkit.contract.budget import BudgetField
from selectkit.errors import Location, RecipeError, RecipeErrors
from selectkit.recipe.yamlsource import SourceMap, load_yaml, read_recipe_text

FORMAT_VERSION = 1
# Old format versions upgrade through these, one step at a time: {old_version: fn(dict) -> dict}.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DataSource(Strict):
    """A table of examples: a file (jsonl, json, csv, parquet) or a `datasets.save_to_disk` folder."""

    path: str = Field(description="file or folder; relative paths resolve against the recipe's folder")
    text: str = Field("text", description="a column name, or a template such as '{question}\\n{answer}'")
    id: str | None = Field(None, description="id column; default: the row number")
    limit: PositiveInt | None = Field(None, description="read only the first N rows")
    format: str | None = Field(None, description="reader name when the suffix does not tell (jsonl, csv, ...)")
    on_missing: Literal["error", "skip", "empty"] = Field(
        "error", description="a row whose text field is null or absent: error (naming the file and line), skip "
        "(the row is never selected), or empty (scored as empty text); skipped and emptied rows are counted")


class DataSpec(Strict):
    pool: DataSource
    targets: dict[str, DataSource] = Field(default_factory=dict)


class LoraSettings(Strict):
    """The LoRA adapter a warmup trains."""

    r: PositiveInt = Field(8, description="LoRA rank (LESS: 128)")
    alpha: float = Field(32, gt=0, description="LoRA alpha (LESS: 512)")
    dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout during warmup (features use eval mode)")
    target_modules: list[str] | None = Field(
        None, description="module names LoRA wraps; default: the architecture's attention projections (q/k/v/o "
        "for Llama and Qwen, c_attn and attn.c_proj for GPT-2, query_key_value and dense for GPT-NeoX, ...)")


class TrainSpec(Strict):
    """LoRA fine-tuning settings: how a LoRA is trained on a causal LM from its base. The warmup
    (LESS) and the retraining primitive (`evaluate.lds`) both train with these, through one loop."""

    epochs: PositiveInt = Field(4, description="epochs; one checkpoint per epoch")
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear lr warmup share of all steps")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: PositiveInt = Field(32, description="examples per optimizer step")
    micro_batch_size: PositiveInt = Field(8, description="examples per forward pass (gradient accumulation)")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    response: str | None = Field(
        None, description="column or '{template}' of each example's response: the warmup's loss counts only its "
        "tokens, as LESS trains (default: every token)")


TRAIN_KEYS = tuple(TrainSpec.model_fields)


class WarmupSpec(TrainSpec):
    """`models.<name>.warmup`: LoRA warmup training whose per-epoch checkpoints feed LESS/TracIn."""

    fraction: float = Field(0.05, gt=0, le=1, description="share of the pool trained on (seeded random draw)")
    seed: int | None = Field(None, description="default: the recipe seed")

    def train(self) -> TrainSpec:
        """The training settings alone (what a retrain on another subset repeats)."""
        return TrainSpec.model_validate(self.model_dump(include=set(TRAIN_KEYS)))


class ModelSpec(Strict):
    """A model the scorers run: a local folder (or a hub id when the network allows)."""

    path: str = Field(description="a model folder (relative to the recipe), `pkg:<package>` for a model shipped "
                      "in an installed wheel, or a hub id (needs network)")
    kind: Literal["causal-lm", "masked-lm", "embedding"] = Field(
        description="causal-lm: next-token models (perplexity, gradients); masked-lm; embedding: encoders")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights' dtype; bfloat16/float16 run every pass under autocast (CPU: bfloat16 "
        "only), with losses, log-probs and per-example gradient products summed in float32")
    max_length: PositiveInt = Field(
        512, description="tokens per example, in every pass of this model (forward, gradients, training): longer "
        "texts are truncated; clamped to the model's position table")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    lora: str | None = Field(None, description="a peft adapter folder loaded on top")
    revision: str | None = Field(None, description="hub revision (hub ids only)")
    trust_remote_code: bool = Field(False, description="also needs --trust-remote-code on the command line")
    checkpoints: list[str] | None = Field(None, description="training checkpoints (peft adapter folders, each "
                                          "optionally with checkpoint.json and optimizer.pt) for influence scorers")
    warmup: WarmupSpec | None = Field(None, description="LoRA warmup on a seeded fraction of the pool; one "
                                      "checkpoint per epoch (LESS)")

    @model_validator(mode="after")
    def _one_source_of_checkpoints(self):
        if self.checkpoints is not None and self.warmup is not None:
            raise ValueError("give either `checkpoints` or `warmup`, not both")
        return self


class ComponentRef(Strict):
    """`{use: name, with: {...}}`: a component and its params."""

    use: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class CombineWeights(Strict):
    weights: dict[str, float] = Field(description="weight of each target column (columns not named count 0)")


def default_clusters(n_labels: int) -> int:
    """k-means clusters of a surrogate's label sample when the recipe sets none: labels / 10, in [2, 32]."""
    return int(min(32, max(2, n_labels // 10)))


class SurrogateSpec(Strict):
    """`scores.<name>.surrogate`: run the (expensive) scorer only on a seeded label sample and predict it
    for the rest of the pool from cheap features (MATES, NN-CIFT, Influence Distillation)."""

    features: str = Field(description="what the predictor reads: a features score (such as `use: embedding`), or "
                          "a model under `models` (its pooled embeddings, planned as score `<model>.embedding`)")
    model: Literal["ridge", "knn", "mlp"] = Field(
        "ridge", description="ridge: closed-form ridge, one output per target column; knn: mean of the nearest "
        "labelled neighbours (cosine); mlp: a one-hidden-layer MLP (NN-CIFT; needs the `cluster` extra)")
    labels: BudgetField = Field(
        "5%", validate_default=True,
        description="rows the oracle scores: a count or a percentage of the pool (the label sample)")
    holdout: Annotated[float, WithJsonSchema({"anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"type": "string", "pattern": r"^\d+(\.\d+)?%$"}]})] = Field(
        0.2, gt=0, lt=1, description="share of the label sample held out to measure agreement, 0.2 or '20%' (never "
        "used to choose the predictor's settings)")
    stratify: Literal["cluster", "none"] = Field(
        "cluster", description="cluster: the label sample and its held-out part are spread over k-means clusters "
        "of the features in proportion to their sizes (needs the `cluster` extra); none: a plain keyed draw")
    clusters: PositiveInt | None = Field(None, description="k-means clusters for stratify: cluster (default: "
                                         "labels / 10, between 2 and 32)")
    folds: int = Field(5, ge=2, le=20, description="cross-validation folds inside the training part that choose "
                       "the predictor's settings (ridge penalty, k, MLP weight decay)")
    warn_below: float = Field(0.3, ge=-1, le=1, description="warn when the held-out Spearman is below this, or "
                              "its 95% interval includes 0")

    @field_validator("holdout", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return float(value.strip()[:-1]) / 100
            except ValueError:
                raise ValueError(f"cannot read holdout {value!r}: write a share like 0.2 or '20%'") from None
        return value

    @field_validator("labels")
    @classmethod
    def _no_tokens(cls, value: Any) -> Any:
        if value.kind == "tokens":
            raise ValueError("labels is a count or a percentage of the pool, not tokens")
        return value


class ScoreSpec(Strict):
    use: str = Field(description="scorer name")
    model: str | None = Field(None, description="name of an entry under `models`")
    targets: list[str] | Literal["all"] | None = Field(None, description="target names, or 'all'")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    normalize: list[str | ComponentRef] = Field(default_factory=list,
                                                      description="normalizers applied in order")
    combine: Literal["max", "mean", "min", "sum"] | CombineWeights | None = Field(
        None, description="collapse a per-target (matrix) score into one value per example, after the "
        "normalizers: max, mean, min, sum, or {weights: {target: w}} (a weighted sum)")
    surrogate: SurrogateSpec | None = Field(
        None, description="score only a seeded label sample with this scorer and predict the rest from cheap "
        "features; held-out agreement goes to the manifest and console")
    lazy: bool = Field(
        False, description="compute this score only at the rows a stage asks for (e.g. cluster_bandit's probes), "
        "its passes run on those rows alone; only a stage param that reads lazily may name it (Quad's oracle)")


class StageSpec(Strict):
    use: str = Field(description="selector name")
    name: str | None = Field(None, description="label used in `dropped_by`; default '<use>' (or '<use>#<n>')")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class OutputSpec(Strict):
    dir: str = Field("out/{name}", description="relative to the recipe's folder; '{name}' is the recipe name")
    formats: list[Literal["parquet", "jsonl", "hf_dataset"]] = Field(
        default_factory=lambda: ["parquet"], description="formats of the selected subset: parquet, jsonl, "
        "hf_dataset (a `datasets.Dataset.save_to_disk` folder, subset.hf_dataset; needs the `models` extra)")
    repeat_by_count: bool = Field(False, description="repeat subset rows by the selector's `count` column")
    summarize_by: str | None = Field(None, description="pool column whose selected/pool counts `run` prints (and "
                                     "selection.parquet carries)")
    report: bool = Field(True, description="write report.html: a self-contained page of the run (figures need "
                         "the `report` extra)")
    include_text: bool = Field(False, description="add each example's text to selection.parquet")
    split_by: str | None = Field(None, description="a column a selector writes (e.g. rs2's `round`) or a pool "
                                 "column: also write one subset file per value, subset.<column>-<value>.<format> "
                                 "(a value that is not a plain file name is percent-escaped)")

    @model_validator(mode="after")
    def _split_without_repeats(self):
        if self.split_by is not None and self.repeat_by_count:
            raise ValueError("split_by writes each example once per value; it cannot be combined with "
                             "repeat_by_count")
        return self


class ExecutionSpec(Strict):
    """Where and how the plan runs (never what it computes: these keys do not change results)."""

    executor: str = Field("local", description="local (this machine) or ray (a Ray cluster, extra `ray`)")
    address: str | None = Field(None, description="ray: the cluster to join (auto, host:port, ray://host:port); "
                                "default: $RAY_ADDRESS, else a local cluster started for the run")
    connect_timeout: float | None = Field(None, gt=0, description="ray: seconds to reach the cluster at `address` "
                                          "before the run fails (default 30)")
    actors: PositiveInt | None = Field(None, description="ray: model-pass actors (default: one per GPU, else "
                                       "per CPU)")
    gpus_per_actor: float | None = Field(None, gt=0, description="ray: GPUs per model-pass actor (fractions "
                                         "share a GPU between small models); default 1 when the cluster has GPUs")
    shard_rows: PositiveInt | None = Field(
        None, description="rows per shard of the pool: the unit of resume and of parallel work; default 4096 "
        "when the recipe runs a model, else 65536")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            problem = ray_address_problem(value)
            if problem:
                raise ValueError(problem)
        return value


def ray_address_problem(address: str) -> str | None:
    """Why `address` is no Ray address (auto, local, HOST:PORT, ray://HOST:PORT), if it is not."""
    if address in ("auto", "local"):
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]:port
    if "://" in rest or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or any(c.isspace() or c in "/?#@" for c in host):
        return (f"malformed Ray address {address!r}: expected auto, HOST:PORT (the GCS port, 6379 by default) "
                "or ray://HOST:PORT (Ray Client, 10001)")
    return None


class ProxySpec(Strict):
    """`evaluate.proxy`: the small causal LM every arm trains from scratch (a Llama config the tool
    builds, byte-level tokens as the demo model's ByT5 tokenizer): CPU-friendly by default."""

    layers: PositiveInt = Field(1, description="transformer layers")
    hidden: PositiveInt = Field(32, description="hidden size (the MLP is twice as wide)")
    heads: PositiveInt = Field(2, description="attention heads (must divide hidden)")
    seq_len: int = Field(64, ge=8, description="tokens per training sequence (arms are packed into sequences)")
    epochs: PositiveInt = Field(1, description="passes over each arm's tokens (more epochs leave the early plateau at "
                                "a seed-dependent step: more training noise at this size)")
    min_steps: PositiveInt = Field(
        60, description="optimizer steps at least: a small selection is passed over more epochs (every arm alike), "
        "since fewer steps leave the proxy near its uniform-byte start")
    batch_size: PositiveInt = Field(8, description="sequences per optimizer step")
    learning_rate: float = Field(3e-3, gt=0, description="AdamW peak learning rate (linear warmup and decay)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="linear lr warmup share of all steps")
    weight_decay: float = Field(0.0, ge=0)
    clip: float | None = Field(1.0, gt=0, description="gradient-norm clipping (null: none)")
    max_tokens: PositiveInt = Field(
        262144, description="tokens per arm and epoch at most: a larger selection is trained on a keyed sample "
        "of its tokens (every arm gets the same number)")
    threads: PositiveInt = Field(1, description="torch CPU threads (1 is fastest for a model this small on a "
                                 "busy machine)")
    model: str | None = Field(
        None, description="fine-tune this causal-lm under `models` (a LoRA from its base, per arm and seed pair) "
        "instead of the from-scratch proxy; the metric is then each held-out example's mean token loss under the "
        "model's own tokenizer. The from-scratch settings (layers ... clip) do not apply")
    lora: LoraSettings | None = Field(None, description="with `model`: the arms' LoRA (default: `train.lora`, else "
                                      "the model's warmup LoRA, else the defaults)")
    train: TrainSpec | None = Field(None, description="with `model`: the arms' LoRA training settings (default: the "
                                    "model's warmup settings, else the defaults); the same loop as the warmup")
    checkpoint: str | None = Field(
        None, description="with `model`: each arm continues this checkpoint of the model instead of a new LoRA on "
        "its base: `epoch-N` of its warmup, or the folder name of one of its `checkpoints:` (its LoRA weights, "
        "a fresh optimizer and schedule; the arms' LoRA must be the checkpoint's)")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.model is None and self.hidden % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        return self


class LdsSpec(Strict):
    """`evaluate.lds`: the linear datamodeling score (Park et al. 2023, TRAK). K keyed subsets (a share
    `fraction` each) of a keyed `sample` of the pool; a LoRA retrained on each from the model's base;
    each held-out target example's loss under every retrain; per example, Spearman between
    -sum(scores over the subset) and the measured loss; the mean over examples, with a bootstrap CI
    over subsets, for each gradient score and a keyed random control."""

    subsets: int = Field(16, ge=3, le=4096, description="K: subsets retrained on (LoRA fine-tunes); the CI "
                         "narrows as 1/sqrt(K): 32 or more for a verdict")
    fraction: float = Field(0.5, gt=0, lt=1, description="share of the sample in each subset (0.5: dattri, TRAK)")
    sample: PositiveInt = Field(200, description="pool rows the subsets are drawn from (keyed by row id)")
    scores: list[str] | None = Field(None, description="scores measured, besides every gradient score against "
                                     "targets (vector or matrix scores only)")
    bootstrap: PositiveInt = Field(1000, description="bootstrap replicates over subsets for the CI")
    model: str | None = Field(None, description="the model retrained (a causal-lm under `models`); default: the "
                              "model of the first gradient score")
    train: TrainSpec | None = Field(None, description="the retrain's LoRA settings; default: the model's warmup "
                                    "settings (same loop, same settings), else the defaults here")
    checkpoint: str | None = Field(
        None, description="retrain from this checkpoint of the model instead of a new LoRA on its base: `epoch-N` "
        "of its warmup, or the folder name of one of its `checkpoints:` (each retrain continues that LoRA's "
        "weights with a fresh optimizer and schedule; the retrain's LoRA must be the checkpoint's)")


class EvaluateSpec(Strict):
    """`evaluate:` for `selectkit eval`: hold out part of each target, train the same proxy model on the
    selection and on random subsets with the same tokens, and compare bits per byte on the held-out parts."""

    heldout: float = Field(0.25, gt=0, lt=1, description="share of each target held out for evaluation "
                           "(seeded by row id); the recipe scores against the rest")
    targets: list[str] | None = Field(None, description="targets evaluated on (default: all)")
    random_subsets: PositiveInt = Field(5, description="k: random subsets matched on tokens, one per seed pair")
    stratified: bool = Field(True, description="also a random subset with the selection's mix over "
                             "output.summarize_by (needs summarize_by)")
    random_vs_random: bool = Field(True, description="also k more random subsets against the random arms: the "
                                   "null that calibrates the CI")
    pool_sample: PositiveInt = Field(100, description="pool rows held out of every arm and evaluated on "
                                     "(collateral damage)")
    ngram: PositiveInt = Field(8, description="word n-gram length of the contamination check")
    bootstrap: PositiveInt = Field(2000, description="two-level bootstrap replicates")
    permutations: PositiveInt = Field(5000, description="paired permutation test resamples")
    seed: int | None = Field(None, description="default: the recipe seed")
    proxy: ProxySpec = Field(default_factory=ProxySpec)
    lds: LdsSpec | None = Field(None, description="also measure the linear datamodeling score of the recipe's "
                                "gradient scores (retrains a LoRA per subset; `selectkit plan` shows the cost)")


class Recipe(Strict):
    selectkit: int = Field(description="recipe format version")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    seed: int = 0
    data: DataSpec
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    scores: dict[str, ScoreSpec] = Field(default_factory=dict)
    select: list[StageSpec] = Field(min_length=1)
    output: OutputSpec = Field(default_factory=OutputSpec)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    evaluate: EvaluateSpec | None = Field(None, description="settings of `selectkit eval` (defaults when absent)")

    @field_validator("selectkit")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(f"unknown recipe format version {value}; supported: {FORMAT_VERSION}")
        return value


class LoadedRecipe:
    """A validated Recipe with where it came from (file, folder, source map, hash). When loaded
    with `collect=True`, `errors` holds the structural errors and `recipe` the parts that
    validated on their own, so the semantic checks can report everything in one pass; `broken`
    names the entries left out (references to them are not reported again)."""

    def __init__(self, recipe: Recipe, file: Path, source_map: SourceMap, text: str,
                 errors: list[RecipeError] | None = None, broken: dict[str, set[str]] | None = None,
                 base: Path | None = None):
        self.recipe = recipe
        self.file = file
        self.base = base if base is not None else file.parent
        self.source_map = source_map
        self.text = text
        self.errors = list(errors or [])
        self.broken = broken or {"models": set(), "scores": set(), "targets": set(), "sections": set()}

    def resolve_path(self, path: str) -> Path:
        """A path relative to the recipe's folder, or an object-storage URL as an ObjectPath."""
        from selectkit.storage.objects import is_url

        if is_url(path):
            from selectkit.storage.objects import ObjectPath

            return ObjectPath(path)  # type: ignore[return-value] - Path-like for sources, cache and outputs
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def locate(self, path: tuple, at_key: bool = False) -> Location:
        return self.source_map.locate(path, at_key)

    def with_sources(self, change: Callable[[str, Any], dict[str, Any]]) -> LoadedRecipe:
        """A copy whose data sources are updated by `change(name, source) -> fields` (the pool is named
        "pool"); this recipe is left as it was."""
        data = getattr(self.recipe, "data", None)
        if data is None:
            return self
        pool = data.pool.model_copy(update=change("pool", data.pool)) if data.pool is not None else None
        targets = {name: source.model_copy(update=change(name, source)) for name, source in data.targets.items()}
        recipe = self.recipe.model_copy(update={"data": data.model_copy(update={"pool": pool, "targets": targets})})
        return LoadedRecipe(recipe, self.file, self.source_map, self.text, self.errors, self.broken, self.base)

    @property
    def resolved(self) -> dict:
        """The recipe with every default filled in (what `plan` shows and the manifest stores)."""
        return self.recipe.model_dump(mode="json", by_alias=True)

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.resolved, sort_keys=True).encode()).hexdigest()


Sources = dict[str, dict[str, Any]]  # data source name ("pool" or a target) -> fields set before validation


def load(path: str | Path, collect: bool = False, *, sources: Sources | None = None) -> LoadedRecipe:
    """Read and validate a recipe file's structure. Raises RecipeError(s) with locations; with
    `collect`, structural errors are kept on the result instead (see LoadedRecipe). `sources` sets
    fields of data sources (adding them where absent) before validation: in-memory data's files."""
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"recipe not found: {file}", code="recipe-file")
    return load_text(read_recipe_text(file), file, collect=collect, sources=sources)


def load_text(text: str, file: str | Path = "<recipe>", *, base: Path | None = None, collect: bool = False,
              sources: Sources | None = None) -> LoadedRecipe:
    """A recipe from YAML text; errors say `file:line:col` (`file` names the text; paths in the recipe
    resolve against `base`, by default the file's folder)."""
    data, smap = load_yaml(text, str(file))
    return _validated(data, smap, Path(file), text, base, collect, sources)


def load_data(data: Any, *, base: Path | None = None, collect: bool = False,
              sources: Sources | None = None) -> LoadedRecipe:
    """A recipe from a dict (a notebook builds or changes one); errors name the key path, such as
    `scores.dsir.use`. Paths in the recipe resolve against `base` (default: the working folder)."""
    import copy

    import yaml

    data = copy.deepcopy(data)
    try:
        text = yaml.safe_dump(data, sort_keys=False)
    except yaml.YAMLError:
        text = repr(data)
    return _validated(data, KeyPaths("<dict>"), Path("<dict>"), text, base or Path.cwd(), collect, sources)


def load_any(recipe: Any, *, collect: bool = False, sources: Sources | None = None) -> LoadedRecipe:
    """A recipe given as a file path, YAML text (a string with a line break, or a flow mapping `{...}`),
    a dict, a `Recipe` or a `LoadedRecipe`."""
    if isinstance(recipe, LoadedRecipe):
        if not sources:
            return recipe
        data = recipe.recipe.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return load_data(data, base=recipe.base, collect=collect, sources=sources)
    if isinstance(recipe, Recipe):
        recipe = recipe.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(recipe, dict):
        return load_data(recipe, collect=collect, sources=sources)
    if isinstance(recipe, str) and ("\n" in recipe or recipe.lstrip().startswith("{")):
        return load_text(recipe, "<string>", base=Path.cwd(), collect=collect, sources=sources)
    if isinstance(recipe, (str, Path)):
        return load(recipe, collect=collect, sources=sources)
    raise RecipeError(f"a recipe is a file path, YAML text, a dict or a Recipe, not {type(recipe).__name__}",
                      code="not-a-mapping")


class KeyPaths(SourceMap):
    """The SourceMap of a dict recipe: there are no lines, so each place is its key path."""

    def locate(self, path: tuple, at_key: bool = False) -> Location:
        return KeyPath(self.file, 0, 0, key=key_path(path))


@dataclass(frozen=True)
class KeyPath(Location):
    """A place in a dict recipe: `scores.dsir.use`, `select[0].with.budget`."""

    key: str = ""

    def __str__(self) -> str:
        return self.key or "(recipe)"


def key_path(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validated(data: Any, smap: SourceMap, file: Path, text: str, base: Path | None, collect: bool,
               sources: Sources | None) -> LoadedRecipe:
    if not isinstance(data, dict):
        raise RecipeError("a recipe is a mapping of keys (selectkit, name, data, scores, select, ...)",
                          smap.locate(()), code="not-a-mapping")
    data = migrate(data, smap)
    if sources:
        data = _with_sources(data, sources)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        errors = pydantic_errors(exc, smap, Recipe)
        if not collect:
            raise RecipeErrors(errors) from None
        recipe, broken = salvage(data)
        return LoadedRecipe(recipe, file, smap, text, errors, broken, base)
    return LoadedRecipe(recipe, file, smap, text, base=base)


def _with_sources(data: dict, sources: Sources) -> dict:
    """`data` with the fields of `sources` set on its data sources (a source absent from it is added)."""
    section = dict(data["data"]) if isinstance(data.get("data"), dict) else {}
    targets = dict(section["targets"]) if isinstance(section.get("targets"), dict) else {}
    for name, fields in sources.items():
        holder = section if name == "pool" else targets
        given = holder.get(name)
        holder[name] = {**(given if isinstance(given, dict) else {}), **fields}
    if targets or "targets" in section:
        section["targets"] = targets
    return {**data, "data": section}


def salvage(data: dict) -> tuple[Recipe, dict[str, set[str]]]:
    """The parts of an invalid recipe that validate on their own (entry by entry for models,
    scores, targets and stages), and the names of what was left out."""
    from pydantic import TypeAdapter

    broken: dict[str, set[str]] = {"models": set(), "scores": set(), "targets": set(), "sections": set()}
    values: dict[str, Any] = {}

    def entries(kind: str, raw: Any, model: type[BaseModel]) -> dict:
        if not isinstance(raw, dict):
            broken["sections"].add(kind)
            return {}
        good = {}
        for key, value in raw.items():
            try:
                good[key] = model.model_validate(value)
            except ValidationError:
                broken[kind].add(str(key))
        return good

    for name, field in Recipe.model_fields.items():
        key = field.alias or name
        if key not in data:
            continue
        raw = data[key]
        try:
            if name in ("models", "scores"):
                values[name] = entries(name, raw, ModelSpec if name == "models" else ScoreSpec)
            elif name == "select":
                values[name] = [_valid(StageSpec, item) for item in raw] if isinstance(raw, list) else []
            elif name == "data" and isinstance(raw, dict):
                pool = _valid(DataSource, raw.get("pool"))
                targets = entries("targets", raw.get("targets", {}), DataSource)
                values[name] = DataSpec.model_construct(pool=pool, targets=targets)
            else:
                values[name] = TypeAdapter(field.annotation).validate_python(raw)
        except (ValidationError, TypeError, ValueError):
            broken["sections"].add(name)
    placeholders = {"data": DataSpec.model_construct(pool=None, targets={}), "select": [], "name": "recipe",
                    "selectkit": FORMAT_VERSION}
    for name, field in Recipe.model_fields.items():
        if name not in values and field.is_required():
            broken["sections"].add(name)
            values[name] = placeholders[name]
    recipe = Recipe.model_construct(**values)
    return recipe, broken


def _valid(model: type[BaseModel], value: Any) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def migrate(data: dict, smap: SourceMap) -> dict:
    """Upgrade an older format version to the current one."""
    version = data.get("selectkit")
    if version is None:
        raise RecipeError(f"missing 'selectkit: {FORMAT_VERSION}' (the recipe format version)", smap.locate(()),
                          code="format-version")
    while isinstance(version, int) and version in MIGRATIONS:
        data = MIGRATIONS[version](data)
        version = data.get("selectkit")
    return data


def pydantic_errors(exc: ValidationError, smap: SourceMap, model: type[BaseModel] | None,
                    prefix: tuple = ()) -> list[RecipeError]:
    """Turn pydantic errors into located RecipeErrors with did-you-mean hints."""
    out = []
    for err in exc.errors():
        loc = prefix + tuple(p for p in err["loc"] if not _is_union_tag(p))
        kind = err["type"]
        hint = None
        if kind == "extra_forbidden":
            known = allowed_keys(model, loc[len(prefix):-1]) if model else []
            message = f"unknown key {loc[-1]!r}"
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            elif known:
                hint = f"allowed: {', '.join(known)}"
            out.append(RecipeError(message, smap.locate(loc, at_key=True), hint, code="unknown-key"))
            continue
        if kind == "missing":
            where = ".".join(str(p) for p in loc[:-1]) or "the recipe"
            # a file names the mapping's line (the key has none); a dict recipe names the key's own path
            out.append(RecipeError(f"missing key {loc[-1]!r} in {where}", smap.locate(loc, at_key=True),
                                   code="missing-key"))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        code = "invalid-value"
        if model is Recipe and loc == ("selectkit",):
            code = "format-version"
        elif model is not Recipe and "budget" in loc[len(prefix):]:
            code = "budget"
        out.append(RecipeError(f"{'.'.join(str(p) for p in loc)}: {msg}", smap.locate(loc), code=code))
    return _dedupe(out)


def _dedupe(errors: list[RecipeError]) -> list[RecipeError]:
    seen, out = set(), []
    for e in errors:
        if str(e) not in seen:
            seen.add(str(e))
            out.append(e)
    return out


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in {"str", "int", "literal['all']", "list[str]"} or "[" in part
                                      and part not in ("with",) and not part.isidentifier())


def allowed_keys(model: type[BaseModel], path: tuple) -> list[str]:
    """The keys allowed at `path` inside `model` (by alias), for did-you-mean suggestions."""
    annotation: Any = model
    for part in path:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = next((f for n, f in annotation.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) in (dict, list):
            annotation = typing.get_args(annotation)[-1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or n for n, f in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        models = [a for a in typing.get_args(annotation)
                  if isinstance(a, type) and issubclass(a, BaseModel) or typing.get_origin(a) in (dict, list)]
        return models[0] if models else annotation
    if origin is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation
