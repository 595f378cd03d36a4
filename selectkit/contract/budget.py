"""Selection budgets: a count, a fraction of the candidates, or a token budget."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema

from selectkit.contract.lazy import lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class Budget(BaseModel):
    """How many examples a stage keeps. Written in a recipe as `500`, `"5%"`,
    `{count: 500}`, `{fraction: 0.05}` or `{tokens: 1000000}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["count", "fraction", "tokens"]
    value: float

    def max_count(self, n_candidates: int) -> int:
        """The most examples this budget can keep out of `n_candidates` (tokens: all of them)."""
        if self.kind == "count":
            return min(int(self.value), n_candidates)
        if self.kind == "fraction":
            return min(int(math.floor(self.value * n_candidates + 1e-9)), n_candidates)
        return n_candidates

    def take(self, order: np.ndarray, token_counts: np.ndarray | None = None) -> np.ndarray:
        """The prefix of `order` (pool indices, best first) that fits the budget.
        A token budget keeps examples in order while their token total stays within it."""
        order = np.asarray(order)
        if self.kind != "tokens":
            return order[: self.max_count(len(order))]
        if token_counts is None:
            raise ValueError("a token budget needs token counts")
        cumulative = np.cumsum(np.asarray(token_counts)[order])
        return order[: int(np.searchsorted(cumulative, self.value, side="right"))]

    def describe(self) -> str:
        if self.kind == "count":
            return f"{int(self.value)} examples"
        if self.kind == "fraction":
            return f"{self.value:.4g} of the candidates"
        return f"{int(self.value)} tokens"


def parse_budget(value: Any) -> Any:
    """Turn the YAML spellings of a budget into a Budget (pydantic reports the rest)."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise ValueError("a budget is a count, a percentage like '5%', or {count|fraction|tokens: N}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a budget count must be positive, got {value}")
        return Budget(kind="count", value=value)
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if not match:
            raise ValueError(f"cannot read budget {value!r}: write a count, a percentage like '5%', "
                             "or {count|fraction|tokens: N}")
        pct = float(match.group(1))
        if not 0 < pct <= 100:
            raise ValueError(f"a budget percentage must be in (0, 100], got {value!r}")
        return Budget(kind="fraction", value=pct / 100)
    if isinstance(value, dict):
        if set(value) - {"count", "fraction", "tokens"} or len(value) != 1:
            raise ValueError("a budget mapping has exactly one key: count, fraction or tokens")
        ((kind, amount),) = value.items()
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"budget {kind} must be a number, got {amount!r}")
        if kind in ("count", "tokens") and (amount <= 0 or int(amount) != amount):
            raise ValueError(f"budget {kind} must be a positive integer, got {amount!r}")
        if kind == "fraction" and not 0 < amount <= 1:
            raise ValueError(f"budget fraction must be in (0, 1], got {amount!r}")
        return Budget(kind=kind, value=amount)
    raise ValueError("a budget is a count, a percentage like '5%', or {count|fraction|tokens: N}")


def _dump(budget: Budget) -> Any:
    if budget.kind == "count":
        return int(budget.value)
    if budget.kind == "fraction":
        return {"fraction": budget.value}
    return {"tokens": int(budget.value)}


BudgetField = Annotated[
    Budget,
    BeforeValidator(parse_budget),
    PlainSerializer(_dump),
    WithJsonSchema({"anyOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
        {"type": "object", "properties": {"count": {"type": "integer", "minimum": 1}}, "additionalProperties": False},
        {"type": "object", "properties": {"fraction": {"type": "number"}}, "additionalProperties": False},
        {"type": "object", "properties": {"tokens": {"type": "integer", "minimum": 1}}, "additionalProperties": False},
    ]}),
]
"""A recipe field holding a Budget in any of its YAML spellings."""
