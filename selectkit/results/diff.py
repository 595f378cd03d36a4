"""`selectkit diff RUN_A RUN_B`: how two finished runs' selections differ (overlap, composition,
examples entering and leaving, score shifts), as text, a pull-request Markdown comment, or JSON."""

from __future__ import annotations

import re
from pathlib import Path

from selectkit.results.rundir import STREAMING, Draw, Run, readable

TEXT_CHARS = 120
SAMPLE_ROWS = 50_000  # shared examples the score agreement (Spearman) is computed on, drawn by a hash of each id


def diff(a_dir: str | Path, b_dir: str | Path, top: int = 10) -> dict:
    """A JSON-ready comparison of run B against run A (ids matched as text). Streams: the selected ids are
    joined lazily, means are aggregates, the score agreement uses a keyed sample of ids (the same ids in
    both runs), texts are read for the examples shown only."""
    import polars as pl

    a, b = Run.open(a_dir), Run.open(b_dir)
    with readable(a_dir, b_dir):
        sel_a, sel_b = _selected(a), _selected(b)
        tagged = pl.concat([sel.select(pl.lit(tag).alias("run"), "__id") for tag, sel in (("a", sel_a), ("b", sel_b))])
        counts = (tagged.group_by("__id").agg(pl.col("run").min().alias("first"), pl.len().alias("runs"))
                  .group_by("first", "runs").agg(pl.len().alias("n")).collect(engine=STREAMING))
        tally = {(first, runs): n for first, runs, n in counts.iter_rows()}  # ("a", 2): in both runs
        both = tally.get(("a", 2), 0)
        only_a, only_b = tally.get(("a", 1), 0), tally.get(("b", 1), 0)
        union = both + only_a + only_b
        report = {
            "a": _about(a), "b": _about(b),
            "same_pool": None if not (_fingerprint(a) and _fingerprint(b)) else _fingerprint(a) == _fingerprint(b),
            "overlap": {"a_selected": both + only_a, "b_selected": both + only_b, "both": both,
                        "only_a": only_a, "only_b": only_b, "jaccard": round(both / union, 6) if union else 1.0},
            "stages": _stages(a, b),
            "composition": _composition(a, b),
            "entering": _examples(b, sel_b.join(sel_a, on="__id", how="anti"), top),
            "leaving": _examples(a, sel_a.join(sel_b, on="__id", how="anti"), top),
            "scores": _score_shifts(a, b),
        }
    notes = list(dict.fromkeys([f"A: {n}" for n in a.notes] + [f"B: {n}" for n in b.notes]))
    if notes:
        report["notes"] = notes
    return report


def _selected(run: Run):
    """The selected rows (lazy): id as text, position and rank (duplicate ids counted once)."""
    import polars as pl

    return (run.scan().filter(pl.col("__selected"))
            .select(pl.col("id").cast(pl.String).alias("__id"), "__row", "__rank").unique("__id", keep="first"))


def _fingerprint(run: Run) -> str | None:
    return ((run.manifest.get("data") or {}).get("pool") or {}).get("fingerprint")


def _about(run: Run) -> dict:
    return {"path": str(run.path), "recipe": run.name, "hash": run.recipe.get("hash"), "seed": run.seed,
            "pool": run.size, "selected": run.counts.selected}


def _stages(a: Run, b: Run) -> list[dict]:
    """Kept per stage label in either run (a stage only one run has shows None for the other)."""
    kept_a = {s.label: a.counts.survivors(s) for s in a.stages}
    kept_b = {s.label: b.counts.survivors(s) for s in b.stages}
    labels = list(dict.fromkeys([*kept_a, *kept_b]))
    return [{"stage": label, "a_kept": kept_a.get(label), "b_kept": kept_b.get(label)} for label in labels]


def _composition(a: Run, b: Run) -> dict | None:
    column = a.summarize_by or b.summarize_by
    if not column:
        return None
    if not (a.is_table_field(column) and b.is_table_field(column)):
        return {"column": column, "rows": [], "missing": "selection.parquet of each run must hold that column"}
    counts_a, counts_b = _counts(a, column), _counts(b, column)
    total_a, total_b = max(sum(counts_a.values()), 1), max(sum(counts_b.values()), 1)
    rows = []
    for group in sorted(set(counts_a) | set(counts_b)):
        na, nb = counts_a.get(group, 0), counts_b.get(group, 0)
        rows.append({"group": group, "a": na, "b": nb, "a_share": round(na / total_a, 6),
                     "b_share": round(nb / total_b, 6), "share_change": round(nb / total_b - na / total_a, 6)})
    return {"column": column, "rows": rows}


