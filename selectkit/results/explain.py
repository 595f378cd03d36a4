"""`selectkit explain`: why one example was selected or not, from a finished run's files alone:
its rank, each score with its pool percentile, and the stage that dropped it with that stage's rule."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import numpy as np

from selectkit.results.rundir import Run, RunDirError, percentile

TEXT_CHARS = 200


def explain(run_dir: str | Path, ids: list[str]) -> list[dict]:
    """One JSON-ready record per id; an unknown id is a RunDirError naming it."""
    run = Run.open(run_dir)
    where = run.index_of(list(ids))
    unknown = [i for i, row in where.items() if row is None]
    if unknown:
        raise RunDirError(_unknown_message(run, unknown))
    return [_record(run, i, where[i]) for i in ids]


def _unknown_message(run: Run, unknown: list[str]) -> str:
    message = f"id {unknown[0]!r} is not in the run's pool ({run.path}, {run.size:,} examples)"
    if len(unknown) > 1:
        message = f"ids not in the run's pool ({run.path}, {run.size:,} examples): {', '.join(map(repr, unknown))}"
    elif run.size <= 200_000:  # did-you-mean stays fast on a pool this size
        close = difflib.get_close_matches(unknown[0], run.table["id"].cast(str).to_list(), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return message


def _record(run: Run, example_id: str, row: int) -> dict:
    total_selected = int(run.selected.sum())
    record = {"id": example_id, "selected": bool(run.selected[row]), "rank": int(run.rank[row]) or None,
              "of": total_selected}
    for column in ("weight", "count"):
        if column in run.table.columns:
            value = run.table[column][row]
            record[column] = None if value is None else (float(value) if column == "weight" else int(value))
    record["scores"] = [_score(run, column, row) for column in run.score_columns]
    drop = run.dropped_by[row]
    record["dropped_by"] = None if drop is None else str(drop)
    record["stages"] = [_stage(run, stage, row) for stage in run.stages]
    for column in ("duplicate_of", "served_task"):
        if column in run.table.columns and run.table[column][row] is not None:
            record[column] = str(run.table[column][row])
    if run.summarize_by:
        group = run.pool_column(run.summarize_by)
        if group is not None:
            record[run.summarize_by] = None if group[row] is None else str(group[row])
    texts = run.texts
    if texts is not None and texts[row] is not None:
        text = texts[row]
        record["text"] = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "…"
    if run.notes:
        record["notes"] = list(dict.fromkeys(run.notes))
    return record


def _score(run: Run, column: str, row: int) -> dict:
    values = run.values(column)
    entry = {"column": column, "value": _float(values[row]),
             "pool_percentile": _round(percentile(np.sort(values[~np.isnan(values)]), values[row]))}
    raw = run.raw_column(column)
    if raw:
        raw_values = run.values(raw)
        entry["raw"] = _float(raw_values[row])
        entry["raw_pool_percentile"] = _round(percentile(np.sort(raw_values[~np.isnan(raw_values)]), raw_values[row]))
    return entry


def _stage(run: Run, stage, row: int) -> dict:
    """What the stage did to this example: passed, dropped (with the rule), or never reached."""
    candidates = run.candidates(stage)
    entry = {"stage": stage.label, "selector": stage.use, "params": stage.params,
             "candidates": int(candidates.sum()), "kept": int(run.survivors(stage).sum())}
    if not candidates[row]:
        entry["outcome"] = "not reached"
        return entry
    entry["outcome"] = "dropped" if run.drop_stage[row] == stage.index else "kept"
    cut = run.cut(stage)
    if cut is not None:
        entry["cutoff"] = {"column": cut.column, "low": cut.low, "high": cut.high, "source": cut.source,
                           "rule": cut.describe()}
    columns = run.columns_of(stage.score) if stage.score else []
    if len(columns) == 1:
        values = run.values(columns[0])
        pool = values[candidates & ~np.isnan(values)]
        entry["score"] = {"column": columns[0], "value": _float(values[row]),
                          "candidate_percentile": _round(percentile(np.sort(pool), values[row]))}
    for key in ("duplicate_of", "served_task"):
        mapping = stage.diagnostics.get(key)
        if isinstance(mapping, dict):
            value = mapping.get(str(run.table["id"][row]))
            if value is not None:
                entry[key] = value
    return entry


def _float(value) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def render_text(records: list[dict]) -> str:
    """The records for a terminal."""
    lines = []
    for r in records:
        if r["selected"]:
            head = f"{r['id']}: selected, rank {r['rank']} of {r['of']}"
            extras = [f"{k} {r[k]:g}" for k in ("weight", "count") if r.get(k) is not None]
            head += f" ({', '.join(extras)})" if extras else ""
        else:
            head = f"{r['id']}: not selected" + (f", dropped by {r['dropped_by']}" if r["dropped_by"] else "")
        lines.append(head)
        for key in ("duplicate_of", "served_task"):
            if r.get(key):
                lines.append(f"  {key.replace('_', ' ')}: {r[key]}")
        for s in r["stages"]:
            lines.append("  " + _stage_line(s))
        if r["scores"]:
            lines.append(f"  {'score':<28} {'value':>12} {'pool pct':>9}")
            for s in r["scores"]:
                line = f"  {s['column']:<28} {_fmt(s['value']):>12} {_fmt(s['pool_percentile'], 1):>9}"
                if "raw" in s:
                    line += f"   raw {_fmt(s['raw'])} (pool pct {_fmt(s['raw_pool_percentile'], 1)})"
                lines.append(line)
        for key, value in r.items():
            if key not in {"id", "selected", "rank", "of", "weight", "count", "scores", "dropped_by", "stages",
                           "duplicate_of", "served_task", "text", "notes"}:
                lines.append(f"  {key}: {value}")
        if r.get("text"):
            lines.append(f"  text: {json.dumps(r['text'], ensure_ascii=False)}")
        for note in r.get("notes", []):
            lines.append(f"  note: {note}")
    return "\n".join(lines)


def _stage_line(s: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(s["params"].items()))
    line = f"stage {s['stage']} ({s['selector']}{': ' + params if params else ''}): {s['outcome']}"
    if s["outcome"] == "not reached":
        return line
    line += f"; kept {s['kept']:,} of {s['candidates']:,}"
    if "cutoff" in s:
        line += f"; rule {s['cutoff']['rule']}"
    if "score" in s:
        sc = s["score"]
        line += f"; its {sc['column']} = {_fmt(sc['value'])} (percentile {_fmt(sc['candidate_percentile'], 1)} " \
                f"of the stage's candidates)"
    for key in ("duplicate_of", "served_task"):
        if key in s:
            line += f"; {key.replace('_', ' ')} {s[key]}"
    return line


def _fmt(value, digits: int | None = None) -> str:
    if value is None:
        return "–"
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:.6g}"
