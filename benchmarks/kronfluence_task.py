"""The kronfluence Task and Dataset wrapper shared by the benchmarks that run kronfluence
(imported from inside their kronfluence workers only, where kronfluence is on the path)."""

from __future__ import annotations

from collections.abc import Callable


def lm_task(names: list[str], loss: Callable) -> tuple[type, type]:
    """(Task class, Dataset class) for a causal LM whose per-example loss is `loss(model, batch)`,
    tracking the Linear modules `names`; batches are dicts of equal-width tensors."""
    import torch
    from kronfluence.task import Task

    class LMTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            return loss(model, batch).sum()

        def compute_measurement(self, batch, model):
            return loss(model, batch).sum()

        def get_influence_tracked_modules(self):
            return names

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    class Rows(torch.utils.data.Dataset):
        def __init__(self, b):
            self.b = b

        def __len__(self):
            return len(self.b["input_ids"])

        def __getitem__(self, i):
            return {k: v[i] for k, v in self.b.items()}

    return LMTask, Rows
