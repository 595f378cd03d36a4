"""The sections of report.html, each built from a run's streaming facts (and optional embeddings):
tables always, inline SVG figures unless turned off. Sizes are bounded whatever the pool size."""

from __future__ import annotations

import json

import numpy as np

from selectkit.results.report import facts as f
from selectkit.results.report import figures as fig
from selectkit.results.report import html as h
from selectkit.results.report.facts import Facts
from selectkit.results.rundir import Run

TEXT_CHARS = 300  # characters of an example's text shown
MAX_SCORE_CELLS = 4  # score columns shown beside each example
MAX_LIST = 20  # items of a diagnostic list shown


def build(run: Run, figures: bool, embeddings: tuple | None = None) -> str:
    """The whole page as a string. `embeddings` is (ids, or None for the table's row order; (N, D) array)."""
    facts = Facts(run, embeddings)
    parts = [("header", "Run", header(run)),
             ("evaluation", "Evaluation", evaluation(run, figures)),
             ("warnings", "Warnings", warnings(facts)),
             ("funnel", "Funnel", funnel(facts, figures)),
             ("composition", "Composition", composition(facts, figures)),
             ("scores", "Scores", scores(facts, figures)),
             ("correlations", "Correlations", correlations(facts, figures)),
             ("lengths", "Lengths", lengths(facts, figures))]
    if embeddings is not None:
        parts.append(("embedding-map", "Embedding map", embedding_map(facts, figures)))
    parts += [("examples", "Examples", examples(facts)),
              ("diagnostics", "Selector diagnostics", diagnostics(run))]
    notes = "".join(f"<li>{h.esc(n)}</li>" for n in dict.fromkeys(run.notes))
    if notes:  # notes gather while sections read the pool, so they are placed last but linked from warnings
        parts.append(("notes", "Notes", h.section("notes", "Notes", f"<ul>{notes}</ul>",
                                                  "what this page could not show, and why")))
    title = f"selectkit report: {run.name}"
    return h.page(title, [(i, t, html) for i, t, html in parts if html])


# header -----------------------------------------------------------------------------------
def header(run: Run) -> str:
    """Recipe, seed, versions, data fingerprints, models, stage times and cache hits."""
    m, recipe = run.manifest, run.recipe
    selected = run.counts.selected
    pool_spec = (run.resolved.get("data") or {}).get("pool") or {}
    facts_rows = [("run folder", run.folder), ("recipe", recipe.get("name")), ("recipe file", recipe.get("file")),
                  ("recipe hash", recipe.get("hash")), ("seed", run.seed),
                  ("row limit (--limit)", m.get("limit", pool_spec.get("limit"))),
                  ("manifest format", m.get("format_version")), ("selectkit", m.get("selectkit_version")),
                  ("python", m.get("python"))]
    recorded = (m.get("selection") or {}).get("selected")
    if recorded not in (None, selected):
        facts_rows.append(("manifest says selected", recorded))
    stages = m.get("stages") or []
    keyed = [s for s in stages if s.get("key")]
    cached = sum(s.get("status") == "cached" for s in keyed)
    total = sum(float(s.get("seconds") or 0) for s in stages)
    lead = (f"selected {selected:,} of {run.size:,} examples ({selected / max(run.size, 1):.1%}) through "
            f"{len(run.stages)} selector stage{'s' if len(run.stages) != 1 else ''}; "
            f"{len(keyed) - cached} steps computed, {cached} from cache, {total:.2f} s")
    blocks = ["<h3>Recipe</h3>" + h.pairs(facts_rows)]
    versions = {**(m.get("plugin_versions") or {}), **(m.get("versions") or m.get("library_versions") or {})}
    if versions:
        blocks.append("<h3>Versions</h3>" + h.table(["package", "version"], sorted(versions.items())))
    if stages:
        blocks.append("<h3>Stages</h3>" + h.table(
            ["kind", "stage", "status", "seconds", "cache key"],
            [(s.get("kind"), s.get("label"), s.get("status"), s.get("seconds"), s.get("key")) for s in stages],
            numeric=[3]))
    data = m.get("data") or {}
    if data:
        blocks.append("<h3>Data</h3>" + h.table(
            ["source", "path", "rows", "fingerprint"],
            [(name, d.get("path"), d.get("rows"), d.get("fingerprint")) for name, d in data.items()], numeric=[2]))
    models = m.get("models") or {}
    if models:
        blocks.append("<h3>Models</h3>" + h.table(
            ["model", "path", "kind", "dtype", "revision"],
            [(n, s.get("path"), s.get("kind"), s.get("dtype"), s.get("revision")) for n, s in sorted(models.items())]))
    grid = "".join(f"<div>{b}</div>" for b in blocks)
    return (f'<header class="top" id="header"><h1>{h.esc(f"selectkit report: {run.name}")}</h1>'
            f'<p class="lead">{h.esc(lead)}</p><div class="grid">{grid}</div></header>\n')


