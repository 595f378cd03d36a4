"""`selectkit explain RUN --influence TARGET_ID` on a real tiny LESS + TracIn run (a warmed-up LoRA, two
checkpoints, a sharded float16 store): the pool examples it names, with their scores, are the exact top-K
of the run's own per-target score column (a target of one example) and of a numpy product read straight
from the store's .npy files; the index is built once and read from the cache after; a run without a store,
an unknown or ambiguous id or score, and a pruned store are one-line errors. The run and a few commands
go through the real `selectkit` process; the other questions through click's runner (one import of torch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import ROOT, cli

from selectkit.cli.commands import main

pytest.importorskip("torch")
pytest.importorskip("faiss")

RECIPE = """
selectkit: 1
name: explain-influence
seed: 3
data:
  pool: {{path: {root}/recipes/data/pool.jsonl, id: id, limit: 32}}
  targets:
    one: {{path: {root}/recipes/data/target_politics.jsonl, id: id, limit: 1}}
    film: {{path: {root}/recipes/data/target_film.jsonl, id: id, limit: 4}}
models:
  lm:
    path: {root}/recipes/models/tiny-lm
    kind: causal-lm
    max_length: 48
    warmup: {{fraction: 0.25, epochs: 2, learning_rate: 2.0e-4, batch_size: 8, micro_batch_size: 8,
             lora: {{r: 4, alpha: 16, dropout: 0.0}}}}
scores:
  infl:
    use: influence.less
    model: lm
    targets: [one, film]
    with: {{proj_dim: 4096, batch_size: 8}}
  trac:
    use: influence.tracin
    model: lm
    targets: [one, film]
    with: {{proj_dim: 256, batch_size: 8}}
select:
  - use: topk
    with: {{score: infl.one, budget: 10}}
output: {{dir: {out}, formats: [parquet]}}
"""
FILM = [f"film-t00{i}" for i in range(4)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(run folder, its cache, its recipe): one real run through the CLI, 16-row shards."""
    work = tmp_path_factory.mktemp("influence")
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(root=ROOT, out=work / "out"))
    done = cli("run", recipe, "--shard-rows", "16", "-q", env={"SELECTKIT_CACHE_DIR": str(work / "cache")})
    assert done.returncode == 0, done.stderr
    return work / "out", work / "cache", recipe


def explain(run: Path, *args: str) -> dict:
    got = CliRunner().invoke(main, ["explain", str(run), "--format", "json", *map(str, args)])
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout)


def fails(run: Path, *args: str) -> str:
    got = CliRunner().invoke(main, ["explain", str(run), *map(str, args)])
    assert got.exit_code == 1 and isinstance(got.exception, SystemExit), got.output
    assert got.stderr.startswith("error: ") and len(got.stderr.strip().splitlines()) == 1, got.stderr
    return got.stderr


def store_rows(cache: Path, store: dict) -> list[np.ndarray]:
    """One (N, D) float64 array per checkpoint, read from the entry's .npy files with numpy alone."""
    out = []
    for point in range(store["points"]):
        parts = []
        for shard in range(point * store["row_shards"], (point + 1) * store["row_shards"]):
            folder = cache / store["artifact"] / store["key"] / f"shard-{shard:05d}"
            names = json.loads((folder / "meta.json").read_text())["arrays"]
            arrays = {n: np.load(folder / f"a{i:03d}.npy") for i, n in enumerate(names)}
            rows = arrays["features"].astype(np.float64)
            if "scales" in arrays:
                rows = rows * arrays["scales"].astype(np.float64)[:, None]
            parts.append(rows)
        out.append(np.concatenate(parts))
    return out


