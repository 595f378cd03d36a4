"""The forward pass provider: per-example token log-probs, loss, EL2N, Min-K%++ token z-scores,
multiple-choice log-likelihoods and pooled embeddings, every kind one model computes over one data
source coming from ONE provider step (one forward pass per batch of each token sequence it needs).

Batches are length-sorted inside each shard (little padding) and bounded by padded tokens, so
memory is bounded by the batch. Each shard is a cache sub-entry written atomically; a rerun
computes only missing (or corrupt) shards, in any order and on any device, with equal results.

Kinds (settings, defaults in KINDS): `token_logprobs` (ragged float32 per example), `loss` (N,)
mean token NLL, `el2n` (N,) mean ||p - onehot||_2, `token_zscores` (ragged: Min-K%++'s
(log p - mu) / sigma per token, mu and sigma over the full next-token distribution, computed
inside the pass so no logits are stored): these need a causal LM and take `response`, a column
or `{template}` whose rendered text ends each example's text; only tokens after that point
count (default: every token); no counted token gives NaN. They also take `text`: a column or
`{template}` scored instead of the source's text (e.g. IFD's answer alone); every distinct
`text` is its own set of token sequences, batched in the same step. `choice_logprobs` (N, C):
log p(choice | prompt) summed over each choice's tokens, for `prompt` (a template) followed by
`separator` and each of `choices` (a list column, or a fixed list; `literal_prompt: true`: `prompt`
is the same literal text for every row, not a template), NaN where a row has fewer
choices or a choice lost every token to truncation. `embedding` (N, D) with `pooling`
auto|mean|cls|last (auto: the folder's sentence-transformers pooling, else last for causal LMs,
mean otherwise) and `normalize` (L2, default true).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selectkit.plugin import (
    DataError,
    FeatureRequest,
    Model,
    ModelError,
    ModelRef,
    PassContext,
    PassPlan,
    PassStats,
    PassWork,
    PlanContext,
    SelectkitError,
    Shard,
    ShardedPass,
    Shards,
    describe,
    encode,
    hookimpl,
    lazy_import,
    mixed_precision,
    plan_batches,
    prompts_of,
    render,
    token_logprobs,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

KINDS: dict[str, dict[str, Any]] = {
    "token_logprobs": {"response": None, "text": None},
    "loss": {"response": None, "text": None},
    "el2n": {"response": None, "text": None},
    "token_zscores": {"response": None, "text": None},
    "choice_logprobs": {"prompt": None, "choices": None, "separator": " ", "literal_prompt": False},
    "embedding": {"pooling": "auto", "normalize": True},
}
TOKEN_KINDS = frozenset({"token_logprobs", "loss", "el2n", "token_zscores"})
LM_KINDS = TOKEN_KINDS | {"choice_logprobs"}
POOLINGS = ("auto", "mean", "cls", "last")
RAGGED = frozenset({"token_logprobs", "token_zscores"})
VERSION = "2"  # enters keys: bump when a kind's computation changes
MAX_BATCH_ROWS = 256


def feature_request(kind: str, data: str = "pool", model: str | None = None, **settings: Any) -> FeatureRequest:
    """The canonical forward request for `kind` over `data` (defaults filled in, None dropped)."""
    if kind not in KINDS:
        raise SelectkitError(f"unknown feature kind {kind!r} (known: {', '.join(KINDS)})")
    return Forward().canonical(FeatureRequest(kind, data, tuple(sorted(settings.items())), model))


class Forward(ShardedPass):
    """Forward features of one model over one data source, fused into one pass per batch."""

    name = "forward"
    version = VERSION
    kinds = KINDS

    def canonical(self, request: FeatureRequest) -> FeatureRequest:
        if request.kind == "choice_logprobs":
            settings = dict(request.settings)
            if isinstance(settings.get("choices"), list):  # a fixed list of choices: hashable, like every setting
                settings["choices"] = tuple(settings["choices"])
            request = FeatureRequest(request.kind, request.data, tuple(sorted(settings.items())), request.model)
        out = super().canonical(request)
        settings = dict(out.settings)
        pooling = settings.get("pooling", "auto")
        if out.kind == "embedding" and pooling not in POOLINGS:
            raise SelectkitError(f"embedding pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        if out.kind == "choice_logprobs" and (settings.get("prompt") is None or not settings.get("choices")):
            raise SelectkitError("choice_logprobs needs a `prompt` template and `choices` (a list column or a "
                                 "fixed list of strings)")
        return out

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        for r in requests:
            if r.kind in LM_KINDS and model.spec.kind != "causal-lm":
                raise ModelError(f"model {model.name!r} is a {model.spec.kind}; {describe(r)} needs a causal-lm")
        out = []
        for data in dict.fromkeys(r.data for r in requests):
            reqs = sorted((r for r in requests if r.data == data), key=describe)
            source = ctx.sources[data]
            rows = ctx.shard_count(data)
            out.append(PassPlan(
                name=data, label=f"forward {model.name} over {data}: {', '.join(sorted({r.kind for r in reqs}))}",
                requests=reqs, data=data, shards=rows, row_shards=rows,
                detail={"features": ", ".join(describe(r) for r in reqs)},
                key_parts=["forward", VERSION, model.fingerprint, source.fingerprint, source.shard_rows,
                           [describe(r) for r in reqs]],
                estimate=_estimate(model, reqs, data, ctx)))
        return out

    def compute(self, work: PassWork, shard: Shard, model: Model, ctx: PassContext) -> dict[str, np.ndarray]:
        return compute_shard(model, shard.rows, work.requests, self.stats, ctx.batch_tokens, ctx.batch_size)

    def assemble(self, work: PassWork, shards: Shards, ctx: PassContext) -> dict[FeatureRequest, Any]:
        parts = shards.read_all()
        return {r: unpack(r, f"f{j}", parts) for j, r in enumerate(work.requests)}


def _estimate(model: ModelRef, reqs: list[FeatureRequest], data: str, ctx: PlanContext) -> Any:
    """One forward pass per set of token sequences the step feeds (the source's texts, each other
    `text`, and each choice list, counted as 4 choices when a column holds them)."""
    hidden = any(r.kind == "embedding" for r in reqs) and model.spec.kind != "embedding"
    estimate = ctx.estimate(model, data, hidden_states=hidden)
    variants = {_variant(r) for r in reqs}
    passes = sum(len(v[2]) if v[0] == "choices" and isinstance(v[2], tuple) else 4 if v[0] == "choices" else 1
                 for v in variants)
    if estimate is None or passes <= 1:
        return estimate
    return estimate.scaled(passes, f"forward over {len(variants)} sets of token sequences (about {passes} passes)")


# ---------------------------------------------------------------- one shard


GRADIENT_ROWS_CPU, GRADIENT_ROWS_CUDA = 16, 256


def gradient_batches(lm: Model, raw_dim: int) -> tuple[int, int]:
    """(padded tokens, rows) per per-example-gradient batch from the planner's arithmetic: a third of
    the activation budget for forward + backward activations, the rest for each row's raw gradient
    entries (float32, with the Adam and float64 norm copies: 16 bytes an entry); 16 rows at most on
    CPU, 256 on CUDA, and always at least one example of max_length tokens."""
    budget, _ = lm.activation_budget()
    tokens = lm.batch_tokens(budget // 3, backward=True)
    most = GRADIENT_ROWS_CUDA if str(lm.device).startswith("cuda") else GRADIENT_ROWS_CPU
    rows = int(max(1, min(most, (budget - budget // 3) // max(1, 16 * raw_dim))))
    return tokens, rows


def _variant(request: FeatureRequest) -> tuple:
    """Which token sequences a request reads: the source's texts, a rendered `text`, or a choice list."""
    settings = dict(request.settings)
    if request.kind == "choice_logprobs":
        return ("choices", settings["prompt"], settings["choices"], settings.get("separator", " "),
                bool(settings.get("literal_prompt")))
    return ("text", settings.get("text") if request.kind in TOKEN_KINDS else None)


