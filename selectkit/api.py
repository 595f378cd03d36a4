"""The Python API the CLI is a thin layer over: load, validate, plan, run. Each imports what it
needs when called, so `validate` costs only the recipe stack (no cache, no executor, no numpy).

A recipe is a file path, YAML text, a dict or a `Recipe`; `run` also takes in-memory data
(`pool=`, `targets=`) and returns a `RunOutput` a notebook can look into (`.selection`, `.subset()`,
`.manifest`, `.report_path`, `.explain(id)`,
`.explain_influence(target_id)`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectkit.contract.registry import Registry, default_registry
from selectkit.planning.check import check
from selectkit.recipe.spec import LoadedRecipe, Sources, load, load_any
from selectkit.storage.objects import as_path

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import polars as pl

    from selectkit.execution.local import RunResult
    from selectkit.planning.steps import Checked, Plan


def validate(recipe: Any, registry: Registry | None = None, limit: int | None = None, *,
             sources: Sources | None = None) -> Checked:
    """Load a recipe (a path, YAML text, a dict or a Recipe) and type-check it against the installed
    components. No data or model is read. `limit` caps every data source to its first rows (a quick
    trial of a recipe); `sources` sets data source fields (see recipe.spec.load)."""
    loaded = load_any(recipe, collect=True, sources=sources)
    if limit is not None:
        loaded = loaded.with_sources(lambda name, source: {"limit": min(source.limit or limit, limit)})
    return check(loaded, registry or default_registry())


def plan(recipe: Any, *, cache_dir: str | Path | None = None, out_dir: str | Path | None = None,
         devices=None, registry: Registry | None = None, limit: int | None = None,
         options: dict | None = None, sources: Sources | None = None) -> Plan:
    """Validate and compile a recipe into a Plan (cache status included). `options` holds the
    command line's settings that shape the work (shard_rows, trust_remote_code); `limit` is recorded."""
    from selectkit.planning.compile import compile_plan
    from selectkit.storage.cache import Cache

    options = {**(options or {}), **({"limit": limit} if limit is not None else {})}
    return compile_plan(validate(recipe, registry, limit, sources=sources), Cache(cache_dir or None),
                        as_path(out_dir) if out_dir else None, devices, options)


@dataclass
class RunOutput:
    """A finished run: the in-memory result and the files written (name -> path), with views a notebook
    uses, read from the run folder."""

    result: RunResult
    files: dict[str, Path]

    @property
    def run_dir(self) -> Path:
        return Path(self.files["selection"]).parent

    @cached_property
    def selection(self) -> pl.DataFrame:
        """selection.parquet: one row per pool example (id, selected, weight, count, rank, dropped_by, score.*)."""
        import polars as pl

        return pl.read_parquet(self.files["selection"])

    def subset(self, as_: str = "polars") -> Any:
        """The selected examples, best first, with their pool fields and the run's columns (load_selection)."""
        from selectkit.results.loading import load_selection

        return load_selection(self.run_dir, as_=as_)

    @property
    def manifest(self) -> dict:
        return json.loads(Path(self.files["manifest"]).read_text())

    @property
    def report_path(self) -> Path | None:
        report = self.files.get("report")
        return Path(report) if report is not None else None

    def explain(self, example_id: Any) -> dict:
        """Why one example was selected or not: its rank, scores with pool percentiles, the dropping stage."""
        from selectkit.results.explain import explain

        return explain(self.run_dir, [str(example_id)])[0]

    def explain_influence(self, target_id: Any, k: int = 10, *, score: str | None = None,
                          target: str | None = None) -> dict:
        """The `k` pool examples that most influence one target example under the run's influence score
        (LESS, TracIn), found in its gradient store by nearest neighbours with exact scores: `["neighbours"]`,
        best first, each with its id, influence, rank in the selection and text (see selectkit.results.influence)."""
        from selectkit.results.influence import explain_influence

        return explain_influence(self.run_dir, target_id, score=score, k=k, target=target)

    def __repr__(self) -> str:
        selected = int(self.selection["selected"].sum())
        return f"RunOutput({self.run_dir}: {selected:,} of {self.selection.height:,} selected)"


def run(recipe: Any, *, pool: Any = None, targets: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None, out_dir: str | Path | None = None,
        devices=None, executor: str | None = None, progress: Callable[[str], None] | None = None,
        registry: Registry | None = None, options: dict | None = None, limit: int | None = None) -> RunOutput:
    """Validate, compile and execute a recipe (a path, YAML text, a dict or a Recipe); write its outputs.
    `pool` and `targets` ({name: table}) are in-memory tables (a datasets.Dataset, a polars or pandas
    DataFrame) that take the place of those data sources' files (see selectkit.data.frames)."""
    sources = in_memory_sources(recipe, pool, targets, cache_dir) if pool is not None or targets else None
    compiled = plan(recipe, cache_dir=cache_dir, out_dir=out_dir, devices=devices, registry=registry, limit=limit,
                    options=options, sources=sources)
    result = run_plan(compiled, executor=executor, progress=progress, options=options)
    return RunOutput(result, result.files)


def in_memory_sources(recipe: Any, pool: Any, targets: dict[str, Any] | None,
                      cache_dir: str | Path | None) -> Sources:
    """Each in-memory table written to its content-addressed Parquet file in the cache, checked for the
    id and text columns its source names: data source name -> the fields that point the source at it."""
    from selectkit.data.frames import as_polars, check_columns, frame_file
    from selectkit.errors import DataError
    from selectkit.storage.cache import FRAMES, Cache

    if targets is not None and not isinstance(targets, dict):
        raise DataError("targets= is a dict of {target name: table}")
    tables = {**({"pool": pool} if pool is not None else {}), **(targets or {})}
    # what the recipe says of each source (id, text), with a placeholder path where it gives none
    given = load_any(recipe, collect=True, sources={name: {"path": "<in-memory>"} for name in tables}).recipe
    data = getattr(given, "data", None)
    folder = Cache(Path(cache_dir) if cache_dir else None).root / FRAMES
    sources: Sources = {}
    for name, table in tables.items():
        what = "pool=" if name == "pool" else f"targets[{name!r}]"
        key = "data.pool" if name == "pool" else f"data.targets.{name}"
        frame = as_polars(table, what)
        spec = (data.pool if name == "pool" else data.targets.get(name)) if data is not None else None
        check_columns(frame, what, key, getattr(spec, "id", None), getattr(spec, "text", "text"))
        sources[name] = {"path": str(frame_file(frame, folder)), "format": "parquet"}
    return sources


def run_plan(compiled: Plan, *, executor: str | None = None, progress: Callable[[str], None] | None = None,
             options: dict | None = None) -> RunResult:
    """Execute a compiled Plan with its executor (the recipe's, or `executor`) and write its outputs."""
    execution = compiled.recipe.execution
    name = executor or (options or {}).get("executor") or compiled.options.get("executor") or execution.executor
    settings = {k: v for k, v in execution.model_dump().items() if k != "executor" and v is not None}
    return compiled.registry.get("executors", name)().run(compiled, progress=progress,
                                                          options={**settings, **(options or {})})


__all__ = ["LoadedRecipe", "RunOutput", "load", "plan", "run", "run_plan", "validate"]
