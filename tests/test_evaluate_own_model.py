"""`selectkit eval` on the recipe's own model (`evaluate.proxy.model`): validate's located errors, the arms as
planned retrain steps with estimates, and an eval on the tiny demo LM whose arms are LoRA fine-tunes of that
model (JSON with each arm's held-out loss, which proxy ran) and whose second run reuses every cached arm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

RECIPE = """selectkit: 1
name: own
seed: 0
data:
  pool: {{path: data/pool.jsonl, id: id, limit: 120}}
  targets:
    politics: {{path: data/target_politics.jsonl, limit: 40}}
models:
  lm:
    path: models/tiny-lm
    kind: causal-lm
    max_length: 64
  enc:
    path: models/tiny-lm
    kind: embedding
scores:
  ppl: {{use: perplexity, model: lm}}
select:
  - use: topk
    with: {{score: ppl, budget: 20%}}
output: {{dir: out/own, summarize_by: domain}}
evaluate:
  random_subsets: 2
  random_vs_random: false
  pool_sample: 10
  bootstrap: 100
  permutations: 100
  proxy:
{proxy}
"""

PROXY = """    model: lm
    train: {epochs: 1, learning_rate: 1.0e-3, batch_size: 8, micro_batch_size: 8}"""


def write(folder: Path, proxy: str = PROXY) -> Path:
    path = folder / "own.yaml"
    path.write_text(RECIPE.format(proxy=proxy))
    return path


def errors(path: Path) -> str:
    done = cli("validate", path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


def test_an_unknown_model_is_located_with_a_suggestion(demo):
    path = write(demo, "    model: lmm")
    assert f"{path}:29:12: error: evaluate.proxy.model: unknown model 'lmm'; did you mean 'lm'?" in errors(path)


def test_a_model_that_is_not_a_causal_lm_is_refused_at_its_line(demo):
    path = write(demo, "    model: enc")
    assert (f"{path}:29:12: error: evaluate.proxy.model fine-tunes a LoRA on a causal-lm; model 'enc' has kind "
            "embedding") in errors(path)


def test_settings_of_the_other_proxy_conflict(demo):
    path = write(demo, "    model: lm\n    layers: 2\n    lora: {r: 4}\n    train: {lora: {r: 2}}")
    out = errors(path)
    assert (f"{path}:30:5: error: evaluate.proxy.layers is a setting of the from-scratch proxy, and "
            "evaluate.proxy.model fine-tunes 'lm' instead") in out
    assert f"{path}:31:5: error: evaluate.proxy.lora and evaluate.proxy.train.lora both set the arms' LoRA" in out
    path = write(demo, "    lora: {r: 4}\n    hidden: 64")
    out = errors(path)
    assert (f"{path}:29:5: error: evaluate.proxy.lora sets the LoRA of the recipe's own model, but "
            "evaluate.proxy.model names none") in out


def test_the_default_proxy_still_validates_without_a_model(demo):
    path = write(demo, "    hidden: 64\n    heads: 4")
    done = cli("validate", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_plan_shows_one_lora_step_per_arm_and_pair_with_its_cost(demo):
    done = cli("plan", write(demo), "--format", "json")
    assert done.returncode == 0, done.stderr
    steps = [s for s in json.loads(done.stdout)["steps"] if s["label"].startswith("eval pair")]
    assert [s["label"].split(":")[0] + ":" + s["label"].split(":")[1] for s in steps] == [
        f"eval pair {i}/2: {arm} arm" for i in (1, 2) for arm in ("selection", "random", "stratified")]
    assert all(s["estimate"]["seconds"] > 0 and s["detail"]["examples"] == 24 for s in steps)  # 20% of 120
    assert len({s["key"] for s in steps}) == 6
    # the default proxy plans no model work for eval
    done = cli("plan", write(demo, "    hidden: 32"), "--format", "json")
    assert not [s for s in json.loads(done.stdout)["steps"] if s["label"].startswith("eval pair")]


@pytest.mark.slow  # about a minute: six LoRA fine-tunes of the tiny LM, then a second eval from the cache
def test_eval_fine_tunes_the_recipes_model_per_arm_and_reuses_cached_arms(demo):
    path = write(demo)
    first = cli("eval", path, "--format", "json", "-q")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["metric"] == "loss"
    proxy = result["proxy"]
    assert proxy["kind"] == "lora" and proxy["model"] == "lm" and proxy["train"]["epochs"] == 1
    assert (proxy["arms_cached"], proxy["arms_trained"]) == (0, 6)
    assert (proxy["losses_cached"], proxy["losses_measured"]) == (0, 6)
    for name in ("politics", "pool sample"):
        entry = result["sets"][name]
        assert set(entry["loss"]) == {"selection", "random", "stratified"}
        assert all(0 < v < 10 for v in entry["loss"].values())  # nats per token of a byte-level LM
        c = entry["selection_vs_random"]
        assert {"loss_a", "loss_b", "difference", "ci_low", "ci_high", "verdict"} <= set(c) and "bpb_a" not in c
        assert c["loss_a"] == pytest.approx(entry["loss"]["selection"], abs=1e-5)
        assert c["ci_low"] <= c["difference"] <= c["ci_high"]
    arms = result["arms"]
    assert [a["status"] for arm in arms.values() for a in arm] == ["computed"] * 6
    # paired arms are matched on bytes: random and stratified arms never exceed the selection's bytes by a text
    assert all(a["bytes"] >= proxy["bytes_per_arm"] for arm in arms.values() for a in arm)
    run = demo / "out" / "own-eval" / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["evaluation"]["proxy"]["kind"] == "lora"
    assert manifest["evaluation"]["sets"] == result["sets"]
    second = cli("eval", path, "--format", "json", "-q")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert (again["proxy"]["arms_cached"], again["proxy"]["arms_trained"]) == (6, 0)
    assert (again["proxy"]["losses_cached"], again["proxy"]["losses_measured"]) == (6, 0)  # nothing measured again
    assert [a["status"] for arm in again["arms"].values() for a in arm] == ["cached"] * 6
    assert again["sets"] == result["sets"]  # the same adapters, the same losses, the same seeded statistics
    console = cli("eval", path)
    assert console.returncode == 0, console.stderr
    assert "proxy: the recipe's model 'lm'" in console.stdout and "arms cached 6, trained 0" in console.stdout
    assert "mean held-out loss (nats/token) selection" in console.stdout
