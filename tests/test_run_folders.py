"""Run folders are files from elsewhere: manifests with fields of the wrong type (every field the readers
use, found by walking the schema), manifest formats the writer writes, a selection table of the wrong
shape, and Markdown comments fed scraped pool text. Every failure is one `error:` line, never a traceback."""

from __future__ import annotations

import json
import re
import shutil

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import cli
from finished_runs import copy_run, demo_runs

from selectkit.cli.commands import main
from selectkit.execution.outputs import MANIFEST_VERSION
from selectkit.results import manifest as fmt
from selectkit.results.diff import _md_cell


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return demo_runs(tmp_path_factory)


def schema_paths(schema, prefix: tuple = ()):
    """Every field the schema names: (path, its schema); '*' stands for any key of a map, 0 for a list item."""
    if prefix:
        yield prefix, schema
    if isinstance(schema, dict):
        for key, sub in schema.items():
            yield from schema_paths(sub, (*prefix, key))
    elif isinstance(schema, fmt.MapOf):
        yield from schema_paths(schema.item, (*prefix, "*"))
    elif isinstance(schema, fmt.ListOf):
        yield from schema_paths(schema.item, (*prefix, 0))


def wrong_values(schema) -> list:
    """Values of another JSON type than the schema asks for."""
    if schema == fmt.STR:
        return [7, ["a", "b"]]
    if schema in (fmt.INT, fmt.NUM):
        return ["12", True]
    if schema == fmt.BOOL:
        return ["yes", 1]
    if schema == fmt.LIST or isinstance(schema, fmt.ListOf):
        return [3, {"a": 1}]
    return ["text", [1, 2]]  # an object


def put(manifest: dict, path: tuple, value) -> None:
    """Set `path` in the manifest, creating what is missing on the way ('*': an existing key, else 'x')."""
    node = manifest
    for i, step in enumerate(path):
        last = i == len(path) - 1
        if step == "*":
            step = next(iter(node), "x") if isinstance(node, dict) else "x"
        if step == 0:
            if not isinstance(node, list):
                raise AssertionError(path)
            if not node:
                node.append({})
            if last:
                node[0] = value
            elif not isinstance(node[0], dict | list):
                node[0] = {}
            node = node[0]
            continue
        if last:
            node[step] = value
            return
        nxt = path[i + 1]
        if not isinstance(node.get(step), dict | list) or (nxt == 0) != isinstance(node.get(step), list):
            node[step] = [] if nxt == 0 else {}
        node = node[step]


CASES = [(path, value) for path, schema in schema_paths(fmt.SCHEMA) for value in wrong_values(schema)]


def label(case) -> str:
    path, value = case
    return ".".join(map(str, path)) + "=" + json.dumps(value)


def test_every_field_the_readers_use_is_in_the_cases():
    """The schema is the one list of fields; the cases below walk it (a field added there is tested)."""
    paths = {".".join(map(str, p)) for p, _ in CASES}
    for field in ("recipe.resolved.select.0.with", "stages.0.seconds", "data.*.fingerprint", "files.*",
                  "selection.per_stage.0.kept", "evaluation.contamination.targets.*.pool.ngrams_found"):
        assert field in paths, field
    assert len(CASES) > 150


@pytest.fixture(scope="module")
def hostile_base(runs, tmp_path_factory):
    """A copy of the model run beside the original (so its pool is found), with an evaluation block."""
    base = runs["perplexity"].parent / "hostile-base"
    if not base.exists():
        def evaluated(manifest):
            manifest["evaluation"] = {"proxy": {"parameters": 1000}, "sets": {"t": {"selection_vs_random": {
                "bpb_a": 1.0, "verdict": "inconclusive"}}}, "contamination": {"ngram": 8, "targets": {
                    "t": {"pool": {"examples_with_overlap": 0.1, "ngrams_found": 0.2},
                          "selection": {"examples_with_overlap": 0.0}}}}, "warnings": ["w"], "verdicts": {"t": "x"}}

        copy_run(runs["perplexity"], base, evaluated)
    return base


