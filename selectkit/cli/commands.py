"""The `selectkit` command: a thin layer over the Python API. User errors print
`file:line:col: message` and exit non-zero, never a traceback; so do faults of the machine
(disk full, read-only or missing folders, permissions), unless `--debug` asks for the traceback."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import click

from selectkit.errors import (
    PluginError,
    RecipeErrors,
    SelectkitError,
    describe_fault,
    diagnostic,
    fault_errno,
    unknown_message,
)


class _Location(click.ParamType):
    """A folder, or an object-storage URL (s3://, gs://, ...) kept as a URL (Path would mangle it)."""

    name = "PATH|URL"

    def convert(self, value, param, ctx):
        from selectkit.storage.objects import as_path

        return value if not isinstance(value, str) else as_path(value)


LOCATION = _Location()


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def _fail(exc: SelectkitError, code: int = 1) -> None:
    if _debug():
        raise exc
    for line in str(exc).splitlines():
        click.echo(f"error: {line}" if not line[:1].isspace() else line, err=True)
    sys.exit(code)


class _Writes:
    """The folders this process wrote into, one per file system, seen through audit events (files
    opened for writing, folders made): a write that fails (disk full, file too large) raises an
    error without a path, and Rust libraries (polars) open files unseen, so the error line names
    these folders instead."""

    folders: dict[int, str] = {}  # st_dev -> the folder last written into on that file system
    watching = False

    @classmethod
    def watch(cls) -> None:
        if not cls.watching:
            sys.addaudithook(cls._note)
            cls.watching = True

    @classmethod
    def _note(cls, event: str, args: tuple) -> None:
        writing = event == "open" and len(args) == 3 and isinstance(args[2], int) and \
            args[2] & (os.O_WRONLY | os.O_RDWR)
        if (writing or event == "os.mkdir") and isinstance(args[0], str | bytes | os.PathLike):
            folder = os.path.dirname(os.path.abspath(os.fsdecode(args[0])))
            try:
                device = os.stat(folder).st_dev
            except OSError:
                return
            cls.folders.pop(device, None)
            cls.folders[device] = folder

    @classmethod
    def recent(cls) -> list[str]:
        return list(reversed(cls.folders.values()))


class _Commands(click.Group):
    """The top-level group: a fault of the machine becomes one `error:` line and exit 1."""

    def invoke(self, ctx: click.Context):
        _Writes.watch()
        try:
            return super().invoke(ctx)
        except Exception as exc:
            text = describe_fault(exc, _Writes.recent())
            if text is None or ctx.params.get("debug") or fault_errno(exc) == errno.EPIPE:
                raise  # a bug (report it with the traceback), --debug, or a closed pipe (click handles it)
            click.echo(f"error: {text}", err=True)
            sys.exit(1)


def _registry(strict: bool, show_warnings: bool = True):
    from selectkit.contract.registry import default_registry

    registry = default_registry(strict=strict)
    if show_warnings:
        for warning in _plugin_warnings(registry):
            click.echo(f"warning: {warning['message']}", err=True)
    return registry


def _plugin_warnings(registry) -> list[dict]:
    return [diagnostic(f"plugin {name} failed to load and was skipped: {problem}", code="plugin-skipped",
                       severity="warning", hint="--strict makes this an error") for name, problem in registry.broken]


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="selectkit")
@click.option("--debug", is_flag=True, help="show the traceback of any error (for bug reports)")
def main(debug: bool) -> None:
    """Declarative data selection: validate, plan and run YAML recipes."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="json: a versioned document with error codes; github: workflow commands (annotations)")
@click.option("--strict", is_flag=True, help="a plugin that fails to load is an error, not a warning")
def validate(paths: tuple[Path, ...], fmt: str, strict: bool) -> None:
    """Check recipes without running anything (exit 0: all valid, 1: some invalid)."""
    from selectkit.api import validate as validate_recipe
    from selectkit.cli.diagnostics import report

    try:
        registry = _registry(strict, show_warnings=False)
    except SelectkitError as exc:
        _fail(exc, 2)
    results = []
    for path in paths:
        result = {"path": str(path), "valid": False, "errors": [], "warnings": []}
        try:
            checked = validate_recipe(path, registry)
            result["valid"] = not (strict and checked.warnings)  # --strict: warnings are errors
            result["warnings"] = [diagnostic(w, code="warning", severity="error" if strict else "warning",
                                             path=str(path)) for w in checked.warnings]
        except RecipeErrors as exc:
            if _debug():
                raise
            result["errors"] = [e.as_dict() for e in exc.errors]
        except SelectkitError as exc:
            if _debug():
                raise
            error = exc.as_dict()
            error["path"] = error["path"] or str(path)
            result["errors"] = [error]
        results.append(result)
    report(results, _plugin_warnings(registry), fmt, click.echo, lambda line: click.echo(line, err=True))
    sys.exit(0 if all(r["valid"] for r in results) else 1)


def _devices(devices: str | None, assume: str | None):
    if devices is None and assume is None:
        return None
    try:
        from selectkit.planning.estimates import parse_inventory
    except ImportError:  # pragma: no cover
        return {"devices": devices, "assume": assume}
    return parse_inventory(devices=devices, assume=assume)


device_options = [
    click.option("--devices", help="devices to plan for: cpu, cuda:0,cuda:1 (default: detected)"),
    click.option("--assume", help="plan for hypothetical hardware, e.g. 8xH100-80GB"),
    click.option("--cache-dir", type=LOCATION, help="artifact cache: a folder or a URL such as s3://bucket/cache "
                 "(default: ~/.cache/selectkit)"),
]


def _with(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


shard_option = click.option("--shard-rows", type=click.IntRange(min=1),
                            help="rows per shard of the pool (the unit of resume and parallel work)")
executor_options = [
    click.option("--executor", help="local (default: the recipe's execution.executor) or ray"),
    click.option("--address", help="ray: the cluster to join (auto, ray://HOST:PORT); default: a local one"),
]


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="plan for the first N rows of every source")
@shard_option
@_with(executor_options)
@_with(device_options)
def plan(recipe: Path, fmt: str, limit: int | None, shard_rows: int | None, executor: str | None,
         address: str | None, devices: str | None, assume: str | None, cache_dir: Path | None) -> None:
    """Show the execution plan: the steps, resolved defaults, cache hits, cost estimates."""
    from selectkit.api import plan as make_plan

    options = {k: v for k, v in (("shard_rows", shard_rows), ("executor", executor), ("address", address))
               if v is not None}
    try:
        compiled = make_plan(recipe, cache_dir=cache_dir, devices=_devices(devices, assume), limit=limit,
                             options=options)
    except SelectkitError as exc:
        _fail(exc)
    click.echo(json.dumps(compiled.to_json(), indent=2) if fmt == "json" else compiled.render())


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=LOCATION, help="output folder or URL (default: output.dir)")
@click.option("--dry-run", is_flag=True, help="print the plan and stop")
@click.option("--trust-remote-code", is_flag=True, help="allow models whose recipe entry also allows it")
@click.option("--quiet", "-q", is_flag=True, help="no progress messages")
@click.option("--limit", type=click.IntRange(min=1), help="read only the first N rows of every source (a quick trial)")
@shard_option
@_with(executor_options)
@_with(device_options)
def run(recipe: Path, out_dir: Path | None, dry_run: bool, trust_remote_code: bool, quiet: bool, limit: int | None,
        shard_rows: int | None, executor: str | None, address: str | None, devices: str | None,
        assume: str | None, cache_dir: Path | None) -> None:
    """Run a recipe and write selection.parquet, the subset and manifest.json."""
    from selectkit import api

    inventory = _devices(devices, assume)
    options = {k: v for k, v in (("trust_remote_code", trust_remote_code or None), ("shard_rows", shard_rows),
                                 ("executor", executor), ("address", address)) if v is not None}
    try:
        if dry_run:
            click.echo(api.plan(recipe, cache_dir=cache_dir, out_dir=out_dir, devices=inventory,
                                limit=limit, options=options).render())
            return
        from selectkit.execution.progress import for_terminal

        progress = for_terminal(quiet)
        try:
            output = api.run(recipe, cache_dir=cache_dir, out_dir=out_dir, devices=inventory, progress=progress,
                             options=options, limit=limit)
        finally:
            progress.close()
    except SelectkitError as exc:
        _fail(exc)
    click.echo(summary(output))


def summary(output) -> str:
    """Where the selection went, how many were kept, and counts per group when the recipe asks."""
    result = output.result
    recipe = result.plan.recipe
    n, k = len(result.pool), len(result.ranking)
    cached = sum(r.status == "cached" for r in result.reports if r.key)
    computed = sum(r.status in ("computed", "resumed") for r in result.reports if r.key)
    lines = [f"selected {k} of {n} examples ({k / n:.1%}) -> {output.files['selection'].parent}",
             f"steps: {computed} computed, {cached} from cache"]
    for report in result.reports:
        if report.kind == "select":
            lines.append(f"  {report.label}: kept {report.detail['kept']}")
    from selectkit.execution.surrogate import describe_agreement

    for name, agreement in getattr(result, "surrogates", {}).items():
        lines.extend(describe_agreement(name, agreement))
    column = recipe.output.summarize_by
    if column and column in result.pool.columns:
        lines.append(f"by {column}:  selected / pool")
        for name, chosen, total in result.pool.group_counts(column, result.ranking):
            lines.append(f"  {name:<16} {chosen:>6} / {total}")
    return "\n".join(lines)


@main.command("eval")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="eval folder: split/ (the target parts) and run/ (default: output.dir + '-eval')")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="no progress messages")
@click.option("--trust-remote-code", is_flag=True, help="allow models whose recipe entry also allows it")
@click.option("--cache-dir", type=LOCATION, help="artifact cache: a folder or a URL (default: ~/.cache/selectkit)")
def evaluate(recipe: Path, out_dir: Path | None, fmt: str, quiet: bool, trust_remote_code: bool,
             cache_dir: Path | None) -> None:
    """Does the selection beat random data? Hold out part of each target, train a small proxy LM on the
    selection and on token-matched random subsets, compare bits per byte with a bootstrap CI."""
    from selectkit.evaluation.evaluate import evaluate, render

    options = {"trust_remote_code": True} if trust_remote_code else {}
    say = (lambda line: None) if quiet or fmt == "json" else (lambda line: click.echo(line, err=True))
    try:
        evaluation = evaluate(recipe, out_dir=out_dir, cache_dir=cache_dir, say=say, options=options)
    except SelectkitError as exc:
        _fail(exc)
    click.echo(json.dumps(evaluation.results, indent=2) if fmt == "json" else render(evaluation))


@main.command()
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="a plugin that fails to load is an error")
def plugins(name: str | None, fmt: str, strict: bool) -> None:
    """List installed components and their params; with NAME, everything about one component."""
    from selectkit.recipe.schema import describe_component, describe_components, render_component, render_listing

    try:
        registry = _registry(strict)
        if name is None:
            listing = describe_components(registry)
        else:
            listing = [describe_component(registry, kind, name) for kind in registry.components
                       if name in registry.components[kind]]
            if not listing:
                known = {n for kind in registry.components.values() for n in kind}
                raise PluginError(unknown_message("component", name, known))
    except SelectkitError as exc:
        _fail(exc, 2)
    if fmt == "json":
        click.echo(json.dumps(listing, indent=2))
    elif name is None:
        click.echo(render_listing(listing))
    else:
        click.echo("\n\n".join(render_component(c) for c in listing))


@main.command()
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("schemas/recipe.schema.json"),
              show_default=True, help="where the schema goes (relative to the current folder)")
@click.option("--check", is_flag=True, help="exit 1 if the file differs from the installed components' schema")
@click.option("--strict", is_flag=True, help="a plugin that fails to load is an error (else it is left out)")
def schema(out_path: Path, check: bool, strict: bool) -> None:
    """Write the recipe JSON Schema (with every installed component's params, your own plugins'
    included) for editors; --check compares it in CI."""
    from selectkit.recipe.schema import recipe_schema_text

    try:
        text = recipe_schema_text(_registry(strict))
    except SelectkitError as exc:
        _fail(exc, 2)
    if check:
        current = out_path.read_text(encoding="utf-8") if out_path.exists() else None
        if current != text:
            click.echo(f"{out_path} is stale: run `selectkit schema --out {out_path}` and commit it", err=True)
            sys.exit(1)
        click.echo(f"{out_path}: up to date")
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out_path}")


@main.group()
def cache() -> None:
    """Inspect or prune the artifact cache."""


@cache.command("list")
@click.option("--cache-dir", type=LOCATION, help="a folder, or the URL of a cache in object storage (its local folder)")
def cache_list(cache_dir: Path | None) -> None:
    """List cached artifacts."""
    import datetime

    from selectkit.storage.cache import Cache

    store = Cache(cache_dir)
    entries = store.entries()
    for e in entries:
        used = datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M") if e.last_used else "-"
        click.echo(f"{e.kind:<12} {e.key or '(whole folder)'}  {e.bytes / 1e6:9.2f} MB  used {used}  {e.label}")
    where = f"{store.root} (the local folder of {store.location})" if store.mirror else store.root
    click.echo(f"{len(entries)} artifacts, {sum(e.bytes for e in entries) / 1e6:.2f} MB in {where}")
    links = sum(e.link for e in entries)
    if links:
        click.echo(f"{links} of them {'are' if links > 1 else 'is'} or hold symbolic links, never followed: "
                   "`selectkit cache prune` removes them (the links, not their targets)")


@cache.command("prune")
@click.option("--cache-dir", type=LOCATION, help="a folder, or the URL of a cache in object storage (its local folder)")
@click.option("--keep", "keep_recipes", multiple=True, type=click.Path(path_type=Path),
              help="keep what these recipes use (repeatable); default: delete everything")
def cache_prune(cache_dir: Path | None, keep_recipes: tuple[Path, ...]) -> None:
    """Delete cached artifacts not used by the given recipes."""
    from selectkit import api
    from selectkit.storage.cache import Cache

    store = Cache(cache_dir)
    keep: set[str] = set()
    try:
        for recipe in keep_recipes:
            keep |= api.plan(recipe, cache_dir=cache_dir).keys()
    except SelectkitError as exc:
        _fail(exc)
    freed = store.prune(keep)
    click.echo(f"freed {freed / 1e6:.2f} MB from {store.root}")



# finished runs: report, explain, diff (thin layers over selectkit.results.report, .explain, .diff) ----------
run_dir_argument = click.argument("run_dir", type=click.Path(path_type=Path))


@main.command()
@run_dir_argument
@click.option("--out", "out_path", type=click.Path(path_type=Path),
              help="where to write (default: RUN_DIR/report.html)")
@click.option("--no-figures", is_flag=True, help="tables only (no inline SVG figures)")
def report(run_dir: Path, out_path: Path | None, no_figures: bool) -> None:
    """Rebuild report.html, a self-contained offline page, from a finished run's files."""
    from selectkit.results.report import write_report

    try:
        path = write_report(run_dir, out=out_path, figures=not no_figures)
    except SelectkitError as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


