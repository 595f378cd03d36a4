"""The gradient request kinds and their default settings, shared by the scorers that ask for them
and the `gradients` provider that answers: grad_features (projected per-example gradients per
checkpoint), ekfac_influence and ihvp_influence (curvature-based influence in one step)."""

from __future__ import annotations

from typing import Any

from selectkit.plugin import FeatureRequest

BASE = {"params": "auto", "method": "hooks", "batch_size": "auto", "response": None, "run": None}
FEATURES = {**BASE, "proj_dim": 1024, "proj_kind": "auto", "layout": "joint", "factorize_above": 1 << 22,
            "factor_dim": 32, "feature_dtype": "auto", "adam": "none", "keep_features": True}
EKFAC = {**BASE, "damping": None, "fisher": "empirical", "kfac": False, "factor_examples": 1024, "targets": ()}
IHVP = {**BASE, "aggregate": "mean", "solver": "cg", "curvature": "ggn", "damping": 0.01, "hessian_examples": 256,
        "max_iter": 100, "tol": 1e-6, "lissa_scale": 10.0, "explicit_max_params": 4096, "targets": ()}
KINDS: dict[str, dict[str, Any]] = {"grad_features": FEATURES, "ekfac_influence": EKFAC, "ihvp_influence": IHVP}


def gradient_request(kind: str, data: str, settings: dict[str, Any]) -> FeatureRequest:
    """A request with settings taken from a scorer's params (only the keys the kind knows)."""
    known = KINDS[kind]
    picked = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items() if k in known}
    return FeatureRequest(kind, data, tuple(sorted(picked.items())))


def resolved(request: FeatureRequest) -> FeatureRequest:
    """A grad_features request with its `auto` choices made (what the store is keyed by, what the plan
    shows): a sparse projection and float16 storage from WIDE dims up, dense and float32 below."""
    from selectkit.plugin import WIDE, resolve_kind

    settings = dict(request.settings)
    if request.kind != "grad_features":
        return request
    dim = settings.get("proj_dim")
    if settings.get("proj_kind") == "auto":
        settings["proj_kind"] = resolve_kind("auto", dim)
    if settings.get("feature_dtype") == "auto":
        settings["feature_dtype"] = "float16" if dim is not None and dim >= WIDE else "float32"
    return FeatureRequest(request.kind, request.data, tuple(sorted(settings.items())), request.model)
