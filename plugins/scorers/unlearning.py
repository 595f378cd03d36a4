"""Unlearning-based influence scores: UnTrac and UnTrac-Inv (Isonuma & Titov, ACL 2024).

* `unlearning.group` (UnTrac): for each candidate group (a pool column such as `source`, or a
  k-means cluster), run a few steps of gradient ascent on the group from the model and measure
  how much the target loss rises. Every example gets its group's score; positive means the group
  helped the target. Pair it with the `unlearning` selector, which keeps whole groups best-first.
* `unlearning.untrac_inv` (UnTrac-Inv): one gradient-ascent run on the target, then each pool
  example's loss change `l(theta_unlearned, x) - l(theta, x)`; high means x shares what the target taught.

Reference code: `misonuma/untrac` (`unlearner.py`: `loss = -loss`; Adafactor, lr 5e-5, no grad clipping).
Deviations, all for reproducibility and cost: the model stays in eval mode (no dropout) so runs are
deterministic; no warmup; a fixed number of `steps` (the reference runs one epoch for UnTrac); the loss change
is averaged over evaluation checkpoints (`aggregate: mean`) because the paper finds single-step readings
sensitive to lr and step count (methods/selectors.md §5, §12.7).

The model math lives in plain functions taking (model, tokenizer, texts) so it is testable with tiny models.
Cost: UnTrac is G groups x (steps x batch forward/backward + checkpoints x target forward passes);
UnTrac-Inv is steps x batch forward/backward + (checkpoints + 1) forward passes over the pool.
Memory: one extra copy of the weights (UnTrac restores the model between groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from selectkit.components import Params, Score, ScoreContext, Scorer, Shape
from selectkit.errors import DataError, RecipeError
from selectkit.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import torch


# ---------------------------------------------------------------- model math (plain functions)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _token_nll(model: Any, enc: dict) -> torch.Tensor:
    """Mean next-token NLL per sequence (B,), padding excluded; NaN where no token is predicted."""
    import torch

    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1].float()
    targets = enc["input_ids"][:, 1:]
    mask = enc["attention_mask"][:, 1:].to(logits.dtype)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    count = mask.sum(1)
    return (nll * mask).sum(1) / count.where(count > 0, torch.nan)


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int, device: Any) -> dict:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}


def example_losses(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
                   max_length: int = 512) -> np.ndarray:
    """Mean next-token loss of each text (N,), batched by length to waste little padding."""
    import torch

    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.full(len(texts), np.nan)
    device = _device(model)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = _encode(tokenizer, [texts[i] for i in idx], max_length, device)
            out[idx] = _token_nll(model, enc).double().cpu().numpy()
    return out


def _optimizer(name: str, params: Any, lr: float) -> Any:
    import torch

    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


def ascend(model: Any, tokenizer: Any, texts: Sequence[str], rng: np.random.Generator, *, steps: int, lr: float,
           batch_size: int = 8, grad_accum: int = 1, optimizer: str = "adafactor", max_grad_norm: float | None = None,
           max_length: int = 512, eval_every: int | None = None,
           on_eval: Callable[[int], None] | None = None) -> None:
    """Gradient ascent on `texts` (the negated LM loss) for `steps` optimizer steps, in place.

    Each step draws `batch_size * grad_accum` texts from a seeded permutation that is reshuffled every
    epoch. `on_eval(step)` runs after every `eval_every` steps and after the last one.
    """
    import torch

    if not texts:
        raise DataError("gradient ascent needs at least one text")
    model.eval()  # deterministic: no dropout (the reference trains in train mode)
    opt = _optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr)
    device = _device(model)
    perm, pos = rng.permutation(len(texts)), 0

    def draw(count: int) -> list[str]:
        nonlocal perm, pos
        picked = []
        while len(picked) < count:
            if pos == len(perm):
                perm, pos = rng.permutation(len(texts)), 0
            take = min(count - len(picked), len(perm) - pos)
            picked.extend(texts[i] for i in perm[pos:pos + take])
            pos += take
        return picked

    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        for _ in range(grad_accum):
            enc = _encode(tokenizer, draw(batch_size), max_length, device)
            loss = torch.nanmean(_token_nll(model, enc))
            if torch.isfinite(loss):  # a batch of texts too short to predict anything carries no gradient
                (-loss / grad_accum).backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        if on_eval is not None and ((eval_every and step % eval_every == 0) or step == steps):
            on_eval(step)
    opt.zero_grad(set_to_none=True)


def _aggregate(deltas: list[np.ndarray], how: str) -> np.ndarray:
    return deltas[-1] if how == "last" else np.mean(np.stack(deltas), axis=0)


def untrac_groups(model: Any, tokenizer: Any, groups: Sequence[Sequence[str]], target_texts: Sequence[str],
                  rngs: Sequence[np.random.Generator], *, aggregate: str = "mean", eval_batch_size: int = 32,
                  max_length: int = 512, **ascent: Any) -> np.ndarray:
    """UnTrac: per group, target-loss increase after gradient ascent on that group (G,).

    The model is restored to its starting weights after each group, so scores are independent of
    the order groups run in. `ascent` holds the `ascend` settings (steps, lr, batch_size, ...).
    """
    import torch

    start = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def target_loss() -> float:
        return float(np.nanmean(example_losses(model, tokenizer, target_texts, batch_size=eval_batch_size,
                                               max_length=max_length)))

    base = target_loss()
    scores = np.empty(len(groups))
    for g, (texts, rng) in enumerate(zip(groups, rngs)):
        deltas: list[np.ndarray] = []
        ascend(model, tokenizer, texts, rng, max_length=max_length,
               on_eval=lambda _s, out=deltas: out.append(np.array(target_loss() - base)), **ascent)
        scores[g] = float(_aggregate(deltas, aggregate))
        with torch.no_grad():
            model.load_state_dict(start)
    return scores


def untrac_inv(model: Any, tokenizer: Any, pool_texts: Sequence[str], target_texts: Sequence[str],
               rng: np.random.Generator, *, aggregate: str = "mean", relative: bool = False,
               eval_batch_size: int = 32, max_length: int = 512, restore: bool = True, **ascent: Any) -> np.ndarray:
    """UnTrac-Inv: gradient ascent on the target, then each pool text's loss change (N,).

    `relative` divides the change by the text's starting loss. The model is restored afterwards
    unless `restore=False`.
    """
    import torch

    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if restore else None

    def losses() -> np.ndarray:
        return example_losses(model, tokenizer, pool_texts, batch_size=eval_batch_size, max_length=max_length)

    base = losses()
    deltas: list[np.ndarray] = []
    ascend(model, tokenizer, target_texts, rng, max_length=max_length,
           on_eval=lambda _s: deltas.append(losses() - base), **ascent)
    out = _aggregate(deltas, aggregate)
    if relative:
        out = out / np.where(base > 0, base, np.nan)
    if start is not None:
        with torch.no_grad():
            model.load_state_dict(start)
    return out


# ---------------------------------------------------------------- loading


def load_causal_lm(ctx: ScoreContext) -> tuple[Any, Any, int]:
    """Model, tokenizer (right padding, a pad token) and max length of the scorer's model, via selectkit.models."""
    from selectkit.models import load_model

    loaded = load_model(ctx.model, ctx.base if ctx.base is not None else ".", allow_remote_code=ctx.trust_remote_code)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return loaded.model, tokenizer, loaded.max_length


