"""report.html from real runs of the shipped recipes: opened in headless Chromium (sections, figures,
no console message, no network request), byte-identical rebuilds, numbers checked against polars,
the page without figures, without the pool file, with future manifest fields, and its error paths."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import cli
from finished_runs import copy_run, demo_runs, find_chromium, load_page, report_screenshot

from selectkit.results.report import write_report

SECTIONS = ["header", "warnings", "funnel", "composition", "scores", "correlations", "lengths", "examples",
            "diagnostics"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return demo_runs(tmp_path_factory)


@pytest.fixture(scope="session")
def chromium():
    binary = find_chromium()
    if binary is None:
        pytest.skip("headless Chromium is not installed and could not be installed (apt-get install -y chromium)")
    return binary


def build(run: Path, *args: str) -> Path:
    """`selectkit report RUN ARGS...` as a user runs it; returns the page it wrote."""
    result = cli("report", run, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("wrote ")
    return Path(result.stdout.split("wrote ", 1)[1].strip())


def page_of(run: Path, out: Path | None = None, **options) -> Path:
    """The same page through the Python API the run will call (no process start: faster)."""
    return write_report(run, out=out, **options)


class Tables(HTMLParser):
    """The text of every table cell, grouped by the id of the section holding the table."""

    def __init__(self):
        super().__init__()
        self.section, self.tables, self.cell = None, {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("section", "header") and attrs.get("id"):
            self.section = attrs["id"]
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.tables[self.section][-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[self.section][-1][-1].append("".join(self.cell).strip())
            self.cell = None


def tables(page: Path) -> dict[str, list[list[list[str]]]]:
    parser = Tables()
    parser.feed(page.read_text())
    return parser.tables


def as_int(text: str) -> int:
    return int(text.replace(",", ""))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# the page in a browser ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["quickstart", "perplexity"])
def test_report_in_headless_chromium(runs, chromium, tmp_path, name):
    """Chromium loads the page offline: every section and figure is in the DOM, the console stays silent,
    the page starts no network request, and a 1280x2000 screenshot renders."""
    page = build(runs[name], "--out", tmp_path / "report.html")
    loaded = load_page(chromium, page, tmp_path / "browser")
    for section in SECTIONS:
        assert f'id="{section}"' in loaded.dom, section
    columns = [c for c in pl.read_parquet(runs[name] / "selection.parquet").columns if c.startswith("score.")]
    # one distribution per score, two lengths, funnel, composition, correlations: all parsed as SVG elements
    assert loaded.dom.count("<svg") >= len(columns) + 4
    assert loaded.console == [], loaded.console
    assert loaded.page_requests == [], loaded.page_requests
    png = report_screenshot.screenshot(page, tmp_path / "shot.png", 1280, 2000)
    assert png_size(png) == (1280, 2000)
    assert png.stat().st_size > 20_000  # a rendered page, not a blank one


def test_browser_checks_catch_a_page_that_reaches_out(chromium, tmp_path):
    """The console and network checks above would fail for a page that requests something or errs."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"><script>nope()</script>'
                   "</body></html>")
    loaded = load_page(chromium, bad, tmp_path / "browser")
    assert loaded.page_requests == ["http://127.0.0.1:9/x.png"]
    assert any("Uncaught" in line for line in loaded.console)


