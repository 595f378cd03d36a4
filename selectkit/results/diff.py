"""`selectkit diff RUN_A RUN_B`: how two finished runs' selections differ (overlap, composition,
examples entering and leaving, score shifts), as text, a pull-request Markdown comment, or JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selectkit.results.rundir import Run

TEXT_CHARS = 120


def diff(a_dir: str | Path, b_dir: str | Path, top: int = 10) -> dict:
    """A JSON-ready comparison of run B against run A (ids matched as text)."""
    a, b = Run.open(a_dir), Run.open(b_dir)
    ids_a, ids_b = _ids(a), _ids(b)
    sel_a, sel_b = set(ids_a[a.selected]), set(ids_b[b.selected])
    both = sel_a & sel_b
    union = sel_a | sel_b
    report = {
        "a": _about(a), "b": _about(b),
        "same_pool": None if not (_fingerprint(a) and _fingerprint(b)) else _fingerprint(a) == _fingerprint(b),
        "overlap": {"a_selected": len(sel_a), "b_selected": len(sel_b), "both": len(both),
                    "only_a": len(sel_a - both), "only_b": len(sel_b - both),
                    "jaccard": round(len(both) / len(union), 6) if union else 1.0},
        "stages": _stages(a, b),
        "composition": _composition(a, b),
        "entering": _examples(b, ids_b, sel_b - sel_a, top),
        "leaving": _examples(a, ids_a, sel_a - sel_b, top),
        "scores": _score_shifts(a, b, ids_a, ids_b),
    }
    notes = list(dict.fromkeys([f"A: {n}" for n in a.notes] + [f"B: {n}" for n in b.notes]))
    if notes:
        report["notes"] = notes
    return report


def _ids(run: Run) -> np.ndarray:
    return run.table["id"].cast(str).to_numpy().astype(object)


def _fingerprint(run: Run) -> str | None:
    return ((run.manifest.get("data") or {}).get("pool") or {}).get("fingerprint")


def _about(run: Run) -> dict:
    return {"path": str(run.path), "recipe": run.name, "hash": run.recipe.get("hash"), "seed": run.seed,
            "pool": run.size, "selected": int(run.selected.sum())}


def _stages(a: Run, b: Run) -> list[dict]:
    """Kept per stage label in either run (a stage only one run has shows None for the other)."""
    kept_a = {s.label: int(a.survivors(s).sum()) for s in a.stages}
    kept_b = {s.label: int(b.survivors(s).sum()) for s in b.stages}
    labels = list(dict.fromkeys([*kept_a, *kept_b]))
    return [{"stage": label, "a_kept": kept_a.get(label), "b_kept": kept_b.get(label)} for label in labels]


def _composition(a: Run, b: Run) -> dict | None:
    column = a.summarize_by or b.summarize_by
    if not column:
        return None
    groups_a, groups_b = a.pool_column(column), b.pool_column(column)
    if groups_a is None or groups_b is None:
        return {"column": column, "rows": [], "missing": "pool column not available in both runs"}
    counts_a = _counts(groups_a.cast(str).fill_null("(missing)").to_numpy()[a.selected])
    counts_b = _counts(groups_b.cast(str).fill_null("(missing)").to_numpy()[b.selected])
    total_a, total_b = max(sum(counts_a.values()), 1), max(sum(counts_b.values()), 1)
    rows = []
    for group in sorted(set(counts_a) | set(counts_b)):
        na, nb = counts_a.get(group, 0), counts_b.get(group, 0)
        rows.append({"group": group, "a": na, "b": nb, "a_share": round(na / total_a, 6),
                     "b_share": round(nb / total_b, 6), "share_change": round(nb / total_b - na / total_a, 6)})
    return {"column": column, "rows": rows}


def _counts(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(values, return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def _examples(run: Run, ids: np.ndarray, chosen: set[str], top: int) -> list[dict]:
    """The best-ranked `top` of `chosen` in `run`, with a short text when the run's pool is readable."""
    rows = np.flatnonzero(np.isin(ids, np.array(sorted(chosen), dtype=object)) & run.selected)
    rows = rows[np.argsort(run.rank[rows], kind="stable")][:top]
    texts = run.texts
    out = []
    for row in rows:
        entry = {"id": str(ids[row]), "rank": int(run.rank[row])}
        if texts is not None and texts[int(row)] is not None:
            text = texts[int(row)]
            entry["text"] = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "…"
        out.append(entry)
    return out


def _score_shifts(a: Run, b: Run, ids_a: np.ndarray, ids_b: np.ndarray) -> list[dict]:
    """Per score column both runs wrote: pool and selection means in each, and how far the scores of the
    shared examples agree (Spearman), which tells a changed scorer from a changed selector."""
    import polars as pl

    shared = [c for c in a.score_columns if c in set(b.score_columns)]
    out = []
    joined = None
    if shared:
        left = pl.DataFrame({"id": ids_a.tolist(), **{c: a.values(c) for c in shared}})
        right = pl.DataFrame({"id": ids_b.tolist(), **{c: b.values(c) for c in shared}})
        joined = left.join(right, on="id", how="inner", suffix="__b")
    for column in shared:
        va, vb = a.values(column), b.values(column)
        entry = {"column": column, "a_pool_mean": _mean(va), "b_pool_mean": _mean(vb),
                 "a_selected_mean": _mean(va[a.selected]), "b_selected_mean": _mean(vb[b.selected])}
        if entry["a_selected_mean"] is not None and entry["b_selected_mean"] is not None:
            entry["selected_mean_change"] = entry["b_selected_mean"] - entry["a_selected_mean"]
        if joined is not None and joined.height >= 3:
            x, y = joined[column].fill_nan(None), joined[f"{column}__b"].fill_nan(None)
            frame = pl.DataFrame({"x": x, "y": y}).drop_nulls()
            if frame.height >= 3 and frame["x"].std() and frame["y"].std():
                rho = frame.select(pl.corr("x", "y", method="spearman")).item()
                entry["shared_examples"] = frame.height
                entry["spearman_a_b"] = None if rho is None else round(float(rho), 6)
        out.append(entry)
    return out


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


# rendering -------------------------------------------------------------------------------
def _g(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _md_cell(value) -> str:
    """Text safe inside a Markdown table cell of a pull-request comment (no pipes, tags or line breaks)."""
    text = _g(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("`", "\\`")


def _pool_note(same: bool | None, form: str) -> str:
    if same is None:
        return form.format("pool fingerprints not recorded")
    return "" if same else form.format("the pools differ")


def render_markdown(d: dict) -> str:
    """A pull-request comment."""
    a, b, o = d["a"], d["b"], d["overlap"]

    def table(headers, rows):
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        return lines

    out = [f"### selectkit diff: `{_md_cell(a['recipe'])}` (A) → `{_md_cell(b['recipe'])}` (B)", ""]
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
        out += [f"#### Composition by `{_md_cell(comp['column'])}`", ""]
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
