"""Everything a plugin imports, on one page: `from selectkit.plugin import ...` and nothing else.

    import numpy as np

    from selectkit.plugin import Score, ScoreContext, Scorer, hookimpl

    class Vowels(Scorer):
        '''Share of vowels in the text.'''

        name = "vowels"
        rowwise = True  # each row's score depends on its own row only

        def run(self, ctx: ScoreContext) -> Score:
            return Score(np.array([sum(c in "aeiou" for c in t) / max(len(t), 1) for t in ctx.pool.texts]))

    @hookimpl
    def register_scorers(register):
        register(Vowels)

Components: `Scorer` (declares `feature_requests` for model work, never loads a model), `Normalizer`,
`Selector`, `Verifier` (a completion vs a reference answer), each with a pydantic `Params` (unknown
keys forbidden). What they return: `Score` (with its `Shape`), `Selection`. What they are handed:
`ScoreContext`, `NormalizeContext`, `SelectContext`, whose data are `Rows` and `Pool` (Protocols).

Pass providers (the only code that loads models): `ShardedPass` (write `plan`, `compute` per shard and
`assemble`; the base owns the cache entry, resume, progress and devices) or `PassProvider`; they plan
`PassPlan`s with a `PlanContext` and run a `PassWork` with a `PassContext` (its `model()` is the one
loader). The causal-LM toolkit they share is below. Data formats: `Reader`/`RowSource`/`InMemory`;
`FirstRows` is a source's first rows as plain dicts (what validate and `Scorer.check_pool` see).

Randomness is keyed by row identity (`row_keys`, `uniform`, `gumbel`; `rng_for` for draws that are not
about rows). Numerics and stores the core uses too: clustering (`kmeans` with `KMeansParams`,
`cluster_members`, `allocate`, `gumbel_top`, `features_of`, `has_faiss`), seeded random projections
(`make_projector`, `KroneckerProjector`, `resolve_kind`, `ProjectionKind`, `WIDE`), the gradient store
(`StoredFeatures`, `encode_features`, `checkpoint_shards`, `row_blocks`, `aligned_blocks`, `is_half`,
`unit_rows`) and a training checkpoint's AdamW state (`save_adam_state`, `load_adam_state`,
`OPTIMIZER_FILE`, `STATE_FILE`).

Errors a user can cause are `SelectkitError`s (`DataError`, `RecipeError`, `ModelError`...):
the CLI prints them without a traceback. `selectkit.testing` has the conformance checks. docs/plugins.md
is the guide, with a scorer, a selector and a sharded pass provider that its tests run.
"""

from pydantic import Field

from selectkit.contract.budget import Budget, BudgetField
from selectkit.contract.clusters import (
    KMeansParams,
    allocate,
    cluster_members,
    features_of,
    gumbel_top,
    has_faiss,
    kmeans,
)
from selectkit.contract.components import (
    Component,
    InfluenceForm,
    NormalizeContext,
    Normalizer,
    Params,
    Score,
    ScoreContext,
    Scorer,
    SelectContext,
    Selection,
    Selector,
    SelectorParams,
    Shape,
    Verifier,
)
from selectkit.contract.features import FeatureRequest, Features, describe
from selectkit.contract.hookspecs import hookimpl
from selectkit.contract.keyed_random import (
    canonical_order,
    gumbel,
    keyed_subset,
    label_hash,
    mix64,
    rng_for,
    row_keys,
    uniform,
)
from selectkit.contract.lazy import lazy_import
from selectkit.contract.passes import (
    ModelRef,
    PassContext,
    PassPlan,
    PassProvider,
    PassStats,
    PassWork,
    PlanContext,
    Shard,
    ShardedPass,
)
from selectkit.contract.projection import WIDE, KroneckerProjector, make_projector, resolve_kind
from selectkit.contract.projection import Kind as ProjectionKind
from selectkit.contract.protocols import Model, Pool, Rows, Shards, Source, StepStore
from selectkit.contract.readers import FirstRows, InMemory, Reader, RowSource, whole
from selectkit.contract.registry import find_component
from selectkit.errors import (
    DataError,
    MissingExtraError,
    ModelError,
    PluginError,
    RecipeError,
    SelectkitError,
    SelectkitWarning,
    require,
    unknown_message,
)
from selectkit.models.checkpoint import OPTIMIZER_FILE, STATE_FILE, load_adam_state, save_adam_state

# the causal-LM toolkit pass providers share (each imports torch inside, when it runs)
from selectkit.models.lm import (
    batch,
    counted_tokens,
    encode,
    example_loss,
    mixed_precision,
    pad,
    plan_batches,
    prompt_ids,
    prompts_of,
    render,
    render_missing,
    token_logprobs,
)
from selectkit.models.loader import peft_quietly, unsafe_load_reason
from selectkit.models.training import linear_schedule, train_epoch
from selectkit.recipe.spec import TrainSpec
from selectkit.storage.digest import cache_key, path_fingerprint
from selectkit.storage.gradient_store import (
    StoredFeatures,
    aligned_blocks,
    checkpoint_shards,
    is_half,
    row_blocks,
    unit_rows,
)
from selectkit.storage.gradient_store import encode as encode_features

__all__ = [
    # components
    "Component", "Params", "Field", "Shape", "Score", "Selection", "Scorer", "Normalizer", "Selector",
    "SelectorParams", "Verifier", "InfluenceForm", "ScoreContext", "NormalizeContext", "SelectContext", "Budget",
    "BudgetField", "Rows", "Pool", "find_component",
    # model work
    "FeatureRequest", "Features", "describe", "PassProvider", "ShardedPass", "PassPlan", "PassWork", "PlanContext",
    "PassContext", "Shard", "PassStats", "ModelRef", "Model", "Shards", "StepStore", "Source",
    # data formats
    "Reader", "RowSource", "InMemory", "FirstRows", "whole",
    # registration, randomness, identity, cheap imports
    "hookimpl", "row_keys", "uniform", "gumbel", "rng_for", "canonical_order", "keyed_subset", "label_hash", "mix64",
    "cache_key", "path_fingerprint", "lazy_import",
    # errors
    "SelectkitError", "DataError", "RecipeError", "PluginError", "ModelError", "MissingExtraError", "require",
    "unknown_message", "SelectkitWarning",
    # the causal-LM toolkit
    "render", "render_missing", "prompts_of", "encode", "prompt_ids", "pad", "batch", "plan_batches",
    "counted_tokens", "example_loss",
    "token_logprobs", "mixed_precision", "train_epoch", "linear_schedule", "TrainSpec", "peft_quietly",
    "unsafe_load_reason",
    # numerics and stores the core uses too: clustering, random projections, the gradient store, AdamW state
    "KMeansParams", "kmeans", "cluster_members", "allocate", "gumbel_top", "features_of", "has_faiss",
    "make_projector", "KroneckerProjector", "resolve_kind", "ProjectionKind", "WIDE",
    "StoredFeatures", "encode_features", "checkpoint_shards", "row_blocks", "aligned_blocks", "is_half", "unit_rows",
    "save_adam_state", "load_adam_state", "OPTIMIZER_FILE", "STATE_FILE",
]
