"""The one causal-LM training loop: optimizer steps over batches of rows in a given order, with
gradient accumulation over micro-batches and the per-example loss of `selectkit.models.lm`, under the
weights' mixed precision. LESS's LoRA warmup and `selectkit eval`'s proxy models both train through it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from selectkit.contract.lazy import lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap



def linear_schedule(total: int, warm: int) -> Callable[[int], float]:
    """transformers' get_linear_schedule_with_warmup, as a LambdaLR factor; the warmup never spans
    every step (its first step has rate 0: a run of one step would not train at all)."""
    warm = min(warm, max(0, total - 1))

    def fn(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))
    return fn


def train_epoch(model: Any, opt: Any, sched: Any, order: np.ndarray, *, batch_size: int, micro_batch_size: int,
                make_batch: Callable[[Sequence[int]], dict], clip: float | None = None,
                progress: Callable[[int, int, float], None] | None = None) -> tuple[list[float], list[float]]:
    """One pass over `order` (row positions), `batch_size` rows per optimizer step; each step's loss is
    the mean per-example loss over its rows. Returns each step's learning rate and loss."""
    import torch

    from selectkit.models.lm import example_loss, mixed_precision, weights_dtype

    steps = -(-len(order) // batch_size)
    params = [p for group in opt.param_groups for p in group["params"]]
    # float16 weights on a GPU: scale the loss so small gradients do not flush to zero
    scaler = torch.amp.GradScaler("cuda", enabled=weights_dtype(model) == torch.float16
                                  and model.device.type == "cuda")
    lrs, losses = [], []
    for s in range(steps):
        rows = order[s * batch_size:(s + 1) * batch_size]
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for m in range(0, len(rows), micro_batch_size):
            b = make_batch(rows[m:m + micro_batch_size])
            b = {k: v.to(model.device) for k, v in b.items()}
            with mixed_precision(model):
                loss = example_loss(model, b).sum() / len(rows)
            scaler.scale(loss).backward()
            total += float(loss.detach())
        if clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(total)
        if progress:
            progress(s + 1, steps, total)
    return lrs, losses
