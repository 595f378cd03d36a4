"""Hugging Face `Trainer` integration: `GradientCallback` fills selectkit's gradient store while a team
fine-tunes its own LoRA, so a recipe over those checkpoints (LESS, TracIn) finds its pool gradients cached.

    from selectkit.integrations.transformers import GradientCallback

    callback = GradientCallback("recipes/less.yaml", checkpoints_dir="out/checkpoints")
    Trainer(model=peft_model, args=args, train_dataset=train, callbacks=[callback]).train()
    out = selectkit.run(callback.recipe())  # the recipe with models.<name>.checkpoints = the saved folders

At each checkpoint save of the Trainer (or every `every` optimizer steps) the callback
- writes the checkpoint in the form `models.<name>.checkpoints` reads: the peft adapter, `checkpoint.json`
  (the mean learning rate of the steps since the previous checkpoint, which weighs it in LESS and TracIn)
  and the AdamW moments (`optimizer.safetensors` + `state.json`, written by the warmup's own writer,
  never a pickle);
- compiles the recipe with the checkpoints saved so far and computes the plan's gradient steps over the
  given data sources through the executor: the recipe's own provider, keys and bytes. The shards of the
  earlier checkpoints are taken over (hard links) from the entry of the list before, found by compiling
  that list against the data as it is now: a source whose rows changed has another fingerprint, so its
  gradients are computed again, never mixed with the old ones.

Features come from the checkpoint as saved, loaded through the one loader (not from the live model):
that is what makes them the recipe's bytes. The Trainer's random state is kept across the callback's
work, so training with the callback follows the same path as without it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selectkit.errors import SelectkitError, require

TrainerCallback = require("transformers", "models", "GradientCallback").TrainerCallback
require("accelerate", "trainer", "the Hugging Face Trainer")  # the Trainer cannot start without it

CHECKPOINT_FILE = "checkpoint.json"  # {"lr": ..., "step": ...}, read by models.<name>.checkpoints


class GradientCallback(TrainerCallback):
    """A `transformers.TrainerCallback` that saves LoRA checkpoints with their Adam state and the
    projected per-example gradients of a recipe's data sources at each of them into the cache.

    recipe: the recipe (path, YAML text, dict, Recipe) that will read the checkpoints; its model
    `model` (default: its only model) is what the Trainer fine-tunes (its `path` the base model).
    checkpoints_dir: where the checkpoint folders go (`step-<global step>`).
    sources: the data sources whose gradient features are stored ("pool"; targets are cheap).
    every: save every `every` optimizer steps instead of at the Trainer's own saves.
    cache_dir, options: as for `selectkit.run` (options such as shard_rows shape the keys: give the
    recipe's run the same ones)."""

    def __init__(self, recipe: Any, *, checkpoints_dir: str | Path, model: str | None = None,
                 sources: Sequence[str] = ("pool",), every: int | None = None,
                 cache_dir: str | Path | None = None, options: dict | None = None, progress: Any = None):
        from selectkit.api import validate
        from selectkit.recipe.spec import load_any

        if every is not None and (not isinstance(every, int) or every < 1):
            raise SelectkitError(f"GradientCallback: every={every!r} must be a positive number of steps")
        self.loaded = load_any(recipe)
        validate(self.loaded)  # every recipe error now, with its file:line, before any training
        models = list(self.loaded.recipe.models)
        if model is None and len(models) != 1:
            raise SelectkitError(f"GradientCallback: the recipe has models {', '.join(models) or 'none'}; "
                                 "say which one the Trainer fine-tunes (model=)")
        self.model_name = model or models[0]
        if self.model_name not in self.loaded.recipe.models:
            raise SelectkitError(f"GradientCallback: the recipe has no model {self.model_name!r} "
                                 f"(models: {', '.join(models) or 'none'})")
        self.dir = Path(checkpoints_dir)
        self.sources = tuple(sources)
        self.every, self.cache_dir, self.options, self.progress = every, cache_dir, dict(options or {}), progress
        self.checkpoints: list[Path] = []  # the folders saved so far, in order
        self.timings: list[dict] = []  # per save: seconds writing the checkpoint, computing gradients (wall, CPU)
        self._lrs: list[float] = []
        self._saved: int | None = None
        steps = self._steps(self._plan([self.dir / "step-0"]))  # the gradient settings, checked before training
        self.params = dict(steps[0].payload.work.requests[0].settings).get("params", "auto")

    # ------------------------------------------------------------ the recipe over the checkpoints
    def recipe(self, checkpoints: Sequence[str | Path] | None = None) -> Any:
        """The recipe with `models.<name>.checkpoints` set to the saved folders (a LoadedRecipe, paths
        resolving as in the original): what `selectkit.run` / `selectkit.plan` take."""
        from selectkit.recipe.spec import load_data

        data = self.loaded.recipe.model_dump(mode="json", by_alias=True, exclude_unset=True)
        spec = data["models"][self.model_name]
        spec.pop("warmup", None)
        spec["checkpoints"] = [str(Path(c).resolve()) for c in (self.checkpoints if checkpoints is None
                                                                  else checkpoints)]
        return load_data(data, base=self.loaded.base)

    def _plan(self, checkpoints: Sequence[Path]) -> Any:
        from selectkit.api import plan

        return plan(self.recipe(checkpoints), cache_dir=self.cache_dir, options=self.options)

    def _steps(self, plan: Any) -> list[Any]:
        """The plan's gradient-feature steps of the model over the sources."""
        from selectkit.planning.steps import PassPayload

        found = [s for s in plan.steps if isinstance(s.payload, PassPayload) and s.payload.provider.name == "gradients"
                 and s.payload.work.model.name == self.model_name and s.payload.work.data in self.sources
                 and s.payload.work.requests[0].kind == "grad_features"]
        if not found:
            raise SelectkitError(f"GradientCallback: the recipe computes no gradient features of model "
                                 f"{self.model_name!r} over {', '.join(self.sources)} (no LESS, TracIn or other "
                                 "gradient score reads them): there is nothing to store")
        return found

    # ------------------------------------------------------------ Trainer events
    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._check_model(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check_model(model)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:  # the rate this step's update uses (the scheduler steps after it)
            self._lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._save(state, model, optimizer)

    def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not self.every:
            self._save(state, model, optimizer)

    def _check_model(self, model: Any) -> None:
        if model is None or getattr(model, "peft_config", None):
            return
        why = ("the recipe's gradient settings say `params: linear`, but a full fine-tune's checkpoints are "
               "not what models.<name>.checkpoints reads (peft adapter folders)" if self.params == "linear" else
               "and the recipe's gradient settings set no `params:` (auto: the adapter's parameters)")
        raise SelectkitError(f"GradientCallback: the model being trained ({type(model).__name__}) has no LoRA "
                             f"adapter {why}", hint="wrap it with peft (get_peft_model(model, LoraConfig(...))) "
                             "before handing it to the Trainer")

    # ------------------------------------------------------------ one save
    def _save(self, state: Any, model: Any, optimizer: Any) -> None:
        if not state.is_world_process_zero or state.global_step == self._saved or model is None:
            return
        self._check_model(model)
        self._saved = step = state.global_step
        started = time.perf_counter()
        lr = sum(self._lrs) / len(self._lrs) if self._lrs else float(optimizer.param_groups[0]["lr"])
        self._lrs = []
        self.checkpoints.append(self._write_checkpoint(step, model, optimizer, lr))
        written, cpu = time.perf_counter(), time.process_time()
        status = self._fill_store()
        self.timings.append({"step": step, "lr": lr, "checkpoint_s": written - started,
                             "gradients_s": time.perf_counter() - written,
                             "gradients_cpu_s": time.process_time() - cpu, "status": status})

    def _write_checkpoint(self, step: int, model: Any, optimizer: Any, lr: float) -> Path:
        """The adapter, its AdamW moments and the checkpoint's rate, renamed into place when complete."""
        from selectkit.models.checkpoint import save_adam_state
        from selectkit.storage.cache import share

        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"step-{step}"
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step}-", dir=self.dir))
        share(staging, folder=True)  # mkdtemp's 0700 -> what the umask allows, as any folder
        try:
            model.save_pretrained(str(staging))  # a peft model saves its adapter alone
            save_adam_state(staging, optimizer, list(model.named_parameters()), {"lr": lr, "step": step})
            (staging / CHECKPOINT_FILE).write_text(json.dumps({"lr": lr, "step": step}) + "\n")
            if final.exists():  # an earlier training into the same folder: its checkpoint is replaced
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def _fill_store(self) -> dict[str, str]:
        """The gradient steps of the recipe over the checkpoints so far, the earlier ones' shards taken over."""
        from selectkit.execution.local import compute_steps

        with _random_state_kept():
            plan = self._plan(self.checkpoints)
            steps = self._steps(plan)
            if len(self.checkpoints) > 1:
                _adopt(self._plan(self.checkpoints[:-1]), plan, steps, self._steps)
            return compute_steps(plan, [s.id for s in steps], progress=self.progress, options=self.options)


def _adopt(before: Any, plan: Any, steps: list[Any], find: Any) -> None:
    """Shards of the earlier checkpoints, from the complete entries of the plan over them (same settings,
    same data as now) into the entries of `plan` (checkpoint c's shards have the same indices in both)."""
    earlier = {s.payload.work.requests: s for s in find(before)}
    for step in steps:
        old = earlier.get(step.payload.work.requests)
        if old is None or old.payload.work.row_shards != step.payload.work.row_shards:
            continue
        source = before.cache.store(old.artifact, old.key).shards(old.shards)
        if not source.complete():
            continue
        target = plan.cache.store(step.artifact, step.key).shards(step.shards)
        for index in range(old.shards):
            folder = None if target.done(index) else source.open(index)
            if folder is not None:
                target.adopt(index, folder)


@contextmanager
def _random_state_kept() -> Iterator[None]:
    """Python's, numpy's and torch's (CPU and CUDA) random states as they were: loading a model draws."""
    import random

    import numpy as np
    import torch

    python, legacy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(legacy)


__all__ = ["GradientCallback"]
