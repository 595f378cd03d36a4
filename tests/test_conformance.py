"""Every installed built-in component passes the conformance kit plugin authors use."""

from __future__ import annotations

import pytest

from selectkit.contract.components import Shape
from selectkit.contract.registry import load_registry
from selectkit.testing import check_normalizer, check_params_strict, check_selector

REGISTRY = load_registry(strict=True)
ALL = [(kind, name) for kind in ("scorers", "normalizers", "selectors") for name in REGISTRY.names(kind)]


@pytest.mark.parametrize(("kind", "name"), ALL, ids=[f"{k}:{n}" for k, n in ALL])
def test_params_are_strict(kind, name):
    check_params_strict(REGISTRY.get(kind, name))


# params that put the kit's N(0, 1) synthetic scores inside a normalizer's domain
NORMALIZER_PARAMS = {"log": {"eps": 10.0}}


@pytest.mark.parametrize("name", REGISTRY.names("normalizers"))
def test_normalizers_keep_shape(name):
    cls = REGISTRY.get("normalizers", name)
    params = NORMALIZER_PARAMS.get(name, {})
    try:
        cls.Params.model_validate(params)
    except Exception:
        pytest.skip(f"{name} has required params")
    check_normalizer(cls, params)


SIMPLE_SELECTORS = [n for n in REGISTRY.names("selectors")
                    if REGISTRY.get("selectors", n).accepts <= {Shape.VECTOR, Shape.MATRIX}
                    and not REGISTRY.get("selectors", n).score_params]


@pytest.mark.parametrize("name", SIMPLE_SELECTORS)
def test_selectors_honour_candidates_budget_and_seed(name):
    cls = REGISTRY.get("selectors", name)
    params = {"budget": 20}
    if cls.needs_score:
        params["score"] = "s"
    if name == "threshold":
        params["min_quantile"] = 0.5
    try:
        cls.Params.model_validate(params)
    except Exception:
        pytest.skip(f"{name} needs params this generic check cannot guess")
    check_selector(cls, params)
