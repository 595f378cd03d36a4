"""Budgets in every YAML spelling, and how they cut a ranked order."""

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from selectkit.contract.budget import Budget, BudgetField

adapter = TypeAdapter(BudgetField)


@pytest.mark.parametrize(("given", "kind", "value"), [
    (500, "count", 500), ("5%", "fraction", 0.05), ("12.5 %", "fraction", 0.125),
    ({"count": 7}, "count", 7), ({"fraction": 0.2}, "fraction", 0.2), ({"tokens": 1000}, "tokens", 1000),
])
def test_spellings(given, kind, value):
    budget = adapter.validate_python(given)
    assert (budget.kind, budget.value) == (kind, pytest.approx(value))
    assert adapter.validate_python(adapter.dump_python(budget)) == budget  # round-trips as YAML would


@pytest.mark.parametrize("given", [0, -3, True, "5", "150%", "0%", {"count": 1.5}, {"fraction": 0},
                                   {"count": 1, "tokens": 2}, {"percent": 5}, [1], 2.5])
def test_rejected(given):
    with pytest.raises(ValidationError):
        adapter.validate_python(given)


def test_take_count_fraction_and_tokens():
    order = np.array([5, 3, 1, 0, 2, 4])
    assert Budget(kind="count", value=2).take(order).tolist() == [5, 3]
    assert Budget(kind="fraction", value=0.5).take(order).tolist() == [5, 3, 1]
    tokens = np.array([10, 10, 10, 40, 10, 30])
    # 30 (id 5) + 40 (id 3) = 70 <= 75; adding id 1 (10) = 80 > 75
    assert Budget(kind="tokens", value=75).take(order, tokens).tolist() == [5, 3]
    assert Budget(kind="count", value=100).max_count(6) == 6