# evaluation -------------------------------------------------------------------------------
COMPARISONS = (("selection_vs_random", "selection − random"), ("selection_vs_stratified", "selection − stratified"),
               ("random_vs_random", "random − random (null)"))


def evaluation(run: Run, figures: bool = True) -> str:
    """`selectkit eval`'s results (manifest `evaluation`): verdicts, bits per byte per arm, CIs, contamination,
    and the linear datamodeling score when `evaluate.lds` ran."""
    ev = run.manifest.get("evaluation")
    if not isinstance(ev, dict):
        return ""
    proxy = ev.get("proxy") or {}
    pairs = len((ev.get("arms") or {}).get("selection") or [])
    loss = ev.get("metric") == "loss"
    if proxy.get("kind") == "lora":
        facts = [("proxy", f"the recipe's model {proxy.get('model')} ({proxy.get('path')}), a LoRA per arm"),
                 ("bytes per arm", proxy.get("bytes_per_arm")),
                 ("arms cached / trained", f"{proxy.get('arms_cached')} / {proxy.get('arms_trained')}")]
    else:
        facts = [("proxy", f"{h.num(proxy.get('parameters'))}-parameter Llama from scratch"),
                 ("tokens per arm and epoch", proxy.get("tokens_per_arm")), ("epochs", proxy.get("epochs")),
                 ("arms cached / trained", f"{proxy.get('arms_cached')} / {proxy.get('arms_trained')}")]
    blocks = [h.pairs([*facts, ("seed pairs", pairs), ("pool rows held out of every arm", ev.get("pool_sample"))])]
    metric, unit = ("loss", "held-out loss (nats per token)") if loss else ("bpb", "bits per byte")
    rows = []
    for name, entry in (ev.get("sets") or {}).items():
        for key, label in COMPARISONS:
            c = entry.get(key)
            if c:
                rows.append((name, label, c.get(f"{metric}_a"), c.get(f"{metric}_b"), c.get("difference"),
                             f"[{h.num(c.get('ci_low'))}, {h.num(c.get('ci_high'))}]", c.get("p_value"),
                             c.get("verdict")))
    blocks.append(h.table(["evaluated on", "comparison", f"{metric} A", f"{metric} B", "A − B", "95% CI", "p",
                           "verdict"], rows,
                          numeric=[2, 3, 4, 6]))
    contamination = (ev.get("contamination") or {}).get("targets") or {}
    if contamination:
        n = (ev.get("contamination") or {}).get("ngram")
        blocks.append(f"<h3>Contamination ({h.esc(n)}-grams)</h3>" + h.table(
            ["held-out target", "examples sharing one with the pool", "with the selection", "n-grams found in pool"],
            [(t, h.pct((c.get("pool") or {}).get("examples_with_overlap")),
              h.pct((c.get("selection") or {}).get("examples_with_overlap")),
              h.pct((c.get("pool") or {}).get("ngrams_found"))) for t, c in contamination.items()]))
    lds = ev.get("lds_details")
    if isinstance(lds, dict):
        blocks.append(lds_block(lds, figures))
    notes = [*(ev.get("warnings") or []), ev.get("caveat") or ""]
    blocks.append("<ul>" + "".join(f"<li>{h.esc(n)}</li>" for n in notes if n) + "</ul>")
    verdicts = ", ".join(f"{k}: {v}" for k, v in (ev.get("verdicts") or {}).items())
    return h.section("evaluation", "Evaluation", "".join(blocks),
                     f"selectkit eval: the proxy trained on the selection against token-matched random subsets, "
                     f"{unit} on held-out data (lower is better); verdicts {verdicts}")


