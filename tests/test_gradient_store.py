"""The gradient store at the papers' scale, in miniature: sparse projections are deterministic and
preserve inner products, float16 storage keeps cosines and scales, pairwise scores stream over the
store's shards and equal the in-memory ones, a second target reuses the pool's store, a changed
projection is a new store, a damaged shard is verified and recomputed, and a full disk while
writing the store is one error that keeps the finished shards."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import polars as pl
import pytest
from conftest import ROOT, cli
from test_cli_faults import tmpfs

from selectkit.storage.cache import Cache
from selectkit.storage.gradient_store import StoredFeatures, decode, encode
from selectkit_plugins.lib.influence.scores import datainf, less, pairwise, tracin

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------- projections


def test_sparse_projection_is_deterministic_unbiased_and_equal_to_its_matrix():
    from selectkit.contract.projection import SparseProjector

    p = SparseProjector(5000, 64, seed=3, label="joint")
    x = torch.randn(12, 5000)
    whole = p(x)
    one_by_one = torch.cat([p(x[i:i + 1]) for i in range(12)])
    assert torch.equal(whole, one_by_one)  # a row's projection does not depend on its batch
    assert torch.equal(whole, SparseProjector(5000, 64, seed=3, label="joint")(x))  # nor on the process
    assert not torch.equal(whole, SparseProjector(5000, 64, seed=3, label="other")(x))
    np.testing.assert_allclose((x.double() @ p.matrix()).float(), whole, atol=1e-4)
    matrix = p.matrix()
    assert (matrix.abs().sum(1) == 1).all()  # every coordinate goes to exactly one output, with a sign
    counts = (matrix != 0).sum(0)
    assert counts.max() - counts.min() <= 1 + math.ceil(5000 / 64) - 5000 // 64  # balanced buckets
    a, b = torch.randn(5000, dtype=torch.float64), torch.randn(5000, dtype=torch.float64)
    b = 0.6 * a + 0.8 * b
    estimates = [float(SparseProjector(5000, 512, seed=s)(a[None].float())[0].double()
                       @ SparseProjector(5000, 512, seed=s)(b[None].float())[0].double()) for s in range(40)]
    assert abs(np.mean(estimates) - float(a @ b)) < 3 * np.std(estimates) / math.sqrt(40) + 1e-6


def test_auto_projection_and_storage_resolve_by_width():
    from selectkit.plugin import FeatureRequest
    from selectkit_plugins.passes.gradients import Gradients

    wide = dict(Gradients().canonical(FeatureRequest.of("grad_features", proj_dim=8192)).settings)
    narrow = dict(Gradients().canonical(FeatureRequest.of("grad_features", proj_dim=1024)).settings)
    chosen = dict(Gradients().canonical(FeatureRequest.of("grad_features", proj_dim=8192, proj_kind="rademacher",
                                                          feature_dtype="float32")).settings)
    assert (wide["proj_kind"], wide["feature_dtype"]) == ("sjlt", "float16")
    assert (narrow["proj_kind"], narrow["feature_dtype"]) == ("rademacher", "float32")
    assert (chosen["proj_kind"], chosen["feature_dtype"]) == ("rademacher", "float32")


# ---------------------------------------------------------------- storage and streaming


def test_float16_store_keeps_cosines_and_scales_where_plain_float16_underflows():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(50, 4096)) * 3e-8).astype(np.float32)  # a trained model's small projected gradients
    x[3] = np.nan  # an example without a gradient stays without one
    stored = encode(x, "float16")
    assert stored["features"].dtype == np.float16 and stored["scales"].dtype == np.float32
    back = decode(stored)
    ok = ~np.isnan(x).any(1)
    cos = (back[ok] * x[ok]).sum(1) / np.linalg.norm(back[ok], axis=1) / np.linalg.norm(x[ok], axis=1)
    assert cos.min() > 0.9999 and np.isnan(back[3]).all()
    np.testing.assert_allclose(np.linalg.norm(back[ok], axis=1), np.linalg.norm(x[ok], axis=1), rtol=1e-3)
    plain = x[ok].astype(np.float16).astype(np.float32)  # what the store avoids: subnormals and zeros
    plain_cos = (plain * x[ok]).sum(1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(x[ok], axis=1)
    assert plain_cos.mean() < 0.9


def stored(tmp_path, name: str, arrays: list[np.ndarray], dtype: str) -> StoredFeatures:
    shards = Cache(tmp_path).sharded("passes", name, len(arrays))
    for i, a in enumerate(arrays):
        shards.write(i, encode(a, dtype))
    return StoredFeatures(shards, list(range(len(arrays))), sum(len(a) for a in arrays), arrays[0].shape[1], dtype)


@pytest.mark.parametrize("block", [None, 7], ids=["whole-shards", "7-row-blocks"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streamed_scores_equal_the_in_memory_ones(tmp_path, dtype, block, monkeypatch):
    if block is not None:  # wide features are read in blocks smaller than a shard (uneven here: 40 = 5*7 + 5)
        import selectkit.storage.gradient_store as store

        monkeypatch.setattr(store, "block_rows", lambda dim: block)
    rng = np.random.default_rng(1)
    checkpoints = [[rng.normal(size=(n, 32)).astype(np.float32) for n in (40, 40, 17)] for _ in range(3)]
    pool = [stored(tmp_path, f"{dtype}-{c}", parts, dtype) for c, parts in enumerate(checkpoints)]
    whole = [np.asarray(p) for p in pool]  # what the store holds, concatenated
    targets = [rng.normal(size=(9, 32)) for _ in range(3)]
    lrs = [1e-3, 5e-4, 2.5e-4]
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float32" else dict(rtol=1e-5, atol=1e-6)

    def reference_dot(xs, ys, ws, unit=False):
        def u(a):
            a = np.asarray(a, np.float64)
            return a / np.linalg.norm(a, axis=1, keepdims=True) if unit else a
        return sum(w * u(x) @ u(y).T for x, y, w in zip(xs, ys, ws))

    np.testing.assert_allclose(tracin(pool, targets, lrs), reference_dot(whole, targets, lrs), **tol)
    w = np.asarray(lrs) / sum(lrs)
    np.testing.assert_allclose(less(pool, targets, lrs), reference_dot(whole, targets, w, unit=True), **tol)
    reduce = lambda block: np.stack([block[:, :4].mean(1), block[:, 4:].max(1)], axis=1)  # noqa: E731
    np.testing.assert_allclose(less(pool, targets, lrs, reduce=reduce), reduce(less(whole, targets, lrs)), **tol)
    slices = [(0, 16), (16, 32)]
    streamed = datainf(pool, targets, slices, weights=w)
    in_memory = sum(wc * datainf(x, y, slices) for x, y, wc in zip(whole, targets, w))
    np.testing.assert_allclose(streamed, in_memory, **tol)
    with pytest.raises(ValueError, match="damping must be positive"):
        datainf(pool[0], targets[0], damping=0.0)
    assert pairwise(pool, targets, lrs, reduce=reduce).shape == (97, 2)
    spans = [(lo, hi) for lo, hi, _ in pool[0].blocks()]
    assert spans[0][0] == 0 and spans[-1][1] == 97 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert max(hi - lo for lo, hi in spans) == (block or 40)


def test_a_streamed_score_holds_one_shard_not_the_store(tmp_path):
    """Blocks are unmapped as the scan moves on: no more than one shard of features is alive at once."""
    import gc
    import weakref

    rng = np.random.default_rng(2)
    pool = stored(tmp_path, "scan", [rng.normal(size=(64, 16)).astype(np.float32) for _ in range(6)], "float32")
    alive = []
    for _, _, block in pool.blocks():
        alive.append(weakref.ref(block))
        gc.collect()
        assert sum(ref() is not None for ref in alive) == 1
        del block


# ---------------------------------------------------------------- a store in a run


LESS = """
selectkit: 1
name: store
seed: 3
data:
  pool: {{path: {root}/recipes/data/pool.jsonl, id: id, limit: 96}}
  targets:
    politics: {{path: {root}/recipes/data/target_politics.jsonl, limit: 8}}
    film: {{path: {root}/recipes/data/target_film.jsonl, limit: 8}}
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
    targets: [{targets}]
    with: {{proj_dim: {dim}, batch_size: 8{extra}}}
