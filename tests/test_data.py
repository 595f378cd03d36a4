"""Every built-in reader gives the same examples; templates, ids and limits behave."""

from __future__ import annotations

import json

import polars as pl
import pytest

from selectkit.contract.registry import load_registry
from selectkit.data.sources import load_dataset
from selectkit.errors import DataError

READERS = {n: e.cls for n, e in load_registry().components["readers"].items()}
ROWS = [{"qid": f"q{i}", "question": f"what is {i}+{i}?", "answer": str(2 * i)} for i in range(5)]


def write_all(tmp_path):
    frame = pl.DataFrame(ROWS)
    paths = {"jsonl": tmp_path / "d.jsonl", "json": tmp_path / "d.json", "csv": tmp_path / "d.csv",
             "parquet": tmp_path / "d.parquet"}
    frame.write_ndjson(paths["jsonl"])
    paths["json"].write_text(json.dumps(ROWS))
    frame.write_csv(paths["csv"])
    frame.write_parquet(paths["parquet"])
    return paths


def test_formats_agree_and_templates_render(tmp_path):
    for fmt, path in write_all(tmp_path).items():
        ds = load_dataset("pool", path, text="Q: {question}\nA: {answer}", id_column="qid", limit=None, fmt=None,
                          readers=READERS)
        assert ds.texts[2] == "Q: what is 2+2?\nA: 4", fmt
        assert ds.ids.to_list() == [r["qid"] for r in ROWS], fmt


def test_hf_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hf"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    ds = load_dataset("pool", folder, text="question", id_column=None, limit=3, fmt=None, readers=READERS)
    assert ds.texts == ["what is 0+0?", "what is 1+1?", "what is 2+2?"]
    assert ds.ids.to_list() == [0, 1, 2]


def test_fingerprint_changes_with_content_and_settings(tmp_path):
    path = write_all(tmp_path)["jsonl"]
    kw = dict(id_column=None, limit=None, fmt=None, readers=READERS)
    a = load_dataset("pool", path, text="question", **kw).fingerprint
    assert a == load_dataset("pool", path, text="question", **kw).fingerprint
    assert a != load_dataset("pool", path, text="answer", **kw).fingerprint
    path.write_text(path.read_text().replace("what", "who"))
    assert a != load_dataset("pool", path, text="question", **kw).fingerprint


@pytest.mark.parametrize(("text", "id_column", "message"), [
    ("body", None, "column 'body' not found"),
    ("{question} {nope}", None, "column 'nope' not found"),
    ("question", "missing_id", "id column 'missing_id' not found"),
])
def test_bad_columns_are_clear_errors(tmp_path, text, id_column, message):
    path = write_all(tmp_path)["jsonl"]
    with pytest.raises(DataError, match=message):
        load_dataset("pool", path, text=text, id_column=id_column, limit=None, fmt=None, readers=READERS)


def test_unknown_suffix_and_unreadable_file(tmp_path):
    odd = tmp_path / "d.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_dataset("pool", odd, text="t", id_column=None, limit=None, fmt=None, readers=READERS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: not valid JSON"):
        load_dataset("pool", bad, text="t", id_column=None, limit=None, fmt=None, readers=READERS)
