"""The Python API a training loop and a notebook use: a run's subset as a `datasets.Dataset` or a polars
frame with its weight/count/rank/score columns, a seeded weighted sampler over it, the `hf_dataset`
output format, and `selectkit.run` on a dict, a YAML string or in-memory frames (same selection as the
recipe file)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import ROOT

import selectkit
import selectkit.api
from selectkit.errors import SelectkitError

datasets = pytest.importorskip("datasets")
torch = pytest.importorskip("torch")

DATA = ROOT / "recipes" / "data"


def quickstart(out, formats="[parquet, hf_dataset]", select=None, extra=""):
    """recipes/quickstart.yaml with absolute data paths, its output folder and formats (and, optionally, stages)."""
    text = (ROOT / "recipes" / "quickstart.yaml").read_text()
    text = text.replace("data/", f"{DATA}/").replace("../out/quickstart", str(out))
    text = text.replace("formats: [parquet, jsonl]", f"formats: {formats}")
    if select is not None:
        head, _, tail = text.partition("select:\n")
        text = head + "select:\n" + select + "output:" + tail.partition("output:")[2]
    return text + extra


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three finished runs: quickstart (importance_resample), a topk run, and soft_cap with repeat_by_count."""
    tmp = tmp_path_factory.mktemp("runs")
    recipes = {
        "resample": quickstart(tmp / "resample"),
        "topk": quickstart(tmp / "topk", select="  - use: topk\n    with: {score: dsir, budget: 50}\n"),
        "softcap": quickstart(tmp / "softcap", formats="[jsonl]",
                              select="  - use: soft_cap\n    with: {score: dsir, budget: 3000}\n")
        .replace("summarize_by: domain", "summarize_by: domain\n  repeat_by_count: true"),
    }
    for name, text in recipes.items():
        (tmp / f"{name}.yaml").write_text(text)
        selectkit.api.run(tmp / f"{name}.yaml", cache_dir=tmp / "cache")
    return tmp


# ---------------------------------------------------------------- into the training loop


@pytest.mark.parametrize("name", ["resample", "topk", "softcap"])
def test_load_selection_carries_the_runs_columns_best_first(runs, name):
    folder = runs / name
    table = pl.read_parquet(folder / "selection.parquet").filter(pl.col("selected")).sort("rank")
    data = selectkit.load_selection(folder)
    assert isinstance(data, datasets.Dataset)
    frame = selectkit.load_selection(folder, as_="polars")
    assert frame.equals(pl.from_arrow(data.data.table))
    assert frame["id"].to_list() == table["id"].to_list()  # one row per selected example, best first
    for column in ("weight", "count", "rank", "score.dsir", "score.words"):
        assert frame[column].to_list() == table[column].to_list()
    pool = pl.read_ndjson(DATA / "pool.jsonl")
    texts = dict(zip(pool["id"].to_list(), pool["text"].to_list()))
    assert frame["text"].to_list() == [texts[i] for i in frame["id"].to_list()]
    if name == "softcap":  # repeat_by_count wrote each example count times; the loader keeps one row each
        assert int(frame["count"].max()) > 1
        assert sum(1 for _ in open(folder / "subset.jsonl")) == int(frame["count"].sum())


def test_sampler_is_seeded_and_draws_by_weight_times_count(runs):
    frame = selectkit.load_selection(runs / "softcap", as_="polars")
    a = list(selectkit.as_sampler(frame, seed=3))
    assert a == list(selectkit.as_sampler(selectkit.load_selection(runs / "softcap"), seed=3))
    assert a != list(selectkit.as_sampler(frame, seed=4))
    assert len(a) == int(frame["count"].sum())  # an epoch is as long as the repeated subset

    counts = frame["count"].to_numpy()
    draws = np.bincount(list(selectkit.as_sampler(frame, seed=0, num_samples=200_000)), minlength=len(frame))
    np.testing.assert_allclose(draws / draws.sum(), counts / counts.sum(), atol=0.01)

    weighted = pl.DataFrame({"text": ["a", "b", "c"], "weight": [0.0, 1.0, 3.0]})
    draws = np.bincount(list(selectkit.as_sampler(weighted, seed=0, num_samples=40_000)), minlength=3)
    assert draws[0] == 0 and abs(draws[2] / draws[1] - 3) < 0.15

    with pytest.raises(SelectkitError, match="not all zero"):
        selectkit.as_sampler(pl.DataFrame({"weight": [0.0, 0.0]}), seed=0)
    with pytest.raises(SelectkitError, match="no 'weight' column"):
        selectkit.as_sampler(pl.DataFrame({"x": [1.0]}), seed=0)