def reference(cache: Path, entry: dict, task: str, row: int) -> np.ndarray:
    """The score of every pool row against target row `row`: sum_c w_c <x_c, y_c> (of unit rows for a cosine)."""
    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True) if entry["cosine"] else a

    pool, target = store_rows(cache, entry["pool"]), store_rows(cache, entry["targets"][task])
    return sum(w * unit(x) @ unit(y[row]) for x, y, w in zip(pool, target, entry["weights"]))


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_the_manifest_names_the_stores_weights_and_method(finished):
    run, cache, _ = finished
    scores = manifest(run)["scores"]
    less, tracin = scores["infl"]["influence"], scores["trac"]["influence"]
    assert (less["method"], less["cosine"], tracin["method"], tracin["cosine"]) == ("less", True, "tracin", False)
    lrs = [c["lr"] for c in less["checkpoints"]]
    assert len(lrs) == 2 and less["weights"] == pytest.approx([lr / sum(lrs) for lr in lrs])  # LESS: lr / sum lr
    assert tracin["weights"] == pytest.approx(lrs)  # TracIn: the lrs themselves
    assert less["targets"]["film"]["ids"] == FILM and less["targets"]["one"]["ids"] == ["politics-t000"]
    for store in (less["pool"], less["targets"]["film"], tracin["pool"]):
        assert (cache / store["artifact"] / store["key"] / "meta.json").is_file()
    assert less["pool"]["row_shards"] == 2 and less["pool"]["feature_dtype"] == "float16"
    assert less["pool"]["key"] != tracin["pool"]["key"]  # Adam-preconditioned pool grads vs plain ones


def test_the_top_k_is_the_exact_top_k_of_the_runs_own_column(finished):
    """Target `one` has one example, so the run's column score.infl.one is that example's LESS score."""
    run, _, _ = finished
    got = explain(run, "--influence", "politics-t000", "--score", "infl", "--top", "8")
    table = pl.read_parquet(run / "selection.parquet")
    column = table["score.infl.one"].to_numpy()
    order = np.lexsort((np.arange(len(column)), -column))[:8]
    assert [n["id"] for n in got["neighbours"]] == table["id"].cast(pl.String).to_numpy()[order].tolist()
    np.testing.assert_allclose([n["influence"] for n in got["neighbours"]], column[order], rtol=1e-5, atol=1e-7)
    ranks = dict(zip(table["id"].cast(pl.String).to_list(), table["rank"].to_list()))
    assert [n["rank"] for n in got["neighbours"]] == [ranks[n["id"]] for n in got["neighbours"]]
    assert got["neighbours"][0]["selected"] and got["neighbours"][0]["rank"] == 1  # topk on this very column
    assert all(n["text"] for n in got["neighbours"])


@pytest.mark.parametrize("score", ["infl", "trac"])
def test_every_target_example_matches_numpy_on_the_store(finished, score):
    """LESS (cosine, lr-normalised weights) and TracIn (inner product, lr weights), each film example."""
    run, cache, _ = finished
    entry = manifest(run)["scores"][score]["influence"]
    for row, target_id in enumerate(FILM[:2]):
        got = explain(run, "--influence", target_id, "--score", score, "--top", "5")
        exact = reference(cache, entry, "film", row)
        best = np.lexsort((np.arange(len(exact)), -exact))[:5]
        assert [n["row"] for n in got["neighbours"]] == best.tolist()
        np.testing.assert_allclose([n["influence"] for n in got["neighbours"]], exact[best], rtol=1e-5,
                                   atol=1e-9 * np.abs(exact).max())
        assert got["target"] == {"id": target_id, "task": "film", "row": row}


def test_the_index_is_built_once_then_read_from_the_cache(finished):
    run, cache, _ = finished
    shutil.rmtree(cache / "neighbours", ignore_errors=True)
    first = explain(run, "--influence", FILM[3], "--score", "infl")
    second = explain(run, "--influence", FILM[2], "--score", "infl")
    again = explain(run, "--influence", FILM[3], "--score", "infl")
    assert (first["index"]["status"], second["index"]["status"], again["index"]["status"]) == \
        ("built", "cached", "cached")
    assert again["neighbours"] == first["neighbours"]
    assert len(list((cache / "neighbours").iterdir())) == 1
    # `cache prune --keep` keeps an index exactly as long as the store it indexes (its key is under the store's)
    from selectkit.storage.cache import Cache

    pool = manifest(run)["scores"]["infl"]["influence"]["pool"]
    for store_kept in (True, False):
        moved = cache.parent / f"pruned-{store_kept}"
        shutil.copytree(cache, moved)
        others = {e.key.split("-", 1)[0] for e in Cache(moved).entries()} - {pool["key"]}
        Cache(moved).prune(keep=others | ({pool["key"]} if store_kept else set()))
        assert (moved / "neighbours").is_dir() and any((moved / "neighbours").iterdir()) == store_kept
        if store_kept:
            assert explain(run, "--influence", FILM[3], "--score", "infl", "--cache", moved)["index"]["status"] \
                == "cached"
    text = cli("explain", run, "--influence", FILM[3], "--score", "infl", "--top", "3")  # the real command
    assert text.returncode == 0, text.stderr
    assert "target film-t003 (film)" in text.stdout and "(cached)" in text.stdout and \
        sum(line.split()[0].isdigit() for line in text.stdout.splitlines()) == 3