def _counts(run: Run, column: str) -> dict[str, int]:
    """Selected rows per value of a column (a streaming group-by)."""
    import polars as pl

    frame = (run.scan().filter(pl.col("__selected"))
             .group_by(pl.col(column).cast(pl.String, strict=False).fill_null("(missing)").alias("g"))
             .agg(pl.len()).collect(engine=STREAMING))
    return {str(g): int(n) for g, n in frame.iter_rows()}


def _examples(run: Run, chosen, top: int) -> list[dict]:
    """The best-ranked `top` of `chosen` (a lazy frame of selected rows) in `run`, with a short text when the
    run's pool is readable."""
    best = chosen.sort(["__rank", "__row"]).head(top).collect(engine=STREAMING)
    rows = run.rows(best["__row"].to_list()) if best.height else None
    out = []
    for k, (example_id, rank) in enumerate(zip(best["__id"].to_list(), best["__rank"].to_list())):
        entry = {"id": example_id, "rank": int(rank)}
        text = rows["__text"][k] if rows is not None else None
        if text is not None:
            entry["text"] = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "…"
        out.append(entry)
    return out


def _score_shifts(a: Run, b: Run) -> list[dict]:
    """Per score column both runs wrote: pool and selection means in each, and how far the scores of the
    shared examples agree (Spearman, on a keyed sample of ids), which tells a changed scorer from a changed
    selector."""
    import polars as pl

    shared = [c for c in a.score_columns if c in set(b.score_columns)]
    if not shared:
        return []
    means = {}
    for key, run in (("a", a), ("b", b)):
        found = run.aggregate([e for c in shared for e in (
            run.value(c).filter(run.value(c).is_finite()).mean().alias(f"{c}|pool"),
            run.value(c).filter(run.value(c).is_finite() & pl.col("__selected")).mean().alias(f"{c}|selected"))])
        means[key] = found
    draw = {"s": Draw(SAMPLE_ROWS, ("diff", "agreement"))}
    sample_a, sample_b = (run.draw(draw, ["id", *shared])["s"].select(pl.col("id").cast(pl.String), *shared)
                          for run in (a, b))
    joined = sample_a.join(sample_b, on="id", how="inner", suffix="__b")
    out = []
    for column in shared:
        entry = {"column": column, "a_pool_mean": means["a"][f"{column}|pool"],
                 "b_pool_mean": means["b"][f"{column}|pool"],
                 "a_selected_mean": means["a"][f"{column}|selected"],
                 "b_selected_mean": means["b"][f"{column}|selected"]}
        if entry["a_selected_mean"] is not None and entry["b_selected_mean"] is not None:
            entry["selected_mean_change"] = entry["b_selected_mean"] - entry["a_selected_mean"]
        if joined.height >= 3:
            frame = joined.select(
                pl.col(column).cast(pl.Float64, strict=False).fill_nan(None).alias("x"),
                pl.col(f"{column}__b").cast(pl.Float64, strict=False).fill_nan(None).alias("y")).drop_nulls()
            if frame.height >= 3 and frame["x"].std() and frame["y"].std():
                rho = frame.select(pl.corr("x", "y", method="spearman")).item()
                entry["shared_examples"] = frame.height
                entry["spearman_a_b"] = None if rho is None else round(float(rho), 6)
        out.append(entry)
    return out


