"""Model checkpoints for multi-checkpoint influence (TracInCP, LESS), their Adam states, and
which parameters a gradient pass differentiates.

A checkpoint is a folder: a peft adapter (or nothing: the model as configured) and optionally
the learning rate that weighs it and its AdamW state. Two layouts are read:
- the warmup's own (`state.json` + `optimizer.safetensors` + `adapter/`), never unpickled;
- a user's folder: `checkpoint.json` with `lr`, and `optimizer.pt`, a torch optimizer state dict
  with `param_names`, loaded with `weights_only=True` (a pickle that would run code is refused).
Without them the checkpoint weighs lr = 1 and has no Adam state (LESS then uses m = v = 0,
i.e. ~3.16 sign(g), as its reference code would).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectkit.plugin import OPTIMIZER_FILE, STATE_FILE, DataError, SelectkitError, unsafe_load_reason
from selectkit_plugins.lib.influence.adam import AdamState


@dataclass(frozen=True)
class Checkpoint:
    name: str
    adapter: Path | None = None  # peft adapter folder loaded on the base model (None: the model as configured)
    lr: float = 1.0  # weight of the checkpoint (LESS: mean lr of the epoch it ends)
    optimizer: Path | None = None  # optimizer.safetensors (warmup) or optimizer.pt (a user's)
    state: Path | None = None  # state.json of a warmup checkpoint


def read_checkpoints(folders: Sequence[str | Path]) -> list[Checkpoint]:
    """Checkpoints from users' folders, in the given order."""
    out = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise DataError(f"checkpoint folder not found: {path}")
        meta_file = path / "checkpoint.json"
        try:
            meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        except ValueError as exc:
            raise DataError(f"{meta_file}: not valid JSON ({exc})") from None
        opt = next((p for p in (path / "optimizer.safetensors", path / "optimizer.pt") if p.exists()), None)
        state = path / "state.json"
        out.append(Checkpoint(path.name, path, float(meta.get("lr", 1.0)), opt, state if state.exists() else None))
    return out


def warmup_checkpoint(folder: Path, name: str) -> Checkpoint:
    """A checkpoint the warmup wrote into the cache."""
    from selectkit_plugins.lib.influence.warmup import ADAPTER_DIR

    meta = json.loads((folder / STATE_FILE).read_text())
    return Checkpoint(name, folder / ADAPTER_DIR, float(meta["lr"]), folder / OPTIMIZER_FILE, folder / STATE_FILE)


def adam_state(checkpoint: Checkpoint, param_names: Sequence[str]) -> AdamState:
    """The checkpoint's AdamW moments, flattened in `param_names` order (the featurizer's);
    zeros when the checkpoint has no optimizer state."""
    import torch

    if checkpoint.optimizer is None:
        return AdamState.zeros(0)
    if checkpoint.optimizer.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_file = checkpoint.state or checkpoint.optimizer.with_name("state.json")
        meta = json.loads(state_file.read_text())
        tensors = load_file(str(checkpoint.optimizer))
        names = meta["param_names"]
        moments = {i: {"exp_avg": tensors[f"{i}.exp_avg"], "exp_avg_sq": tensors[f"{i}.exp_avg_sq"],
                       "step": meta["steps"][str(i)]} for i in range(len(names))}
        betas, eps = meta["betas"], meta["eps"]
    else:
        try:
            saved = torch.load(checkpoint.optimizer, weights_only=True, map_location="cpu")
        except Exception as exc:  # an unsafe pickle raises here, before any of its code runs

            reason = unsafe_load_reason(exc)
            what = f"refused, not a plain tensor file: unpickling it could run code ({reason})" if reason \
                else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SelectkitError(f"{checkpoint.optimizer}: cannot load: {what}",
                                 hint="an optimizer.pt must be a plain state dict of tensors (weights_only)") from None
        try:
            names = saved["param_names"]
            moments = saved["optimizer"]["state"]
            group = saved["optimizer"]["param_groups"][0]
            betas, eps = group["betas"], group["eps"]
        except (KeyError, TypeError, IndexError) as exc:
            raise SelectkitError(f"{checkpoint.optimizer}: not an optimizer state with param_names ({exc})") from None
    index = {n: i for i, n in enumerate(names)}
    m, v, step = [], [], 0
    for name in param_names:
        key = _match(name, index)
        if key is None:
            raise SelectkitError(f"{checkpoint.optimizer}: no Adam state for parameter {name}")
        st = moments[index[key]]
        m.append(st["exp_avg"].reshape(-1).double())
        v.append(st["exp_avg_sq"].reshape(-1).double())
        step = int(float(st["step"]))
    return AdamState(torch.cat(m), torch.cat(v), beta1=betas[0], beta2=betas[1], eps=eps, step=step)


def _match(name: str, index: dict[str, int]) -> str | None:
    """Parameter names may differ by peft's wrapper prefix between training and loading."""
    if name in index:
        return name
    tail = name.split("base_model.model.", 1)[-1]
    hits = [k for k in index if k.split("base_model.model.", 1)[-1] == tail]
    return hits[0] if len(hits) == 1 else None


def unfreeze(model: Any, mode: str, has_adapter: bool) -> None:
    """Unfreeze what a gradient pass differentiates (`layers.trainable_modules`): `lora` (the
    adapter's parameters), `linear` (every Linear and Conv1D weight and bias, except an lm_head tied
    to the input embeddings), or `auto` (lora when there is an adapter)."""
    from selectkit_plugins.lib.influence.layers import set_trainable, trainable_modules

    mode = mode if mode != "auto" else ("lora" if has_adapter else "linear")
    if mode not in ("lora", "linear"):
        raise SelectkitError(f"unknown gradient params {mode!r} (auto, lora or linear)")
    if mode == "lora" and not has_adapter:
        raise SelectkitError("params 'lora' needs a LoRA adapter (models.<name>.lora or warmup checkpoints)")
    set_trainable(model, trainable_modules(model, mode))