def lds_block(lds: dict, figures: bool) -> str:
    """The LDS table (one row per score, the random control last) and, per score, each subset's predicted
    effect (-sum of its scores) against the measured mean held-out loss."""
    retrains = lds.get("retrains") or {}
    head = (f"<h3>Linear datamodeling score</h3><p>{h.esc(lds.get('subsets'))} subsets of "
            f"{h.esc(lds.get('subset_rows'))} rows from a {h.esc(lds.get('sample'))}-row pool sample; LoRA retrains "
            f"of {h.esc(lds.get('model'))} ({h.esc(retrains.get('cached'))} cached, {h.esc(retrains.get('trained'))} "
            f"trained); {h.esc(lds.get('examples'))} held-out target examples. LDS: mean over examples of "
            "Spearman(−Σ score over the subset, measured loss); the random control's CI should hold 0.</p>")
    rows = []
    for name, e in (lds.get("scores") or {}).items():
        lo, hi = (e.get("ci") or [None, None])[:2]
        zero = lo is None or hi is None or lo <= 0 <= hi
        rows.append((name + (" (control)" if name == "random" else ""), e.get("lds"),
                     f"[{h.num(lo)}, {h.num(hi)}]", "yes" if zero else "no"))
    body = head + h.table(["score", "LDS", "95% CI", "CI holds 0"], rows, numeric=[1])
    per = lds.get("per_subset") or {}
    if figures and per.get("loss"):
        svgs = [fig.scatter_xy(per[name], per["loss"], f"lds-{i}", f"{name}: subsets", "predicted −Σ score",
                               "held-out loss") for i, name in enumerate(n for n in per if n != "loss")]
        body += "".join(h.figure(svg) for svg in svgs)
    return body


# warnings ---------------------------------------------------------------------------------
def warnings(facts: Facts) -> str:
    found = facts.warnings
    if not found:
        return h.section("warnings", "Warnings", '<p class="ok">nothing to flag</p>')
    items = "".join(f"<li>{h.esc(w)}</li>" for w in found)
    return h.section("warnings", "Warnings", f'<ul class="warnings">{items}</ul>')


# funnel -----------------------------------------------------------------------------------
def funnel(facts: Facts, figures: bool) -> str:
    run, rows = facts.run, facts.funnel
    has_tokens = rows[0].tokens_in is not None
    headers = ["stage", "selector", "in", "kept", "dropped", "kept %"] + (["tokens in", "tokens kept"]
                                                                          if has_tokens else [])
    table_rows = []
    for r in rows:
        row = [r.stage, r.use, r.candidates, r.kept, r.candidates - r.kept,
               h.pct(r.kept / r.candidates if r.candidates else None)]
        if has_tokens:
            row += [r.tokens_in, r.tokens_kept]
        table_rows.append(row)
    body = h.table(headers, table_rows, numeric=[2, 3, 4, 5, 6, 7])
    body += "<h3>dropped_by</h3>" + h.table(
        ["dropped_by", "examples"],
        sorted(((k if k is not None else "(kept)", v) for k, v in run.counts.labels.items()), key=lambda kv: kv[0]),
        numeric=[1])
    if figures:
        body += h.figure(fig.funnel([r.stage for r in rows], [r.kept for r in rows], "fig-funnel"))
    intro = "examples (and whitespace tokens, what a token budget counts) entering and leaving each stage"
    if not has_tokens:
        intro += "; token counts need selection.parquet's tokens column, which this run lacks"
    return h.section("funnel", "Funnel", body, intro)


# composition ------------------------------------------------------------------------------
def composition(facts: Facts, figures: bool) -> str:
    run, body = facts.run, []
    if facts.groups is not None:
        body.append(_group_table(facts, facts.groups, run.summarize_by, figures, "fig-composition"))
    elif run.summarize_by:
        body.append(f"<p class=muted>selection.parquet has no column {h.esc(run.summarize_by)!s} "
                    "(runs write output.summarize_by's pool column there)</p>")
    for i, (name, rows) in enumerate(sorted(facts.target_groups.items())):
        body.append(f"<h3>{h.esc(name)}: by closest target</h3>"
                    f'<p class="muted">each example counted under the target its {h.esc(name)} score is highest for</p>'
                    + _group_table(facts, rows, "target", figures, f"fig-targets-{i}"))
    if not body:
        return h.section("composition", "Composition", "<p class=muted>the recipe sets no output.summarize_by and has "
                         "no per-target score, so there is nothing to group by</p>")
    intro = "pool vs selection per group; enrichment = share in the selection / share in the pool"
    return h.section("composition", "Composition", "".join(body), intro)


