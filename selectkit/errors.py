"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero.

Each error carries a stable code from `CODES` (set where it is raised), so CI tools can filter
and count problems by kind; `selectkit validate --format json|github` reports it."""

from __future__ import annotations

import errno as errno_codes
import os
import re
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Location:
    """A place in a recipe file (1-based line and column; the end, when known, is exclusive)."""

    path: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Code:
    """A stable diagnostic code: `id` never changes meaning; `name` is its readable form."""

    id: str
    name: str
    summary: str


# The table the README documents. Add codes at the end of a group; never renumber.
CODES: dict[str, Code] = {c.name: c for c in [
    Code("SK001", "yaml-syntax", "the file is not valid YAML"),
    Code("SK002", "yaml-tag", "a tag that builds Python objects (recipes are plain data)"),
    Code("SK003", "duplicate-key", "a key given twice in one mapping"),
    Code("SK004", "yaml-limit", "too many aliases, an alias expansion that is too large, or nesting too deep"),
    Code("SK005", "recipe-file", "the recipe file is missing, unreadable, not UTF-8 or over the size limit"),
    Code("SK101", "unknown-key", "a key the recipe format (or a component's params) does not have"),
    Code("SK102", "missing-key", "a required key is absent"),
    Code("SK103", "invalid-value", "a value of the wrong type or out of range"),
    Code("SK104", "format-version", "`selectkit:` (the format version) is missing or unsupported"),
    Code("SK105", "not-a-mapping", "the recipe is empty or not a mapping of keys"),
    Code("SK201", "unknown-component", "`use:` names no installed scorer, normalizer or selector"),
    Code("SK202", "unknown-name", "a score, target or model name the recipe does not define"),
    Code("SK301", "shape-mismatch", "a component receives a score shape it does not accept"),
    Code("SK302", "model-mismatch", "a scorer lacks the model it needs, gets the wrong kind, or needs none"),
    Code("SK303", "targets-mismatch", "a scorer needs targets and has none, or takes none and is given some"),
    Code("SK304", "budget", "a budget is missing, malformed, impossible, or given to a stage that takes none"),
    Code("SK305", "score-cycle", "scores that read each other in a cycle, or a score that reads itself"),
    Code("SK401", "data-file", "a data source is missing or unreadable"),
    Code("SK402", "model-files", "a model folder is missing, malformed, unsafe or does not fit its kind"),
    Code("SK403", "output-folder", "the output folder is, holds or lies inside an input (data or model)"),
    Code("SK404", "data-content", "a data source lacks a column the recipe reads, holds a null text or repeats an id"),
    Code("SK900", "error", "any other error"),
    Code("SK950", "plugin-skipped", "warning: a plugin failed to load and was skipped"),
    Code("SK951", "warning", "any other warning"),
]}


def diagnostic(message: str, *, code: str, severity: str = "error", location: Location | None = None,
               path: str | None = None, hint: str | None = None) -> dict:
    """One error or warning as the machine formats report it (`validate --format json`)."""
    loc = location
    return {"code": CODES[code].id, "name": code, "severity": severity,
            "path": loc.path if loc else path, "line": loc.line if loc else None,
            "column": loc.column if loc else None, "end_line": loc.end_line if loc else None,
            "end_column": loc.end_column if loc else None, "message": message, "hint": hint}


class SelectkitError(Exception):
    """Base class of every error a user can cause (bad recipe, bad data, missing file...)."""

    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, location: Location | None = None, hint: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint
        self.code = code or self.default_code
        if self.code not in CODES:
            raise ValueError(f"unknown error code {self.code!r} (see selectkit.errors.CODES)")

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}" if self.location else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def as_dict(self) -> dict:
        return diagnostic(self.message, code=self.code, location=self.location, hint=self.hint)


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

    default_code = "data-file"


class PluginError(SelectkitError):
    """A plugin failed to load, or two plugins register the same name."""


class ModelError(SelectkitError):
    """A model named in the recipe is missing, malformed or does not fit its declared kind."""

    default_code = "model-files"


class MissingExtraError(SelectkitError):
    """A component needs an optional dependency that is not installed."""

    def __init__(self, package: str, extra: str, component: str):
        super().__init__(
            f"{component} needs the '{package}' package, which is not installed",
            hint=f"pip install 'selectkit[{extra}]'",
        )


EXTRAS: dict[str, tuple[str, ...]] = {
    # extra -> the modules it brings that a component imports (checked with find_spec: nothing is imported)
    "models": ("torch", "transformers", "safetensors", "peft", "datasets"),
    "gguf": ("gguf",),
    "trainer": ("accelerate",),
    "ot": ("ot",),
    "cluster": ("sklearn",),
    "faiss": ("faiss",),
    "ray": ("ray",),
    "s3": ("fsspec", "s3fs"),
    "gcs": ("fsspec", "gcsfs"),
    "azure": ("fsspec", "adlfs"),
    "hf": ("fsspec", "huggingface_hub"),
    "http": ("fsspec", "aiohttp"),
}


def missing_extras(extras: tuple[str, ...] | list[str]) -> list[str]:
    """The extras among `extras` whose modules are not installed (cheap: no import)."""
    import importlib.util

    return [e for e in extras if any(importlib.util.find_spec(m) is None for m in EXTRAS.get(e, (e,)))]


def missing_module(extra: str) -> str:
    """The first of `extra`'s modules that is not installed (the extra's own name when none is)."""
    import importlib.util

    return next((m for m in EXTRAS.get(extra, (extra,)) if importlib.util.find_spec(m) is None), extra)


def require(module: str, extra: str, component: str):
    """Import `module` or raise a MissingExtraError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module.split(".")[0], extra, component) from exc


