"""The `selectkit` command: a thin layer over the Python API. User errors print
`file:line:col: message` and exit non-zero, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from selectkit.errors import RecipeErrors, SelectkitError


def _fail(exc: SelectkitError, code: int = 1) -> None:
    for line in str(exc).splitlines():
        click.echo(f"error: {line}" if not line[:1].isspace() else line, err=True)
    sys.exit(code)


def _registry(strict: bool):
    from selectkit.registry import default_registry

    registry = default_registry(strict=strict)
    for name, problem in registry.broken:
        click.echo(f"warning: plugin {name} failed to load and was skipped: {problem}", err=True)
    return registry


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="selectkit")
def main() -> None:
    """Declarative data selection: validate, plan and run YAML recipes."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="a plugin that fails to load is an error, not a warning")
def validate(paths: tuple[Path, ...], fmt: str, strict: bool) -> None:
    """Check recipes without running anything (exit 0: all valid, 1: some invalid)."""
    from selectkit.api import validate as validate_recipe

    try:
        registry = _registry(strict)
    except SelectkitError as exc:
        _fail(exc, 2)
    results = []
    for path in paths:
        try:
            checked = validate_recipe(path, registry)
            results.append({"path": str(path), "valid": not (strict and checked.warnings), "errors": [],
                            "warnings": list(checked.warnings)})
        except RecipeErrors as exc:
            results.append({"path": str(path), "valid": False, "errors": [e.as_dict() for e in exc.errors]})
        except SelectkitError as exc:
            error = exc.as_dict()
            error["path"] = error["path"] or str(path)
            results.append({"path": str(path), "valid": False, "errors": [error]})
    if fmt == "json":
        click.echo(json.dumps(results, indent=2))
    for result in results:
        for warning in result.get("warnings", []):
            if fmt == "text":
                click.echo(f"{result['path']}: {'error' if strict else 'warning'}: {warning}", err=True)
        if fmt == "text" and result["valid"]:
            click.echo(f"{result['path']}: ok")
        for e in result["errors"]:
            where = f"{e['path']}:{e['line']}:{e['column']}" if e["line"] else e["path"]
            message = e["message"] + (f" ({e['hint']})" if e["hint"] else "")
            if fmt == "text":
                click.echo(f"{where}: error: {message}", err=True)
            elif fmt == "github":
                click.echo(f"::error file={e['path']},line={e['line'] or 1},col={e['column'] or 1}::"
                           f"{message.replace(chr(10), ' ')}")
    sys.exit(0 if all(r["valid"] for r in results) else 1)


def _devices(devices: str | None, assume: str | None):
    if devices is None and assume is None:
        return None
    try:
        from selectkit.estimates import parse_inventory
    except ImportError:  # pragma: no cover
        return {"devices": devices, "assume": assume}
    return parse_inventory(devices=devices, assume=assume)


device_options = [
    click.option("--devices", help="devices to plan for: cpu, cuda:0,cuda:1 (default: detected)"),
    click.option("--assume", help="plan for hypothetical hardware, e.g. 8xH100-80GB"),
    click.option("--cache-dir", type=click.Path(path_type=Path), help="artifact cache (default: ~/.cache/selectkit)"),
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
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="output folder (default: output.dir)")
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
        from selectkit.progress import for_terminal

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
    import numpy as np

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
    column = recipe.output.summarize_by
    if column and column in result.pool.columns:
        groups = result.pool.column(column).cast(str).fill_null("(none)").to_numpy()
        names, pool_counts = np.unique(groups, return_counts=True)
        chosen = dict(zip(*np.unique(groups[result.ranking], return_counts=True)))
        lines.append(f"by {column}:  selected / pool")
        for name, total in zip(names, pool_counts):
            lines.append(f"  {name:<16} {int(chosen.get(name, 0)):>6} / {int(total)}")
    return "\n".join(lines)


@main.command("eval")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="eval folder: split/ (the target parts) and run/ (default: output.dir + '-eval')")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="no progress messages")
@click.option("--trust-remote-code", is_flag=True, help="allow models whose recipe entry also allows it")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="artifact cache (default: ~/.cache/selectkit)")
def evaluate(recipe: Path, out_dir: Path | None, fmt: str, quiet: bool, trust_remote_code: bool,
             cache_dir: Path | None) -> None:
    """Does the selection beat random data? Hold out part of each target, train a small proxy LM on the
    selection and on token-matched random subsets, compare bits per byte with a bootstrap CI."""
    from selectkit import api
    from selectkit.evaluate import render

    options = {"trust_remote_code": True} if trust_remote_code else {}
    say = (lambda line: None) if quiet or fmt == "json" else (lambda line: click.echo(line, err=True))
    try:
        evaluation = api.evaluate(recipe, out_dir=out_dir, cache_dir=cache_dir, say=say, options=options)
    except SelectkitError as exc:
        _fail(exc)
    click.echo(json.dumps(evaluation.results, indent=2) if fmt == "json" else render(evaluation))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="a plugin that fails to load is an error")