# ---------------------------------------------------------------- components


class UnlearnParams(Params):
    optimizer: Literal["adafactor", "adam", "sgd"] = Field(
        "sgd", description="sgd: matched leave-one-source-out truth in 5/5 seeds on our toy; reference: adafactor")
    lr: float = Field(3e-4, gt=0, description="learning rate of the ascent (reference: 5e-5 with adafactor)")
    steps: int = Field(16, ge=1, description="optimizer steps of gradient ascent")
    batch_size: int = Field(8, ge=1, description="texts per forward/backward pass")
    grad_accum: int = Field(1, ge=1, description="passes accumulated per step (effective batch = batch_size x this)")
    max_grad_norm: float | None = Field(None, gt=0, description="gradient clipping; none like the reference")
    eval_every: int | None = Field(4, ge=1, description="read the loss change every this many steps (and at the end)")
    aggregate: Literal["mean", "last"] = Field("mean", description="mean over checkpoints (area under the curve) "
                                                                   "or the last one")
    eval_batch_size: int = Field(32, ge=1, description="texts per forward pass when measuring losses")
    max_target_examples: int | None = Field(256, ge=1, description="seeded subsample of the target texts used")


def _target_texts(ctx: ScoreContext, names: Sequence[str], limit: int | None, label: str) -> list[str]:
    texts = [t for name in names for t in ctx.targets[name].texts]
    if not texts:
        raise DataError(f"{label}: the targets {', '.join(names)} have no texts")
    if limit is not None and len(texts) > limit:
        keep = np.sort(ctx.rng(label, "targets", *names).choice(len(texts), limit, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def _ascent(p: UnlearnParams) -> dict:
    return {"steps": p.steps, "lr": p.lr, "batch_size": p.batch_size, "grad_accum": p.grad_accum,
            "optimizer": p.optimizer, "max_grad_norm": p.max_grad_norm, "eval_every": p.eval_every}


class GroupParams(UnlearnParams):
    group_by: str | None = Field(None, description="pool column whose values are the groups (e.g. source)")
    clusters: int | None = Field(None, ge=2, description="or: k-means clusters of the model's mean hidden states")
    max_groups: int = Field(256, ge=1, description="refuse more groups than this (each costs an ascent run)")

    @model_validator(mode="after")
    def _one_grouping(self):
        if (self.group_by is None) == (self.clusters is None):
            raise ValueError("set exactly one of `group_by` (a pool column) or `clusters` (k)")
        return self


class UnlearningGroup(Scorer):
    """UnTrac per group: target-loss rise after gradient ascent on the group; each example gets its group's
    score (higher: the group taught the target more). Groups from a pool column or k-means clusters."""

    name = "unlearning.group"
    Params = GroupParams
    needs_targets = True
    model_kinds = ("causal-lm",)

    def run(self, ctx: ScoreContext) -> Score:
        p = self.params
        model, tokenizer, max_length = load_causal_lm(ctx)
        if p.group_by is not None:
            if p.group_by not in ctx.pool.rows.columns:
                raise DataError(f"{self.name}: pool has no column {p.group_by!r} "
                                f"(columns: {', '.join(ctx.pool.rows.columns)})")
            keys = ctx.pool.rows[p.group_by].cast(str).fill_null("").to_numpy()
        else:
            keys = _cluster_texts(model, tokenizer, ctx, p.clusters, max_length, p.eval_batch_size)
        names, inverse = np.unique(keys, return_inverse=True)
        if len(names) > p.max_groups:
            raise RecipeError(f"{self.name}: {len(names)} groups is more than max_groups={p.max_groups}; "
                              "each group costs a gradient-ascent run")
        texts = ctx.pool.texts
        groups = [[texts[i] for i in np.flatnonzero(inverse == g)] for g in range(len(names))]
        rngs = [ctx.rng(self.name, "group", str(name)) for name in names]
        target = _target_texts(ctx, sorted(ctx.targets), p.max_target_examples, self.name)
        per_group = untrac_groups(model, tokenizer, groups, target, rngs, aggregate=p.aggregate,
                                  eval_batch_size=p.eval_batch_size, max_length=max_length, **_ascent(p))
        return Score(values=per_group[inverse].astype(np.float64), higher_is_better=True)


def _cluster_texts(model: Any, tokenizer: Any, ctx: ScoreContext, k: int, max_length: int,
                   batch_size: int) -> np.ndarray:
    """k-means labels of the model's mean-pooled last hidden states (used when no group column is given)."""
    import torch

    from selectkit_plugins.selectors._clusters import kmeans

    texts, device, rows = ctx.pool.texts, _device(model), []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = _encode(tokenizer, texts[start:start + batch_size], max_length, device)
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
    labels, _ = kmeans(np.concatenate(rows), k, ctx.rng("unlearning.group", "kmeans"))
    return np.char.mod("cluster-%d", labels)


class InvParams(UnlearnParams):
    steps: int = Field(50, ge=1, description="optimizer steps of gradient ascent on the target (reference 50)")
    grad_accum: int = Field(32, ge=1, description="passes per step; reference effective batch 256")
    eval_every: int | None = Field(10, ge=1, description="read pool losses every this many steps (each reading "
                                                         "is a forward pass over the pool)")
    max_target_examples: int | None = Field(None, ge=1, description="seeded subsample of the target texts "
                                                                    "ascended on (default: all)")
    relative: bool = Field(False, description="divide each loss change by the example's starting loss")
    per_target: bool = Field(False, description="one ascent run per target: a pool x target matrix")


class UnlearningInv(Scorer):
    """UnTrac-Inv: gradient ascent on the target, then each pool example's loss change (higher: the example
    shares what the target taught). One ascent run + (checkpoints + 1) forward passes over the pool."""

    name = "unlearning.untrac_inv"
    Params = InvParams
    needs_targets = True
    model_kinds = ("causal-lm",)

    def output_shape(self) -> Shape:
        return Shape.MATRIX if self.params.per_target else Shape.VECTOR

    def run(self, ctx: ScoreContext) -> Score:
        p = self.params
        model, tokenizer, max_length = load_causal_lm(ctx)
        runs = [[name] for name in sorted(ctx.targets)] if p.per_target else [sorted(ctx.targets)]
        columns = []
        for names in runs:
            target = _target_texts(ctx, names, p.max_target_examples, self.name)
            columns.append(untrac_inv(model, tokenizer, ctx.pool.texts, target, ctx.rng(self.name, *names),
                                      aggregate=p.aggregate, relative=p.relative, eval_batch_size=p.eval_batch_size,
                                      max_length=max_length, **_ascent(p)))
        if not p.per_target:
            return Score(values=columns[0], higher_is_better=True)
        names = tuple(n for (n,) in runs)
        return Score(values=np.stack(columns, axis=1), shape=Shape.MATRIX, higher_is_better=True,
                     columns=names, tasks=names)


@hookimpl
def register_scorers(register):
    register(UnlearningGroup)
    register(UnlearningInv)
