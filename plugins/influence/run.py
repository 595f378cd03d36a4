"""Glue between a ScoreContext and the influence math: checkpoints, gradient features of pool and
targets per checkpoint (cached in shards), and target-column aggregation.

Where things live: gradient shards and warmup checkpoints go under `<workdir>/../influence/`
(content-addressed, so scorers of one run that need the same gradients share them).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectkit_plugins.influence.adam import AdamState
from selectkit_plugins.influence.checkpoints import Checkpoint, adam_state, epoch_folders, load_model, read_checkpoints
from selectkit_plugins.influence.params import GradientParams
from selectkit_plugins.influence.pipeline import FeatureSet, GradientSettings, cache_key, featurize_texts, lm_featurizer
from selectkit_plugins.influence.scores import aggregate


def scratch(ctx: Any) -> Path:
    if ctx.workdir is None:
        return Path(tempfile.mkdtemp(prefix="selectkit-influence-"))
    return Path(ctx.workdir).parent / "influence"


def _say(ctx: Any) -> Callable[[str], None] | None:
    return getattr(ctx, "progress", None)


def model_identity(ctx: Any) -> dict:
    spec = ctx.model
    data = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(vars(spec))
    return {**data, "base": str(ctx.base) if ctx.base is not None else None}


def settings_for(ctx: Any, params: GradientParams, **override: Any) -> GradientSettings:
    values = dict(proj_dim=params.proj_dim, proj_kind=params.proj_kind, seed=ctx.seed, layout=params.layout,
                  factorize_above=params.factorize_above, factor_dim=params.factor_dim, method=params.method,
                  batch_size=params.batch_size, max_length=params.max_length or getattr(ctx.model, "max_length", 512),
                  dtype=params.feature_dtype)
    values.update(override)
    return GradientSettings(**values)


def prompts_for(ds: Any, params: GradientParams) -> list[str] | None:
    """Each example's prompt: its text minus the rendered `response` (which must end the text)."""
    if params.response is None:
        return None
    from selectkit.data import render_texts
    from selectkit.errors import DataError

    out = []
    for i, (text, resp) in enumerate(zip(ds.texts, render_texts(ds.rows, params.response, ds.name))):
        if not text.endswith(resp):
            raise DataError(f"{ds.name}: example {ds.ids[i]!r}: the text does not end with its response "
                            f"({params.response!r}); make the text template end with the response")
        out.append(text[:len(text) - len(resp)])
    return out


def resolve_checkpoints(ctx: Any, params: GradientParams) -> list[Checkpoint]:
    """The model's `checkpoints` folders; else its `warmup` (trained here once and cached);
    else the model as configured, as one checkpoint of weight 1."""
    spec = ctx.model
    root = Path(ctx.base) if ctx.base is not None else Path(".")
    folders = getattr(spec, "checkpoints", None)
    if folders:
        return read_checkpoints([p if Path(p).is_absolute() else root / p for p in folders])
    warm = getattr(spec, "warmup", None)
    if warm is not None:
        return read_checkpoints(run_warmup(ctx, warm))
    return [Checkpoint("model")]


def run_warmup(ctx: Any, warm: Any) -> list[Path]:
    """Train the warmup LoRA on a seeded fraction of the pool (once: cached by content)."""
    from selectkit.recipe import WarmupSpec
    from selectkit_plugins.influence.warmup import train_warmup, warmup_indices

    spec = warm if isinstance(warm, WarmupSpec) else WarmupSpec.model_validate(warm)
    seed = spec.seed if spec.seed is not None else ctx.seed
    key = cache_key(model_identity(ctx), ctx.pool.fingerprint, spec.model_dump(mode="json"), seed)
    out = scratch(ctx) / f"warmup-{key}"
    have = epoch_folders(out)
    if len(have) >= spec.epochs:
        return have[:spec.epochs]
    model, tok = load_model(_without_lora(ctx.model), ctx.base, params="linear")
    for p in model.parameters():
        p.requires_grad_(False)
    rows = warmup_indices(len(ctx.pool), spec.fraction, seed)
    texts = [ctx.pool.texts[i] for i in rows]
    return train_warmup(model, tok, texts, out, spec, seed=seed, max_length=getattr(ctx.model, "max_length", 512),
                        progress=_say(ctx))