def plugins(fmt: str, strict: bool) -> None:
    """List installed components and their params."""
    from selectkit.schema import describe_components

    try:
        listing = describe_components(_registry(strict))
    except SelectkitError as exc:
        _fail(exc, 2)
    if fmt == "json":
        click.echo(json.dumps(listing, indent=2))
        return
    for kind, components in listing.items():
        click.echo(f"{kind}:")
        for c in components:
            click.echo(f"  {c['name']:<26} {c['summary']}  [{c['distribution']}]")
            for p in c["params"]:
                click.echo(f"      {p['name']}: {p['type']} = {p['default']}" + (f"  # {p['description']}"
                                                                              if p["description"] else ""))


@main.command()
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("schemas/recipe.schema.json"),
              show_default=True)
@click.option("--check", is_flag=True, help="exit 1 if the file differs from the installed components' schema")
def schema(out_path: Path, check: bool) -> None:
    """Write the recipe JSON Schema (with every installed component's params) for editors."""
    from selectkit.schema import recipe_schema_text

    try:
        text = recipe_schema_text(_registry(False))
    except SelectkitError as exc:
        _fail(exc, 2)
    if check:
        current = out_path.read_text() if out_path.exists() else None
        if current != text:
            click.echo(f"{out_path} is stale: run `selectkit schema` and commit it", err=True)
            sys.exit(1)
        click.echo(f"{out_path}: up to date")
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    click.echo(f"wrote {out_path}")


@main.group()
def cache() -> None:
    """Inspect or prune the artifact cache."""


@cache.command("list")
@click.option("--cache-dir", type=click.Path(path_type=Path))
def cache_list(cache_dir: Path | None) -> None:
    """List cached artifacts."""
    import datetime

    from selectkit.cache import Cache

    store = Cache(cache_dir)
    entries = store.entries()
    for e in entries:
        used = datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M") if e.last_used else "-"
        click.echo(f"{e.kind:<12} {e.key}  {e.bytes / 1e6:9.2f} MB  used {used}  {e.label}")
    click.echo(f"{len(entries)} artifacts, {sum(e.bytes for e in entries) / 1e6:.2f} MB in {store.root}")


@cache.command("prune")
@click.option("--cache-dir", type=click.Path(path_type=Path))
@click.option("--keep", "keep_recipes", multiple=True, type=click.Path(path_type=Path),
              help="keep what these recipes use (repeatable); default: delete everything")
def cache_prune(cache_dir: Path | None, keep_recipes: tuple[Path, ...]) -> None:
    """Delete cached artifacts not used by the given recipes."""
    from selectkit import api
    from selectkit.cache import Cache

    store = Cache(cache_dir)
    keep: set[str] = set()
    try:
        for recipe in keep_recipes:
            keep |= api.plan(recipe, cache_dir=cache_dir).keys()
    except SelectkitError as exc:
        _fail(exc)
    freed = store.prune(keep)
    click.echo(f"freed {freed / 1e6:.2f} MB from {store.root}")



# finished runs: report, explain, diff (thin layers over selectkit.report, .explain, .diff) ----------
run_dir_argument = click.argument("run_dir", type=click.Path(path_type=Path))


@main.command()
@run_dir_argument
@click.option("--out", "out_path", type=click.Path(path_type=Path),
              help="where to write (default: RUN_DIR/report.html)")
@click.option("--no-figures", is_flag=True, help="tables only (the page without matplotlib)")
def report(run_dir: Path, out_path: Path | None, no_figures: bool) -> None:
    """Rebuild report.html, a self-contained offline page, from a finished run's files."""
    from selectkit.report import write_report

    try:
        path = write_report(run_dir, out=out_path, figures=False if no_figures else None)
    except SelectkitError as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


@main.command()
@run_dir_argument
@click.argument("ids", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def explain(run_dir: Path, ids: tuple[str, ...], fmt: str) -> None:
    """Why examples were selected or not: rank, scores and pool percentiles, the stage that dropped them."""
    from selectkit.explain import explain as explain_ids
    from selectkit.explain import render_text

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
    from selectkit import diff as diffing

    try:
        result = diffing.diff(run_a, run_b, top=top)
    except SelectkitError as exc:
        _fail(exc)
    renders = {"json": lambda d: json.dumps(d, indent=2), "markdown": diffing.render_markdown,
               "text": diffing.render_text}
    click.echo(renders[fmt](result))
