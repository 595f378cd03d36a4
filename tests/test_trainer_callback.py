"""The Trainer callback (selectkit.integrations.transformers.GradientCallback) on a real HF Trainer run:
the demo LM with a LoRA fine-tuned for a few steps on pool rows, two checkpoints saved by the Trainer.

A LESS recipe over the checkpoints the callback wrote finds its pool gradient features cached (plan and
run say so, through the CLI and the Python API) and selects byte-for-byte what a run with a fresh cache
selects over the same checkpoints; the checkpoints hold the Trainer's own AdamW moments and the rates its
steps used; training with the callback ends with the same weights as without it; a pool whose rows
changed after training is computed again (never mixed); a model without LoRA, a recipe with no gradient
features and a bad `every` are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import cli

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")  # the Trainer needs it

from model_fixtures import DEMO_DATA, TINY_LM  # noqa: E402

from selectkit.errors import SelectkitError  # noqa: E402

POOL_ROWS, TRAIN_ROWS, STEPS, SAVE_STEPS, LR = 24, 16, 4, 2, 1e-3


def rows(file: str, n: int) -> list[dict]:
    return [json.loads(line) for line in (DEMO_DATA / file).read_text().splitlines()[:n]]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def less_recipe(work: Path, **score_with) -> dict:
    return {"selectkit": 1, "name": "less-callback", "seed": 0,
            "data": {"pool": {"path": "pool.jsonl", "id": "id"}, "targets": {"t": {"path": "t.jsonl"}}},
            "models": {"lm": {"path": str(TINY_LM), "kind": "causal-lm", "max_length": 32, "device": "cpu"}},
            "scores": {"influence": {"use": "influence.less", "model": "lm", "targets": ["t"],
                                     "with": {"proj_dim": 16, "combine": "max", **score_with}}},
            "select": [{"use": "topk", "with": {"score": "influence", "budget": 6}}],
            "execution": {"shard_rows": 8},  # 3 row shards x 2 checkpoints
            "output": {"dir": "out", "formats": ["parquet"], "report": False}}


def write_recipe(work: Path, recipe: dict, name: str = "less.yaml") -> Path:
    path = work / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def lora_model(dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY_LM)
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=dropout,
                                            target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


def train(work: Path, model, callbacks: list, *, save: bool = True):
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(TINY_LM)
    data = [tok(r["text"], truncation=True, max_length=32) for r in rows("pool.jsonl", TRAIN_ROWS)]
    args = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=4, max_steps=STEPS,
                             save_strategy="steps" if save else "no", save_steps=SAVE_STEPS, learning_rate=LR,
                             lr_scheduler_type="linear", report_to="none", use_cpu=True, logging_strategy="no",
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    return trainer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread for this module (on a 2-core machine shared with other jobs, its default
    thread pool spends several times the work's CPU waiting), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """One fine-tune with the callback: the work folder, the callback, the trainer."""
    from selectkit.integrations.transformers import GradientCallback

    work = tmp_path_factory.mktemp("callback")
    write_jsonl(work / "pool.jsonl", rows("pool.jsonl", POOL_ROWS))
    write_jsonl(work / "t.jsonl", rows("target_politics.jsonl", 4))
    recipe = write_recipe(work, less_recipe(work))
    callback = GradientCallback(recipe, checkpoints_dir=work / "checkpoints", cache_dir=work / "cache")
    trainer = train(work, lora_model(), [callback])
    return work, callback, trainer


def pool_gradient_step(plan):
    steps = [s for s in plan.steps if s.kind == "pass" and s.payload.provider.name == "gradients"
             and s.payload.work.data == "pool"]
    assert len(steps) == 1
    return steps[0]


def with_checkpoints(work: Path, checkpoints: list[Path], name: str = "less-ckpt.yaml") -> Path:
    recipe = less_recipe(work)
    recipe["models"]["lm"]["checkpoints"] = [str(c) for c in checkpoints]
    return write_recipe(work, recipe, name)


# ---------------------------------------------------------------- the store the recipe finds


def test_the_recipe_finds_its_pool_gradients_cached_and_selects_what_a_fresh_run_selects(trained):
    import selectkit

    work, callback, _ = trained
    assert [c.name for c in callback.checkpoints] == ["step-2", "step-4"]
    assert [t["status"] for t in callback.timings] == [{s: "computed"} for s in callback.timings[0]["status"]] + \
        [{s: "resumed"} for s in callback.timings[1]["status"]]  # the 2nd save took the 1st's shards over
    recipe = with_checkpoints(work, callback.checkpoints)

    shown = cli("plan", recipe, "--cache-dir", work / "cache")
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if "gradient features of lm over pool" in x)
    assert line.endswith("(cached)"), shown.stdout
    target = next(x for x in shown.stdout.splitlines() if "gradient features of lm over t " in x)
    assert target.endswith("(to compute)")  # only the data sources asked for were stored
    assert pool_gradient_step(selectkit.plan(recipe, cache_dir=work / "cache")).cached

    selectkit.run(recipe, cache_dir=work / "cache", out_dir=work / "out-cached")
    manifest = json.loads((work / "out-cached" / "manifest.json").read_text())
    stages = {s["label"]: s["status"] for s in manifest["stages"]}
    pool_stage = next(label for label in stages if "gradient features of lm over pool" in label)
    assert stages[pool_stage] == "cached", stages

    fresh = selectkit.run(recipe, cache_dir=work / "fresh-cache", out_dir=work / "out-fresh")
    status = {r.label: r.status for r in fresh.result.reports}
    assert status[pool_stage] == "computed"  # the reference really computed them, from the same checkpoints
    cached = (work / "out-cached" / "selection.parquet").read_bytes()
    assert cached == (work / "out-fresh" / "selection.parquet").read_bytes()
    assert int(fresh.selection["selected"].sum()) == 6
    # and the Python API over the callback's own recipe object reads the same cache to the same bytes
    again = selectkit.run(callback.recipe(), out_dir=work / "out-api", cache_dir=work / "cache")
    assert "computed" not in {r.status for r in again.result.reports if r.kind == "model-pass"}
    assert (work / "out-api" / "selection.parquet").read_bytes() == cached


def test_checkpoints_hold_the_trainers_adam_moments_and_the_rates_its_steps_used(trained):
    from selectkit_plugins.lib.influence.checkpoints import adam_state, read_checkpoints

    work, callback, trainer = trained
    first, last = read_checkpoints(callback.checkpoints)
    # linear decay from LR over STEPS steps: steps 1-2 use LR, 3/4 LR; steps 3-4 use 1/2, 1/4 LR
    assert first.lr == pytest.approx(LR * (1 + 0.75) / 2) and last.lr == pytest.approx(LR * (0.5 + 0.25) / 2)
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    state = adam_state(last, names)
    opt = trainer.optimizer
    params = dict(trainer.model.named_parameters())
    expected_m = torch.cat([opt.state[params[n]]["exp_avg"].reshape(-1).double() for n in names])
    expected_v = torch.cat([opt.state[params[n]]["exp_avg_sq"].reshape(-1).double() for n in names])
    assert torch.equal(state.exp_avg, expected_m) and torch.equal(state.exp_avg_sq, expected_v)
    assert state.step == STEPS and float(state.exp_avg.abs().sum()) > 0
    assert not list(callback.checkpoints[0].parent.glob(".tmp-*"))  # each folder renamed into place whole


def test_training_with_the_callback_ends_where_training_without_it_does(trained, tmp_path):
    """Every 2 steps instead of at the Trainer's saves, with dropout on: the callback's model loads draw
    random numbers, and the Trainer's random state is kept across them."""
    from selectkit.integrations.transformers import GradientCallback

    work, _, _ = trained
    callback = GradientCallback(work / "less.yaml", checkpoints_dir=tmp_path / "every", every=2,
                                cache_dir=tmp_path / "cache")
    with_callback = train(tmp_path / "a", lora_model(dropout=0.1), [callback], save=False)
    without = train(tmp_path / "b", lora_model(dropout=0.1), [], save=False)
    assert [c.name for c in callback.checkpoints] == ["step-2", "step-4"]
    a = {n: p for n, p in with_callback.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in without.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


# ---------------------------------------------------------------- bad input


def test_a_pool_whose_rows_changed_is_computed_again_never_mixed(trained, tmp_path):
    import selectkit

    work, callback, _ = trained
    for name in ("pool.jsonl", "t.jsonl"):
        shutil.copy(work / name, tmp_path / name)
    changed = rows("pool.jsonl", POOL_ROWS)
    changed[5]["text"] = "A different text for this row: " + changed[5]["text"]
    write_jsonl(tmp_path / "pool.jsonl", changed)
    recipe = with_checkpoints(tmp_path, callback.checkpoints)
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache)  # the callback's store, as a team's shared cache would hold it
    assert not pool_gradient_step(selectkit.plan(recipe, cache_dir=cache)).cached
    out = selectkit.run(recipe, cache_dir=cache, out_dir=tmp_path / "out")
    pool_stage = next(r for r in out.result.reports if "gradient features of lm over pool" in r.label)
    assert pool_stage.status == "computed" and not pool_stage.detail.get("shards_reused")
    selectkit.run(recipe, cache_dir=tmp_path / "fresh", out_dir=tmp_path / "out-fresh")
    assert (tmp_path / "out" / "selection.parquet").read_bytes() == \
        (tmp_path / "out-fresh" / "selection.parquet").read_bytes()