def _sequences(ds: Any, variant: tuple) -> tuple[list[str], list[str] | None, np.ndarray]:
    """The texts of a variant, their prompts (choices: what precedes each choice), and the owner row of each."""
    n = len(ds)
    if variant[0] == "text":
        texts = ds.texts if variant[1] is None else render(ds, variant[1])
        return list(texts), None, np.arange(n)
    _, prompt, choices, separator, literal = variant
    prompts = [prompt] * n if literal else render(ds, prompt)
    if isinstance(choices, tuple):
        lists = [list(choices)] * n
    else:
        if choices not in ds.rows.columns:
            raise DataError(f"{ds.name}: no column {choices!r} holding the choices (columns: "
                            f"{', '.join(ds.rows.columns)})")
        lists = [None if v is None or isinstance(v, str) else [str(c) for c in v] for v in ds.rows[choices].to_list()]
        bad = next((i for i, v in enumerate(lists) if v is None), None)
        if bad is not None:
            raise DataError(f"{ds.name}: example {ds.ids[bad]!r}: column {choices!r} must hold a list of choices")
    texts, heads, owner = [], [], []
    for i, (head, options) in enumerate(zip(prompts, lists)):
        for c in options:
            heads.append(head + separator)
            texts.append(head + separator + c)
            owner.append(i)
    return texts, heads, np.asarray(owner, dtype=np.int64)


