"""The linear datamodeling score (`evaluate.lds`): its maths against scipy, a known answer (exact influence
functions of an L2 logistic regression reach a high LDS; a random score's CI holds 0), the keyed subsets,
the validate errors of a bad `lds:` block, and `selectkit eval` with LDS on the tiny LM (JSON shape, and
a second run that reuses every cached retrain)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from selectkit.contract.keyed_random import keyed_subset, row_keys
from selectkit.evaluation import lds, ranks

# ---------------------------------------------------------------- the maths


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy_column_by_column(ties):
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 7))
    y = x * rng.uniform(-1, 1, size=7) + rng.normal(size=(23, 7))
    if ties:
        x, y = np.round(x), np.round(y * 2) / 2
    ours = ranks.spearman(x, y, axis=0)
    for j in range(x.shape[1]):
        assert ours[j] == pytest.approx(spearmanr(x[:, j], y[:, j]).statistic, abs=1e-12)
    assert lds.lds(x, y) == pytest.approx(np.mean([spearmanr(x[:, j], y[:, j]).statistic for j in range(7)]))


def test_average_ranks_match_scipy_rankdata_along_any_axis():
    from scipy.stats import rankdata

    a = np.random.default_rng(1).integers(0, 5, size=(4, 9, 3)).astype(float)
    for axis in range(3):
        np.testing.assert_array_equal(ranks.average_ranks(a, axis), rankdata(a, axis=axis))


def test_a_constant_column_is_nan_and_skipped_by_the_mean():
    x = np.arange(10.0)[:, None].repeat(2, 1)
    y = np.c_[np.arange(10.0), np.ones(10)]
    rho = ranks.spearman(x, y)
    assert rho[0] == pytest.approx(1.0) and np.isnan(rho[1])
    assert lds.lds(x, y) == pytest.approx(1.0)


def test_bootstrap_ci_resamples_subsets_and_covers_the_estimate():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    k, m = 40, 12
    truth = rng.normal(size=(k, 1))
    pred = truth + 0.8 * rng.normal(size=(k, m))
    loss = truth + 0.8 * rng.normal(size=(k, m))
    lo, hi = lds.bootstrap_ci(pred, loss, reps=400, seed=0)
    value = lds.lds(pred, loss)
    assert lo < value < hi and hi - lo < 0.6
    # by hand: one replicate is the mean over columns of scipy's Spearman on the resampled rows
    idx = np.random.default_rng([0, 0x1D5]).integers(0, k, size=(1, k))[0]
    first = np.mean([spearmanr(pred[idx, j], loss[idx, j]).statistic for j in range(m)])
    rho = ranks.spearman(pred[idx[None]], loss[idx[None]], axis=1)
    assert np.nanmean(rho) == pytest.approx(first)
    assert lds.bootstrap_ci(pred, loss, reps=400, seed=0) == (lo, hi)  # seeded


def test_predictions_sum_each_examples_column_over_the_subset():
    score = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])
    masks = np.array([[1, 1, 0], [0, 1, 1]], bool)
    pred = lds.predictions(score, masks, np.array([0, 1, 1]))
    np.testing.assert_array_equal(pred, [[-3, -30, -30], [-6, -60, -60]])
    np.testing.assert_array_equal(lds.predictions(score[:, 0], masks, np.zeros(2, int)), [[-3, -3], [-6, -6]])


def test_keyed_subsets_depend_on_row_ids_not_order():
    keys = row_keys(list(range(500)))
    draws = ((("lds", "sample"), 100), (("lds", "subset", "0"), 50))
    rows = keyed_subset(keys, 7, draws)
    perm = np.random.default_rng(0).permutation(500)
    again = keyed_subset(keys[perm], 7, draws)
    assert sorted(perm[again]) == sorted(rows) and len(rows) == 50
    sample = keyed_subset(keys, 7, draws[:1])
    assert set(rows) <= set(sample) and len(sample) == 100
    assert set(keyed_subset(keys, 8, draws)) != set(rows)


def test_held_out_losses_are_keyed_by_retrain_rows_and_settings_and_pruned_with_their_retrain(tmp_path):
    from types import SimpleNamespace

    from selectkit.recipe.spec import ModelSpec
    from selectkit.storage.cache import Cache

    ref = SimpleNamespace(spec=ModelSpec(path="m", kind="causal-lm", max_length=64))
    settings = lds.loss_settings(ref)
    heldout = {"a": ["one", "two"], "b": ["three"]}
    key = lds.loss_key("0" * 32, lds.heldout_fingerprint(heldout), settings)
    assert key.startswith("0" * 32 + "-heldout-")
    others = [lds.loss_key("1" * 32, lds.heldout_fingerprint(heldout), settings),
              lds.loss_key("0" * 32, lds.heldout_fingerprint({"a": ["one", "two!"], "b": ["three"]}), settings),
              lds.loss_key("0" * 32, lds.heldout_fingerprint({"b": ["one", "two"], "a": ["three"]}), settings),
              lds.loss_key("0" * 32, lds.heldout_fingerprint(heldout),
                           lds.loss_settings(SimpleNamespace(spec=ref.spec.model_copy(update={"max_length": 32}))))]
    assert len({key, *others}) == 5
    cache = Cache(tmp_path / "cache")
    cache.write_arrays(lds.LOSS_KIND, key, {"loss": np.arange(3.0)})
    cache.prune(keep={"0" * 32})  # the retrain is kept: so are its losses
    np.testing.assert_array_equal(cache.read_arrays(lds.LOSS_KIND, key)[0]["loss"], np.arange(3.0))
    cache.prune(keep={"1" * 32})
    assert cache.read_arrays(lds.LOSS_KIND, key) is None


# ---------------------------------------------------------------- known answer: exact influence, L2 logistic regression

LAMBDA = 10.0  # the sum objective's ridge; exact IF vs LOO is ~0.99 on breast_cancer at this value


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin sum_i logloss_i + LAMBDA/2 |w|^2, by Newton's method (convex: converges in a few steps)."""
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        g = x.T @ (p - y) + LAMBDA * w
        h = (x * (p * (1 - p))[:, None]).T @ x + LAMBDA * np.eye(x.shape[1])
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def _losses(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = x @ w
    return np.logaddexp(0, z) - y * z


@pytest.fixture(scope="module")
def logistic():
    """Exact influence scores (n_train x n_test, positive = helpful) and the test losses of models retrained
    on K keyed half-subsets of the training set."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    x = np.c_[x, np.ones(len(x))]
    y = data.target.astype(float)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:300], order[300:360]
    xt, yt, xs, ys = x[train], y[train], x[test], y[test]
    w = _fit(xt, yt)
    p = 1 / (1 + np.exp(-xt @ w))
    h = (xt * (p * (1 - p))[:, None]).T @ xt + LAMBDA * np.eye(x.shape[1])
    g_train = xt * (p - yt)[:, None]
    g_test = xs * (1 / (1 + np.exp(-xs @ w)) - ys)[:, None]
    scores = g_train @ np.linalg.solve(h, g_test.T)  # tau(test j, train i) = g_j^T H^-1 g_i
    keys = row_keys(list(range(len(train))))
    k = 60
    masks = np.zeros((k, len(train)), bool)
    loss = np.zeros((k, len(test)))
    for s in range(k):
        rows = keyed_subset(keys, 0, ((("lds", "subset", str(s)), len(train) // 2),))
        masks[s, rows] = True
        loss[s] = _losses(_fit(xt[rows], yt[rows]), xs, ys)
    return {"scores": scores, "masks": masks, "loss": loss, "keys": keys}


def test_exact_influence_reaches_a_high_lds_on_logistic_regression(logistic):
    m = logistic["loss"].shape[1]
    pred = lds.predictions(logistic["scores"], logistic["masks"], np.arange(m))
    result = lds.measure(pred, logistic["loss"], bootstrap=500, seed=0)
    print("exact influence LDS", result)
    assert result["lds"] >= 0.6, result
    assert result["ci"][0] > 0.4, result
    assert not lds.contains_zero(result)
    # the sign matters: the same scores read as "harmful" give the mirror image
    flipped = lds.measure(-pred, logistic["loss"], bootstrap=200, seed=0)
    assert flipped["lds"] == pytest.approx(-result["lds"], abs=1e-9)


def test_a_random_score_has_a_ci_that_contains_zero(logistic):
    from selectkit.contract.keyed_random import uniform

    m = logistic["loss"].shape[1]
    for seed in range(5):
        result = lds.control(logistic["masks"], logistic["loss"], logistic["keys"], seed, 500)
        assert lds.contains_zero(result), result
        fixed = uniform(seed, ("lds", lds.RANDOM), logistic["keys"])
        assert result["lds"] == pytest.approx(lds.lds(lds.predictions(fixed, logistic["masks"], np.zeros(m, int)),
                                                      logistic["loss"]), abs=1e-4)
    assert abs(result["lds"]) < 0.3
    warnings = lds.lds_warnings({"exact": {"lds": 0.01, "ci": [-0.2, 0.2]}, lds.RANDOM: result})
    assert len(warnings) == 1 and "damping" in warnings[0] and "proj_dim" in warnings[0]


# ---------------------------------------------------------------- the recipe: validate, plan, eval

RECIPE = """selectkit: 1
name: lds
seed: 0
data:
  pool: {{path: data/pool.jsonl, id: id, limit: {pool}}}
  targets:
    politics: {{path: data/target_politics.jsonl, limit: 40}}
models:
  lm:
    path: models/tiny-lm
    kind: causal-lm
    max_length: 64
    warmup: {{fraction: 0.1, epochs: 1, learning_rate: 1.0e-3, batch_size: 8, micro_batch_size: 8}}
scores:
  influence:
    use: influence.less
    model: lm
    targets: [politics]
    with: {{proj_dim: 256, aggregate: mean}}
select:
  - use: topk
    with: {{score: influence.politics, budget: 10%}}
output: {{dir: out/lds}}
evaluate:
  random_subsets: 1
  stratified: false
  random_vs_random: false
  pool_sample: 10
  bootstrap: 100
  permutations: 100
  lds: {lds}
"""


def write(folder: Path, lds_block: str, pool: int = 120) -> Path:
    path = folder / "lds.yaml"
    path.write_text(RECIPE.format(lds=lds_block, pool=pool))
    return path


def test_a_bad_lds_block_is_a_located_validate_error(demo):
    bad = write(demo, "{subsets: 90, fraction: 1.5, sample: 5000, scores: [influnce]}")
    done = cli("validate", bad)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    out = done.stdout + done.stderr
    assert f"{bad}:31:" in out and "evaluate.lds.fraction" in out
    bad = write(demo, "{subsets: 90, sample: 5000, scores: [influnce, influence.nope]}")
    out = cli("validate", bad).stdout + cli("validate", bad).stderr
    assert "evaluate.lds.sample: 5000 rows, but the pool has 120" in out
    assert "unknown score 'influnce'; did you mean 'influence'?" in out
    bad = write(demo, "{subsets: 90, sample: 6}")
    done = cli("validate", bad)
    assert done.returncode == 1
    assert ("evaluate.lds.subsets: 90 subsets of 3 rows, but a sample of 6 rows has only 20 distinct ones"
            in done.stdout + done.stderr)
    bad = write(demo, "{subsets: 4, model: lmm}")
    assert "unknown model 'lmm'; did you mean 'lm'?" in cli("validate", bad).stdout + cli("validate", bad).stderr
    bad = write(demo, "{subsets: 4, scores: [emb]}")
    bad.write_text(bad.read_text().replace("scores:\n", "scores:\n  emb: {use: embedding, model: lm}\n", 1))
    done = cli("validate", bad)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "score 'emb' is a features score; LDS sums a score over each subset, so it needs a vector or a matrix" \
        in done.stdout + done.stderr


def test_plan_shows_one_retrain_step_per_subset_with_its_cost(demo):
    path = write(demo, "{subsets: 3, fraction: 0.5, sample: 20}")
    done = cli("plan", path, "--format", "json")
    assert done.returncode == 0, done.stderr
    steps = [s for s in json.loads(done.stdout)["steps"] if "LDS subset" in s["label"]]
    assert [s["label"].split(":")[0] for s in steps] == [f"LDS subset {k}/3" for k in (1, 2, 3)]
    assert all(s["estimate"]["seconds"] > 0 and s["shards"] == 1 and s["detail"]["examples"] == 10 for s in steps)
    assert len({s["key"] for s in steps}) == 3


def kill_at(path: Path, marker: str) -> None:
    """`selectkit eval` until its first progress line holding `marker`, then SIGKILL."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SELECTKIT_PROGRESS_EVERY": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "selectkit", "eval", str(path)], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if marker in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow  # about 2 minutes: a warmup, LESS gradients and LoRA retrains of the tiny LM, four evals
