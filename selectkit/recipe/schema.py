"""JSON Schema of recipes including every installed component's params (for editor
completion and `selectkit schema --check` in CI), and what `selectkit plugins` shows."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from typing import Any

from pydantic_core import to_jsonable_python

from selectkit.contract.components import Normalizer, Scorer, Selector
from selectkit.contract.registry import Registry
from selectkit.recipe.spec import Recipe

COMPONENT_KINDS = {"scorers": "ScoreSpec", "selectors": "StageSpec", "normalizers": "ComponentRef"}
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z`\"'(\[])")
_ABBREVIATIONS = ("e.g", "i.e", "et al", "cf", "vs", "w.r.t")


def summary_of(cls: type) -> str:
    """The first sentence of a class's own docstring (whole, across wrapped lines); '' when it has none."""
    paragraph = " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())
    for match in _SENTENCE_END.finditer(paragraph):
        if not paragraph[:match.start()].endswith(_ABBREVIATIONS):
            return paragraph[:match.end()]
    return paragraph


def _use_choices(registry: Registry, kind: str) -> list[dict]:
    return [{"const": name, "description": summary_of(registry.get(kind, name)) or f"{kind[:-1]} {name}"}
            for name in registry.names(kind)]


def _params_schema(cls: type, defs: dict) -> dict:
    schema = cls.Params.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    schema.pop("title", None)
    # a Params class shared from elsewhere (the base classes) documents itself, not this component
    if cls.Params.__module__ != cls.__module__ or not cls.Params.__doc__:
        schema.pop("description", None)
    return schema


def recipe_schema(registry: Registry) -> dict[str, Any]:
    """The Recipe model's schema, with `use` restricted to installed names (each described by its
    component's summary) and `with` checked per component through if/then clauses."""
    schema = Recipe.model_json_schema(ref_template="#/$defs/{model}", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "selectkit recipe"
    defs = schema.setdefault("$defs", {})
    for kind, model_name in COMPONENT_KINDS.items():
        target = defs[model_name]
        target["properties"]["use"] = {"anyOf": _use_choices(registry, kind), "description": target["properties"][
            "use"].get("description", f"{kind[:-1]} name")}
        target["allOf"] = [{"if": {"properties": {"use": {"const": name}}, "required": ["use"]},
                            "then": {"properties": {"with": _params_schema(registry.get(kind, name), defs)}}}
                           for name in registry.names(kind)]
    normalize = defs["ScoreSpec"]["properties"]["normalize"]["items"]["anyOf"]
    normalize[:] = [{"anyOf": _use_choices(registry, "normalizers"), "description": "normalizer name"}
                    if item.get("type") == "string" else item for item in normalize]
    return schema


def recipe_schema_text(registry: Registry) -> str:
    return json.dumps(recipe_schema(registry), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- `selectkit plugins`


def _type_text(annotation: Any) -> str:
    """A param's type as a reader writes it: Literal choices as JSON values, None as null."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if annotation is type(None):
        return "null"
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_text(a) for a in args)}]"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _choices(annotation: Any) -> list | None:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return list(args)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        found = [c for a in args if (c := _choices(a)) is not None]
        return [c for group in found for c in group] if found else None
    return None


def param_rows(cls: type) -> list[dict]:
    """name, type, choices, required, default (as JSON) and description of each param."""
    model = getattr(cls, "Params", None)
    rows = []
    for name, info in (model.model_fields.items() if model is not None and hasattr(model, "model_fields") else []):
        required = info.is_required()
        default = None if required else to_jsonable_python(info.get_default(call_default_factory=True),
                                                           fallback=repr)
        rows.append({"name": name, "type": _type_text(info.annotation), "choices": _choices(info.annotation),
                     "required": required, "default": default, "description": info.description or ""})
    return rows


def _contract(cls: type) -> dict:
    """What a component accepts and produces, as declared on its class."""
    if issubclass(cls, Scorer):
        varies = cls.output_shape is not Scorer.output_shape  # the shape is computed from params
        return {"produces": cls.output.value + (" (depends on params)" if varies else ""),
                "model_kinds": list(cls.model_kinds), "model_params": list(cls.model_params),
                "targets": "optional" if cls.needs_targets and cls.targets_optional else
                "needed" if cls.needs_targets else "not used",
                "higher_is_better": cls.higher_is_better}
    if issubclass(cls, Normalizer):
        return {"accepts": sorted(s.value for s in cls.accepts), "produces": "the same shape"}
    if issubclass(cls, Selector):
        return {"accepts": sorted(s.value for s in cls.accepts) if cls.needs_score else [],
                "score_params": {k: sorted(s.value for s in v) for k, v in cls.score_params.items()},
                "budget": cls.budget_rule, "draws_with_replacement": cls.draws_with_replacement,
                "produces": "a subset, best first (with weights and counts when the method sets them)"}
    return {}


def describe_components(registry: Registry) -> dict[str, list[dict]]:
    """name, summary (first sentence), distribution and params per component, by kind."""
    return {kind: [{"name": name, "summary": summary_of(registry.get(kind, name)),
                    "distribution": registry.components[kind][name].distribution,
                    "params": param_rows(registry.get(kind, name))} for name in registry.names(kind)]
            for kind in registry.components}


def describe_component(registry: Registry, kind: str, name: str) -> dict:
    """Everything `selectkit plugins NAME` shows: the whole docstring, params and declared contract."""
    entry = registry.components[kind][name]
    return {"name": name, "kind": kind[:-1], "distribution": entry.distribution, "plugin": entry.plugin,
            "version": getattr(entry.cls, "version", None), "doc": inspect.cleandoc(entry.cls.__doc__ or ""),
            "params": param_rows(entry.cls), **_contract(entry.cls)}


def _param_line(p: dict) -> str:
    default = "required" if p["required"] else f"= {json.dumps(p['default'])}"
    return f"{p['name']}: {p['type']} {default}"


def render_listing(listing: dict) -> str:
    """`selectkit plugins`: per kind, each component's first sentence and one line per param."""
    lines = []
    for kind, components in listing.items():
        lines.append(f"{kind}:")
        for c in components:
            lines.append(f"  {c['name']:<26} {c['summary']}  [{c['distribution']}]".rstrip())
            lines += [f"      {_param_line(p)}" + (f"  # {p['description']}" if p["description"] else "")
                      for p in c["params"]]
    return "\n".join(lines)


_CONTRACT = [("accepts", "accepts"), ("produces", "produces"), ("model_kinds", "model kinds"),
             ("model_params", "params naming models"), ("targets", "targets"), ("higher_is_better", "higher is better"),
             ("score_params", "params naming scores"), ("budget", "budget"),
             ("draws_with_replacement", "draws with replacement")]


def render_component(c: dict) -> str:
    """`selectkit plugins NAME`: the whole docstring, the declared contract, then every param."""
    lines = [f"{c['name']}  ({c['kind']} from {c['distribution']}, version {c['version']})", ""]
    lines += [c["doc"] or "(no description)", ""]
    for key, label in _CONTRACT:
        if key in c:
            value = c[key]
            if isinstance(value, bool):
                value = "yes" if value else "no"
            elif isinstance(value, list):
                value = ", ".join(value) or "none"
            elif isinstance(value, dict):
                value = "; ".join(f"{k}: {', '.join(v)}" for k, v in value.items()) or "none"
            lines.append(f"{label + ':':<24}{value}")
    lines += ["", "params:" if c["params"] else "params: none"]
    for p in c["params"]:
        lines.append(f"  {_param_line(p)}")
        if p["description"]:
            lines.append(f"      {p['description']}")
    return "\n".join(lines)
