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
        targets = {t: got[t][c].features for t in ctx.targets} if with_targets else {}
        out.append(CheckpointFeatures(pool.checkpoint, pool.features, targets))
    return out


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

                raise DataError(f"target {name!r} has no column {subtask_field!r} (subtask_field)")
            groups = [str(v) for v in ds.rows[subtask_field].to_list()]
            grouped, _ = aggregate(scores, groups, how)
            cols.append(grouped.max(axis=1))
        else:
            cols.append(aggregate(scores, [name] * scores.shape[1], how)[0][:, 0])
        names.append(name)
    return np.stack(cols, axis=1), tuple(names)
