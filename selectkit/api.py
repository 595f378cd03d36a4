"""The Python API the CLI is a thin layer over: load, validate, plan, run. Each imports what it
needs when called, so `validate` costs only the recipe stack (no cache, no executor, no numpy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from selectkit.contract.registry import Registry, default_registry
from selectkit.planning.check import check
from selectkit.recipe.spec import LoadedRecipe, load
from selectkit.storage.objects import as_path

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from selectkit.execution.local import RunResult
    from selectkit.planning.steps import Checked, Plan


def validate(path: str | Path, registry: Registry | None = None, limit: int | None = None) -> Checked:
    """Load a recipe and type-check it against the installed components. No data or model is read.
    `limit` caps every data source to its first rows (a quick trial of a recipe)."""
    loaded = load(path, collect=True)
    if limit is not None:
        loaded = loaded.with_sources(lambda name, source: {"limit": min(source.limit or limit, limit)})
    return check(loaded, registry or default_registry())


def plan(path: str | Path, *, cache_dir: str | Path | None = None, out_dir: str | Path | None = None,
         devices=None, registry: Registry | None = None, limit: int | None = None,
         options: dict | None = None) -> Plan:
    """Validate and compile a recipe into a Plan (cache status included). `options` holds the
    command line's settings that shape the work (shard_rows, trust_remote_code); `limit` is recorded."""
    from selectkit.planning.compile import compile_plan
    from selectkit.storage.cache import Cache

    options = {**(options or {}), **({"limit": limit} if limit is not None else {})}
    return compile_plan(validate(path, registry, limit), Cache(cache_dir or None),
                        as_path(out_dir) if out_dir else None, devices, options)


@dataclass
class RunOutput:
    result: RunResult
    files: dict[str, Path]


def run(path: str | Path, *, cache_dir: str | Path | None = None, out_dir: str | Path | None = None,
        devices=None, executor: str | None = None, progress: Callable[[str], None] | None = None,
        registry: Registry | None = None, options: dict | None = None, limit: int | None = None) -> RunOutput:
    """Validate, compile and execute a recipe; write its outputs. Returns the result and files."""
    compiled = plan(path, cache_dir=cache_dir, out_dir=out_dir, devices=devices, registry=registry, limit=limit,
                    options=options)
    result = run_plan(compiled, executor=executor, progress=progress, options=options)
    return RunOutput(result, result.files)


def run_plan(compiled: Plan, *, executor: str | None = None, progress: Callable[[str], None] | None = None,
             options: dict | None = None) -> RunResult:
    """Execute a compiled Plan with its executor (the recipe's, or `executor`) and write its outputs."""
    execution = compiled.recipe.execution
    name = executor or (options or {}).get("executor") or compiled.options.get("executor") or execution.executor
    settings = {k: v for k, v in execution.model_dump().items() if k != "executor" and v is not None}
    return compiled.registry.get("executors", name)().run(compiled, progress=progress,
                                                          options={**settings, **(options or {})})


__all__ = ["LoadedRecipe", "RunOutput", "load", "plan", "run", "run_plan", "validate"]
