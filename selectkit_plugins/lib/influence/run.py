"""The scorer side of gradient influence: which gradient requests a scorer declares, and the
per-checkpoint features it gets back (pool and targets side by side), plus target columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selectkit.plugin import DataError, FeatureRequest, lazy_import
from selectkit_plugins.lib.influence.pipeline import FeatureSet
from selectkit_plugins.lib.influence.scores import aggregate

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


def _settings(params: Any, **override: Any) -> dict[str, Any]:
    return {**params.model_dump(mode="json"), **override}


def gradient_requests(params: Any, targets: list[str], *, pool_adam: str = "none", with_targets: bool = True,
                      **override: Any) -> list[FeatureRequest]:
    """Pool gradients (Adam-preconditioned with `pool_adam` less|paper) and each target's (SGD)."""
    from selectkit_plugins.lib.influence.requests import gradient_request

    out = [gradient_request("grad_features", "pool", _settings(params, adam=pool_adam, **override))]
    if with_targets:
        out += [gradient_request("grad_features", t, _settings(params, adam="none", **override)) for t in targets]
    return out


@dataclass
class CheckpointFeatures:
    """One checkpoint's features: the pool's as stored (streamed by the scores), each target's in memory."""

    checkpoint: Any
    pool: FeatureSet
    targets: dict[str, FeatureSet]


def gradient_features(ctx: Any, params: Any, *, pool_adam: str = "none", with_targets: bool = True,
                      **override: Any) -> list[CheckpointFeatures]:
    """The features `gradient_requests` asked for, one entry per checkpoint."""
    requests = gradient_requests(params, list(ctx.targets), pool_adam=pool_adam, with_targets=with_targets,
                                 **override)
    got = {r.data: ctx.features.get(r.kind, r.data, **dict(r.settings)) for r in requests}
    out = []
    for c, pool in enumerate(got["pool"]):
        targets = {t: in_memory(got[t][c].features) for t in ctx.targets} if with_targets else {}
        out.append(CheckpointFeatures(pool.checkpoint, pool.features, targets))
    return out


def in_memory(features: FeatureSet) -> FeatureSet:
    """A target's features with its stored rows read into memory (targets are small)."""
    from dataclasses import replace

    return replace(features, features=np.asarray(features.features))


def target_columns(ctx: Any, sizes: dict[str, int], how: str, subtask_field: str | None = None,
                   ) -> tuple[Any, tuple[str, ...]]:
    """How a block of pairwise scores against every target's examples side by side (B, sum M_t)
    becomes one column per target: the mean or max over its examples, or, with `subtask_field`, the
    mean/max within each subtask then the max over subtasks (LESS's `matching.py`). Returns the
    reduce function for `scores.pairwise` and the column names."""
    plan: list[tuple[int, int, list[str] | None]] = []
    at = 0
    for name, size in sizes.items():
        groups = None
        if subtask_field is not None:
            ds = ctx.targets[name]
            if subtask_field not in ds.rows.columns:
                raise DataError(f"target {name!r} has no column {subtask_field!r} (subtask_field)")
            groups = [str(v) for v in ds.rows[subtask_field].to_list()]
        plan.append((at, at + size, groups))
        at += size

    def reduce(block: np.ndarray) -> np.ndarray:
        cols = []
        for (lo, hi, groups), name in zip(plan, sizes):
            scores = block[:, lo:hi]
            if groups is not None:
                grouped, _ = aggregate(scores, groups, how)
                cols.append(grouped.max(axis=1))
            else:
                cols.append(aggregate(scores, [name] * scores.shape[1], how)[0][:, 0])
        return np.stack(cols, axis=1)

    return reduce, tuple(sizes)
