"""Every data problem is named by file and line (jsonl) or row (parquet, csv), through the CLI.

A template field missing in some rows (an error, or with `on_missing: skip` rows never selected,
with `empty` rows scored as empty text, counted in a warning either way); a null, an object or a
list where text belongs (never its printed form scored as text); a line that is not JSON, not
an object or not UTF-8; duplicate or missing ids; a DatasetDict folder. The line is the physical
line of the file (blank lines counted), also when the problem sits in a later shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import cli

# ---------------------------------------------------------------- helpers


def write_lines(path: Path, lines: list) -> Path:
    """A file of physical lines (str or bytes), each ended by a newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def rows(n: int, **fields) -> list[dict]:
    return [{"id": f"r{i}", "text": f"text of example {i}", **fields} for i in range(n)]


def jsonl(path: Path, records: list, blank_after: tuple[int, ...] = ()) -> Path:
    """jsonl of `records` (dicts, or raw lines as str/bytes), with a blank line after the given indexes."""
    lines: list = []
    for i, record in enumerate(records):
        lines.append(record if isinstance(record, str | bytes) else json.dumps(record))
        if i in blank_after:
            lines.append("   " if i % 2 else "")
    return write_lines(path, lines)


def recipe(folder: Path, *, pool: str = "data/pool.jsonl", text: str = "text", on_missing: str | None = None,
           target: str | None = None, budget: str = "100%") -> Path:
    source = f'{{path: {pool}, id: id, text: {json.dumps(text)}' + (f", on_missing: {on_missing}" if on_missing
                                                                   else "") + "}"
    lines = ["selectkit: 1", "name: problems", "seed: 0", "data:", f"  pool: {source}"]
    if target:
        lines += ["  targets:", f"    t: {{path: {target}, id: id}}"]
    lines += ["scores:", "  words: {use: length, with: {unit: tokens}}"]
    if target:
        lines += ["  sim: {use: dsir, targets: [t]}"]
    lines += ["select:", "  - use: topk", f"    with: {{score: words, budget: {budget}}}",
              "output: {dir: out, formats: [parquet, jsonl], report: false}"]
    path = folder / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def failed(*args) -> str:
    result = cli("run", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def titled(missing: tuple[int, ...] = (4, 7)) -> list[dict]:
    """Rows with a title and a body; rows `missing` lack the title (4: key absent, 7: null)."""
    out = []
    for i in range(12):
        row = {"id": f"r{i}", "title": f"title {i}", "body": f"body words number {i}"}
        if i in missing:
            if i % 2 == 0:
                del row["title"]
            else:
                row["title"] = None
        out.append(row)
    return out


TEMPLATE = "{title}\n{body}"
# physical lines: rows 0-2 on lines 1-3, a blank line 4, rows 3-5 on lines 5-7, blank line 8, rows 6.. from 9
BLANKS = (2, 5)


# ---------------------------------------------------------------- missing template fields


@pytest.mark.parametrize("shards", [[], ["--shard-rows", "3"]], ids=["one-shard", "shards-of-3"])
def test_a_missing_template_field_is_named_by_its_physical_line(tmp_path, shards):
    jsonl(tmp_path / "data" / "pool.jsonl", titled(), blank_after=BLANKS)
    err = failed(recipe(tmp_path, text=TEMPLATE), *shards)
    assert "pool.jsonl:6: field 'title' is missing or null" in err, err  # row 4, after one blank line
    assert "on_missing: skip" in err  # the way out is named


def test_on_missing_skip_never_selects_those_rows_and_counts_them(tmp_path):
    jsonl(tmp_path / "data" / "pool.jsonl", titled(), blank_after=BLANKS)
    result = cli("run", recipe(tmp_path, text=TEMPLATE, on_missing="skip"))  # budget 100%: all that can be
    assert result.returncode == 0, result.stderr
    assert "warning: pool: 2 rows have a missing text field and are never selected (on_missing: skip)" in \
        result.stderr
    table = pl.read_parquet(tmp_path / "out" / "selection.parquet")
    skipped = table.filter(pl.col("dropped_by") == "on_missing")
    assert skipped["id"].to_list() == ["r4", "r7"] and not skipped["selected"].any()
    assert table.filter(pl.col("dropped_by").is_null())["selected"].all() and table["selected"].sum() == 10
    assert set(pl.read_ndjson(tmp_path / "out" / "subset.jsonl")["id"]) == {f"r{i}" for i in range(12)} - {"r4", "r7"}


def test_on_missing_warning_is_recorded_in_the_manifest(tmp_path):
    jsonl(tmp_path / "data" / "pool.jsonl", titled())
    result = cli("run", recipe(tmp_path, text=TEMPLATE, on_missing="skip"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert any("2 rows have a missing text field" in w for w in manifest["warnings"]), manifest["warnings"]


def test_on_missing_empty_scores_those_rows_as_empty_text(tmp_path):
    jsonl(tmp_path / "data" / "pool.jsonl", titled(), blank_after=BLANKS)
    result = cli("run", recipe(tmp_path, text=TEMPLATE, on_missing="empty"))
    assert result.returncode == 0, result.stderr
    assert "warning: pool: 2 rows have a missing text field and are scored as empty text (on_missing: empty)" in \
        result.stderr
    table = pl.read_parquet(tmp_path / "out" / "selection.parquet").sort("id")
    words = dict(zip(table["id"], table["score.words"]))
    assert words["r4"] == words["r7"] == 4  # the body alone: the missing title is ""
    assert words["r3"] == 6 and table["selected"].all() and table["dropped_by"].null_count() == 12


# ---------------------------------------------------------------- values that are not text


def _mixed(path: Path, row: int, value, n: int = 12, field: str = "text") -> Path:
    records = rows(n, title="a title")
    records[row][field] = value
    return jsonl(path, records, blank_after=BLANKS)


def _parquet(path: Path, column: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": [f"r{i}" for i in range(len(column))], "text": column}).write_parquet(path)
    return path


NOT_TEXT = {
    # name: (make the pool file under data/, the pool's file name, text, extra args, expected message)
    "jsonl-null": (lambda d: _mixed(d / "pool.jsonl", 5, None), "pool.jsonl", "text", [],
                   "pool.jsonl:7: field 'text' is missing or null"),
    "jsonl-object-in-one-row": (lambda d: _mixed(d / "pool.jsonl", 4, {"a": "b"}), "pool.jsonl", "text", [],
                                "pool.jsonl:6: field 'text' holds a JSON object, not text"),
    "jsonl-list-in-one-row": (lambda d: _mixed(d / "pool.jsonl", 6, ["a", "b"]), "pool.jsonl", "text", [],
                              "pool.jsonl:9: field 'text' holds a JSON array, not text"),
    "jsonl-object-in-a-later-shard": (lambda d: _mixed(d / "pool.jsonl", 10, {"a": [1]}), "pool.jsonl", "text",
                                      ["--shard-rows", "4"], "pool.jsonl:13: field 'text' holds a JSON object"),
    "jsonl-object-in-a-template-field": (lambda d: _mixed(d / "pool.jsonl", 3, {"x": 1}, field="title"),
                                         "pool.jsonl", "{title}: {text}", [],
                                         "pool.jsonl:5: field 'title' holds a JSON object, not text"),
    "jsonl-objects-everywhere": (lambda d: jsonl(d / "pool.jsonl", rows(6, text={"a": "b"})), "pool.jsonl",
                                 "text", [], "pool.jsonl:1: field 'text' holds a JSON object"),
    "jsonl-lists-everywhere": (lambda d: jsonl(d / "pool.jsonl", rows(6, text=["a", "b"])), "pool.jsonl", "text",
                               [], "pool.jsonl:1: field 'text' holds a JSON array"),
    "parquet-null": (lambda d: _parquet(d / "pool.parquet", ["a b", "c d", "e f", "g h", None, "i j"]),
                     "pool.parquet", "text", [], "pool.parquet row 5: field 'text' is missing or null"),
    "parquet-struct": (lambda d: _parquet(d / "pool.parquet", [{"a": i} for i in range(6)]), "pool.parquet", "text",
                       [], "pool.parquet row 1: field 'text' holds Struct"),
    "parquet-list": (lambda d: _parquet(d / "pool.parquet", [[f"w{i}"] for i in range(6)]), "pool.parquet", "text",
                     [], "pool.parquet row 1: field 'text' holds List"),
    "csv-empty-field": (lambda d: write_lines(d / "pool.csv", ["id,text"] + [f"r{i},{'' if i == 4 else 'a b c'}"
                                                                           for i in range(8)]),
                        "pool.csv", "text", [], "pool.csv row 5: field 'text' is missing or null"),
}


@pytest.mark.parametrize("case", list(NOT_TEXT))
def test_text_that_is_not_a_string_is_named_with_its_type(tmp_path, case):
    make, name, text, args, message = NOT_TEXT[case]
    make(tmp_path / "data")
    err = failed(recipe(tmp_path, pool=f"data/{name}", text=text), *args)
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_an_object_where_text_belongs_is_an_error_even_with_on_missing_skip(tmp_path):
    _mixed(tmp_path / "data" / "pool.jsonl", 4, {"a": "b"})
    err = failed(recipe(tmp_path, on_missing="skip"))
    assert "pool.jsonl:6: field 'text' holds a JSON object, not text" in err, err


def test_a_target_with_an_object_for_text_is_named(tmp_path):
    jsonl(tmp_path / "data" / "pool.jsonl", rows(12))
    _mixed(tmp_path / "data" / "t.jsonl", 1, {"q": "?"}, n=4)
    err = failed(recipe(tmp_path, target="data/t.jsonl"))
    assert "t.jsonl:2: field 'text' holds a JSON object, not text" in err, err


def test_text_that_only_looks_like_json_is_text(tmp_path):
    """Strings such as "[Sings] ..." or "{braces}" are text: the check looks at the file, not the string."""
    records = rows(6)
    records[1]["text"] = "[Sings] hey nonny [nonny]"
    records[2]["text"] = '{"not": "an object, a string"}'
    jsonl(tmp_path / "data" / "pool.jsonl", records)
    result = cli("run", recipe(tmp_path))
    assert result.returncode == 0, result.stderr
    subset = pl.read_ndjson(tmp_path / "out" / "subset.jsonl")
    assert set(subset["text"]) >= {records[1]["text"], records[2]["text"]}


# ---------------------------------------------------------------- lines that are not jsonl


def _lines_with(bad: bytes, at: int, n: int = 40) -> list:
    """n good records with `bad` as physical line `at` (1-based); a blank line at 3."""
    lines: list = [json.dumps(r) for r in rows(n)]
    lines.insert(2, "")
    lines[at - 1] = bad
    return lines


MALFORMED = {
    "not-json": (_lines_with(b'{"id": "r4", "text": "unterminated', 5), [], "pool.jsonl:5: not valid JSON"),
    "json-array": (_lines_with(b'["r5", "an array"]', 6), [], "pool.jsonl:6: a jsonl line must be a JSON object, "
                                                              "not list"),
    "json-string": (_lines_with(b'"just a string"', 12), [], "pool.jsonl:12: a jsonl line must be a JSON object, "
                                                             "not str"),
    "latin-1-byte": (_lines_with(b'{"id": "r28", "text": "caf\xe9 cr\xe8me"}', 30), [],
                     "pool.jsonl:30: not valid UTF-8"),
    "not-json-past-the-line-index-step": (
        [json.dumps(r) if i % 100 else "" for i, r in enumerate(rows(1500))][:1399] + [b"{oops"]
        + [json.dumps(r) for r in rows(1500)][1400:], ["--shard-rows", "500"], "pool.jsonl:1400: not valid JSON"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_jsonl_lines_are_named_by_line(tmp_path, case):
    lines, args, message = MALFORMED[case]
    write_lines(tmp_path / "data" / "pool.jsonl", lines)
    err = failed(recipe(tmp_path), *args)
    assert message in err, err


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize("shards", [[], ["--shard-rows", "4"]], ids=["one-shard", "shards-of-4"])
def test_a_duplicate_id_names_the_value_and_both_lines(tmp_path, shards):
    records = rows(10)
    records[7]["id"] = "r2"
    jsonl(tmp_path / "data" / "pool.jsonl", records, blank_after=BLANKS)
    err = failed(recipe(tmp_path), *shards)
    assert "id column 'id' has duplicate value 'r2' (pool.jsonl:3 and pool.jsonl:10)" in err, err


def test_a_duplicate_id_in_parquet_names_both_rows(tmp_path):
    _parquet(tmp_path / "data" / "pool.parquet", [f"text {i}" for i in range(8)])
    frame = pl.read_parquet(tmp_path / "data" / "pool.parquet")
    frame.with_columns(pl.Series("id", ["a", "b", "c", "d", "e", "f", "c", "g"])).write_parquet(
        tmp_path / "data" / "pool.parquet")
    err = failed(recipe(tmp_path, pool="data/pool.parquet"))
    assert "duplicate value 'c' (pool.parquet row 3 and pool.parquet row 7)" in err, err


@pytest.mark.parametrize("how", ["absent", "null"])
def test_a_missing_id_names_its_line(tmp_path, how):
    records = rows(10)
    if how == "absent":
        del records[6]["id"]
    else:
        records[6]["id"] = None
    jsonl(tmp_path / "data" / "pool.jsonl", records, blank_after=BLANKS)
    err = failed(recipe(tmp_path))
    assert "pool.jsonl:9: id column 'id' has a missing value" in err, err


def test_a_missing_target_id_names_the_target_file(tmp_path):
    jsonl(tmp_path / "data" / "pool.jsonl", rows(10))
    records = rows(5)
    del records[3]["id"]
    jsonl(tmp_path / "data" / "t.jsonl", records)
    err = failed(recipe(tmp_path, target="data/t.jsonl"))
    assert "t.jsonl:4: id column 'id' has a missing value" in err, err


# ---------------------------------------------------------------- folders


def test_a_datasetdict_folder_names_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "data" / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows(8)),
                          "test": datasets.Dataset.from_list(rows(3))}).save_to_disk(str(folder))
    path = recipe(tmp_path, pool="data/hf")
    validated = cli("validate", path)
    assert validated.returncode == 1 and "Traceback" not in validated.stderr, validated.stderr
    assert f"{path}:5:" in validated.stderr  # the pool's line
    for err in (validated.stderr, failed(path)):
        assert "is a DatasetDict with splits train, test" in err, err
        assert f"point `path` at one split's folder, e.g. {folder / 'train'}" in err
    result = cli("run", recipe(tmp_path, pool="data/hf/train"))  # what the message suggests works
    assert result.returncode == 0, result.stderr


def test_a_pool_read_in_shards_reads_like_one_file(tmp_path):
    """Ids, texts and the summarize_by column are assembled over shards (mixed id types relaxed)."""
    records = [{"id": i if i % 2 else str(i), "text": " ".join(["w"] * (1 + i % 7)), "domain": f"d{i % 3}"}
               for i in range(23)]
    jsonl(tmp_path / "data" / "pool.jsonl", records, blank_after=BLANKS)
    path = recipe(tmp_path, budget="9")
    path.write_text(path.read_text().replace("report: false}", "report: false, summarize_by: domain}"))
    tables = []
    for shards in ([], ["--shard-rows", "4"]):
        result = cli("run", path, *shards)
        assert result.returncode == 0, result.stderr
        assert "by domain:" in result.stdout
        tables.append(pl.read_parquet(tmp_path / "out" / "selection.parquet"))
    assert tables[0].equals(tables[1]) and tables[0].height == 23