def test_eval_reports_lds_as_json_and_resumes_from_cached_retrains(demo):
    path = write(demo, "{subsets: 4, fraction: 0.5, sample: 24, bootstrap: 200}")
    kill_at(path, "LDS subset 3/4")  # subsets 1 and 2 are trained and cached
    first = cli("eval", path, "--format", "json", "-q")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert set(result["lds"]) == {"influence", "random"}
    for entry in result["lds"].values():
        assert set(entry) == {"lds", "ci"} and len(entry["ci"]) == 2
        assert entry["ci"][0] <= entry["ci"][1] and -1 <= entry["lds"] <= 1
    details = result["lds_details"]
    assert details["retrains"] == {"cached": 2, "trained": 2} and details["subset_rows"] == 12
    assert len(details["per_subset"]["loss"]) == 4
    manifest = json.loads((demo / "out" / "lds-eval" / "run" / "manifest.json").read_text())
    assert manifest["evaluation"]["lds"] == result["lds"]
    report = (demo / "out" / "lds-eval" / "run" / "report.html").read_text()
    assert "Linear datamodeling score" in report and "random (control)" in report and 'id="lds-0"' in report
    second = cli("eval", path, "--format", "json", "-q")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["lds_details"]["retrains"] == {"cached": 4, "trained": 0}
    assert details["losses"] == {"cached": 0, "measured": 4}
    assert again["lds_details"]["losses"] == {"cached": 4, "measured": 0}  # a warm eval measures nothing
    assert again["lds"] == result["lds"]  # the same retrains, the same losses, the same seeded bootstrap
    assert again["lds_details"]["per_subset"] == details["per_subset"]
    console = cli("eval", path, "-q")
    assert "LDS: 4 subsets of 12 rows" in console.stdout and "random (control)" in console.stdout
    # a changed held-out row: the retrains are reused, every retrain's losses are measured again
    split = demo / "out" / "lds-eval" / "split" / "politics.heldout.jsonl"
    held = json.loads(split.read_text().splitlines()[0])["text"]
    source = demo / "data" / "target_politics.jsonl"
    lines = source.read_text().splitlines(keepends=True)
    (at,) = [i for i, line in enumerate(lines[:40]) if json.loads(line)["text"] == held]
    lines[at] = json.dumps({**json.loads(lines[at]), "text": "Changed: " + held}) + "\n"  # within max_length
    source.write_text("".join(lines))
    changed = cli("eval", path, "--format", "json", "-q")
    assert changed.returncode == 0, changed.stderr
    third = json.loads(changed.stdout)["lds_details"]
    assert third["retrains"] == {"cached": 4, "trained": 0} and third["losses"] == {"cached": 0, "measured": 4}
    assert third["per_subset"]["loss"] != details["per_subset"]["loss"]