def _group_table(facts: Facts, rows: list[f.GroupRow], column: str, figures: bool, prefix: str) -> str:
    run = facts.run
    pool_total, selected_total = run.size, run.counts.selected
    labels = [s.label for s in run.stages]
    table_rows, pool_share, sel_share = [], [], []
    for r in rows:
        p, s, enrich = r.shares(pool_total, selected_total)
        pool_share.append(p)
        sel_share.append(s)
        enrichment = None if enrich is None else round(enrich, 3)
        table_rows.append([r.group, r.pool, h.pct(p), r.selected, h.pct(s), enrichment,
                           *(r.dropped.get(label, 0) for label in labels)])
    headers = [column, "pool", "pool share", "selected", "selected share", "enrichment",
               *(f"dropped by {label}" for label in labels)]
    out = h.table(headers, table_rows, numeric=range(1, len(headers)))
    if figures:
        out += h.figure(fig.composition([r.group for r in rows], pool_share, sel_share, prefix, f"by {column}"))
    return out


# scores -----------------------------------------------------------------------------------
def _cuts(run: Run) -> dict[str, list[tuple[str, float]]]:
    """Cut-offs per score column: (stage label, value)."""
    out: dict[str, list[tuple[str, float]]] = {}
    for stage in run.stages:
        cut = run.cut(stage)
        if cut is None:
            continue
        for bound in (cut.low, cut.high):
            if bound is not None:
                out.setdefault(cut.column, []).append((stage.label, bound))
    return out


def _summaries(facts: Facts, columns: list[str], names: dict[str, str]) -> list[list]:
    rows = []
    for column in columns:
        for label in (f.POOL, f.SELECTION):
            s = facts.summary(column, label)
            rows.append([names.get(column, column), label, s.count, s.nan, s.mean, s.std, s.minimum, *s.quantiles,
                         s.maximum])
    return rows


def _distributions(facts: Facts, columns: list[str], cuts: dict, prefix: str) -> str:
    svgs = []
    for i, column in enumerate(columns):
        hist = facts.histograms.get(column)
        svg = hist and fig.distribution(column.removeprefix("score."), hist.edges, hist.pool, hist.selection,
                                        cuts.get(column, []), f"{prefix}-{i}")
        if svg:
            svgs.append(h.figure(svg))
    return f'<div class="grid">{"".join(svgs)}</div>'


QUANTILE_NOTE = ("quantiles are exact (numpy's linear interpolation), found by narrowing histograms over the table "
                 "shard by shard")


def scores(facts: Facts, figures: bool) -> str:
    run = facts.run
    if not run.score_columns:
        return h.section("scores", "Scores", "<p class=muted>the run wrote no score columns</p>")
    quantiles = [f"p{round(q * 100)}" for q in f.QUANTILES]
    body = h.table(["score", "set", "n", "NaN", "mean", "std", "min", *quantiles, "max"],
                   _summaries(facts, run.score_columns, {}), numeric=range(2, 8 + len(quantiles)))
    cut_rows = [(stage.label, cut.describe(), cut.ties) for stage in run.stages if (cut := run.cut(stage))]
    if cut_rows:
        body += "<h3>Cut-offs</h3>" + h.table(["stage", "kept", "ties dropped at the bound"], cut_rows, numeric=[2])
    if figures:
        body += _distributions(facts, run.score_columns, _cuts(run), "fig-score")
    intro = ("each score column over the pool and over the selection; cut-offs are the manifest's when recorded, "
             "otherwise read off the rows (observed); " + QUANTILE_NOTE)
    return h.section("scores", "Scores", body, intro)


def correlations(facts: Facts, figures: bool) -> str:
    run = facts.run
    if len(run.score_columns) < 2:
        return ""
    labels, matrix, used = facts.correlations
    short = [c.removeprefix("score.") for c in labels]
    rows = [[short[i], *(None if np.isnan(v) else round(float(v), 3) for v in matrix[i])] for i in range(len(labels))]
    body = h.table(["", *short], rows, numeric=range(1, len(labels) + 1))
    if figures:
        body += h.figure(fig.heatmap(labels, matrix, "fig-correlations"))
    note = "Spearman rank correlation over the pool (rows where both scores exist)"
    if used < run.size:
        note += f", on a sample of {used:,} of the {run.size:,} rows (drawn by a hash of each id)"
    if len(run.score_columns) > len(labels):
        note += f"; first {len(labels)} of {len(run.score_columns)} score columns"
    return h.section("correlations", "Correlations", body, note)


