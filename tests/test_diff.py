"""`selectkit diff` on real runs with different seeds and budgets: overlap, composition and the
examples entering and leaving, checked against polars; Markdown for a PR comment; error paths."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import cli
from finished_runs import demo_runs

from selectkit.results.diff import _md_cell


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return demo_runs(tmp_path_factory)


def diff_json(a, b, *extra):
    result = cli("diff", a, b, "--format", "json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def selected(run) -> pl.DataFrame:
    return pl.read_parquet(run / "selection.parquet").filter(pl.col("selected")).select("id", "rank")


@pytest.mark.parametrize("other", ["quickstart_seed1", "quickstart_5pct"])
def test_overlap_matches_polars(runs, other):
    a, b = runs["quickstart"], runs[other]
    d = diff_json(a, b)
    sa, sb = selected(a), selected(b)
    both = sa.join(sb, on="id", how="inner").height
    union = pl.concat([sa["id"], sb["id"]]).n_unique()
    assert d["overlap"] == {"a_selected": sa.height, "b_selected": sb.height, "both": both,
                            "only_a": sa.height - both, "only_b": sb.height - both,
                            "jaccard": pytest.approx(both / union, abs=1e-6)}
    assert d["same_pool"] is True
    assert 0 < both < max(sa.height, sb.height)  # the runs really differ, and really overlap
    entering = sb.join(sa, on="id", how="anti").sort("rank").head(10)
    leaving = sa.join(sb, on="id", how="anti").sort("rank").head(10)
    assert [e["id"] for e in d["entering"]] == entering["id"].to_list()
    assert [e["rank"] for e in d["leaving"]] == leaving["rank"].to_list()
    assert all(e["text"] for e in d["entering"])  # texts read from the pool file
    if other == "quickstart_5pct":
        assert sb.height == 65  # the 5% budget


def test_composition_and_score_shifts(runs):
    a, b = runs["quickstart"], runs["quickstart_seed1"]
    d = diff_json(a, b)
    pool = pl.read_ndjson(a.parent.parent / "recipes" / "data" / "pool.jsonl").select("id", "domain")
    counts = {}
    for key, run in (("a", a), ("b", b)):
        for domain, n in selected(run).join(pool, on="id").group_by("domain").len().iter_rows():
            counts.setdefault(domain, {})[key] = n
    rows = {r["group"]: r for r in d["composition"]["rows"]}
    assert d["composition"]["column"] == "domain" and set(rows) == set(counts)
    for domain, c in counts.items():
        assert (rows[domain]["a"], rows[domain]["b"]) == (c.get("a", 0), c.get("b", 0))
    shifts = {s["column"]: s for s in d["scores"]}
    assert set(shifts) == {"score.dsir", "score.words"}
    table_a = pl.read_parquet(a / "selection.parquet")
    table_b = pl.read_parquet(b / "selection.parquet")
    assert shifts["score.dsir"]["a_selected_mean"] == pytest.approx(
        table_a.filter(pl.col("selected"))["score.dsir"].mean())
    assert shifts["score.dsir"]["b_selected_mean"] == pytest.approx(
        table_b.filter(pl.col("selected"))["score.dsir"].mean())
    assert shifts["score.dsir"]["spearman_a_b"] == pytest.approx(1.0)  # same scorer, same data: only the seed moved
    assert [s["stage"] for s in d["stages"]] == ["threshold", "importance_resample"]


def test_markdown_for_a_pull_request(runs):
    result = cli("diff", runs["quickstart"], runs["quickstart_5pct"], "--format", "markdown", "--top", "3")
    assert result.returncode == 0, result.stderr
    md = result.stdout
    assert md.startswith("### selectkit diff: `quickstart` (A) → `quickstart` (B)")
    assert "| selected | 130 | 65 |" in md and "**Overlap:**" in md and "Jaccard" in md
    assert "#### Composition by `domain`" in md and "| politics |" in md
    assert "#### Leaving (best A ranks)" in md
    leaving = md.split("#### Leaving (best A ranks)")[1].strip().splitlines()
    assert len([line for line in leaving if line.startswith("| ") and not line.startswith("| rank")]) == 3
    text = cli("diff", runs["quickstart"], runs["quickstart_5pct"]).stdout
    assert "overlap:" in text and "only in A" in text


def test_markdown_cells_cannot_break_the_table():
    assert _md_cell("a|b\nc <script> `x`") == "a\\|b c &lt;script&gt; \\`x\\`"


def test_diff_of_runs_on_different_pools(runs):
    d = diff_json(runs["quickstart"], runs["perplexity"])
    assert d["same_pool"] is False
    assert d["scores"] == []  # no score column in common
    assert d["overlap"]["a_selected"] == 130 and d["overlap"]["b_selected"] == 54


@pytest.mark.parametrize("which", ["a", "b"])
def test_diff_errors(runs, tmp_path, which):
    args = [tmp_path / "missing", runs["quickstart"]] if which == "a" else [runs["quickstart"], tmp_path]
    result = cli("diff", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: " + ("run folder not found" if which == "a" else f"{tmp_path} is not"))
