"""manifest.json's format, in one place: the version `selectkit run` writes, the versions a reader
knows, and the shape every field that report/explain/diff read must have.

A run folder is a file from elsewhere (another selectkit version, a hand edit), so `check` treats
the manifest as hostile input: a field of the wrong type is dropped (an object item of a list is
emptied, so lists stay aligned) and named in a note, never passed on to fail as a traceback.
Fields that no reader uses are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 2  # what execution/outputs.py writes
KNOWN_FORMATS = (1, 2)  # what the readers understand (format 2 only added fields)
MAX_NOTES = 8  # notes about wrong types, the rest counted


@dataclass(frozen=True)
class MapOf:
    """An object whose keys are names (sources, models, packages) and whose values have one shape."""

    item: Any


@dataclass(frozen=True)
class ListOf:
    item: Any


# leaves: what a JSON value must be (null is always accepted: it reads as "absent")
STR, INT, NUM, BOOL, OBJ, LIST, ANY = "a string", "an integer", "a number", "true or false", "an object", "a list", \
    "anything"

_COMPARISON = {"bpb_a": NUM, "bpb_b": NUM, "loss_a": NUM, "loss_b": NUM, "difference": NUM,
               "ci_low": NUM, "ci_high": NUM, "p_value": NUM,
               "verdict": STR}

SCHEMA: dict[str, Any] = {
    "format_version": INT, "written_by": STR, "limit": INT, "seed": INT, "selectkit_version": STR, "python": STR,
    "cache": STR,
    "recipe": {"file": STR, "name": STR, "hash": STR,
               "resolved": {"name": STR, "seed": INT,
                            "data": {"pool": {"path": STR, "text": STR, "id": STR, "limit": INT, "format": STR,
                                              "on_missing": STR}},
                            "scores": MapOf(OBJ),
                            "select": ListOf({"use": STR, "name": STR, "with": OBJ}),
                            "output": {"summarize_by": STR}}},
    "plugin_versions": MapOf(STR), "versions": MapOf(STR), "library_versions": MapOf(STR),
    "data": MapOf({"path": STR, "fingerprint": STR, "rows": INT}),
    "models": MapOf({"path": STR, "kind": STR, "dtype": STR, "revision": STR}),
    "scores": MapOf({"higher_is_better": BOOL}),
    "stages": ListOf({"kind": STR, "label": STR, "key": STR, "status": STR, "seconds": NUM}),
    "selection": {"pool": INT, "selected": INT,
                  "per_stage": ListOf({"stage": STR, "kept": INT})},
    "files": MapOf(STR),
    "warnings": ListOf(STR),
    "evaluation": {"proxy": {"parameters": INT, "tokens_per_arm": INT, "epochs": INT, "kind": STR, "model": STR,
                             "path": STR, "bytes_per_arm": INT, "arms_cached": INT, "arms_trained": INT,
                             "checkpoint": STR},
                   "metric": STR,
                   "arms": {"selection": LIST}, "pool_sample": INT,
                   "sets": MapOf({"selection_vs_random": _COMPARISON, "selection_vs_stratified": _COMPARISON,
                                  "random_vs_random": _COMPARISON}),
                   "contamination": {"ngram": INT,
                                     "targets": MapOf({"pool": {"examples_with_overlap": NUM, "ngrams_found": NUM},
                                                       "selection": {"examples_with_overlap": NUM}})},
                   "warnings": ListOf(STR), "caveat": STR, "verdicts": MapOf(STR)},
}


def check(manifest: dict) -> tuple[dict, list[str]]:
    """The manifest with every wrongly typed field removed, and a note per removal (the first MAX_NOTES)."""
    problems: list[str] = []
    clean = _check(manifest, SCHEMA, "", problems)
    notes = [f"manifest.json: {p}; ignored" for p in problems[:MAX_NOTES]]
    if len(problems) > MAX_NOTES:
        notes.append(f"manifest.json: {len(problems) - MAX_NOTES} more fields of the wrong type ignored")
    return clean, notes


_DROP = object()


def _kind(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _fits(value, leaf: str) -> bool:
    if leaf == ANY:
        return True
    if leaf == BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, {STR: str, INT: int, NUM: int | float, OBJ: dict, LIST: list}[leaf])


def _check(value, schema, where: str, problems: list[str]):
    if value is None:
        return None
    if isinstance(schema, str):
        if _fits(value, schema):
            return value
        problems.append(f"{where} is {_kind(value)}, not {schema}")
        return _DROP
    expected = "a list" if isinstance(schema, ListOf) else "an object"
    if not isinstance(value, list if isinstance(schema, ListOf) else dict):
        problems.append(f"{where} is {_kind(value)}, not {expected}")
        return _DROP
    if isinstance(schema, ListOf):
        out = []
        for i, item in enumerate(value):
            checked = _check(item, schema.item, f"{where}[{i}]", problems)
            if checked is _DROP and isinstance(schema.item, dict | MapOf):
                checked = {}  # keeps the list aligned with the lists it is read beside
            if checked is not _DROP:
                out.append(checked)
        return out
    out = {}
    for key, item in value.items():
        sub = schema.item if isinstance(schema, MapOf) else schema.get(key, ANY)
        checked = _check(item, sub, f"{where}.{key}" if where else str(key), problems)
        if checked is not _DROP:
            out[key] = checked
    return out
