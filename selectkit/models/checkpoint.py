"""A training checkpoint's AdamW state on disk: the moments as `optimizer.safetensors`, the rest (step
counts, betas, eps, param groups, scheduler position, param names) as `state.json`. Saved with
safetensors and JSON only, so loading a checkpoint never unpickles anything.

Written by LESS's warmup (the built-in `train` provider's, which also resumes from it) and by the
Trainer callback (selectkit.integrations.transformers); read back as AdamW moments by the influence
gradients. It lives in the core's models (it began in the warmup's module, in the built-in plugins'
library) because the core writes it too; plugins reach it through `selectkit.plugin`. torch and
safetensors are imported when a state is saved or loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
FORMAT = "selectkit-warmup-2"


def save_adam_state(folder: Path, optimizer: Any, named: Sequence[tuple[str, Any]], info: dict,
                    scheduler: Any = None) -> None:
    """An AdamW optimizer's moments as `optimizer.safetensors` and the rest of its state as `state.json`
    (param_names in the optimizer's index order, step counts, betas, eps, `info`): the form
    `checkpoints.adam_state` reads, never unpickled. The warmup's checkpoints and the Trainer
    callback's (selectkit.integrations.transformers) are written here. `named`: (name, parameter)
    of every parameter the optimizer holds."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    name_of = {id(p): n for n, p in named}
    params = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's index order
    tensors = {}
    steps = {}
    for index, st in state["state"].items():
        tensors[f"{index}.exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
        tensors[f"{index}.exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
        steps[str(index)] = float(st["step"])
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    group = optimizer.param_groups[0]
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"} if scheduler is not None else {}
    meta = {**info, "format": FORMAT, "param_names": [name_of[id(p)] for p in params], "steps": steps,
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]],
            "scheduler": sched, "betas": list(group["betas"]), "eps": group["eps"]}
    (folder / STATE_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))


def load_adam_state(folder: Path, optimizer: Any, scheduler: Any = None) -> dict:
    """The inverse of `save_adam_state`: put the saved moments, step counts and param groups on
    `optimizer` (a fresh AdamW over the same parameters in the same order) and the saved position on
    `scheduler` (when given); returns `state.json`'s contents."""
    import torch
    from safetensors.torch import load_file

    meta = json.loads((folder / STATE_FILE).read_text())
    tensors = load_file(str(folder / OPTIMIZER_FILE))
    state = {"state": {}, "param_groups": []}
    for index, step in meta["steps"].items():
        state["state"][int(index)] = {"step": torch.tensor(step), "exp_avg": tensors[f"{index}.exp_avg"],
                                      "exp_avg_sq": tensors[f"{index}.exp_avg_sq"]}
    for saved, group in zip(meta["param_groups"], optimizer.state_dict()["param_groups"]):
        restored = {**saved, "params": group["params"]}
        if "betas" in restored:
            restored["betas"] = tuple(restored["betas"])
        state["param_groups"].append(restored)
    optimizer.load_state_dict(state)
    if scheduler is not None:
        sched = scheduler.state_dict()
        sched.update(meta["scheduler"])
        scheduler.load_state_dict(sched)
    return meta
