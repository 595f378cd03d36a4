"""Shared pieces of the model-based scorers: the `response` param and access to the pass."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from selectkit.plugin import ScoreContext, SelectkitError

RESPONSE_HELP = ("column or '{template}' holding each example's response; its rendered text must end the "
                 "example's text, and only the response's tokens count (default: every token)")
POOLING_HELP = ("auto (the folder's sentence-transformers pooling, else last for causal LMs, mean otherwise), "
                "mean, cls or last")


def response_field() -> Any:
    return Field(None, description=RESPONSE_HELP)


def store(ctx: ScoreContext, scorer: str) -> Any:
    """The model pass's feature store, or a clear error when the scorer runs without one."""
    if ctx.features is None:
        raise SelectkitError(f"scorer {scorer!r} reads model features, but no model pass ran; run it through "
                             "selectkit.run(), or selectkit.testing.score() in a test")
    return ctx.features


RUNS_HELP = ("independent seeded trainings averaged over (Paul et al. 2021: about 10): each repeats the model's "
             "`warmup` with a seed of its own; null: the model as given (its own checkpoints)")
DROP_TOP_HELP = ("share of the pool's scored examples with the HIGHEST scores set to NaN, so no stage selects them "
                 "(Fayyaz et al. 2022: the top is mostly noise); then keep the highest of the rest")


def drop_top(values: Any, fraction: float, keys: Any) -> Any:
    """`values` with its `fraction` highest (non-NaN) entries set to NaN; ties at the cut go by row key."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64).copy()
    valid = np.flatnonzero(~np.isnan(values))
    count = int(np.floor(fraction * len(valid) + 1e-9))
    if count:
        order = valid[np.lexsort((np.asarray(keys)[valid], -values[valid]))]
        values[order[:count]] = np.nan
    return values
