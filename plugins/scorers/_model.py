"""Shared pieces of the model-based scorers: the `response` param and access to the pass."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from selectkit.components import ScoreContext
from selectkit.errors import SelectkitError

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