def test_a_retrain_on_the_warmups_rows_with_its_settings_is_the_warmup(demo, tmp_path):
    """One training loop: the retraining primitive given the warmup's rows (the same keyed draw), its
    settings (`WarmupSpec.train()`) and its seed writes an adapter byte-identical to the warmup's last
    epoch; the plan's LDS retrain steps are keyed apart from it and from each other."""
    from dataclasses import replace

    from selectkit.api import validate
    from selectkit.contract.features import FeatureRequest
    from selectkit.execution.local import Run
    from selectkit.execution.progress import as_reporter
    from selectkit.planning.compile import compile_plan
    from selectkit.storage.cache import Cache

    path = write(demo, "{subsets: 3, fraction: 0.5, sample: 20}", pool=60)
    plan = compile_plan(validate(path), Cache(tmp_path / "cache"), demo / "out" / "x")
    run = Run(plan, as_reporter(None), {})
    pool = run.get("read:pool")
    (warm,) = [s for s in plan.steps if s.id == "pass:train:lm:warmup"]
    run.get(warm.id)
    spec = plan.checked.models["lm"].warmup
    rows = max(1, int(spec.fraction * len(pool)))
    work = warm.payload.work
    request = FeatureRequest("retrain", "pool", (("draws", ((("warmup",), rows),)), ("seed", 0)), "lm")
    retrain = replace(warm, id="retrain-test", key="retrain-test",
                      payload=replace(warm.payload, work=replace(work, requests=(request,),
                                                                 config=(0, ((("warmup",), rows),), spec.train()))))
    provider = warm.payload.provider
    provider.run(retrain.payload.work, run.pass_context(retrain))
    folder = provider.load(retrain.payload.work, run.pass_context(retrain))[request]
    warm_folder = plan.cache.store("train", warm.key).shards(warm.shards).open(warm.shards - 1)
    name = "adapter/adapter_model.safetensors"
    assert (folder / name).read_bytes() == (warm_folder / name).read_bytes()
    keys = [s.key for s in plan.steps if s.label.startswith("LDS subset")]
    assert len(set(keys)) == 3 and warm.key not in keys


