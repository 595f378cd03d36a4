"""soft_cap (FLYT Soft Cap Sampling, Shechter & Carmon, NeurIPS 2025): sample a training set with
repetition from softmax(score), lowering an example's logit each time it is drawn so no example is
repeated hundreds of times (reference `formll/FLYT/examples.ipynb`)."""

from __future__ import annotations

from pydantic import Field

from selectkit.plugin import SelectContext, Selection, Selector, SelectorParams, Shape, hookimpl, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class SoftCapParams(SelectorParams):
    repetition_penalty: float = Field(0.15, ge=0, description="subtracted from an example's logit per draw")
    batch_size: int = Field(100_000, ge=1, description="draws per batch (without replacement within a batch)")
    temperature: float = Field(1.0, gt=0, description="logits = score / temperature (FLYT uses raw scores)")


class SoftCap(Selector):
    """Draw `budget` examples WITH repetition (a count may exceed the candidates; a fraction is of
    the candidates; a token budget counts the tokens of every draw): repeatedly draw a batch without
    replacement with p = softmax(logits), then subtract `repetition_penalty` from the drawn logits.
    Fills `counts` (draws per selected example); indices are ordered by count, then score.
    Deviation from the reference: the batch is drawn by Gumbel-top-B (O(N) by argpartition)
    instead of `rng.choice(replace=False, p=...)`; both give the same successive-sampling
    (Plackett-Luce) distribution. Scales as O(draws / batch_size · N) time and O(N) memory.
    NaN scores are never drawn. Each batch's noise per row is keyed by (seed, stage, batch, row id)."""

    name = "soft_cap"
    version = "2"
    draws_with_replacement = True
    Params = SoftCapParams
    accepts = frozenset({Shape.VECTOR})

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        oriented = np.asarray(ctx.score.oriented(), dtype=np.float64)[ctx.candidates]
        logits = np.where(np.isnan(oriented), -np.inf, oriented / p.temperature)
        budget = p.budget
        total = len(ctx.candidates) if budget is None else {
            "count": lambda: int(budget.value),
            "fraction": lambda: int(np.floor(budget.value * len(ctx.candidates) + 1e-9)),
            "tokens": lambda: None,
        }[budget.kind]()
        tokens = np.asarray(ctx.pool.token_counts)[ctx.candidates] if total is None else None
        counts = soft_cap_counts(logits, lambda batch: ctx.gumbel("soft_cap", str(batch)), p.repetition_penalty,
                                 p.batch_size,
                                 total=total, tokens=tokens, token_budget=budget.value if tokens is not None else None)
        drawn = np.flatnonzero(counts)
        keys = ctx.row_keys()[drawn]
        order = drawn[np.lexsort((keys, -np.nan_to_num(oriented[drawn], nan=-np.inf), -counts[drawn]))]
        return Selection(indices=ctx.candidates[order], counts=counts[order],
                         diagnostics={"draws": int(counts.sum()), "unique": len(order),
                                      "max_count": int(counts.max(initial=0))})


def soft_cap_counts(logits: np.ndarray, noise, penalty: float, batch_size: int, *,
                    total: int | None, tokens: np.ndarray | None = None,
                    token_budget: float | None = None) -> np.ndarray:
    """Draw counts per entry of `logits` (-inf entries are never drawn): `total` draws, or, when
    `total` is None, draws while their token total stays within `token_budget`. `noise(b)` gives
    batch b's Gumbel noise per entry (a Generator works too: its draws are used in turn)."""
    if isinstance(noise, np.random.Generator):
        rng = noise
        noise = lambda _b: rng.gumbel(size=len(logits))  # noqa: E731
    logits = np.array(logits, dtype=np.float64, copy=True)
    counts = np.zeros(len(logits), dtype=np.int64)
    drawn, used, batches = 0, 0.0, 0
    remaining = np.inf if total is None else total
    while drawn < remaining:
        drawable = int(np.isfinite(logits).sum())
        size = int(min(batch_size, remaining - drawn, drawable))
        if size <= 0:
            break
        keys = logits + noise(batches)
        batches += 1
        batch = np.argpartition(-keys, size - 1)[:size]
        if tokens is not None:  # keep the batch's best-keyed draws while the tokens fit
            batch = batch[np.argsort(-keys[batch], kind="stable")]
            fits = used + np.cumsum(tokens[batch]) <= token_budget
            stop = not fits.all()
            batch = batch[: int(np.argmin(fits)) if stop else len(batch)]
            used += float(tokens[batch].sum())
            if stop or len(batch) == 0:
                counts[batch] += 1
                break
        counts[batch] += 1
        logits[batch] -= penalty
        drawn += len(batch)
    return counts


@hookimpl
def register_selectors(register):
    register(SoftCap)