@pytest.mark.parametrize("case", CASES, ids=[label(c) for c in CASES])
def test_wrong_types_in_the_manifest_give_a_note_not_a_traceback(hostile_base, tmp_path, case):
    """report, explain and diff on a manifest with one field of the wrong type: each finishes (the report
    says which field it ignored) or fails with one `error:` line; none raises."""
    path, value = case
    run = hostile_base.parent / f"hostile-{tmp_path.name}"
    shutil.rmtree(run, ignore_errors=True)
    copy_run(hostile_base, run, lambda manifest: put(manifest, path, value))
    table = pl.read_parquet(run / "selection.parquet")
    some_id = table["id"][0]
    runner = CliRunner()
    try:
        for args in (["report", str(run), "--out", str(tmp_path / "r.html")], ["explain", str(run), some_id],
                     ["explain", str(run), some_id, "--format", "json"], ["diff", str(run), str(run)],
                     ["diff", str(hostile_base), str(run), "--format", "markdown"]):
            result = runner.invoke(main, args)
            assert result.exception is None or isinstance(result.exception, SystemExit), \
                (args, "".join(__import__("traceback").format_exception(result.exception)))
            assert result.exit_code in (0, 1), (args, result.output)
            if result.exit_code:
                assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
        page = (tmp_path / "r.html").read_text()
        where = ".".join(str(p) if p != "*" else "" for p in path)
        assert "manifest.json: " in page and "; ignored" in page or where.startswith("format_version"), where
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_a_manifest_that_is_not_an_object_or_not_json_is_one_error_line(runs, tmp_path):
    for text, expected in (("[1, 2]", "a JSON object is expected"), ('"run"', "a JSON object is expected"),
                           ("[" * 100_000, "not valid JSON"), ("{", "not valid JSON")):
        target = copy_run(runs["quickstart"], tmp_path / f"case-{len(list(tmp_path.iterdir()))}")
        (target / "manifest.json").write_text(text)
        for command in (["report", target], ["explain", target, "politics-0149"], ["diff", target, target]):
            result = cli(*command)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr


TABLES = {  # case: (change to selection.parquet, exit code, what stderr (exit 1) or the page (exit 0) says)
    "selected-text": (pl.col("selected").cast(pl.String), 1, "column 'selected' holds String"),
    "id-list": (pl.concat_list("id").alias("id"), 1, "column 'id' holds List"),
    "id-missing": (pl.when(pl.col("rank") == 1).then(None).otherwise(pl.col("id")).alias("id"), 1,
                   "column 'id' has 1 missing values"),
    "reserved-name": (pl.lit(1).alias("__row"), 1, "column '__row': names starting with '__' are reserved"),
    "dropped-list": (pl.concat_list("dropped_by").alias("dropped_by"), 0,
                     "column &#x27;dropped_by&#x27; holds List(String), not text; not used"),
    "rank-text": (pl.col("rank").cast(pl.String), 0, "column &#x27;rank&#x27; holds String, not numeric"),
    "text-number": (pl.lit(5).alias("text"), 0, "column &#x27;text&#x27; holds Int32, not text"),
    "not-parquet": (None, 1, "cannot read it as Parquet"),
    "damaged-pages": ("damage", 1, "selection.parquet cannot be read as a selectkit table"),
}