# ---------------------------------------------------------------- faults of the machine, not of selectkit

_ELSEWHERE = "write elsewhere: --out, --cache-dir or SELECTKIT_CACHE_DIR"
_FAULT_HINTS = {
    errno_codes.ENOSPC: f"free some space, or {_ELSEWHERE}",
    errno_codes.EDQUOT: f"free some space, or {_ELSEWHERE}",
    errno_codes.EFBIG: f"the file system or a ulimit caps file sizes; {_ELSEWHERE}",
    errno_codes.EROFS: f"the file system is read-only; {_ELSEWHERE}",
    errno_codes.EACCES: "check the permissions of the path",
    errno_codes.EPERM: "check the permissions of the path",
    errno_codes.ENOTDIR: "a part of the path is a file, not a folder",
    errno_codes.EEXIST: "a file is in the way of a folder of that name",
}
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (polars) report an OS error


def fault_errno(exc: BaseException) -> int | None:
    """The errno behind an environment fault: an OSError, or a Rust library's error that wraps one."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] == "polars":  # "... (os error 28)"
        match = _OS_ERROR_IN_TEXT.search(str(exc))
        return int(match.group(1)) if match else None
    return None


def _free_bytes(folder: str) -> int:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return stats.f_bavail * stats.f_frsize


def describe_fault(exc: BaseException, written: list[str] | tuple[str, ...] = ()) -> str | None:
    """One line for a fault of the machine (disk full, read-only, permissions, out of memory), or
    None when `exc` is not one. A failed write reports no path, so `written` (the folders the
    command wrote into, one per file system) is named instead; the fullest first when space ran out."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        detail = f": {exc}" if str(exc) else ""
        return f"out of memory{detail} (use a smaller batch, --limit, or a larger machine)"
    number = fault_errno(exc)
    if number is None:
        return (str(exc) or type(exc).__name__) if isinstance(exc, OSError) else None
    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else os.strerror(number)).lower()
    paths = [p for p in (getattr(exc, "filename", None), getattr(exc, "filename2", None)) if p is not None]
    text = f"{reason} [errno {number}]"
    if paths:
        text += ": " + " -> ".join(map(os.fsdecode, paths))
    elif written:
        if number in (errno_codes.ENOSPC, errno_codes.EDQUOT):
            written = sorted(written, key=_free_bytes)
        text += f" (writing under {', '.join(written)})"
    hint = _FAULT_HINTS.get(number)
    return text + (f" ({hint})" if hint else "")


def unknown_message(what: str, name: str, known) -> str:
    import difflib

    message = f"unknown {what} {name!r}"
    close = difflib.get_close_matches(str(name), list(known), n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    elif known:
        message += f" (known: {', '.join(sorted(known))})"
    return message