@main.command()
@run_dir_argument
@click.argument("ids", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--influence", "target_id", metavar="TARGET_ID",
              help="instead: the pool examples that most influence this target example (from the run's gradient "
              "store, by nearest neighbours re-ranked exactly)")
@click.option("--score", help="with --influence: the influence score to use (when the run has several)")
@click.option("--target", "task", metavar="NAME", help="with --influence: the target the id belongs to (when "
              "several targets have it)")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="with --influence: pool examples shown")
@click.option("--cache", "cache_dir", help="with --influence: where the run's cache is now (default: the "
              "manifest's)")
def explain(run_dir: Path, ids: tuple[str, ...], fmt: str, target_id: str | None, score: str | None,
            task: str | None, top: int, cache_dir: str | None) -> None:
    """Why examples were selected or not: rank, scores and pool percentiles, the stage that dropped them.
    With --influence TARGET_ID: which pool examples most influence that target example."""
    from selectkit.results.explain import explain as explain_ids
    from selectkit.results.explain import render_text

    if target_id is not None:
        if ids:
            raise click.UsageError("give example ids or --influence TARGET_ID, not both")
        from selectkit.results import influence

        try:
            record = influence.explain_influence(run_dir, target_id, score=score, k=top, target=task,
                                                 cache=cache_dir)
        except SelectkitError as exc:
            _fail(exc)
        click.echo(json.dumps(record, indent=2, ensure_ascii=False) if fmt == "json"
                   else influence.render_text(record))
        return
    if not ids:
        raise click.UsageError("Missing argument 'IDS...': the ids of pool examples to explain (or --influence "
                               "TARGET_ID)")
    if score or task or cache_dir:
        raise click.UsageError("--score, --target and --cache go with --influence TARGET_ID")
    try:
        records = explain_ids(run_dir, list(ids))
    except SelectkitError as exc:
        _fail(exc)
    click.echo(json.dumps(records, indent=2) if fmt == "json" else render_text(records))


@main.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True,
              help="examples entering and leaving shown")
def diff(run_a: Path, run_b: Path, fmt: str, top: int) -> None:
    """Compare two finished runs: overlap, composition, examples entering and leaving, score shifts."""
    from selectkit.results import diff as diffing

    try:
        result = diffing.diff(run_a, run_b, top=top)
    except SelectkitError as exc:
        _fail(exc)
    renders = {"json": lambda d: json.dumps(d, indent=2), "markdown": diffing.render_markdown,
               "text": diffing.render_text}
    click.echo(renders[fmt](result))
