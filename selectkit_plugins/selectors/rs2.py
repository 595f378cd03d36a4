"""RS2: Repeated Random Sampling (Okanovic et al., "Repeated Random Sampling for Minimizing the
Time-to-Accuracy of Learning", ICLR 2024, arXiv 2305.18424): instead of one static subset, train
round (epoch) t on a fresh random subset of r·N examples.

Without replacement (the paper's default): the candidates are put in a seeded random order and
each round takes the next r·N; when they run out, a fresh order is drawn and the round completes
from it (skipping examples it already holds), so after any number of rounds every example has
been used equally often, give or take one, and each round holds r·N distinct examples. With
replacement: every round is an independent uniform draw of r·N.

`budget` is the per-round size (a count, or a fraction r of the candidates); `rounds` is R. The
stage keeps every example used in some round, ordered by its first round (then its position in
it); `count` is the number of rounds it is in, and the `round` column (selection.parquet and the
subset) lists them (1-based). `output.split_by: round` writes one subset per round. Orders are
keyed by (seed, stage, pass or round, row id), never by position, so the schedule does not depend
on the pool's row order or sharding. O(R·r·N) time and memory.

Deviation: the reference code draws with `torch.randperm` under a global seed; the schedule is the
same in distribution, not in values.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt, model_validator

from selectkit.plugin import SelectContext, Selection, Selector, SelectorParams, hookimpl, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class RS2Params(SelectorParams):
    rounds: PositiveInt = Field(description="number of rounds (training epochs), each with its own subset")
    replacement: bool = Field(False, description="false: exhaust a random order before reshuffling (every example "
                              "used equally often); true: an independent draw per round")

    @model_validator(mode="after")
    def _round_size(self):
        if self.budget is not None and self.budget.kind == "tokens":
            raise ValueError("rs2 draws a number of examples per round: give a count or fraction budget")
        return self


class RS2(Selector):
    """Repeated random sampling: `rounds` subsets of `budget` rows each, without replacement across rounds
    until the candidates are exhausted; writes a `round` column listing each kept example's rounds."""

    name = "rs2"
    Params = RS2Params
    needs_score = False
    accepts = frozenset()
    writes_columns = ("round",)

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        cands = ctx.candidates
        size = p.budget.max_count(len(cands))
        if size == 0 or not len(cands):
            return Selection(indices=np.empty(0, np.int64), diagnostics={"rounds": p.rounds, "per_round": 0})
        if p.replacement:
            schedule = [np.argsort(ctx.uniform("rs2", "round", str(t)), kind="stable")[:size] for t in range(p.rounds)]
            passes = None
        else:
            schedule, passes = rounds_without_replacement(
                lambda k: np.argsort(ctx.uniform("rs2", "pass", str(k)), kind="stable"), len(cands), size, p.rounds)
        positions, counts, rounds = summarise(schedule, len(cands))
        diagnostics = {"rounds": p.rounds, "per_round": size, "unique": len(positions),
                       "max_count": int(counts.max(initial=0))}
        if passes is not None:
            diagnostics["passes"] = passes
        return Selection(indices=cands[positions], counts=counts, columns={"round": rounds}, diagnostics=diagnostics)


def rounds_without_replacement(order, n: int, size: int, rounds: int) -> tuple[list[np.ndarray], int]:
    """Each round's positions (into 0..n-1): consecutive chunks of `order(0)`, then of `order(1)`, ...;
    a round that crosses into a new order skips what it already holds (those stay queued). Returns the
    rounds and the number of orders started."""
    queue, at, started = order(0), 0, 1
    out = []
    for _ in range(rounds):
        take = queue[at:at + size]
        at += len(take)
        if len(take) < size:
            fresh = order(started)
            started += 1
            fill = np.flatnonzero(~np.isin(fresh, take))[: size - len(take)]
            take = np.concatenate([take, fresh[fill]])
            queue, at = np.delete(fresh, fill), 0
        out.append(take)
    return out, started


def summarise(schedule: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions used in some round (by first round, then place in it), their counts, and a
    (used, most rounds) array of 1-based rounds, -1 padded."""
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    for t, take in enumerate(schedule):
        rank = t * n + np.arange(len(take))
        first[take] = np.minimum(first[take], rank)
        counts[take] += 1
    used = np.flatnonzero(counts)
    used = used[np.argsort(first[used], kind="stable")]
    where = np.full(n, -1, dtype=np.int64)
    where[used] = np.arange(len(used))
    table = np.full((len(used), int(counts.max(initial=1))), -1, dtype=np.int64)
    fill = np.zeros(len(used), dtype=np.int64)
    for t, take in enumerate(schedule):
        rows = where[take]
        table[rows, fill[rows]] = t + 1
        fill[rows] += 1
    return used, counts[used], table


@hookimpl
def register_selectors(register):
    register(RS2)
