"""Scores and selections as cache entries: how the executor stores a score or a stage's selection
and reads it back (the cache itself knows only arrays and metadata)."""

from __future__ import annotations

from typing import Any

import numpy as np

from selectkit.contract.components import Score, Selection, Shape
from selectkit.storage.cache import Cache


def score_meta(score: Score) -> dict:
    """What a score is besides its values: shape, orientation, column names and tasks, targets."""
    return {"shape": score.shape.value, "higher_is_better": score.higher_is_better,
            "columns": list(score.columns), "tasks": list(score.tasks), "targets": list(score.target_features)}


def score_of(arrays: dict[str, np.ndarray], meta: dict) -> Score:
    return Score(values=arrays["values"], shape=Shape(meta["shape"]), higher_is_better=meta["higher_is_better"],
                 columns=tuple(meta["columns"]), tasks=tuple(meta["tasks"]),
                 target_features={t: arrays[f"target:{t}"] for t in meta["targets"]})


def save_score(cache: Cache, key: str, score: Score, extra: dict[str, np.ndarray] | None = None, **meta: Any) -> None:
    """The score (and `extra` arrays kept beside it, e.g. a surrogate's oracle mask) as entry scores/<key>."""
    arrays = {"values": np.asarray(score.values), **(extra or {})}
    arrays.update({f"target:{t}": v for t, v in score.target_features.items()})
    cache.write_arrays("scores", key, arrays, **meta, **score_meta(score))


def load_score(cache: Cache, key: str) -> Score | None:
    got = cache.read_arrays("scores", key)
    return None if got is None else score_of(*got)


def save_selection(cache: Cache, key: str, selection: Selection, **meta: Any) -> None:
    arrays = {"indices": np.asarray(selection.indices, dtype=np.int64)}
    if selection.weights is not None:
        arrays["weights"] = np.asarray(selection.weights, dtype=np.float64)
    if selection.counts is not None:
        arrays["counts"] = np.asarray(selection.counts, dtype=np.int64)
    for name, values in selection.columns.items():
        arrays[f"column:{name}"] = np.asarray(values)
    cache.write_arrays("selections", key, arrays, diagnostics=selection.diagnostics, **meta)


def load_selection(cache: Cache, key: str) -> Selection | None:
    got = cache.read_arrays("selections", key)
    if got is None:
        return None
    arrays, meta = got
    columns = {k.removeprefix("column:"): v for k, v in arrays.items() if k.startswith("column:")}
    return Selection(indices=arrays["indices"], weights=arrays.get("weights"), counts=arrays.get("counts"),
                     diagnostics=meta.get("diagnostics", {}), columns=columns)
