"""The unlearning pass provider (UnTrac and UnTrac-Inv, Isonuma & Titov, ACL 2024).

* `unlearn_groups` (UnTrac): for each candidate group of the pool (values of a column, or k-means
  clusters of the model's mean hidden states, which the forward provider computes), a few steps
  of gradient ascent on the group from the model, and the rise of the target loss. Each group's
  result is a cache shard: a killed run resumes after the last finished group.
* `unlearn_inv` (UnTrac-Inv): one gradient-ascent run on the target, then each pool example's
  loss change `l(theta_unlearned, x) - l(theta, x)` (every reading a forward pass over the pool).
  A kill restarts the ascent: it is deterministic, so the result is the same.

Reference code: `misonuma/untrac` (`unlearner.py`: `loss = -loss`; Adafactor, lr 5e-5, no grad clipping).
Deviations, all for reproducibility and cost: the model stays in eval mode (no dropout) so runs are
deterministic; no warmup; a fixed number of `steps` (the reference runs one epoch for UnTrac); the loss change
is averaged over evaluation checkpoints (`aggregate: mean`) because single-step readings are sensitive to lr
and step count. Memory: one extra copy of the weights (UnTrac restores the model between groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from selectkit.plugin import (
    DataError,
    FeatureRequest,
    ModelRef,
    PassContext,
    PassPlan,
    PassProvider,
    PassWork,
    PlanContext,
    RecipeError,
    StepStore,
    batch,
    cache_key,
    describe,
    example_loss,
    hookimpl,
    kmeans,
    lazy_import,
    mixed_precision,
    rng_for,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

if TYPE_CHECKING:  # pragma: no cover
    import torch


# ---------------------------------------------------------------- model math (plain functions)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _token_nll(model: Any, enc: dict) -> torch.Tensor:
    """Mean next-token NLL per sequence (B,), padding excluded; NaN where no token is predicted."""
    with mixed_precision(model):
        return example_loss(model, enc, empty=float("nan"))


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int, device: Any) -> dict:
    return {k: v.to(device) for k, v in batch(tokenizer, texts, None, max_length).items()}


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




# ---------------------------------------------------------------- the provider

ASCENT = {"optimizer": "sgd", "lr": 3e-4, "steps": 16, "batch_size": 8, "grad_accum": 1, "max_grad_norm": None,
          "eval_every": 4, "aggregate": "mean", "eval_batch_size": 32, "max_target_examples": 256, "targets": ()}
GROUPS = {**ASCENT, "group_by": None, "clusters": None, "max_groups": 256}
INV = {**ASCENT, "steps": 50, "grad_accum": 32, "eval_every": 10, "max_target_examples": None, "relative": False,
       "per_target": False}
CLUSTER_FEATURES = FeatureRequest("embedding", "pool", (("normalize", False), ("pooling", "mean")))


def _ascent(p: dict) -> dict:
    return {k: p.get(k) for k in ("steps", "lr", "batch_size", "grad_accum", "optimizer", "max_grad_norm",
                                  "eval_every")}


def _target_texts(targets: dict, names: Sequence[str], limit: int | None, seed: int, label: str) -> list[str]:
    texts = [t for name in names for t in targets[name].texts]
    if not texts:
        raise DataError(f"{label}: the targets {', '.join(names)} have no texts")
    if limit is not None and len(texts) > limit:
        keep = np.sort(rng_for(seed, label, "targets", *names).choice(len(texts), limit, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def _estimate(model: ModelRef, kind: str, p: dict, targets: list[str], ctx: PlanContext) -> Any:
    """Ascent steps (forward + backward, as training) plus the loss readings (forwards), per run;
    UnTrac runs once per group (the distinct values of `group_by`, or `clusters`); the model loads once."""
    ascent_rows = p["steps"] * p["batch_size"] * p["grad_accum"]
    readings = (-(-p["steps"] // p["eval_every"]) if p.get("eval_every") else 1) + 1
    read_on = targets[0] if kind == "unlearn_groups" and targets else "pool"
    ascent = ctx.estimate(model, read_on if kind == "unlearn_inv" else "pool", backward=True, examples=ascent_rows)
    if ascent is None:
        return None
    limit = p.get("max_target_examples")
    rows = sum(ctx.rows.get(t) or 0 for t in targets) if kind == "unlearn_groups" else ctx.rows.get("pool") or 0
    reading = ctx.estimate(model, read_on, examples=min(rows, limit) if limit and kind == "unlearn_groups" else rows)
    if kind == "unlearn_groups":
        groups = ctx.distinct("pool", p["group_by"]) if p.get("group_by") is not None else None
        runs = p.get("clusters") or max(1, groups or 1)
    else:
        runs = len(targets) if p.get("per_target") else 1
    what = f"{runs} gradient-ascent run(s) of {p['steps']} steps, {readings} loss readings each"
    total = ascent.without_load().scaled(runs, what, work="training")
    total = total.plus(reading.without_load().scaled(runs * readings, what), what)
    load = replace(ascent, flops=0.0, seconds=None if ascent.seconds is None else ascent.load_seconds)
    return load.plus(total, what)


class Unlearn(PassProvider):
    """Gradient ascent on pool groups (UnTrac) or on the targets (UnTrac-Inv)."""

    name = "unlearn"
    version = "2"
    kinds = {"unlearn_groups": GROUPS, "unlearn_inv": INV}

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        out = []
        for r in requests:
            p = dict(r.settings)
            needs = [CLUSTER_FEATURES] if r.kind == "unlearn_groups" and p.get("clusters") else []
            targets = list(p.get("targets", ()))
            what = "UnTrac per group" if r.kind == "unlearn_groups" else "UnTrac-Inv"
            out.append(PassPlan(f"{r.kind}:{cache_key(describe(r))[:8]}", f"{what} on {model.name} for "
                                f"{', '.join(targets)}",
                                [r], "pool", [r.kind, model.fingerprint, ctx.sources["pool"].fingerprint,
                                              [(t, ctx.sources[t].fingerprint) for t in targets], describe(r),
                                              ctx.seed],
                                needs=needs, estimate=_estimate(model, r.kind, p, targets, ctx), reads=targets,
                                detail={"request": describe(r)}))
        return out

    def complete(self, work: PassWork, store: StepStore) -> bool:
        return store.has("groups" if work.requests[0].kind == "unlearn_groups" else "")

    def run(self, work: PassWork, ctx: PassContext, shards: list[int] | None = None) -> None:
        request = work.requests[0]
        p = dict(request.settings)
        lm = ctx.model(work.model)
        model, tokenizer = lm.model, lm.tokenizer
        for param in model.parameters():
            param.requires_grad_(True)
        try:
            if request.kind == "unlearn_groups":
                self._groups(work, ctx, p, model, tokenizer, lm.max_length)
            else:
                self._inv(work, ctx, p, model, tokenizer, lm.max_length)
        finally:
            for param in model.parameters():
                param.requires_grad_(False)

    def _groups(self, work: PassWork, ctx: PassContext, p: dict, model: Any, tokenizer: Any, max_length: int) -> None:
        label = "unlearning.group"
        if p.get("group_by") is not None:
            keys = ctx.pool.column(p["group_by"]).cast(str).fill_null("").to_numpy()
        else:
            labels, _ = kmeans(ctx.input("embedding"), p["clusters"], rng_for(ctx.seed, label, "kmeans"))
            keys = np.char.mod("cluster-%d", labels)
        names, inverse = np.unique(keys, return_inverse=True)
        if len(names) > p["max_groups"]:
            raise RecipeError(f"{label}: {len(names)} groups is more than max_groups={p['max_groups']}; "
                              "each group costs a gradient-ascent run")
        target = _target_texts(ctx.targets, sorted(p.get("targets", ())), p.get("max_target_examples"), ctx.seed,
                               label)
        entry = ctx.store.shards(len(names), label=work.label)
        for g in entry.missing():
            texts = ctx.pool.take(np.flatnonzero(inverse == g)).texts
            score = untrac_groups(model, tokenizer, [texts], target, [rng_for(ctx.seed, label, "group", str(names[g]))],
                                  aggregate=p["aggregate"], eval_batch_size=p["eval_batch_size"],
                                  max_length=max_length, **_ascent(p))
            entry.write(g, {"score": score})
            ctx.say(done=g + 1, total=len(names), unit="group")
        scores = np.concatenate([a["score"] for a in entry.read_all()])
        entry.finish(label=work.label)
        ctx.store.write({"names": names.astype(str), "inverse": inverse, "scores": scores}, part="groups",
                        label=work.label)

    def _inv(self, work: PassWork, ctx: PassContext, p: dict, model: Any, tokenizer: Any, max_length: int) -> None:
        label = "unlearning.untrac_inv"
        names = sorted(p.get("targets", ()))
        runs = [[n] for n in names] if p.get("per_target") else [names]
        pool_texts = ctx.pool.texts
        columns = []
        for k, group in enumerate(runs):
            target = _target_texts(ctx.targets, group, p.get("max_target_examples"), ctx.seed, label)
            columns.append(untrac_inv(model, tokenizer, pool_texts, target, rng_for(ctx.seed, label, *group),
                                      aggregate=p["aggregate"], relative=p.get("relative", False),
                                      eval_batch_size=p["eval_batch_size"], max_length=max_length, **_ascent(p)))
            ctx.say(done=k + 1, total=len(runs), unit="ascent run")
        ctx.store.write({"values": np.stack(columns, axis=1), "names": np.array(["+".join(g) for g in runs])},
                        label=work.label)

    def load(self, work: PassWork, ctx: PassContext) -> dict[FeatureRequest, Any]:
        request = work.requests[0]
        got = ctx.store.read("groups" if request.kind == "unlearn_groups" else "")
        if got is None:
            raise RuntimeError(f"{work.label}: the cached result is missing; run again")
        return {request: got}


@hookimpl
def register_passes(register):
    register(Unlearn)