# ---------------------------------------------------------------- retraining from a named checkpoint


def test_a_retrain_from_a_named_checkpoint_continues_its_lora(demo, tmp_path):
    """`lds.checkpoint: epoch-1`: each retrain reads the warmup (planned upstream, keyed into the
    retrain's key) and continues that checkpoint's LoRA. At a vanishing learning rate the retrained
    adapter is the checkpoint's weights, where a retrain from the base stays at a new LoRA (B = 0)."""
    import torch
    from safetensors.torch import load_file

    from selectkit.api import validate
    from selectkit.execution.local import Run
    from selectkit.execution.progress import as_reporter
    from selectkit.planning.compile import compile_plan
    from selectkit.storage.cache import Cache

    tiny = "train: {epochs: 1, learning_rate: 1.0e-12, batch_size: 8, micro_batch_size: 8}"
    cache = Cache(tmp_path / "cache")
    plans = {}
    for start in ("", ", checkpoint: epoch-1"):
        path = write(demo, f"{{subsets: 3, fraction: 0.5, sample: 20, {tiny}{start}}}", pool=60)
        plans[start] = compile_plan(validate(path), cache, demo / "out" / "x")
    base, cont = ([s for s in plans[k].steps if s.label.startswith("LDS subset")] for k in plans)
    assert not {s.key for s in base} & {s.key for s in cont}  # never the same cache entry
    assert all("pass:train:lm:warmup" in s.inputs for s in cont)
    assert all("pass:train:lm:warmup" not in s.inputs for s in base)
    assert all("checkpoint epoch-1 continued" in s.label and s.detail["starts from"] == "epoch-1" for s in cont)

    plan = plans[", checkpoint: epoch-1"]
    run = Run(plan, as_reporter(None), {})
    run.get("read:pool")  # as `selectkit eval` pulls them
    run.get(cont[0].id)
    (warm,) = [s for s in plan.steps if s.id == "pass:train:lm:warmup"]
    name = "adapter/adapter_model.safetensors"
    checkpoint = load_file(str(cache.store("train", warm.key).shards(1).open(0) / name))
    continued = load_file(str(cache.store("train", cont[0].key).shards(1).open(0) / name))
    run = Run(plans[""], as_reporter(None), {})
    run.get("read:pool")
    run.get(base[0].id)
    fresh = load_file(str(cache.store("train", base[0].key).shards(1).open(0) / name))
    b = [k for k in checkpoint if "lora_B" in k]
    assert b and max(float(checkpoint[k].abs().max()) for k in b) > 1e-4  # the warmup moved B off zero
    for k in checkpoint:
        torch.testing.assert_close(continued[k], checkpoint[k], atol=1e-7, rtol=0)
    assert max(float(fresh[k].abs().max()) for k in b) < 1e-7


