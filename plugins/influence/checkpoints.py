"""Model checkpoints for multi-checkpoint influence (TracInCP, LESS) and loading models for
gradient work.

A checkpoint is a folder: a peft adapter (or nothing: the model as configured), and optionally
the files `train_warmup` writes (`checkpoint.json` with the epoch's mean lr, `optimizer.pt` with
the AdamW state). Without them the checkpoint weighs lr = 1 and has no Adam state (LESS then
uses m = v = 0, i.e. ~3.16 sign(g), as its reference code would).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectkit_plugins.influence.adam import AdamState


@dataclass(frozen=True)
class Checkpoint:
    name: str
    adapter: Path | None = None  # peft adapter folder loaded on the base model (None: the base model)
    lr: float = 1.0  # weight of the checkpoint (LESS: mean lr of the epoch it ends)
    optimizer: Path | None = None  # optimizer.pt from `train_warmup`

    @property
    def fingerprint(self) -> str:
        from selectkit.data import fingerprint_path

        return fingerprint_path(self.adapter)[:16] if self.adapter is not None else "base"


def read_checkpoints(folders: Sequence[str | Path]) -> list[Checkpoint]:
    """Checkpoints from folders, in the given order."""
    out = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            from selectkit.errors import DataError

            raise DataError(f"checkpoint folder not found: {path}")
        meta_file = path / "checkpoint.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        opt = path / "optimizer.pt"
        out.append(Checkpoint(path.name, path, float(meta.get("lr", 1.0)), opt if opt.exists() else None))
    return out


def epoch_folders(folder: str | Path) -> list[Path]:
    """`epoch-N` sub-folders with a checkpoint.json, by epoch number."""
    found = [p.parent for p in Path(folder).glob("epoch-*/checkpoint.json")]
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name) or 0))


def adam_state(checkpoint: Checkpoint, param_names: Sequence[str]) -> AdamState:
    """The checkpoint's AdamW moments, flattened in `param_names` order (the featurizer's);
    zeros when the checkpoint has no optimizer state."""
    import torch

    if checkpoint.optimizer is None:
        return AdamState.zeros(0)
    saved = torch.load(checkpoint.optimizer, weights_only=False, map_location="cpu")
    index = {n: i for i, n in enumerate(saved["param_names"])}
    state = saved["optimizer"]["state"]
    group = saved["optimizer"]["param_groups"][0]
    m, v, step = [], [], 0
    for name in param_names:
        key = _match(name, index)
        if key is None:
            raise ValueError(f"{checkpoint.optimizer}: no Adam state for parameter {name}")
        st = state[index[key]]
        m.append(st["exp_avg"].reshape(-1).double())
        v.append(st["exp_avg_sq"].reshape(-1).double())
        step = int(st["step"])
    b1, b2 = group["betas"]
    return AdamState(torch.cat(m), torch.cat(v), beta1=b1, beta2=b2, eps=group["eps"], step=step)


def _match(name: str, index: dict[str, int]) -> str | None:
    """Parameter names may differ by peft's wrapper prefix between training and loading."""
    if name in index:
        return name
    tail = name.split("base_model.model.", 1)[-1]
    hits = [k for k in index if k.split("base_model.model.", 1)[-1] == tail]
    return hits[0] if len(hits) == 1 else None


def load_model(spec: Any, base: str | Path | None = None, adapter: str | Path | None = None,
               params: str = "auto", eager_attention: bool = False) -> tuple[Any, Any]:
    """A causal LM and tokenizer for gradient work, in eval mode, from a ModelSpec-like object
    (path, dtype, lora, revision, trust_remote_code). `adapter` (a checkpoint) replaces `spec.lora`.
    Trainable parameters (`layers.trainable_modules`): `lora` (the adapter's), `linear` (every
    Linear and Conv1D weight and bias, except an lm_head tied to the input embeddings), `auto`
    (lora when there is an adapter).
    `eager_attention` avoids fused attention kernels that lack double backward (Hessian-vector products).

    Unlike `selectkit.models.load_model` (inference: the adapter merged), the adapter stays a
    separate trainable peft module here, since LoRA gradients are the features."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    root = Path(base) if base is not None else Path(".")
    path = _resolve(spec.path, root)
    kw = {"revision": getattr(spec, "revision", None), "trust_remote_code": bool(getattr(spec, "trust_remote_code",
                                                                                       False))}
    dtype = getattr(torch, getattr(spec, "dtype", "float32"))
    extra = {"attn_implementation": "eager"} if eager_attention else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw, **extra)
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = adapter if adapter is not None else getattr(spec, "lora", None)
    if lora is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, _resolve(str(lora), root), is_trainable=True)
    mode = params if params != "auto" else ("lora" if lora is not None else "linear")
    if mode == "lora" and lora is None:
        raise ValueError("params 'lora' needs a LoRA adapter (models.<name>.lora or warmup checkpoints)")
    from selectkit_plugins.influence.layers import set_trainable, trainable_modules

    set_trainable(model, trainable_modules(model, mode))
    model.eval()
    device = getattr(spec, "device", "auto")
    if device not in ("auto", "cpu"):
        model.to(device)
    elif device == "auto" and torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer


def _resolve(path: str, root: Path) -> str:
    from selectkit.models import resolve_model_path

    return str(resolve_model_path(path, root))
