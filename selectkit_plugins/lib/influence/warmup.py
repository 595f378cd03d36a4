"""LESS's warmup stage: train a LoRA on a seeded random fraction of the pool for a few epochs and
keep one checkpoint per epoch with its Adam state and mean learning rate
(Xia et al. 2024; `less/scripts/train/warmup_lora_train.sh`, `base_training_args.sh`).

Defaults follow LESS (5 %, 4 epochs, AdamW lr 2e-5, linear schedule with 3 % warmup, no weight
decay, LoRA on the attention projections) except the LoRA size (r=8, alpha=32 instead of r=128,
alpha=512; same alpha/r = 4) and the effective batch (32 instead of 128 on 4 GPUs): both are
recipe settings. The loss counts only response tokens when the warmup names a `response`.

Exact resume: an epoch's checkpoint holds everything the next epoch depends on (the adapter,
the AdamW moments and step counts, the scheduler position); the data order of epoch e is a
seeded permutation of its own and the dropout generator is reseeded from (seed, epoch), so
training epochs 1..E in one go or resuming after any epoch gives byte-identical weights.
Saved with safetensors and JSON only: loading a checkpoint never unpickles anything (the AdamW state
is saved and restored by the core's `save_adam_state` / `load_adam_state`, selectkit.models.checkpoint,
which the Trainer callback writes its checkpoints with too).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selectkit.plugin import (
    DataError,
    canonical_order,
    lazy_import,
    linear_schedule,
    load_adam_state,
    peft_quietly,
    save_adam_state,
    train_epoch,
    uniform,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

ADAPTER_DIR = "adapter"  # beside the AdamW state (selectkit.models.checkpoint: optimizer.safetensors, state.json)


def warmup_rows(keys: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The pool rows trained on: the max(1, int(fraction * n)) rows with the smallest keyed draw,
    in key order (so the subset and its order do not depend on the pool's row order)."""

    n = len(keys)
    k = max(1, int(fraction * n))
    draw = uniform(seed, ("warmup",), keys)
    chosen = np.argpartition(draw, k - 1)[:k] if k < n else np.arange(n)
    return chosen[canonical_order(keys[chosen])]


def epoch_seed(seed: int, epoch: int) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}\x1fwarmup-epoch\x1f{epoch}".encode()).digest()[:7], "little")


class Warmup:
    """A LoRA on a frozen causal LM, its AdamW optimizer and linear schedule, trained epoch by epoch."""

    def __init__(self, model: Any, tokenizer: Any, texts: Sequence[str], spec: Any, *, seed: int,
                 max_length: int, prompts: Sequence[str | None] | None = None, target_modules: list[str] | None = None):
        import torch
        from peft import LoraConfig, get_peft_model

        self.tokenizer, self.texts, self.prompts, self.spec = tokenizer, list(texts), prompts, spec
        self.seed, self.max_length = seed, max_length
        torch.manual_seed(epoch_seed(seed, -1))  # the LoRA initialisation
        lora = spec.lora
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(target_modules or lora.target_modules), task_type="CAUSAL_LM")
        with peft_quietly():
            self.model = get_peft_model(model, config)
        self.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW([p for _, p in self.named], lr=spec.learning_rate,
                                     weight_decay=spec.weight_decay, betas=(0.9, 0.999), eps=1e-8)
        self.steps_per_epoch = -(-len(self.texts) // spec.batch_size)
        total = self.steps_per_epoch * spec.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt,
                                                       linear_schedule(total, int(np.ceil(spec.warmup_ratio * total))))

    def train_epoch(self, epoch: int, progress: Callable[[int, int, float], None] | None = None) -> dict:
        """Epoch `epoch` (0-based); returns its mean learning rate and mean loss."""
        import torch

        from selectkit.plugin import batch as lm_batch

        spec = self.spec
        torch.manual_seed(epoch_seed(self.seed, epoch))  # dropout: reseeded per epoch, so resume is exact
        self.model.train()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.texts))

        def make_batch(part):
            return lm_batch(self.tokenizer, [self.texts[i] for i in part],
                            [self.prompts[i] for i in part] if self.prompts is not None else None, self.max_length)

        lrs, losses = train_epoch(self.model, self.opt, self.sched, order, batch_size=spec.batch_size,
                                  micro_batch_size=spec.micro_batch_size, make_batch=make_batch, progress=progress)
        self.model.eval()
        return {"lr": float(np.mean(lrs)), "loss": float(np.mean(losses)), "epoch": epoch + 1,
                "step": (epoch + 1) * self.steps_per_epoch, "examples": len(self.texts)}

    def save(self, folder: Path, info: dict) -> None:
        """Adapter (peft), optimizer moments (safetensors) and the rest of the state (JSON)."""
        self.model.save_pretrained(str(folder / ADAPTER_DIR))
        save_adam_state(folder, self.opt, self.named, info, self.sched)

    def restore(self, folder: Path) -> None:
        """Continue from an epoch's checkpoint (the inverse of `save`)."""
        load_lora_weights(self.model, folder / ADAPTER_DIR, f"checkpoint {folder.name}")
        load_adam_state(folder, self.opt, self.sched)


def load_lora_weights(model: Any, adapter: Path, label: str) -> None:
    """Put a saved peft adapter's LoRA weights (a checkpoint a retrain continues) on `model`, a peft
    model whose LoRA must have the adapter's shape: its rank, alpha and target modules (a folder from
    elsewhere is read as hostile: a mismatch or unreadable file is one error naming it)."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    config_file = Path(adapter) / "adapter_config.json"
    try:
        saved = json.loads(config_file.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise DataError(f"{label}: cannot read {config_file} ({exc})") from None
    ours = model.peft_config["default"]
    wanted = {"r": ours.r, "lora_alpha": ours.lora_alpha, "target_modules": sorted(ours.target_modules)}
    have = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"),
            "target_modules": sorted(saved.get("target_modules") or [])}
    if have != wanted:
        raise DataError(f"{label}: its LoRA ({', '.join(f'{k}={v}' for k, v in have.items())}) is not the "
                        f"retrain's ({', '.join(f'{k}={v}' for k, v in wanted.items())})",
                        hint="make the retrain's `train.lora` the checkpoint's")
    try:
        weights = load_peft_weights(str(adapter), device="cpu")
        result = set_peft_model_state_dict(model, weights)
    except Exception as exc:  # noqa: BLE001 - files from elsewhere may fail in any way: name them
        raise DataError(f"{label}: cannot load the LoRA weights in {adapter} ({str(exc).splitlines()[0]})") from None
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing or getattr(result, "unexpected_keys", None):
        raise DataError(f"{label}: the LoRA weights in {adapter} do not fit the model "
                        f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected)")