@pytest.mark.parametrize("case", list(TABLES))
def test_a_selection_table_of_the_wrong_shape_is_one_error_line_or_a_note(runs, tmp_path, case):
    change, code, expected = TABLES[case]
    target = copy_run(runs["quickstart"], tmp_path / "run")
    table = pl.read_parquet(target / "selection.parquet")
    some_id = table["id"][5]
    if change is None:
        (target / "selection.parquet").write_text("id,selected\n1,true\n")
    elif isinstance(change, str):  # "damage": the footer intact, a stretch of its pages overwritten
        data = bytearray((target / "selection.parquet").read_bytes())
        data[len(data) // 3: len(data) // 3 + 2000] = b"\x55" * 2000
        (target / "selection.parquet").write_bytes(bytes(data))
    else:
        table.with_columns(change).write_parquet(target / "selection.parquet")
    for command in (["report", target], ["explain", target, some_id], ["diff", target, target]):
        result = cli(*command)
        assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
        if code:
            assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    if not code:
        assert expected in (target / "report.html").read_text()


def test_score_columns_that_are_not_numbers_are_left_out(runs, tmp_path):
    """A hand-made `score.*` column of text is not a score: the page, explain and diff go on without it."""
    target = copy_run(runs["perplexity"], tmp_path / "run")
    table = pl.read_parquet(target / "selection.parquet")
    table.with_columns(pl.lit("high").alias("score.label")).write_parquet(target / "selection.parquet")
    for command in (["report", target], ["explain", target, table["id"][0]], ["diff", target, runs["perplexity"]]):
        result = cli(*command)
        assert result.returncode == 0, result.stderr
    assert "score.label" not in (target / "report.html").read_text()


# the format version ---------------------------------------------------------------------------------
def test_the_readers_know_every_format_the_writer_writes(runs):
    """outputs writes FORMAT_VERSION; the readers know it (and every older one), and a fresh run's manifest
    passes the schema check untouched: the schema describes what the writer writes."""
    assert MANIFEST_VERSION == fmt.FORMAT_VERSION == max(fmt.KNOWN_FORMATS)
    assert set(fmt.KNOWN_FORMATS) == set(range(1, MANIFEST_VERSION + 1))
    for name in ("quickstart", "perplexity"):
        manifest = json.loads((runs[name] / "manifest.json").read_text())
        assert manifest["format_version"] == MANIFEST_VERSION
        clean, notes = fmt.check(manifest)
        assert notes == [] and clean == manifest
        page = (runs[name] / "report.html").read_text()
        assert "newer than this selectkit knows" not in page and "manifest.json: " not in page
        some_id = pl.read_parquet(runs[name] / "selection.parquet")["id"][0]
        explained = cli("explain", runs[name], some_id, "--format", "json")
        assert explained.returncode == 0 and "newer than" not in explained.stdout


def test_a_newer_format_is_named(runs, tmp_path):
    def newer(manifest):
        manifest["format_version"] = MANIFEST_VERSION + 1

    text = cli("report", copy_run(runs["quickstart"], tmp_path / "run", newer), "--out", tmp_path / "r.html")
    assert text.returncode == 0
    assert f"manifest format {MANIFEST_VERSION + 1} is newer than this selectkit knows ({MANIFEST_VERSION})" in \
        (tmp_path / "r.html").read_text()


# Markdown for pull requests -------------------------------------------------------------------------
PAYLOADS = ["![track](https://evil.example/pixel.png?u=1)", "[click me](https://evil.example/login)",
            "<https://evil.example/auto>", "ping @octocat and @org/team", "see https://evil.example/bare and "
            "www.evil.example", "&#64;entity-ping", "closes #12 and org/repo#34"]


def test_markdown_cells_cannot_embed_images_links_or_mentions():
    for payload in PAYLOADS:
        cell = _md_cell(payload)
        assert not re.search(r"(?<!\\)[\[\]]", cell) and "<http" not in cell, cell  # brackets escaped: no link
        assert "@octocat" not in cell and "@org" not in cell and "&#64;" not in cell.replace("&amp;#64;", ""), cell
        assert "https://" not in cell and "www.evil" not in cell, cell
        assert "#12" not in cell and "#34" not in cell, cell
    assert _md_cell("a|b\nc <script> `x`") == "a\\|b c &lt;script&gt; \\`x\\`"  # the old guarantees hold
    assert _md_cell("plain words, 3.5 and 7%") == "plain words, 3.5 and 7%"  # ordinary text is untouched


def test_diff_markdown_of_runs_over_scraped_text(tmp_path):
    """A pool whose texts carry tracking images, links, autolinks and mentions: the PR comment `diff` writes
    holds none of them in a form GitHub would render, and the table still has one row per example."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"doc-{i:02d}", "text": f"{PAYLOADS[i % len(PAYLOADS)]} " + "word " * (3 + i)} for i in range(40)]
    (data / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, budget in (("small", 5), ("large", 15)):
        (tmp_path / f"{name}.yaml").write_text(f"""selectkit: 1
name: {name}
data:
  pool: {{path: data/pool.jsonl, id: id}}
scores:
  words: {{use: length, with: {{unit: tokens}}}}
select:
  - use: topk
    with: {{score: words, budget: {budget}}}
output: {{dir: out/{name}, formats: [parquet]}}
""")
        result = cli("run", tmp_path / f"{name}.yaml", "--quiet", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    result = cli("diff", tmp_path / "out" / "small", tmp_path / "out" / "large", "--format", "markdown", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    md = result.stdout
    entering = md.split("#### Entering (best B ranks)")[1].split("####")[0]
    assert len([line for line in entering.splitlines() if line.startswith("| ") and "doc-" in line]) == 10
    for bad in ("![", "<http", "@octocat", "https://", "www.evil", "#12"):
        assert bad not in md, bad
    assert not re.search(r"(?<!\\)[\[\]]", entering)  # every bracket escaped: no link or image can form
    assert "evil" in md  # the texts are there, defused