def test_the_python_api_answers_the_same(finished):
    from selectkit.api import run as run_recipe

    run, cache, recipe = finished
    out = run_recipe(recipe, cache_dir=cache, options={"shard_rows": 16})  # everything cached
    assert out.manifest["scores"]["infl"]["influence"]["weights"] == manifest(run)["scores"]["infl"]["influence"][
        "weights"]  # checkpoints read from the cache when the score itself came from there
    got = out.explain_influence(FILM[1], k=4, score="trac")
    assert got["neighbours"] == explain(run, "--influence", FILM[1], "--score", "trac", "--top", "4")["neighbours"]


def test_errors_are_one_line(finished, tmp_path):
    run, cache, _ = finished
    real = cli("explain", run, "--influence", FILM[0])  # the real command: exit 1, one line, no traceback
    assert real.returncode == 1 and "Traceback" not in real.stderr, real.stderr
    assert real.stderr.startswith("error: ") and "several influence scores (infl, trac)" in real.stderr
    message = fails(run, "--influence", "film-t0009", "--score", "infl")
    assert "target id 'film-t0009' is not an example" in message and "did you mean" in message
    assert "not an influence score" in fails(run, "--influence", FILM[0], "--score", "inf")
    usage = CliRunner().invoke(main, ["explain", str(run), "some-id", "--influence", FILM[0]])
    assert usage.exit_code == 2 and "not both" in usage.stderr  # a usage mistake, as click reports them
    # a pruned store: the cache copied elsewhere, the pool's entry removed
    moved = tmp_path / "moved"
    shutil.copytree(cache, moved)
    pool = manifest(run)["scores"]["infl"]["influence"]["pool"]
    shutil.rmtree(moved / pool["artifact"] / pool["key"])
    message = fails(run, "--influence", FILM[0], "--score", "infl", "--cache", moved)
    assert f"cache entry passes/{pool['key']}" in message and "run the recipe again" in message
    # one shard gone from a target's store
    film = manifest(run)["scores"]["trac"]["influence"]["targets"]["film"]
    shutil.rmtree(moved / film["artifact"] / film["key"] / "shard-00001")
    message = fails(run, "--influence", FILM[0], "--score", "trac", "--cache", moved)
    assert "run the recipe again" in message


def test_a_manifest_without_the_stores_says_why(finished, tmp_path):
    """A run folder written before the manifest named the stores, and one whose score ran on a label sample."""
    run, _, _ = finished
    for case in ("older", "surrogate"):
        copy = tmp_path / case
        shutil.copytree(run, copy)
        body = manifest(copy)
        for entry in body["scores"].values():
            entry.pop("influence")
            if case == "surrogate":
                entry["surrogate"] = {"sample": 24}
        (copy / "manifest.json").write_text(json.dumps(body))
        message = fails(copy, "--influence", FILM[0])
        assert ("did not record one" in message and "run the recipe again" in message) if case == "older" else \
            "label sample (surrogate)" in message


def test_a_run_without_a_gradient_store_says_so(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "text": "word " * (i + 1)}) + "\n" for i in range(20)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"selectkit: 1\nname: plain\ndata:\n  pool: {{path: {pool}, id: id}}\n"
                      f"scores:\n  len: {{use: length}}\nselect:\n  - use: topk\n    with: {{score: len, budget: 5}}\n"
                      f"output: {{dir: {tmp_path / 'out'}, formats: [parquet]}}\n")
    assert cli("run", recipe, "-q").returncode == 0
    message = cli("explain", tmp_path / "out", "--influence", "x").stderr
    assert "has no gradient store" in message and "len (length)" in message