select:
  - use: topk
    with: {{score: infl.{first}, budget: 10}}
output: {{dir: {out}, formats: [parquet]}}
"""


def recipe(tmp_path, name, targets, dim=4096, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(LESS.format(root=ROOT, targets=", ".join(targets), first=targets[0], dim=dim, extra=extra,
                                out=tmp_path / f"out-{name}"))
    return path


def statuses(out) -> dict[str, str]:
    return {s["step"]: s["status"] for s in json.loads((out / "manifest.json").read_text())["stages"]}


def test_a_second_target_reuses_the_pools_store_and_a_new_projection_is_a_new_store(tmp_path):
    env = {"SELECTKIT_CACHE_DIR": str(tmp_path / "cache")}
    first = cli("run", recipe(tmp_path, "one", ["politics"]), "--shard-rows", "32", env=env)
    assert first.returncode == 0, first.stderr
    plan = cli("plan", recipe(tmp_path, "two", ["politics", "film"]), "--shard-rows", "32", env=env)
    pool_steps = [line for line in plan.stdout.splitlines() if "gradient features of lm over pool" in line]
    assert pool_steps and all("(cached)" in line for line in pool_steps), plan.stdout
    assert any("over film" in line and "(to compute)" in line for line in plan.stdout.splitlines()), plan.stdout
    second = cli("run", recipe(tmp_path, "two", ["politics", "film"]), "--shard-rows", "32", env=env)
    assert second.returncode == 0, second.stderr
    done = statuses(tmp_path / "out-two")
    assert [s for step, s in done.items() if step.startswith("pass:gradients:lm:pool")] == ["cached"]
    assert any(step.startswith("pass:gradients:lm:film") and s == "computed" for step, s in done.items())
    # the same selection as a run that computed everything afresh
    fresh = cli("run", recipe(tmp_path, "two", ["politics", "film"]), "--shard-rows", "32", "--out",
                tmp_path / "out-fresh", env={"SELECTKIT_CACHE_DIR": str(tmp_path / "fresh")})
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "out-two" / "selection.parquet").read_bytes() == \
        (tmp_path / "out-fresh" / "selection.parquet").read_bytes()
    # another projection is another store: computed, never mixed with the first
    other = cli("run", recipe(tmp_path, "three", ["politics"], extra=", proj_kind: rademacher"), "--shard-rows", "32",
                env=env)
    assert other.returncode == 0, other.stderr
    assert [s for step, s in statuses(tmp_path / "out-three").items()
            if step.startswith("pass:gradients:lm:pool")] == ["computed"]
    a = pl.read_parquet(tmp_path / "out-one" / "selection.parquet")["score.infl.politics"].to_numpy()
    b = pl.read_parquet(tmp_path / "out-three" / "selection.parquet")["score.infl.politics"].to_numpy()
    assert not np.array_equal(a, b) and np.corrcoef(a, b)[0, 1] > 0.5  # two projections of the same gradients


def test_a_damaged_store_shard_is_verified_and_recomputed(tmp_path):
    env = {"SELECTKIT_CACHE_DIR": str(tmp_path / "cache")}
    path = recipe(tmp_path, "one", ["politics"])
    assert cli("run", path, "--shard-rows", "32", env=env).returncode == 0
    reference = (tmp_path / "out-one" / "selection.parquet").read_bytes()
    store = next(p for p in (tmp_path / "cache" / "passes").iterdir()
                 if json.loads((p / "meta.json").read_text()).get("label", "").startswith("gradient features of lm "
                                                                                         "over pool"))
    damaged = sorted(store.glob("shard-*/a000.npy"))
    damaged[0].write_bytes(damaged[0].read_bytes()[:100])  # truncated
    data = bytearray(damaged[1].read_bytes())
    data[-8:] = b"\x00" * 8
    damaged[1].write_bytes(bytes(data))  # replaced bytes, same size
    shutil.rmtree(tmp_path / "cache" / "scores")  # so the run reads the store again
    again = cli("run", path, "--shard-rows", "32", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("corrupt; computing it again") == 2, again.stderr
    assert (tmp_path / "out-one" / "selection.parquet").read_bytes() == reference
    assert statuses(tmp_path / "out-one")[next(s for s in statuses(tmp_path / "out-one")
                                               if s.startswith("pass:gradients:lm:pool"))] == "resumed"


def test_a_full_disk_while_writing_the_store_is_one_error_and_keeps_the_finished_shards(tmp_path):
    path = recipe(tmp_path, "one", ["politics"], dim=16384)
    with tmpfs(tmp_path / "cache", "size=4m") as cache:
        env = {"SELECTKIT_CACHE_DIR": str(cache)}
        result = cli("run", path, "--shard-rows", "8", env=env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on device" in errors[0] and str(cache) in errors[0], errors
        stores = [p for p in (cache / "passes").iterdir() if not p.name.startswith(".")]
        kept = [s for store in stores for s in store.glob("shard-*") if (s / "meta.json").is_file()]
        assert kept, "the finished shards were lost"
        assert not [p for store in stores for p in store.glob(".tmp-*")]  # no half-written shard left behind


# ---------------------------------------------------------------- nearest neighbours over the store


@pytest.mark.parametrize("flat_below", [10**9, 0], ids=["flat", "ivf-pq"])
def test_influence_neighbours_find_the_exact_top_rows_from_the_store(tmp_path, flat_below):
    """The index answers 'which pool rows score highest for this target' with exact scores (re-ranked
    from the store's shards) and the exact product's rows: recall@10 against a full streamed scan."""
    pytest.importorskip("faiss")
    from selectkit.results.neighbours import InfluenceIndex, exact_top_k

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(30, 256))
    labels = rng.integers(0, 30, size=3000)
    checkpoints = []
    for c in range(2):  # two checkpoints, each pool row near its cluster's centre
        rows = centres[labels] + 0.6 * rng.normal(size=(3000, 256)) + 0.1 * c
        checkpoints.append([rows[i:i + 700].astype(np.float32) for i in range(0, 3000, 700)])
    pool = [stored(tmp_path, f"nn-{flat_below}-{c}", parts, "float16") for c, parts in enumerate(checkpoints)]
    queries = [centres[[1, 7, 19]] + 0.6 * rng.normal(size=(3, 256)) + 0.1 * c for c in range(2)]
    weights = [0.6, 0.4]
    index = InfluenceIndex(pool, weights, sketch_dim=128, flat_below=flat_below)
    assert type(index.index).__name__ == ("IndexFlatIP" if flat_below else "IndexIVFPQ")
    scores, rows = index.search(queries, k=10)
    ref_scores, ref_rows = exact_top_k(pool, queries, weights, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, ref_rows)])
    assert recall >= (0.9 if flat_below else 0.7), recall
    for j in range(3):  # every returned score is the row's exact LESS score, best first
        exact = less(pool, [q[[j]] for q in queries], [0.6, 0.4])[:, 0]  # lrs proportional to the weights
        np.testing.assert_allclose(scores[j], exact[rows[j]], rtol=1e-5, atol=1e-6)
        assert (np.diff(scores[j]) <= 1e-12).all()
    assert (labels[ref_rows[0]] == 1).mean() > 0.9  # the reference itself finds the query's cluster