def lengths(facts: Facts, figures: bool) -> str:
    if not facts.run.tokens_column:
        return h.section("lengths", "Lengths", "<p class=muted>needs selection.parquet's tokens column, "
                         "which this run lacks</p>")
    quantiles = [f"p{round(q * 100)}" for q in f.QUANTILES]
    rows = [[r[0], r[1], r[2], r[4], r[6], *r[7:]] for r in _summaries(facts, ["tokens"], {})]
    body = h.table(["length", "set", "n", "mean", "min", *quantiles, "max"], rows, numeric=range(2, 7 + len(quantiles)))
    if figures:
        body += _distributions(facts, ["tokens"], {}, "fig-length")
    return h.section("lengths", "Lengths", body,
                     "whitespace tokens per example (what a token budget counts; selection.parquet's tokens column). "
                     "Characters are not counted: that would read every text of the pool")


def embedding_map(facts: Facts, figures: bool) -> str:
    run, projected = facts.run, facts.projection
    if projected is None:
        return h.section("embedding-map", "Embedding map", "<p class=muted>no embedding matched a run id</p>")
    body = (f"<p>{projected.matched:,} of {run.size:,} examples have an embedding; {len(projected.xy):,} plotted "
            "(a sample drawn by a hash of each id, up to half of it selected examples so a small selection still "
            "shows)</p>")
    if figures:
        body += h.figure(fig.scatter_map(projected.xy, projected.selected, "fig-embedding",
                                         "first two principal components"))
    return h.section("embedding-map", "Embedding map", body, "PCA of the embedding features")


# examples ---------------------------------------------------------------------------------
def examples(facts: Facts) -> str:
    run, picks = facts.run, facts.examples
    shown = run.score_columns[:MAX_SCORE_CELLS]
    body = []
    if not facts.texts_shown:
        body.append("<p class=muted>texts are not available (see Notes): ids and scores only</p>")
    cut = facts.cut_stage
    titles = {"top": "top of the selection", "bottom": "bottom of the selection",
              "below the cut-off": f"just below the cut-off of {cut[0].label}" if cut else "just below the cut-off",
              "random": f"random (seed {run.seed}, drawn by a hash of each id)"}
    for kind, items in picks.items():
        rows = []
        for e in items:
            text = "–" if e.text is None else e.text[:TEXT_CHARS] + ("…" if len(e.text) > TEXT_CHARS else "")
            status = '<span class="yes">selected</span>' if e.selected else (
                f'<span class="no">dropped by {h.esc(e.dropped_by)}</span>' if e.dropped_by else "not selected")
            rows.append([e.rank, e.id, status, *(e.scores[c] for c in shown), f'<div class="text">{h.esc(text)}</div>'])
        headers = ["rank", "id", "status", *(c.removeprefix("score.") for c in shown), "text"]
        body.append(f"<h3>{h.esc(titles.get(kind, kind))}</h3>"
                    + h.table(headers, rows, numeric=[0, *range(3, 3 + len(shown))], raw=[2, 3 + len(shown)]))
    return h.section("examples", "Examples", "".join(body), f"texts HTML-escaped and cut at {TEXT_CHARS} characters")


# diagnostics ------------------------------------------------------------------------------
def diagnostics(run: Run) -> str:
    body = []
    for stage in run.stages:
        cand, kept = run.counts.candidates(stage), run.counts.survivors(stage)
        params = json.dumps(stage.params, sort_keys=True, default=str)
        body.append(f"<h3>{h.esc(stage.label)} <span class=muted>({h.esc(stage.use)})</span></h3>"
                    f"<p><code>{h.esc(params)}</code> · kept {kept:,} of {cand:,}</p>")
        if stage.diagnostics:
            body.append(_value(stage.diagnostics))
        else:
            body.append("<p class=muted>no diagnostics recorded</p>")
    if not body:
        return ""
    return h.section("diagnostics", "Selector diagnostics", "".join(body), "what each selector reported (manifest)")


def _value(value, depth: int = 0) -> str:
    """A diagnostic value: dicts as key/value tables, long lists cut to MAX_LIST items."""
    if isinstance(value, dict) and depth < 3:
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        shown = items[: MAX_LIST * 2]
        rows = [(str(k), _value(v, depth + 1)) for k, v in shown]
        more = f"<p class=muted>… {len(items) - len(shown):,} more</p>" if len(items) > len(shown) else ""
        return h.table(["key", "value"], rows, raw=[1]) + more
    if isinstance(value, list):
        text = ", ".join(h.num(v) if isinstance(v, int | float) else str(v) for v in value[:MAX_LIST])
        if len(value) > MAX_LIST:
            text += f", … ({len(value):,} items)"
        return f"<span class=mono>[{h.esc(text)}]</span>"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return h.esc(h.num(value))
    text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict) else str(value)
    return h.esc(text[:2000])