def test_eval_arms_on_the_recipes_model_can_continue_a_named_checkpoint(demo):
    """`evaluate.proxy.checkpoint`: eval's arms are the same retrain kind started from the warmup's
    checkpoint; the plan reads the warmup for them, and the JSON and console say which checkpoint."""
    path = write(demo, "{subsets: 3, sample: 20}", pool=60)
    path.write_text(path.read_text().replace("  lds: {subsets: 3, sample: 20}\n",
                                              "  proxy: {model: lm, checkpoint: epoch-1}\n"))
    plan = cli("plan", path, "--format", "json")
    assert plan.returncode == 0, plan.stderr
    arms = [s for s in json.loads(plan.stdout)["steps"] if s["label"].startswith("eval pair")]
    assert len(arms) == 2 and all("checkpoint epoch-1 continued" in s["label"] and "pass:train:lm:warmup" in s["inputs"]
                                  for s in arms)
    done = cli("eval", path, "--format", "json", "-q")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    proxy = json.loads(done.stdout)["proxy"]
    assert (proxy["checkpoint"], proxy["arms_trained"]) == ("epoch-1", 2)
    assert "continuing checkpoint epoch-1" in cli("eval", path).stdout


def test_a_bad_start_checkpoint_is_a_located_validate_error(demo):
    bad = write(demo, "{subsets: 3, sample: 20, checkpoint: epoch-7}")
    done = cli("validate", bad)
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in out
    assert f"{bad}:31:" in out and "evaluate.lds.checkpoint: model 'lm' has no checkpoint 'epoch-7'" in out
    assert "one of: epoch-1" in out
    bad = write(demo, "{subsets: 3, sample: 20, checkpoint: epoch-1, train: {lora: {r: 4}}}")
    out = cli("validate", bad).stdout + cli("validate", bad).stderr
    assert "checkpoint 'epoch-1' is a LoRA with r=8" in out and "the retrain's LoRA has r=4" in out
    bad = write(demo, "{subsets: 3, sample: 20}")
    bad.write_text(bad.read_text().replace("  lds:", "  proxy: {checkpoint: epoch-1}\n  lds:"))
    out = cli("validate", bad).stdout + cli("validate", bad).stderr
    assert "evaluate.proxy.checkpoint sets the LoRA of the recipe's own model" in out


