"""No code runs from a file unless the recipe and the command line both allow it.

Through the real CLI on real, hostile files: a checkpoint's `optimizer.pt`, a model's
`pytorch_model.bin` and a LoRA adapter's `adapter_model.bin` that are pickles which would create
a marker file are refused by name and the marker never appears; a model folder whose config.json
`auto_map`s a custom modeling file (which creates a marker when imported) is refused by every
pass that loads models (forward, gradients, the LESS warmup's training, unlearning) unless the
recipe's `trust_remote_code` and `--trust-remote-code` are both given, and then it loads (and
trains: the warmup writes its checkpoints to the cache without a single pickle).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from conftest import cli

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

TINY_LORA = "{r: 2, alpha: 4, dropout: 0.0, target_modules: [q_proj, v_proj]}"
WARMUP = ("{fraction: 0.5, epochs: 2, learning_rate: 1.0e-3, batch_size: 4, micro_batch_size: 4, "
          f"lora: {TINY_LORA}}}")
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle"}


class RunsCode:
    """Pickles to a call of exec that writes `marker`: what a hostile torch file looks like."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code from a file ran')",))


def hostile_pickle(path: Path, marker: Path, **plain) -> Path:
    torch.save({**plain, "payload": RunsCode(marker)}, path)
    return path


def would_run(path: Path, marker: Path) -> bool:
    """The control: an unsafe load of `path` does create the marker (so its absence means something)."""
    assert not marker.exists()
    try:
        torch.load(path, weights_only=False)
    finally:
        ran = marker.exists()
        marker.unlink(missing_ok=True)
    return ran


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A tiny byte-level Llama, a LoRA adapter for it, a pool and a target (built once)."""
    from model_fixtures import tiny_causal_lm
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("optins")
    tiny_causal_lm(root / "lm", hidden=16)
    model = LlamaForCausalLM.from_pretrained(root / "lm")
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        root / "adapter")
    rows = [{"id": f"r{i}", "text": f"example {i}: " + " ".join(["word"] * (2 + i % 5))} for i in range(12)]
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    return root


@pytest.fixture
def work(files, tmp_path) -> Path:
    for name in ("lm", "adapter", "pool.jsonl", "t.jsonl"):
        (shutil.copytree if (files / name).is_dir() else shutil.copy)(files / name, tmp_path / name)
    return tmp_path


def recipe(folder: Path, model: str, score: str, *, name: str = "recipe.yaml") -> Path:
    """`model`: the extra keys of models.lm; `score`: the scores.s entry (select: top 3 by s)."""
    text = f"""selectkit: 1
name: optins
seed: 0
data:
  pool: {{path: pool.jsonl, id: id}}
  targets:
    t: {{path: t.jsonl, id: id}}
models:
  lm: {{path: lm, kind: causal-lm, max_length: 32, device: cpu{", " + model if model else ""}}}
scores:
  s: {score}
select:
  - use: topk
    with: {{score: s, budget: 3}}
