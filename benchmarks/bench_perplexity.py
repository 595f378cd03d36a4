"""Perplexity pass: selectkit's compute_features vs a plain Hugging Face loop (batch of 1) and a
well-written batched loop (sorted by length, padded, inference_mode), same model, same texts,
side by side in one run (medians of --repeats). Then peak memory (VmHWM of a subprocess) of a
selectkit pass over N and 10·N texts, which should stay flat.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_perplexity.py            # ~3-5 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_perplexity.py --texts 64 --repeats 3 --skip-memory

The model is a Llama built from a config (hidden 384, 6 layers, ~14M parameters) over a BPE
vocabulary of 8192 trained on the demo pool. On CUDA the script also prints MFU against the
GPU's dense bf16 peak (selectkit.planning.estimates.GPUS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "perplexity"
POOL = ROOT / "recipes" / "data" / "pool.jsonl"


def pool_texts() -> list[str]:
    return [json.loads(line)["text"] for line in POOL.read_text(encoding="utf-8").splitlines() if line]


def build_model(folder: Path, hidden: int, layers: int, vocab: int) -> Path:
    """A random Llama and a BPE tokenizer trained on the pool (deterministic), saved to `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").is_file():
        return folder
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(pool_texts(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<unk>"],
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=0,
                         bos_token_id=None, eos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def hf_batch_of_one(model, tok, texts, max_length):
    import torch

    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            out.append(model(input_ids=ids, labels=ids).loss.item())
    return out


def hf_batched(model, tok, texts, max_length, batch_size=32):
    """The loop a careful user writes: length-sorted, right-padded batches, fused cross-entropy."""
    import torch
    import torch.nn.functional as F

    enc = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(enc[i]))
    out = [0.0] * len(texts)
    with torch.inference_mode():
        for a in range(0, len(order), batch_size):
            rows = order[a: a + batch_size]
            batch = tok.pad({"input_ids": [enc[i] for i in rows]}, return_tensors="pt")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits
            target = batch["input_ids"][:, 1:]
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), reduction="none")
            mask = batch["attention_mask"][:, 1:].float()
            per = (nll.view_as(mask) * mask).sum(1) / mask.sum(1)
            for j, i in enumerate(rows):
                out[i] = per[j].item()
    return out


def selectkit_pass(lm, spec, texts, shard_size=1024):
    import polars as pl

    from selectkit.data.sources import Dataset
    from selectkit.testing import compute_features
    from selectkit_plugins.passes.forward import feature_request

    ds = Dataset("pool", pl.DataFrame({"text": texts}), pl.Series("id", range(len(texts))), texts, "")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        store = compute_features(spec, ".", {"pool": ds}, [feature_request("loss")], tmp, model=lm,
                                 shard_size=shard_size)
        return list(store.get("loss"))


def speed(args) -> dict:
    import numpy as np
    import torch

    from selectkit.models.loader import load_model
    from selectkit.recipe.spec import ModelSpec

    folder = build_model(WORK / f"llama-{args.hidden}x{args.layers}", args.hidden, args.layers, args.vocab)
    spec = ModelSpec(path=str(folder), kind="causal-lm", max_length=args.max_length)
    lm = load_model(spec, ".")
    model, tok = lm.model, lm.tokenizer
    params = model.num_parameters()
    texts = pool_texts()[: args.texts]
    tokens = sum(len(x) for x in tok(texts, truncation=True, max_length=args.max_length)["input_ids"])
    methods = {
        "hf batch=1": lambda: hf_batch_of_one(model, tok, texts, args.max_length),
        "hf batched (sorted, bs=32)": lambda: hf_batched(model, tok, texts, args.max_length),
        "selectkit compute_features": lambda: selectkit_pass(lm, spec, texts),
    }
    print(f"model: Llama {params / 1e6:.1f}M params, device {lm.device}, torch threads {torch.get_num_threads()}; "
          f"{len(texts)} texts, {tokens:,} tokens")
    times: dict[str, list[float]] = {m: [] for m in methods}
    results = {}
    for _ in range(args.repeats):  # interleaved, so load swings hit every method alike
        for name, fn in methods.items():
            if lm.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            results[name] = np.array(fn())
            if lm.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    base = results["hf batch=1"]
    for name, values in results.items():
        assert np.allclose(values, base, atol=1e-4), f"{name} disagrees with the batch-of-1 loop"
    med = {m: statistics.median(t) for m, t in times.items()}
    ours = med["selectkit compute_features"]
    print(f"{'method':<30} {'median s':>9} {'tokens/s':>10} {'selectkit speedup':>18}")
    for name, t in med.items():
        print(f"{name:<30} {t:9.2f} {tokens / t:10,.0f} {t / ours:17.2f}x")
    report = {"params": params, "texts": len(texts), "tokens": tokens, "median_s": med,
              "runs_s": times, "repeats": args.repeats}
    if lm.device.startswith("cuda"):
        from selectkit.planning.estimates import gpu_by_name

        match = gpu_by_name(torch.cuda.get_device_name())
        if match:
            achieved = 2 * params * tokens / ours
            print(f"MFU vs dense bf16 peak of {match[0]} ({match[2]} TFLOP/s): {achieved / (match[2] * 1e12):.2%}")
    return report


def memory_child(n: int, max_length: int) -> None:
    """Run one pass over n texts (the pool repeated) and print this process's peak RSS in MB."""
    from selectkit.recipe.spec import ModelSpec

    spec = ModelSpec(path=str(ROOT / "recipes/models/tiny-lm"), kind="causal-lm", max_length=max_length)
    base = pool_texts()
    texts = [f"{base[i % len(base)]} #{i}" for i in range(n)]
    from selectkit.models.loader import load_model

    lm = load_model(spec, ".")
    selectkit_pass(lm, spec, texts, shard_size=200)  # full shards at both sizes: only the count grows
    print(peak_rss_mb())


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process's own address space; ru_maxrss would
    also count the parent's peak, which a child inherits across fork + exec on Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(args) -> dict:
    peaks = {}
    for n in (args.memory_n, 10 * args.memory_n):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--max-length", "64"],
                             capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        peaks[n] = float(out.stdout.strip().splitlines()[-1])
    small, large = peaks.values()
    print(f"peak RSS of a selectkit pass (tiny-lm, max_length 64, 200-row shards): "
          f"{args.memory_n:,} texts {small:.0f} MB, {10 * args.memory_n:,} texts {large:.0f} MB (x{large / small:.2f})")
    return {"peak_mb": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--memory-n", type=int, default=400)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    WORK.mkdir(parents=True, exist_ok=True)
    if args.memory_child:
        memory_child(args.memory_child, args.max_length)
        return
    report = {}
    if not args.skip_speed:
        report["speed"] = speed(args)
    if not args.skip_memory:
        report["memory"] = memory(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