def compute_shard(lm: Model, ds: Any, reqs: Sequence[FeatureRequest], stats: PassStats,
                  batch_tokens: int | None = None, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Every requested feature of the examples of `ds`, packed into the arrays of one shard."""
    n = len(ds)
    tok = lm.tokenizer
    poolings = sorted({_pooling(lm, dict(r.settings)["pooling"]) for r in reqs if r.kind == "embedding"})
    hidden_needed = bool(poolings) and lm.spec.kind != "embedding"
    batch_tokens = batch_tokens or lm.batch_tokens(hidden_states=hidden_needed)
    batch_size = batch_size or MAX_BATCH_ROWS
    variants = list(dict.fromkeys(_variant(r) for r in reqs))
    if poolings and ("text", None) not in variants:
        variants.insert(0, ("text", None))
    outputs: dict[tuple, dict[str, Any]] = {}
    for variant in variants:
        mine = [r for r in reqs if _variant(r) == variant]
        texts, heads, owner = _sequences(ds, variant)
        ids, _ = encode(tok, texts, lm.max_length)
        out = _forward(lm, ids, stats, batch_tokens, batch_size,
                       need_lm=any(r.kind in LM_KINDS for r in mine), el2n=any(r.kind == "el2n" for r in mine),
                       zscores=any(r.kind == "token_zscores" for r in mine),
                       poolings=poolings if variant == ("text", None) else [])
        out.update(texts=texts, heads=heads, owner=owner)
        outputs[variant] = out
    arrays: dict[str, np.ndarray] = {}
    starts: dict[tuple, np.ndarray] = {}
    for j, r in enumerate(reqs):
        settings = dict(r.settings)
        slot = f"f{j}"
        variant = _variant(r)
        got = outputs[variant]
        if r.kind == "embedding":
            pooled = got["pooled"]
            width = lm.model.config.hidden_size if not pooled else next(iter(pooled.values())).shape[1]
            vec = pooled.get(_pooling(lm, settings["pooling"]), np.zeros((n, width), np.float32))
            if settings.get("normalize"):
                norms = np.linalg.norm(vec, axis=1, keepdims=True)
                vec = vec / np.where(norms > 0, norms, 1.0)
            arrays[slot] = vec.astype(np.float32)
            continue
        resp = settings.get("response") if r.kind in TOKEN_KINDS else None
        if (variant, resp) not in starts:
            prompts = got["heads"] if variant[0] == "choices" else prompts_of(ds, resp, got["texts"])
            starts[(variant, resp)] = (encode(tok, got["texts"], lm.max_length, prompts)[1] if prompts is not None
                                       else np.zeros(len(got["texts"]), dtype=np.int64))
        first = np.maximum(starts[(variant, resp)] - 1, 0)  # logprob j predicts token j + 1
        source = got[{"el2n": "el2n", "token_zscores": "z"}.get(r.kind, "lp")]
        counted = [source[i][first[i]:] for i in range(len(source))]
        if r.kind in RAGGED:
            arrays.update(pack_ragged(counted, slot))
        elif r.kind == "loss":
            arrays[slot] = np.array([-c.astype(np.float64).mean() if len(c) else np.nan for c in counted])
        elif r.kind == "el2n":
            arrays[slot] = np.array([c.astype(np.float64).mean() if len(c) else np.nan for c in counted])
        else:  # choice_logprobs: (n, most choices), NaN-padded
            owner = got["owner"]
            width = int(np.bincount(owner, minlength=n).max()) if len(owner) else 0
            table = np.full((n, max(width, 1)), np.nan)
            slot_of = np.arange(len(owner)) - np.searchsorted(owner, owner)  # position among the row's choices
            for k, c in enumerate(counted):
                table[owner[k], slot_of[k]] = c.astype(np.float64).sum() if len(c) else np.nan
            arrays[slot] = table
    return arrays


def _forward(lm: Model, ids: list[list[int]], stats: PassStats, batch_tokens: int, batch_size: int, *,
             need_lm: bool, el2n: bool, zscores: bool, poolings: list[str]) -> dict[str, Any]:
    """Batched forward passes over token sequences `ids`: per-token log-probs (and EL2N, z-scores)
    for LM features, pooled last hidden states for embeddings."""
    import torch

    n = len(ids)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    token_lp: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    token_el2n: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    token_z: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    pooled: dict[str, np.ndarray] = {}
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    body = lm.model if lm.spec.kind == "embedding" else lm.model.base_model
    real = np.flatnonzero(lengths > 0)  # an empty tokenization has nothing to score
    with torch.inference_mode(), mixed_precision(lm.model):
        for batch in plan_batches(lengths[real], batch_tokens, batch_size):
            rows = real[batch]
            width = int(lengths[rows].max())
            grid = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                grid[j, : lengths[r]] = ids[r]
                mask[j, : lengths[r]] = 1
            input_ids = torch.from_numpy(grid).to(lm.device)
            attention = torch.from_numpy(mask).to(lm.device) if (mask == 0).any() else None
            kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
            if lm.spec.kind == "causal-lm":
                kwargs["use_cache"] = False
            if need_lm:
                out = lm.model(**kwargs, output_hidden_states=bool(poolings))
                hidden = out.hidden_states[-1] if poolings else None
            else:  # embeddings only: the body without the LM head (no logits computed)
                out = body(**kwargs)
                hidden = out.last_hidden_state
            stats.forward_passes += 1
            stats.batches += 1
            stats.examples += len(rows)
            stats.tokens += int(lengths[rows].sum())
            stats.padded_tokens += len(rows) * width
            if need_lm:
                lp, norms, z = token_logprobs(out.logits, input_ids, el2n, zscores)
                for j, r in enumerate(rows):
                    token_lp[r] = lp[j, : lengths[r] - 1]
                    if norms is not None:
                        token_el2n[r] = norms[j, : lengths[r] - 1]
                    if z is not None:
                        token_z[r] = z[j, : lengths[r] - 1]
            if poolings:
                for mode in poolings:
                    vec = _pool(hidden, torch.from_numpy(mask).to(hidden.device), mode)
                    block = pooled.setdefault(mode, np.zeros((n, vec.shape[1]), np.float32))
                    block[rows] = vec.float().cpu().numpy()
    return {"lp": token_lp, "el2n": token_el2n, "z": token_z, "pooled": pooled}


def pack_ragged(values: list[np.ndarray], slot: str) -> dict[str, np.ndarray]:
    lengths = np.array([len(v) for v in values], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(values).astype(np.float32) if len(values) else np.zeros(0, np.float32)
    return {f"{slot}_values": flat, f"{slot}_offsets": offsets}


def unpack(request: FeatureRequest, slot: str, parts: list[dict[str, np.ndarray]]) -> Any:
    """One feature over all shards, in row order: ragged kinds as a list of arrays."""
    if request.kind not in RAGGED:
        return np.concatenate([p[slot] for p in parts]) if parts else np.zeros(0)
    out: list[np.ndarray] = []
    for p in parts:
        values, offsets = p[f"{slot}_values"], p[f"{slot}_offsets"]
        out.extend(values[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
    return out


def _pooling(lm: Model, pooling: str) -> str:
    if pooling != "auto":
        return pooling
    if lm.pooling:
        return lm.pooling
    return "last" if lm.spec.kind == "causal-lm" else "mean"


def _pool(hidden: Any, mask: Any, mode: str) -> Any:
    """(B, T, D) hidden states -> (B, D): mean over real tokens, the first token, or the last one."""
    import torch

    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)


@hookimpl
def register_passes(register):
    register(Forward)