def test_a_model_without_lora_is_a_clear_error(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from selectkit.integrations.transformers import GradientCallback

    work, _, _ = trained
    callback = GradientCallback(work / "less.yaml", checkpoints_dir=tmp_path / "c", cache_dir=tmp_path / "cache")
    with pytest.raises(SelectkitError, match=r"has no LoRA adapter and the recipe's gradient settings set no "
                                             r"`params:`.*get_peft_model"):
        train(tmp_path, AutoModelForCausalLM.from_pretrained(TINY_LM), [callback])
    linear = write_recipe(tmp_path, less_recipe(tmp_path, params="linear"))
    for name in ("pool.jsonl", "t.jsonl"):
        shutil.copy(work / name, tmp_path / name)
    callback = GradientCallback(linear, checkpoints_dir=tmp_path / "c", cache_dir=tmp_path / "cache")
    with pytest.raises(SelectkitError, match=r"no LoRA adapter the recipe's gradient settings say `params: linear`"):
        train(tmp_path, AutoModelForCausalLM.from_pretrained(TINY_LM), [callback])
    assert not (tmp_path / "c").exists()  # refused before any step


def test_a_recipe_without_gradient_features_and_bad_settings_are_clear_errors(trained, tmp_path):
    from selectkit.integrations.transformers import GradientCallback

    work, _, _ = trained
    recipe = less_recipe(work)
    recipe["scores"] = {"ppl": {"use": "perplexity", "model": "lm"}}
    recipe["select"] = [{"use": "topk", "with": {"score": "ppl", "budget": 8}}]
    path = write_recipe(work, recipe, "ppl.yaml")
    with pytest.raises(SelectkitError, match="computes no gradient features of model 'lm' over pool"):
        GradientCallback(path, checkpoints_dir=tmp_path / "c", cache_dir=tmp_path / "cache")
    with pytest.raises(SelectkitError, match="every=0 must be a positive number of steps"):
        GradientCallback(work / "less.yaml", checkpoints_dir=tmp_path / "c", every=0)
    with pytest.raises(SelectkitError, match="the recipe has no model 'base'"):
        GradientCallback(work / "less.yaml", checkpoints_dir=tmp_path / "c", model="base")
    typo = (work / "less.yaml").read_text().replace("use: influence.less", "use: influence.lesss")
    (tmp_path / "typo.yaml").write_text(typo)
    with pytest.raises(SelectkitError, match=r"typo.yaml:\d+:\d+: .*unknown scorer 'influence.lesss'"):
        GradientCallback(tmp_path / "typo.yaml", checkpoints_dir=tmp_path / "c")  # before any training


def test_a_pool_changed_between_two_saves_is_computed_again_at_the_second(trained, tmp_path):
    """The second save takes the first's shards over only from the entry keyed by the data as it is now:
    rows changed during training mean its first checkpoint is computed again, and the store ends equal
    to a fresh run's over the changed rows."""
    from transformers import TrainerCallback

    import selectkit
    from selectkit.integrations.transformers import GradientCallback

    work, _, _ = trained
    for name in ("pool.jsonl", "t.jsonl", "less.yaml"):
        shutil.copy(work / name, tmp_path / name)
    changed = rows("pool.jsonl", POOL_ROWS)
    changed[0]["text"] = "Changed while training: " + changed[0]["text"]

    class ChangeThePool(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                write_jsonl(tmp_path / "pool.jsonl", changed)

    callback = GradientCallback(tmp_path / "less.yaml", checkpoints_dir=tmp_path / "c", every=2,
                                cache_dir=tmp_path / "cache")
    train(tmp_path / "hf", lora_model(), [ChangeThePool(), callback], save=False)
    assert [list(t["status"].values()) for t in callback.timings] == [["computed"], ["computed"]]
    recipe = with_checkpoints(tmp_path, callback.checkpoints)
    assert pool_gradient_step(selectkit.plan(recipe, cache_dir=tmp_path / "cache")).cached
    selectkit.run(recipe, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out")
    selectkit.run(recipe, cache_dir=tmp_path / "fresh", out_dir=tmp_path / "out-fresh")
    assert (tmp_path / "out" / "selection.parquet").read_bytes() == \
        (tmp_path / "out-fresh" / "selection.parquet").read_bytes()