# ---------------------------------------------------------------- known answer: the synthetic task pool

TASK_RECIPE = """selectkit: 1
name: known
seed: 0
data:
  pool: {{path: data/pool.jsonl, id: id}}
  targets:
    rev: {{path: data/rev.jsonl, id: id}}
models:
  lm:
    path: lm
    kind: causal-lm
    max_length: 64
    warmup: {{fraction: 0.5, epochs: 2, learning_rate: 1.0e-3, batch_size: 8, micro_batch_size: 8,
             lora: {{r: 4, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}}}}
scores:
  less: {{use: influence.less, model: lm, targets: [rev]}}
  tracin: {{use: influence.tracin, model: lm, targets: [rev]}}
  trak: {{use: influence.trak, model: lm, targets: [rev], with: {{proj_dim: 1024}}}}   # TracIn's store
  ekfac: {{use: influence.ekfac, model: lm, targets: [rev]}}
select:
  - use: topk
    with: {{score: less.rev, budget: 25%}}
output: {{dir: out}}
evaluate:
  heldout: 0.5
  random_subsets: 1
  stratified: false
  random_vs_random: false
  pool_sample: 10
  bootstrap: 100
  permutations: 100
  lds: {{subsets: {subsets}, fraction: 0.5, sample: 120, bootstrap: 500}}
"""


@pytest.mark.slow  # 4 min at load ~5, 7-11 min at load ~9-12 (2 cores): a warmup, four scorers, 16 LoRA retrains
def test_less_tracin_trak_and_ekfac_are_clearly_positive_on_the_synthetic_task_pool(tmp_path):
    """The issue's known answer: on the synthetic task pool of the influence tests (reverse / add / upper,
    40 each, on the tiny byte-level Llama briefly trained on the mixture, with the LESS-style warmup of
    tests/test_influence_lm.py), a subset's loss on held-out `reverse` examples is driven by how many
    `reverse` rows it holds, and the four scorers rank those rows first: each one's LDS CI lies above 0,
    while the keyed random control's CI holds 0. Measured at K=16: LESS 0.91 [0.71, 0.99], TracIn 0.88
    [0.62, 0.97], TRAK 0.70 [0.25, 0.95], EK-FAC 0.91 [0.69, 0.99], random -0.22 [-0.67, 0.69]."""
    from influence_fixtures import pretrained_lm, rows

    (tmp_path / "data").mkdir()
    for name, data in (("pool", rows(40, seed=1)), ("rev", rows(24, seed=2, tasks=("reverse",)))):
        (tmp_path / "data" / f"{name}.jsonl").write_text("".join(json.dumps({"id": i, **r}) + "\n"
                                                                 for i, r in enumerate(data)))
    pretrained_lm(tmp_path / "lm")
    path = tmp_path / "known.yaml"
    path.write_text(TASK_RECIPE.format(subsets=16))  # K=8 leaves LESS's CI at [-0.18, 1.0]
    done = cli("eval", path, "--format", "json", "-q")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["lds"]
    print("synthetic task pool LDS", result)
    assert set(result) == {"less", "tracin", "trak", "ekfac", "random"}
    for name in ("less", "tracin", "trak", "ekfac"):
        assert result[name]["ci"][0] > 0, (name, result)
        assert result[name]["lds"] > 0.3, (name, result)
    assert lds.contains_zero(result["random"]), result