def test_hf_dataset_output_round_trips(runs):
    folder = runs / "resample"
    saved = datasets.load_from_disk(str(folder / "subset.hf_dataset"))
    assert pl.from_arrow(saved.data.table).equals(pl.read_parquet(folder / "subset.parquet"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"]["subset.hf_dataset"] == "subset.hf_dataset"


def test_hf_dataset_output_keeps_the_foreign_file_guard(tmp_path):
    out = tmp_path / "out"
    (out / "subset.hf_dataset").mkdir(parents=True)
    (out / "subset.hf_dataset" / "mine.txt").write_text("a team's file")
    (tmp_path / "q.yaml").write_text(quickstart(out))
    proc = subprocess.run([sys.executable, "-m", "selectkit", "run", str(tmp_path / "q.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "was not written by selectkit" in proc.stderr
    assert "Traceback" not in proc.stderr and (out / "subset.hf_dataset" / "mine.txt").exists()
    shutil.rmtree(out / "subset.hf_dataset")
    selectkit.api.run(tmp_path / "q.yaml")
    selectkit.api.run(tmp_path / "q.yaml")  # its own earlier folder is replaced as part of the set
    assert len(datasets.load_from_disk(str(out / "subset.hf_dataset"))) == 130


def test_load_selection_refuses_a_damaged_folder(runs, tmp_path):
    with pytest.raises(SelectkitError, match="no manifest.json"):
        selectkit.load_selection(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(runs / "topk", broken)
    (broken / "subset.parquet").unlink()
    shutil.rmtree(broken / "subset.hf_dataset")
    with pytest.raises(SelectkitError, match="holds no subset file"):
        selectkit.load_selection(broken)
    pl.read_parquet(runs / "topk" / "subset.parquet").head(10).write_parquet(broken / "subset.parquet")
    with pytest.raises(SelectkitError, match="holds 10 rows where selection.parquet selects 50"):
        selectkit.load_selection(broken)
    shuffled = pl.read_parquet(runs / "topk" / "subset.parquet").reverse()
    shuffled.write_parquet(broken / "subset.parquet")
    with pytest.raises(SelectkitError, match="ids do not match"):
        selectkit.load_selection(broken)


def test_import_stays_cheap():
    code = ("import sys, selectkit; selectkit.load_selection; selectkit.as_sampler; "
            "print(sorted(m for m in ('torch', 'datasets', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- the notebook API


@pytest.fixture(scope="module")
def by_file(runs):
    """quickstart run from its YAML file: the selection every other way of giving it must reproduce."""
    return pl.read_parquet(runs / "resample" / "selection.parquet"), (runs / "resample.yaml").read_text()


def same_selection(output, expected):
    assert output.selection.equals(expected)
    assert output.files["selection"].read_bytes() == pl_bytes(expected)


def pl_bytes(frame):
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer, statistics=False)
    return buffer.getvalue()


def test_yaml_text_dict_and_recipe_give_the_files_selection(by_file, tmp_path):
    import yaml

    from selectkit.recipe.spec import load_text

    expected, text = by_file
    as_dict = yaml.safe_load(text)
    for i, recipe in enumerate([text, as_dict, load_text(text).recipe]):
        output = selectkit.run(recipe, out_dir=tmp_path / str(i), cache_dir=tmp_path / "cache")
        same_selection(output, expected)
    assert as_dict == yaml.safe_load(text)  # the caller's dict is left as it was


@pytest.mark.parametrize("kind", ["polars", "pandas", "datasets", "datasets-view"])
def test_in_memory_tables_give_the_files_selection_and_hit_the_cache(by_file, tmp_path, kind):
    import yaml

    expected, text = by_file
    recipe = yaml.safe_load(text)
    recipe["data"] = {"pool": {"id": "id"}}  # no paths: the tables are given in memory
    pool, target = pl.read_ndjson(DATA / "pool.jsonl"), pl.read_ndjson(DATA / "target_politics.jsonl")
    convert = {"polars": lambda f: f, "pandas": lambda f: f.to_pandas(),
               "datasets": lambda f: datasets.Dataset.from_polars(f),
               # a view (an indices mapping over reversed rows) is read as the rows it shows
               "datasets-view": lambda f: datasets.Dataset.from_polars(f.reverse()).select(range(len(f) - 1, -1, -1))
               }[kind]
    first = selectkit.run(recipe, pool=convert(pool), targets={"politics": convert(target)},
                          out_dir=tmp_path / "a", cache_dir=tmp_path / "cache")
    same_selection(first, expected)
    again = selectkit.run(recipe, pool=convert(pool), targets={"politics": convert(target)},
                          out_dir=tmp_path / "b", cache_dir=tmp_path / "cache")
    scored = [s for s in again.manifest["stages"] if s["kind"] in ("read", "score")]
    assert scored and all(s["status"] == "cached" for s in scored)  # the content fingerprint found the cache
    changed = pool.with_columns(pl.when(pl.col("id") == "politics-0063").then(pl.lit("changed words here now"))
                                .otherwise(pl.col("text")).alias("text"))
    third = selectkit.run(recipe, pool=convert(changed), targets={"politics": convert(target)},
                          out_dir=tmp_path / "c", cache_dir=tmp_path / "cache")
    assert first.manifest["data"]["pool"]["fingerprint"] != third.manifest["data"]["pool"]["fingerprint"]
    assert any(s["status"] == "computed" for s in third.manifest["stages"] if s["kind"] == "score")
    if kind == "polars":  # the tables are cache entries: listed, and pruned like any other
        listed = subprocess.run([sys.executable, "-m", "selectkit", "cache", "list", "--cache-dir", tmp_path / "cache"],
                                capture_output=True, text=True)
        assert listed.stdout.count("(in-memory table)") == 3, listed.stdout  # pool, changed pool, target
        subprocess.run([sys.executable, "-m", "selectkit", "cache", "prune", "--cache-dir", tmp_path / "cache"],
                       check=True, capture_output=True)
        assert not list((tmp_path / "cache" / "frames").iterdir())


def test_the_result_object(by_file, tmp_path):
    expected, text = by_file
    output = selectkit.run(text, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert output.manifest["selection"]["selected"] == 130
    assert output.report_path == tmp_path / "out" / "report.html" and output.report_path.is_file()
    top = output.subset()
    assert top["id"].to_list() == expected.filter(pl.col("selected")).sort("rank")["id"].to_list()
    assert isinstance(output.subset(as_="datasets"), datasets.Dataset)
    why = output.explain(top["id"][0])
    assert why["selected"] and why["rank"] == 1
    with pytest.raises(SelectkitError, match="not in the run's pool"):
        output.explain("no-such-id")


def test_errors_name_the_line_or_the_key_path(by_file, tmp_path):
    import yaml

    from selectkit.errors import DataError, RecipeErrors

    _, text = by_file
    with pytest.raises(RecipeErrors) as caught:
        selectkit.run(text.replace("use: dsir", "use: dsirr"), out_dir=tmp_path / "x")
    assert str(caught.value) == "<string>:14:10: unknown scorer 'dsirr'; did you mean 'dsir'?"
    recipe = yaml.safe_load(text)
    recipe["scores"]["dsir"]["use"] = "dsirr"
    with pytest.raises(RecipeErrors) as caught:
        selectkit.run(recipe, out_dir=tmp_path / "x")
    assert str(caught.value) == "scores.dsir.use: unknown scorer 'dsirr'; did you mean 'dsir'?"
    recipe = yaml.safe_load(text)
    recipe["select"][1]["wiht"] = {}
    with pytest.raises(RecipeErrors, match=r"^select\[1\]\.wiht: unknown key 'wiht'; did you mean 'with'\?$"):
        selectkit.validate(recipe)

    recipe = yaml.safe_load(text)
    del recipe["data"]
    with pytest.raises(RecipeErrors, match=r"^data: missing key 'data' in the recipe"):
        selectkit.validate(recipe)
    recipe = yaml.safe_load(text)
    del recipe["scores"]["dsir"]["use"]
    with pytest.raises(RecipeErrors, match=r"^scores\.dsir\.use: missing key 'use' in scores\.dsir"):
        selectkit.validate(recipe)

    recipe = yaml.safe_load(text)
    recipe["data"] = {"pool": {"id": "id"}}
    pool = pl.read_ndjson(DATA / "pool.jsonl")
    with pytest.raises(DataError) as caught:
        selectkit.run(recipe, pool=pool.drop("id"), out_dir=tmp_path / "x")
    assert str(caught.value) == ("pool= has no id column 'id' (its columns: text, domain) (set data.pool.id to "
                                 "one of its columns, or leave it out to number the rows)")
    with pytest.raises(DataError, match="give a datasets.Dataset, a polars or a pandas DataFrame"):
        selectkit.run(recipe, pool=[{"text": "a"}], out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_cli_and_path_callers_are_unchanged(runs, tmp_path):
    output = selectkit.api.run(str(runs / "topk.yaml"), out_dir=tmp_path / "out", cache_dir=runs / "cache")
    assert output.files["selection"].read_bytes() == (runs / "topk" / "selection.parquet").read_bytes()


def test_a_loaded_recipe_with_a_table_keeps_its_folder(demo, by_file, tmp_path):
    from selectkit.recipe.spec import load

    expected, _ = by_file
    loaded = load(demo / "quickstart.yaml")  # relative paths: data/target_politics.jsonl next to the recipe
    output = selectkit.run(loaded, pool=pl.read_ndjson(DATA / "pool.jsonl"), out_dir=tmp_path / "out")
    same_selection(output, expected)


def test_hf_dataset_output_splits_by_a_column(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "q.yaml").write_text(quickstart(out, extra="  split_by: domain\n"))
    selectkit.api.run(tmp_path / "q.yaml")
    whole = pl.read_parquet(out / "subset.parquet")
    for domain in whole["domain"].unique().to_list():
        part = datasets.load_from_disk(str(out / f"subset.domain-{domain}.hf_dataset"))
        assert pl.from_arrow(part.data.table).equals(whole.filter(pl.col("domain") == domain))
    selectkit.api.run(tmp_path / "q.yaml")  # the split folders are part of the set it replaces
