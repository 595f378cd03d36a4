"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A place in a recipe file (1-based line and column)."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class SelectkitError(Exception):
    """Base class of every error a user can cause (bad recipe, bad data, missing file...)."""

    def __init__(self, message: str, location: Location | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}" if self.location else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def as_dict(self) -> dict:
        loc = self.location
        return {
            "path": loc.path if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
            "message": self.message,
            "hint": self.hint,
        }


class SelectkitWarning(UserWarning):
    """Something a user should know that did not stop the run (recomputed cache entry, skipped rows...)."""


class RecipeError(SelectkitError):
    """The recipe is malformed or does not type-check."""


class RecipeErrors(SelectkitError):
    """Several recipe errors found in one pass; `errors` holds each one."""

    def __init__(self, errors: list[SelectkitError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors), errors[0].location if errors else None)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class DataError(SelectkitError):
    """A data source is missing, unreadable or lacks a needed column."""


class PluginError(SelectkitError):
    """A plugin failed to load, or two plugins register the same name."""


class MissingExtraError(SelectkitError):
    """A component needs an optional dependency that is not installed."""

    def __init__(self, package: str, extra: str, component: str):
        super().__init__(
            f"{component} needs the '{package}' package, which is not installed",
            hint=f"pip install 'selectkit[{extra}]'",
        )


EXTRAS: dict[str, tuple[str, ...]] = {
    # extra -> the modules it brings that a component imports (checked with find_spec: nothing is imported)
    "models": ("torch", "transformers", "safetensors", "peft"),
    "gguf": ("gguf",),
    "ot": ("ot",),
    "cluster": ("sklearn",),
    "faiss": ("faiss",),
    "report": ("matplotlib",),
    "ray": ("ray",),
}


def missing_extras(extras: tuple[str, ...] | list[str]) -> list[str]:
    """The extras among `extras` whose modules are not installed (cheap: no import)."""
    import importlib.util

    return [e for e in extras if any(importlib.util.find_spec(m) is None for m in EXTRAS.get(e, (e,)))]


def require(module: str, extra: str, component: str):
    """Import `module` or raise a MissingExtraError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module.split(".")[0], extra, component) from exc