output: {{dir: out, formats: [parquet], report: false}}
"""
    path = folder / name
    path.write_text(text)
    return path


LESS = "{use: influence.less, model: lm, targets: [t], with: {proj_dim: 16, combine: max}}"


def refused(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


# ---------------------------------------------------------------- pickles that would run code


def test_a_hostile_optimizer_pt_in_a_checkpoint_is_refused(work):
    marker = work / "MARKER"
    checkpoint = shutil.copytree(work / "adapter", work / "checkpoint-1")
    (checkpoint / "checkpoint.json").write_text('{"lr": 0.001}\n')
    hostile_pickle(checkpoint / "optimizer.pt", marker, param_names=["x"])
    err = refused(cli("run", recipe(work, "checkpoints: [checkpoint-1]", LESS)))
    assert "checkpoint-1/optimizer.pt: cannot load: refused" in err and "could run code" in err, err
    assert "weights_only` set to `False`" not in err  # torch's advice to load it unsafely is not passed on
    assert not marker.exists()
    assert would_run(checkpoint / "optimizer.pt", marker)


@pytest.mark.parametrize("where", ["model-weights", "lora-adapter"])
def test_hostile_weight_files_are_refused(work, where):
    marker = work / "MARKER"
    if where == "model-weights":
        (work / "lm" / "model.safetensors").unlink()
        bad, model = hostile_pickle(work / "lm" / "pytorch_model.bin", marker), ""
        expected = "model 'lm': refused to load pytorch_model.bin"
    else:
        (work / "adapter" / "adapter_model.safetensors").unlink()
        bad, model = hostile_pickle(work / "adapter" / "adapter_model.bin", marker), "lora: adapter"
        expected = "model 'lm' (lora): refused to load adapter_model.bin"
    err = refused(cli("run", recipe(work, model, "{use: perplexity, model: lm}")))
    assert expected in err and "could run code" in err, err
    assert not marker.exists()
    assert would_run(bad, marker)


# ---------------------------------------------------------------- custom model code


def remote_code_model(folder: Path, marker: Path) -> Path:
    """config.json auto_maps AutoModelForCausalLM to modeling_evil.py, which writes `marker` on import
    (and is otherwise a plain Llama, so it loads when allowed)."""
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    config["architectures"] = ["EvilForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "modeling_evil.py").write_text(
        f"from pathlib import Path\n\nPath({str(marker)!r}).write_text('custom code ran')\n\n"
        "from transformers import LlamaForCausalLM\n\n\nclass EvilForCausalLM(LlamaForCausalLM):\n    pass\n")
    return folder


PASSES = {  # the pass that loads the model first: its step label, and a score that needs it
    "forward": ("forward lm over pool", "{use: perplexity, model: lm}", ""),
    "gradients": ("gradient norms of lm", "{use: self_influence, model: lm}", ""),
    "train": ("warmup lm: LoRA", LESS, f"warmup: {WARMUP}"),
    "unlearn": ("UnTrac-Inv on lm", "{use: unlearning.untrac_inv, model: lm, targets: [t], "
                "with: {steps: 1, grad_accum: 1, batch_size: 2, eval_every: 1}}", ""),
}


@pytest.mark.parametrize("kind", list(PASSES))
def test_custom_model_code_needs_the_command_line_opt_in(work, kind):
    marker = work / "MARKER"
    remote_code_model(work / "lm", marker)
    label, score, extra = PASSES[kind]
    path = recipe(work, ", ".join(x for x in ("trust_remote_code: true", extra) if x), score)
    assert cli("validate", path).returncode == 0  # the recipe allows it
    err = refused(cli("run", path))
    assert "model 'lm': needs its own Python code; the recipe allows it, but the command did not" in err, err
    assert "--trust-remote-code" in err
    passes = [line.strip() for line in err.splitlines() if line.strip().startswith("pass:")]
    assert passes and label in passes[-1], passes  # refused by the provider that loads the model
    assert not marker.exists()


def test_custom_model_code_needs_the_recipe_opt_in(work):
    marker = work / "MARKER"
    remote_code_model(work / "lm", marker)
    path = recipe(work, "", "{use: perplexity, model: lm}")
    for command in (("validate", path), ("run", path, "--trust-remote-code")):
        err = refused(cli(*command))
        assert f"{path}:9:" in err and "needs its own Python code (config.json has auto_map)" in err, err
        assert "trust_remote_code: true" in err
    assert not marker.exists()


def test_with_both_opt_ins_custom_code_trains_and_the_warmup_cache_holds_no_pickle(work):
    """One LESS run with a warmup on the custom-code model: the code loads (the marker the refusals
    never let appear), and the warmup's checkpoints in the cache are safetensors and JSON only."""
    marker = work / "MARKER"
    remote_code_model(work / "lm", marker)
    result = cli("run", recipe(work, f"trust_remote_code: true, warmup: {WARMUP}", LESS), "--trust-remote-code")
    assert "the command did not" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "custom code ran"
    cache = Path(os.environ["SELECTKIT_CACHE_DIR"])
    train = sorted(p for p in (cache / "train").rglob("*") if p.is_file())
    names = {p.name for p in train}
    assert {"optimizer.safetensors", "adapter_model.safetensors", "state.json"} <= names, names
    assert len([p for p in train if p.name == "optimizer.safetensors"]) == 2  # one checkpoint per epoch
    everything = [p for p in cache.rglob("*") if p.is_file()]
    assert not [p for p in everything if p.suffix in PICKLE_SUFFIXES]
    for path in everything:  # no pickle stream (0x80: its protocol byte); archives (.npz) hold plain arrays only
        assert not path.read_bytes()[:1] == b"\x80", path
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    assert member.endswith(".npy"), (path, member)  # a torch archive holds data.pkl
                    assert b"'|O'" not in archive.read(member)[:128], (path, member)  # no object (pickled) array
