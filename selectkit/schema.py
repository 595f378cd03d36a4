"""JSON Schema of recipes including every installed component's params (for editor
completion and `selectkit schema --check` in CI), and the component listing of `plugins`."""

from __future__ import annotations

import json
from typing import Any

from selectkit.recipe import Recipe
from selectkit.registry import Registry

COMPONENT_KINDS = {"scorers": "ScoreSpec", "selectors": "StageSpec", "normalizers": "ComponentRef"}


def _params_schema(cls: type, defs: dict) -> dict:
    schema = cls.Params.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    schema.pop("title", None)
    return schema


def recipe_schema(registry: Registry) -> dict[str, Any]:
    """The Recipe model's schema, with `use` restricted to installed names and `with`
    checked per component through if/then clauses."""
    schema = Recipe.model_json_schema(ref_template="#/$defs/{model}", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "selectkit recipe"
    defs = schema.setdefault("$defs", {})
    for kind, model_name in COMPONENT_KINDS.items():
        names = registry.names(kind)
        target = defs[model_name]
        target["properties"]["use"] = {"enum": names, "description": target["properties"]["use"].get(
            "description", f"{kind[:-1]} name")}
        target["allOf"] = [{"if": {"properties": {"use": {"const": name}}, "required": ["use"]},
                            "then": {"properties": {"with": _params_schema(registry.get(kind, name), defs)}}}
                           for name in names]
    return schema


def recipe_schema_text(registry: Registry) -> str:
    return json.dumps(recipe_schema(registry), indent=2, sort_keys=True) + "\n"


def describe_components(registry: Registry) -> dict[str, list[dict]]:
    """name, summary, distribution and params (name, type, default, description) per component."""
    listing: dict[str, list[dict]] = {}
    for kind in ("scorers", "normalizers", "selectors", "verifiers", "readers", "executors"):
        listing[kind] = []
        for name in registry.names(kind):
            entry = registry.components[kind][name]
            cls = entry.cls
            params = []
            model = getattr(cls, "Params", None)
            if model is not None and hasattr(model, "model_fields"):
                for field_name, info in model.model_fields.items():
                    params.append({"name": field_name, "type": _type_name(info.annotation),
                                   "default": None if info.is_required() else repr(info.get_default(
                                       call_default_factory=True)),
                                   "description": info.description or ""})
            doc = (cls.__doc__ or "").strip().splitlines()
            listing[kind].append({"name": name, "summary": doc[0] if doc else "",
                                  "distribution": entry.distribution, "params": params})
    return listing


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