def test_report_is_self_contained_with_a_strict_csp(runs, tmp_path):
    text = build(runs["perplexity"], "--out", tmp_path / "r.html").read_text()
    assert ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'; img-src data:\">") in text
    assert not re.search(r"""\b(src|href|srcset|action|poster|data)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", text, re.I)
    for tag in ("<script", "<link", "<iframe", "<object", "<embed", "@import", "@font-face"):
        assert tag not in text.lower(), tag
    assert "http://" not in text and "https://" not in text  # not even a namespace or a DTD


def test_two_builds_are_byte_identical(runs, tmp_path):
    """Two processes (so no state is shared), one writing to the default place RUN_DIR/report.html."""
    first = build(runs["perplexity"]).read_bytes()
    assert first == build(runs["perplexity"], "--out", tmp_path / "b.html").read_bytes()


# the numbers ----------------------------------------------------------------------------------------
def test_funnel_and_composition_match_the_selection(runs, tmp_path):
    run = runs["perplexity"]
    page = page_of(run, tmp_path / "r.html")
    table = pl.read_parquet(run / "selection.parquet")
    pool = pl.read_ndjson(run.parent.parent / "recipes" / "data" / "pool.jsonl").head(300)
    funnel = {row[0]: row for row in tables(page)["funnel"][0][1:]}
    dropped = dict(table.group_by("dropped_by").len().iter_rows())
    assert as_int(funnel["pool"][2]) == 300
    assert as_int(funnel["threshold"][4]) == dropped["threshold"]
    assert as_int(funnel["topk"][3]) == table["selected"].sum()
    tokens = pool["text"].str.count_matches(r"\S+")
    assert as_int(funnel["topk"][7]) == tokens.filter(table["selected"]).sum()
    composition = {row[0]: row for row in tables(page)["composition"][0][1:]}
    for domain, rows in pool.with_columns(table["selected"]).group_by("domain"):
        assert as_int(composition[domain[0]][1]) == rows.height
        assert as_int(composition[domain[0]][3]) == rows["selected"].sum()
        share_pool, share_sel = rows.height / 300, rows["selected"].sum() / table["selected"].sum()
        if share_sel:
            assert float(composition[domain[0]][5]) == pytest.approx(share_sel / share_pool, abs=1e-3)


def test_cutoffs_are_marked_with_the_values_the_stages_used(runs, tmp_path):
    run = runs["perplexity"]
    page = page_of(run, tmp_path / "r.html")
    table = pl.read_parquet(run / "selection.parquet")
    ppl_bound = table.filter(pl.col("dropped_by").is_null() | (pl.col("dropped_by") != "threshold"))["score.ppl"].max()
    mink_bound = table.filter(pl.col("dropped_by").is_null())["score.mink"].min()
    cuts = {row[0]: row[1] for row in tables(page)["scores"][1][1:]}
    stages = {s["stage"]: s["diagnostics"] for s in json.loads((run / "manifest.json").read_text())["selection"][
        "per_stage"]}
    recorded = stages["threshold"]["cutoff"]["high"]  # the stage's rule: the 0.9 quantile of its candidates
    dropped = table.filter(pl.col("dropped_by") == "threshold")["score.ppl"].min()
    assert ppl_bound <= recorded < dropped
    assert cuts["threshold"] == f"score.ppl <= {recorded:.6g}"  # the recorded value, not an observed one
    assert stages["topk"]["cutoff"]["low"] == pytest.approx(mink_bound)
    assert cuts["topk"] == f"score.mink >= {mink_bound:.6g}"
    text = page.read_text()
    assert "cut: threshold" in text and "cut: topk" in text  # the dashed lines' legends in the figures


def test_warnings_name_what_needs_a_look(runs, tmp_path):
    """A wiped-out group and a no-op stage from the real quickstart; NaN, constant scores and a tie at the
    cut-off planted in a copy of the model run."""
    text = page_of(runs["quickstart"], tmp_path / "q.html").read_text()
    assert "domain = plots: none of its 106 pool examples were selected" in text
    assert "stage threshold: kept all 1,306 candidates" in text
    copy = copy_run(runs["perplexity"], tmp_path / "planted")
    table = pl.read_parquet(copy / "selection.parquet")
    bound = table.filter(pl.col("selected"))["score.mink"].min()
    tie = table.filter(pl.col("dropped_by") == "topk")["id"][0]
    table = table.with_columns(
        pl.when(pl.col("id") == tie).then(bound).otherwise(pl.col("score.mink")).alias("score.mink"),
        pl.when(pl.int_range(pl.len()) < 7).then(None).otherwise(pl.col("score.el2n")).alias("score.el2n"),
        pl.lit(1.0).alias("score.flat"))
    table.write_parquet(copy / "selection.parquet")
    text = page_of(copy).read_text()
    assert "score.el2n: 7 of 300 examples have no score (NaN)" in text
    assert "score.flat: every example has the same score (1)" in text
    assert "stage topk: 1 dropped candidates tie with the cut-off" in text


def test_page_size_is_bounded_by_design_not_by_pool_size(runs, tmp_path):
    """A 50x larger pool (a synthetic run built from the real one's manifest) gives a page of about the same size."""
    small = page_of(runs["quickstart"], tmp_path / "small.html").stat().st_size
    big = copy_run(runs["quickstart"], tmp_path / "big")
    rng = np.random.default_rng(0)
    n = 65_300
    selected = np.zeros(n, dtype=bool)
    selected[rng.choice(n, 6_530, replace=False)] = True
    rank = np.zeros(n, dtype=np.int64)
    rank[selected] = np.arange(1, 6_531)
    pl.DataFrame({"id": [f"x{i}" for i in range(n)], "selected": selected, "weight": selected.astype(float),
                  "count": selected.astype(np.int64), "rank": pl.Series(rank).replace(0, None),
                  "dropped_by": pl.Series(np.where(selected, None, "importance_resample"), dtype=pl.String),
                  "score.dsir": rng.normal(size=n), "score.words": rng.integers(1, 200, n).astype(float)}
                 ).write_parquet(big / "selection.parquet")
    size = page_of(big, tmp_path / "big.html").stat().st_size
    assert size < 1.5 * small + 50_000, (small, size)


# streaming ------------------------------------------------------------------------------------------
def planted_run(folder: Path, n: int = 30_000) -> Path:
    """A run folder whose scores stress exact quantiles: ties, a far outlier, NaN, null and infinities."""
    rng = np.random.default_rng(1)
    folder.mkdir()
    tied = rng.integers(0, 5, n).astype(float)  # five values only
    skewed = rng.normal(size=n)
    skewed[:7] = 1e12  # one far outlier squeezes everything else into the first bin of [min, max]
    skewed[7:20] = np.nan
    skewed[20:23] = np.inf
    skewed[23:25] = -np.inf
    selected = rng.random(n) < 0.2
    rank = np.where(selected, np.cumsum(selected), 0)
    pl.DataFrame({"id": [f"r{i}" for i in range(n)], "selected": selected, "rank": pl.Series(rank).replace(0, None),
                  "dropped_by": pl.Series([None if s else "topk" for s in selected], dtype=pl.String),
                  "score.tied": tied, "score.skewed": pl.Series(skewed).scatter([30, 31], None),
                  "tokens": rng.integers(1, 400, n)}).write_parquet(folder / "selection.parquet")
    (folder / "manifest.json").write_text(json.dumps({"recipe": {"resolved": {"select": [
        {"use": "topk", "with": {"score": "skewed"}}]}}}))
    return folder


def test_quantiles_are_exact_and_pages_do_not_depend_on_shards(tmp_path, monkeypatch):
    """The summaries' quantiles equal numpy's on the whole column although the table is read shard by shard and
    each quantile is narrowed by histograms; tiny shards and intervals (many passes) give the same page."""
    from selectkit.results import quantiles, rundir
    from selectkit.results.report import facts as f

    run = planted_run(tmp_path / "run")
    table = pl.read_parquet(run / "selection.parquet")
    default = page_of(run, tmp_path / "default.html").read_bytes()
    monkeypatch.setattr(rundir, "SHARD_ROWS", 1000)
    monkeypatch.setattr(quantiles, "GATHER", 50)
    facts = f.Facts(rundir.Run.open(run))
    for column in ("score.tied", "score.skewed", "tokens"):
        for label, rows in ((f.POOL, table), (f.SELECTION, table.filter(pl.col("selected")))):
            values = rows[column].cast(pl.Float64).fill_null(np.nan).to_numpy()
            finite = values[np.isfinite(values)]
            summary = facts.summary(column, label)
            assert summary.quantiles == tuple(float(q) for q in np.quantile(finite, f.QUANTILES)), (column, label)
            assert (summary.minimum, summary.maximum, summary.nan) == (finite.min(), finite.max(),
                                                                       int(np.isnan(values).sum()))
            assert summary.mean == pytest.approx(finite.mean(), rel=1e-12)
            assert summary.std == pytest.approx(finite.std(), rel=1e-9)
    assert page_of(run, tmp_path / "sharded.html").read_bytes() == default


def test_the_pool_is_read_only_at_the_rows_shown(runs, tmp_path, monkeypatch):
    """Texts come from the pool file at the example rows alone, and they are those rows' texts."""
    import selectkit.data.pool as pool

    read = []
    real = pool.read_shard

    def spy(table, lo, hi):
        read.append((lo, hi))
        return real(table, lo, hi)

    monkeypatch.setattr(pool, "read_shard", spy)
    page = page_of(runs["quickstart"], tmp_path / "r.html")
    assert 0 < sum(hi - lo for lo, hi in read) <= 4 * 8 * 8  # 4 kinds of 8 examples, neighbours read together
    texts = dict(pl.read_ndjson(runs["quickstart"].parent.parent / "recipes" / "data" / "pool.jsonl")
                 .select("id", "text").iter_rows())
    shown = [row for table in tables(page)["examples"] for row in table[1:]]
    assert len(shown) == 32
    for row in shown:
        text = texts[row[1]]
        assert row[-1] == (text if len(text) <= 300 else text[:300] + "…"), row


def test_the_page_names_the_run_folder_not_the_staging_one(runs, tmp_path):
    """A run writes report.html while its outputs sit in a staging folder (.NAME.staging-xxxx) that is renamed
    once complete: the page names the final folder, as a rebuild of the finished run does."""
    for name in ("quickstart", "perplexity"):
        text = (runs[name] / "report.html").read_text()
        assert "staging" not in text
        assert f"<tr><th>run folder</th><td>{name}</td></tr>" in text
    rebuilt = page_of(runs["quickstart"], tmp_path / "r.html").read_text()
    assert "<tr><th>run folder</th><td>quickstart</td></tr>" in rebuilt


# graceful degradation ---------------------------------------------------------------------------------
def test_page_without_matplotlib_keeps_every_figure_and_table(runs, chromium, tmp_path):
    """The figures are hand-written SVG: with matplotlib unimportable the page is the same, byte for byte, figures
    and all; `--no-figures` drops the figures and keeps every section and table."""
    code = ("import sys; sys.modules['matplotlib'] = None; from selectkit.cli.commands import main; "
            f"sys.argv = ['selectkit', 'report', {str(runs['perplexity'])!r}, '--out', {str(tmp_path / 'r.html')!r}]; "
            "main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = tmp_path / "r.html"
    assert "figures need matplotlib" not in page.read_text() and "<svg" in page.read_text()
    assert page.read_bytes() == page_of(runs["perplexity"], tmp_path / "full.html").read_bytes()
    bare = build(runs["perplexity"], "--no-figures", "--out", tmp_path / "bare.html")
    assert "<svg" not in bare.read_text()
    loaded = load_page(chromium, bare, tmp_path / "browser")
    for section in SECTIONS:
        assert f'id="{section}"' in loaded.dom, section
    assert loaded.console == [] and loaded.page_requests == []
    with_figures = tables(page)
    assert tables(bare)["funnel"] == with_figures["funnel"]
    assert tables(bare)["scores"] == with_figures["scores"]


def test_no_figures_flag(runs, tmp_path):
    text = build(runs["quickstart"], "--no-figures", "--out", tmp_path / "r.html").read_text()
    assert "<svg" not in text and 'id="composition"' in text and "figures need matplotlib" not in text


def test_page_when_the_pool_file_is_gone_or_changed(runs, tmp_path):
    def gone(manifest):
        manifest["data"]["pool"]["path"] = str(tmp_path / "moved" / "pool.jsonl")
        manifest["recipe"]["file"] = str(tmp_path / "moved" / "recipe.yaml")

    text = page_of(copy_run(runs["perplexity"], tmp_path / "gone", gone)).read_text()
    assert "not found" in text and "texts are not available" in text
    assert 'id="examples"' in text and "politics-" in text  # ids and scores still shown

    def changed(manifest):
        manifest["data"]["pool"]["fingerprint"] = "0" * 64

    text = page_of(copy_run(runs["perplexity"], tmp_path / "changed", changed)).read_text()
    assert "changed since the run (fingerprint differs)" in text


def test_page_uses_future_manifest_fields(runs, tmp_path):
    """Fields the manifest will carry: format_version, library versions, a recorded cut-off, an embeddings
    file, and selection.parquet's own `text` column (output.include_text) when the pool file is gone."""
    run = runs["perplexity"]

    def future(manifest):
        manifest["format_version"] = 1
        manifest["versions"] = {"numpy": "9.9.9"}
        manifest["selection"]["per_stage"][1]["diagnostics"] = {"cutoff": {"low": -4.5, "high": None},
                                                                "resolved_budget": 54}
        manifest["files"]["embeddings"] = "embeddings.npy"
        manifest["data"]["pool"]["path"] = "/nonexistent/pool.jsonl"

    copy = copy_run(run, tmp_path / "future", future)
    table = pl.read_parquet(copy / "selection.parquet")
    table.with_columns(pl.format("text of {}", "id").alias("text")).write_parquet(copy / "selection.parquet")
    np.save(copy / "embeddings.npy", np.random.default_rng(0).normal(size=(table.height, 8)).astype(np.float32))
    page = page_of(copy)
    text = page.read_text()
    assert 'id="embedding-map"' in text and "300 of 300 examples have an embedding" in text
    assert "9.9.9" in text and "resolved_budget" in text
    cuts = {row[0]: row[1] for row in tables(page)["scores"][1][1:]}
    assert cuts["topk"] == "score.mink >= -4.5"  # the manifest's value, not "(observed)"
    assert "text of politics-" in text
    assert page_of(copy, tmp_path / "again.html").read_bytes() == page.read_bytes()


def test_a_minimal_run_folder_still_gives_a_page_an_explanation_and_a_diff(tmp_path):
    """Only the two required columns and an empty manifest (an old or foreign run): nothing crashes."""
    run = tmp_path / "minimal"
    run.mkdir()
    pl.DataFrame({"id": [1, 2, 3], "selected": [True, False, False]}).write_parquet(run / "selection.parquet")
    (run / "manifest.json").write_text("{}")
    text = page_of(run).read_text()
    assert 'id="funnel"' in text and "the manifest names no pool file" in text
    explained = json.loads(cli("explain", run, "2", "--format", "json").stdout)[0]
    assert explained["selected"] is False and explained["stages"] == []
    assert cli("explain", run, "1").stdout.startswith("1: selected, rank 1 of 1")
    compared = json.loads(cli("diff", run, run, "--format", "json").stdout)
    assert compared["overlap"]["jaccard"] == 1.0 and compared["same_pool"] is None


# errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "file", "empty", "bad-json", "no-selection"])
def test_report_errors_are_clear(runs, tmp_path, case):
    target = tmp_path / "target"
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        target.mkdir()
    elif case == "bad-json":
        copy_run(runs["quickstart"], target)
        (target / "manifest.json").write_text("{not json")
        (target / "report.html").unlink()  # the run wrote one; a failed rebuild must not write another
    elif case == "no-selection":
        copy_run(runs["quickstart"], target)
        (target / "selection.parquet").unlink()
        (target / "report.html").unlink()
    result = cli("report", target)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    expected = {"missing": "run folder not found", "file": "not a folder", "empty": "has no manifest.json",
                "bad-json": "not valid JSON", "no-selection": "selection.parquet is missing"}[case]
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert not (tmp_path / "target" / "report.html").exists() or case in ("file", "missing")


def test_report_cli_does_not_import_torch(runs, tmp_path):
    code = ("import sys; from selectkit.cli.commands import main; "
            f"sys.argv = ['selectkit', 'report', {str(runs['quickstart'])!r}, '--out', {str(tmp_path / 'r.html')!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'transformers'))))")
    result = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
