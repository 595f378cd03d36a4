"""LESS's warmup stage: train a LoRA on a seeded random fraction of the pool for a few epochs and
keep one checkpoint per epoch with its Adam state and mean learning rate
(Xia et al. 2024; `less/scripts/train/warmup_lora_train.sh`, `base_training_args.sh`).

Defaults follow LESS (5 %, 4 epochs, AdamW lr 2e-5, linear schedule with 3 % warmup, no weight
decay, LoRA on q/k/v/o) except the LoRA size (r=8, alpha=32 instead of r=128, alpha=512; same
alpha/r = 4) and the effective batch (32 instead of 128 on 4 GPUs): both are recipe settings.

A checkpoint folder holds the peft adapter (`save_pretrained`), `optimizer.pt` (the torch AdamW
state dict, its parameter names and the scheduler state) and `checkpoint.json` (epoch, step,
mean lr of the epoch, betas, eps). Training resumes from the last complete checkpoint.
The recipe keys (`WarmupSpec`, `LoraSettings`) live in `selectkit.recipe`; this module holds the training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectkit.recipe import WarmupSpec


def warmup_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """The pool rows trained on: a seeded random draw of max(1, int(fraction * n)) rows, ascending."""
    from selectkit.components import rng_for

    k = max(1, int(fraction * n))
    return np.sort(rng_for(seed, "warmup").choice(n, size=k, replace=False))


def _lr_lambda(total: int, warm: int) -> Callable[[int], float]:
    """transformers' get_linear_schedule_with_warmup."""
    def fn(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))
    return fn


def train_warmup(model: Any, tokenizer: Any, texts: Sequence[str], out_dir: str | Path, spec: WarmupSpec, *,
                 prompts: Sequence[str | None] | None = None, seed: int = 0, max_length: int = 512,
                 progress: Callable[[str], None] | None = None) -> list[Path]:
    """Train a fresh LoRA on `model` (a loaded causal LM, modified in place into a peft model)
    over `texts` (already the warmup subset) and return the checkpoint folders, one per epoch."""
    import torch
    from peft import LoraConfig, get_peft_model

    from selectkit_plugins.influence.grads import lm_batch, lm_loss

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    lora = spec.lora
    peft_model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                  target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in named], lr=spec.learning_rate, weight_decay=spec.weight_decay,
                            betas=(0.9, 0.999), eps=1e-8)
    n = len(texts)
    steps_per_epoch = -(-n // spec.batch_size)
    total = steps_per_epoch * spec.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(np.ceil(spec.warmup_ratio * total))))
    length = spec.max_length or max_length
    from selectkit_plugins.influence.checkpoints import epoch_folders

    done = [p for p in epoch_folders(out) if int(p.name.split("-")[1]) <= spec.epochs]
    start_epoch = 0
    if done:
        last = done[-1]
        state = torch.load(last / "optimizer.pt", weights_only=False)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(peft_model, load_file(str(last / "adapter_model.safetensors")))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = json.loads((last / "checkpoint.json").read_text())["epoch"]
    folders = list(done)
    for epoch in range(start_epoch, spec.epochs):
        peft_model.train()
        order = np.random.default_rng([seed, epoch]).permutation(n)
        lrs = []
        for s in range(steps_per_epoch):
            rows = order[s * spec.batch_size:(s + 1) * spec.batch_size]
            lrs.append(opt.param_groups[0]["lr"])
            opt.zero_grad(set_to_none=True)
            for m in range(0, len(rows), spec.micro_batch_size):
                part = rows[m:m + spec.micro_batch_size]
                batch = lm_batch(tokenizer, [texts[i] for i in part],
                                 [prompts[i] for i in part] if prompts is not None else None, length)
                batch = {k: v.to(peft_model.device) for k, v in batch.items()}
                (lm_loss(peft_model, batch).sum() / len(rows)).backward()
            opt.step()
            sched.step()
        folder = out / f"epoch-{epoch + 1}"
        _save_checkpoint(peft_model, opt, sched, named, folder, epoch=epoch + 1, step=(epoch + 1) * steps_per_epoch,
                         lr=float(np.mean(lrs)), examples=n)
        folders.append(folder)
        if progress:
            progress(f"warmup epoch {epoch + 1}/{spec.epochs}")
    peft_model.eval()
    return folders


def _save_checkpoint(model, opt, sched, named, folder: Path, **info) -> None:
    import torch

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp))
    torch.save({"param_names": [n for n, _ in named], "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
    group = opt.param_groups[0]
    meta = {**info, "betas": list(group["betas"]), "eps": group["eps"], "format": "selectkit-warmup-1"}
    (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