def _without_lora(spec: Any) -> Any:
    """The warmup trains a fresh LoRA on the base model."""
    if hasattr(spec, "model_copy"):
        return spec.model_copy(update={"lora": None})
    if dataclasses.is_dataclass(spec):
        return dataclasses.replace(spec, lora=None)
    return spec


@dataclass
class CheckpointFeatures:
    checkpoint: Checkpoint
    pool: FeatureSet
    targets: dict[str, FeatureSet]


def gradient_features(ctx: Any, params: GradientParams, *, pool_adam: bool = False, adam_mode: str = "less",
                      with_targets: bool = True, **override: Any) -> list[CheckpointFeatures]:
    """Pool (optionally Adam-preconditioned) and target (SGD) gradient features per checkpoint."""
    settings = settings_for(ctx, params, **override)
    out = []
    for ck in resolve_checkpoints(ctx, params):
        model, tok = load_model(ctx.model, ctx.base, ck.adapter, params.params)
        adam = None
        if pool_adam:
            feat = lm_featurizer(model, settings)
            adam = adam_state(ck, feat.param_names) if ck.optimizer is not None else AdamState.zeros(feat.raw_dim)
        args = (ctx, params, ck, model, tok, settings, adam_mode)
        pool = _features(*args, ctx.pool, adam)
        targets = {name: _features(*args, ds, None) for name, ds in ctx.targets.items()} if with_targets else {}
        out.append(CheckpointFeatures(ck, pool, targets))
    return out


def _features(ctx: Any, params: GradientParams, ck: Checkpoint, model: Any, tok: Any, settings: GradientSettings,
              adam_mode: str, ds: Any, adam: AdamState | None) -> FeatureSet:
    key = cache_key(model_identity(ctx), ck.fingerprint, settings, params.response, ds.fingerprint,
                    adam_mode if adam is not None else "sgd")
    return featurize_texts(model, tok, ds.texts, settings, prompts=prompts_for(ds, params), adam=adam,
                           adam_mode=adam_mode, folder=scratch(ctx) / "grads" / key,
                           meta={"data": ds.name, "checkpoint": ck.name}, progress=_say(ctx))


def target_columns(ctx: Any, per_target: dict[str, np.ndarray], how: str, subtask_field: str | None = None,
                   ) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, M_t) pairwise scores per target -> one column per target: the mean or max over its
    examples, or, with `subtask_field`, the mean/max within each subtask then the max over
    subtasks (LESS's `matching.py`)."""
    cols, names = [], []
    for name, scores in per_target.items():
        if subtask_field is not None:
            ds = ctx.targets[name]
            if subtask_field not in ds.rows.columns:
                from selectkit.errors import DataError

                raise DataError(f"target {name!r} has no column {subtask_field!r} (subtask_field)")
            groups = [str(v) for v in ds.rows[subtask_field].to_list()]
            grouped, _ = aggregate(scores, groups, how)
            cols.append(grouped.max(axis=1))
        else:
            cols.append(aggregate(scores, [name] * scores.shape[1], how)[0][:, 0])
        names.append(name)
    return np.stack(cols, axis=1), tuple(names)


def sample_rows(ctx: Any, n: int, limit: int | None, label: str) -> np.ndarray:
    """A seeded sample of pool rows (all when `limit` is None or >= n), ascending."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(ctx.rng(label).choice(n, size=limit, replace=False))


def lm_batches(tok: Any, texts: list[str], prompts: list[str | None] | None, batch_size: int, max_length: int,
               device: Any) -> list[dict]:
    from selectkit_plugins.influence.grads import lm_batch

    out = []
    for i in range(0, len(texts), batch_size):
        b = lm_batch(tok, texts[i:i + batch_size], prompts[i:i + batch_size] if prompts else None, max_length)
        out.append({k: v.to(device) for k, v in b.items()})
    return out