# rendering -------------------------------------------------------------------------------
def _g(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


ZWSP = "&#8203;"  # a zero-width space: breaks what GitHub would turn into a link, a ping or a reference
_LINKED = re.compile(r"(?i)(?<=\b)(https?|ftp|mailto)(?=:)|(?<=\b)(www)(?=\.)")  # GFM autolinks a URL's start
_PINGED = re.compile(r"([@#])(?=\w)")  # @user and @org/team pings, #12 references


def _md_cell(value) -> str:
    """Text safe inside a Markdown table cell of a pull-request comment, whatever scraped text it holds: no
    pipes, tags or line breaks; no image, link or autolink (brackets escaped, URLs and `www.` broken by a
    zero-width space); no @mention or #reference (the same). Entities in the text stay literal text."""
    text = _g(value).replace("&", "&amp;").replace("\\", "\\\\").replace("|", "\\|")
    text = text.replace("\n", " ").replace("\r", " ").replace("<", "&lt;").replace(">", "&gt;").replace("`", "\\`")
    text = text.replace("[", "\\[").replace("]", "\\]")
    text = _PINGED.sub(lambda m: m.group(1) + ZWSP, text)  # before any entity of ours (they hold a '#')
    return _LINKED.sub(lambda m: (m.group(1) or m.group(2)) + ZWSP, text)


def _md_code(value) -> str:
    """A name as a Markdown code span (rendered literally: no link, ping or tag can form inside one)."""
    return "`" + _g(value).replace("`", "'").replace("\n", " ").replace("\r", " ").strip() + "`"


def _pool_note(same: bool | None, form: str) -> str:
    if same is None:
        return form.format("pool fingerprints not recorded")
    return "" if same else form.format("the pools differ")


def render_markdown(d: dict) -> str:
    """A pull-request comment."""
    a, b, o = d["a"], d["b"], d["overlap"]

    def table(headers, rows):
        lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        return lines

    out = [f"### selectkit diff: {_md_code(a['recipe'])} (A) → {_md_code(b['recipe'])} (B)", ""]
    out += table(["", "A", "B"], [["recipe hash", (a["hash"] or "")[:12], (b["hash"] or "")[:12]],
                                  ["seed", a["seed"], b["seed"]], ["pool", a["pool"], b["pool"]],
                                  ["selected", a["selected"], b["selected"]]])
    out += ["", f"**Overlap:** {o['both']:,} in both, {o['only_a']:,} left, {o['only_b']:,} entered "
                f"(Jaccard {o['jaccard']:.3f})." + _pool_note(d["same_pool"], " _{}._"), ""]
    if d["stages"]:
        out += ["#### Kept per stage", ""] + table(["stage", "A", "B"], [[s["stage"], s["a_kept"], s["b_kept"]]
                                                                         for s in d["stages"]]) + [""]
    comp = d.get("composition")
    if comp and comp["rows"]:
        out += [f"#### Composition by {_md_code(comp['column'])}", ""]
        out += table([comp["column"], "A", "B", "Δ share"],
                     [[r["group"], r["a"], r["b"], f"{100 * r['share_change']:+.1f} pp"] for r in comp["rows"]]) + [""]
    if d["scores"]:
        out += ["#### Score shifts (selection mean)", ""]
        out += table(["score", "A", "B", "Δ", "Spearman A~B"],
                     [[s["column"], s["a_selected_mean"], s["b_selected_mean"], s.get("selected_mean_change"),
                       s.get("spearman_a_b")] for s in d["scores"]]) + [""]
    for key, title in (("entering", "Entering (best B ranks)"), ("leaving", "Leaving (best A ranks)")):
        if d[key]:
            out += [f"#### {title}", ""] + table(["rank", "id", "text"], [[e["rank"], e["id"], e.get("text", "")]
                                                                          for e in d[key]]) + [""]
    for note in d.get("notes", []):
        out.append(f"> {_md_cell(note)}")
    return "\n".join(out).rstrip() + "\n"


def render_text(d: dict) -> str:
    """The comparison for a terminal."""
    a, b, o = d["a"], d["b"], d["overlap"]
    lines = [f"A: {a['path']}  ({a['recipe']}, seed {a['seed']}, {a['selected']:,} of {a['pool']:,} selected)",
             f"B: {b['path']}  ({b['recipe']}, seed {b['seed']}, {b['selected']:,} of {b['pool']:,} selected)",
             f"overlap: {o['both']:,} in both, {o['only_a']:,} only in A, {o['only_b']:,} only in B "
             f"(Jaccard {o['jaccard']:.3f})" + _pool_note(d["same_pool"], "; {}")]
    for s in d["stages"]:
        lines.append(f"  stage {s['stage']:<24} kept A {_g(s['a_kept']):>8}  B {_g(s['b_kept']):>8}")
    comp = d.get("composition")
    if comp and comp["rows"]:
        lines.append(f"by {comp['column']}:        A        B   change in share")
        for r in comp["rows"]:
            lines.append(f"  {r['group']:<16} {r['a']:>6} {r['b']:>8}   {100 * r['share_change']:+6.1f} pp")
    for s in d["scores"]:
        lines.append(f"  {s['column']:<28} selection mean A {_g(s['a_selected_mean'])}  B {_g(s['b_selected_mean'])}"
                     + (f"  Spearman A~B {_g(s['spearman_a_b'])}" if "spearman_a_b" in s else ""))
    for key, title in (("entering", "entering (in B, not A)"), ("leaving", "leaving (in A, not B)")):
        if d[key]:
            lines.append(f"{title}:")
            lines += [f"  #{e['rank']:<5} {e['id']}  {e.get('text', '')}" for e in d[key]]
    lines += [f"note: {n}" for n in d.get("notes", [])]
    return "\n".join(lines)
