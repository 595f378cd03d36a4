"""`selectkit explain`: why one example was selected or not, from a finished run's files alone:
its rank, each score with its pool percentile, and the stage that dropped it with that stage's rule."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from selectkit.results.rundir import STREAMING, Run, RunDirError, readable

TEXT_CHARS = 200
CLOSE_IDS = 200_000  # did-you-mean reads the id column of a table up to this size (an error path only)


def explain(run_dir: str | Path, ids: list[str]) -> list[dict]:
    """One JSON-ready record per id; an unknown id is a RunDirError naming it. The rows are found by a lazy
    filter on the id column; percentiles and stage counts are streaming aggregates."""
    run = Run.open(run_dir)
    with readable(run_dir):
        where = run.find(list(ids))
        unknown = [i for i, row in where.items() if row is None]
        if unknown:
            raise RunDirError(_unknown_message(run, unknown))
        rows = run.rows([where[str(i)] for i in ids], fields=[run.summarize_by] if run.summarize_by else [])
        return [_record(run, str(i), row) for i, row in zip(ids, rows.iter_rows(named=True))]


def _unknown_message(run: Run, unknown: list[str]) -> str:
    import polars as pl

    message = f"id {unknown[0]!r} is not in the run's pool ({run.path}, {run.size:,} examples)"
    if len(unknown) > 1:
        message = f"ids not in the run's pool ({run.path}, {run.size:,} examples): {', '.join(map(repr, unknown))}"
    elif run.size <= CLOSE_IDS:  # did-you-mean stays fast on a pool this size
        ids = run.scan().select(pl.col("id").cast(pl.String)).collect(engine=STREAMING)["id"].to_list()
        close = difflib.get_close_matches(unknown[0], ids, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return message


def _record(run: Run, example_id: str, row: dict) -> dict:
    record = {"id": example_id, "selected": bool(row["__selected"]), "rank": int(row["__rank"]) or None,
              "of": run.counts.selected}
    for column in ("weight", "count"):
        if column in run.schema:
            value = _number(row[column])
            record[column] = None if value is None else (value if column == "weight" else int(value))
    asks = []
    for column in run.score_columns:
        asks.append((column, _number(row[column]), None))
        if run.raw_column(column):
            asks.append((run.raw_column(column), _number(row[run.raw_column(column)]), None))
    stages = [(stage, columns[0]) if len(columns := run.columns_of(stage.score) if stage.score else []) == 1
              else (stage, None) for stage in run.stages]
    asks += [(column, _number(row[column]), run.candidates(stage)) for stage, column in stages if column]
    found = iter(run.percentiles_of(asks))
    record["scores"] = []
    for column in run.score_columns:
        entry = {"column": column, "value": _number(row[column]), "pool_percentile": _round(next(found))}
        raw = run.raw_column(column)
        if raw:
            entry["raw"] = _number(row[raw])
            entry["raw_pool_percentile"] = _round(next(found))
        record["scores"].append(entry)
    record["dropped_by"] = row["__label"]
    record["stages"] = [_stage(run, stage, column, row, next(found) if column else None) for stage, column in stages]
    for column in ("duplicate_of", "served_task"):
        if column in run.schema and row[column] is not None:
            record[column] = str(row[column])
    if run.summarize_by:
        group = row.get(f"field.{run.summarize_by}")
        if group is not None or run.is_table_field(run.summarize_by):
            record[run.summarize_by] = group
    text = row["__text"]
    if text is not None:
        record["text"] = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "…"
    if run.notes:
        record["notes"] = list(dict.fromkeys(run.notes))
    return record


def _stage(run: Run, stage, column: str | None, row: dict, candidate_percentile: float | None) -> dict:
    """What the stage did to this example: passed, dropped (with the rule), or never reached."""
    entry = {"stage": stage.label, "selector": stage.use, "params": stage.params,
             "candidates": run.counts.candidates(stage), "kept": run.counts.survivors(stage)}
    at = row["__stage"]
    if not (at < 0 or at >= stage.index):
        entry["outcome"] = "not reached"
        return entry
    entry["outcome"] = "dropped" if at == stage.index else "kept"
    cut = run.cut(stage)
    if cut is not None:
        entry["cutoff"] = {"column": cut.column, "low": cut.low, "high": cut.high, "source": cut.source,
                           "rule": cut.describe()}
    if column:
        entry["score"] = {"column": column, "value": _number(row[column]),
                          "candidate_percentile": _round(candidate_percentile)}
    for key in ("duplicate_of", "served_task"):
        mapping = stage.diagnostics.get(key)
        if isinstance(mapping, dict):
            value = mapping.get(str(row["id"]))
            if value is not None:
                entry[key] = value
    return entry


def _number(value) -> float | None:
    """A cell as a float: None for null, NaN or a value that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


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