def test_an_inner_product_index_round_trips_and_ranks_rows_without_a_gradient_last(tmp_path):
    """TracIn's index holds the rows as stored (inner products, not cosines); saved and restored it answers
    the same; a pool row without a gradient (NaN) never outranks one with a score."""
    from test_gradient_store import stored

    from selectkit.results.neighbours import InfluenceIndex, exact_top_k

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, 128))
    labels = rng.integers(0, 30, size=3000)
    scale = rng.uniform(0.2, 5.0, size=(3000, 1))  # norms differ: the inner product's top rows are not the cosine's
    checkpoints = []
    for c in range(2):
        rows = (centres[labels] + 0.6 * rng.normal(size=(3000, 128)) + 0.1 * c) * scale
        rows[11] = np.nan
        checkpoints.append([rows[i:i + 1000].astype(np.float32) for i in range(0, 3000, 1000)])
    pool = [stored(tmp_path, f"ip-{c}", parts, "float32") for c, parts in enumerate(checkpoints)]
    queries = [centres[[4]] + 0.1 * c for c in range(2)]
    weights = [2e-4, 1e-4]
    index = InfluenceIndex(pool, weights, sketch_dim=128, cosine=False)
    scores, rows = index.search(queries, k=10)
    ref_scores, ref_rows = exact_top_k(pool, queries, weights, 10, cosine=False)
    assert len(set(rows[0]) & set(ref_rows[0])) >= 9 and 11 not in rows[0]
    direct = sum(w * np.asarray(p, np.float64)[rows[0]] @ q[0] for p, q, w in zip(pool, queries, weights))
    np.testing.assert_allclose(scores[0], direct, rtol=1e-9)
    cosine_top = exact_top_k(pool, queries, weights, 10)[1]
    assert set(cosine_top[0]) != set(ref_rows[0])
    restored = InfluenceIndex(pool, weights, sketch_dim=128, cosine=False, saved=index.to_bytes())
    again = restored.search(queries, k=10)
    np.testing.assert_array_equal(again[1], rows)
    np.testing.assert_allclose(again[0], scores)
    _, every = restored.search(queries, k=3000)
    assert every[0][-1] == 11  # asked for every row: the one without a gradient comes last


@pytest.mark.slow
def test_a_store_in_object_storage_answers_from_another_machine(tmp_path, monkeypatch):
    """The run's cache is a bucket (moto's S3 server): explain on a machine with an empty mirror folder
    pulls the store's shards it reads, answers as a local run does, and publishes the index it built."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from test_object_storage import BUCKET, _free_port, moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        client.create_bucket(Bucket=BUCKET)
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(RECIPE.format(root=ROOT, out=tmp_path / "out"))
        done = cli("run", recipe, "--shard-rows", "16", "-q", "--cache-dir", f"s3://{BUCKET}/cache",
                   env={"SELECTKIT_CACHE_MIRROR": str(tmp_path / "machine-a")})
        assert done.returncode == 0, done.stderr
        assert manifest(tmp_path / "out")["cache"] == f"s3://{BUCKET}/cache"
        monkeypatch.setenv("SELECTKIT_CACHE_MIRROR", str(tmp_path / "machine-b"))
        got = explain(tmp_path / "out", "--influence", "politics-t000", "--score", "infl", "--top", "5")
        column = pl.read_parquet(tmp_path / "out" / "selection.parquet")["score.infl.one"].to_numpy()
        np.testing.assert_allclose([n["influence"] for n in got["neighbours"]], np.sort(column)[::-1][:5],
                                   rtol=1e-5, atol=1e-7)
        assert got["index"]["status"] == "built"
        keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])}
        assert any(k.startswith("cache/neighbours/") for k in keys)  # the index is kept in the bucket
        monkeypatch.setenv("SELECTKIT_CACHE_MIRROR", str(tmp_path / "machine-c"))
        assert explain(tmp_path / "out", "--influence", "politics-t000", "--score", "infl", "--top", "5")[
            "index"]["status"] == "cached"
    finally:
        server.stop()
