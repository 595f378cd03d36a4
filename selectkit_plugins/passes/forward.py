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

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectkit.contract.components import FeatureRequest
from selectkit.contract.hookspecs import hookimpl
from selectkit.contract.passes import ModelRef, PassContext, PassPlan, PassProvider, PlanContext, describe
from selectkit.errors import DataError, SelectkitError
from selectkit.models.loader import LoadedModel, ModelError
from selectkit.storage.cache import Cache, cache_key

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


@dataclass
class PassStats:
    """What a model pass did; tests read `forward_passes` to check fusion."""

    forward_passes: int = 0
    batches: int = 0
    examples: int = 0
    tokens: int = 0  # real tokens fed to the model
    padded_tokens: int = 0  # tokens including padding (batch rows x longest row)
    shards_computed: int = 0
    shards_reused: int = 0
    model_loaded: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Forward(PassProvider):
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
            out.append(PassPlan(
                name=data, label=f"forward {model.name} over {data}: {', '.join(sorted({r.kind for r in reqs}))}",
                requests=reqs, data=data, shards=ctx.shard_count(data),
                settings={"detail": {"features": ", ".join(describe(r) for r in reqs)}},
                key_parts=["forward", VERSION, model.fingerprint, source.fingerprint, source.shard_rows,
                           [describe(r) for r in reqs]],
                estimate=_estimate(model, reqs, data, ctx)))
        return out

    def run(self, step: Any, ctx: PassContext, shards: list[int] | None = None) -> None:
        payload = step.payload
        entry = ctx.cache.sharded("passes", step.key, step.shards, label=step.label)
        todo = entry.missing() if shards is None else [i for i in shards if not entry.done(i)]
        if not todo:
            return
        device = ctx.options.get("device")
        lm = ctx.load_model(payload.model, device=device)
        shard_rows = payload.shard_rows
        stats = PassStats(model_loaded=True)
        for i in todo:
            ds = ctx.shard(payload.data, i, shard_rows)
            t0, tokens0 = time.perf_counter(), stats.tokens
            arrays = compute_shard(lm, ds, payload.requests, stats, ctx.options.get("batch_tokens"),
                                   ctx.options.get("batch_size"))
            write_shard(entry, i, arrays)
            stats.shards_computed += 1
            rate = (stats.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
            ctx.say(done=i + 1, total=step.shards, rows=len(ds), tokens_per_s=rate)

    def load(self, step: Any, ctx: PassContext) -> dict[FeatureRequest, Any]:
        entry = ctx.cache.sharded("passes", step.key, step.shards)
        parts = entry.read_all()
        return {r: unpack(r, f"f{j}", parts) for j, r in enumerate(step.payload.requests)}

    def complete(self, step: Any, cache: Any) -> bool:
        return cache.sharded("passes", step.key, step.shards).complete()


def write_shard(entry: Any, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one shard (a seam: tests kill a run here)."""
    entry.write(index, arrays)


def _estimate(model: ModelRef, reqs: list[FeatureRequest], data: str, ctx: PlanContext) -> Any:
    """One forward pass per set of token sequences the step feeds (the source's texts, each other
    `text`, and each choice list, counted as 4 choices when a column holds them)."""
    from selectkit.planning.estimates import forward_estimate

    estimate = forward_estimate(model, reqs, data, ctx)
    variants = {_variant(r) for r in reqs}
    passes = sum(len(v[2]) if v[0] == "choices" and isinstance(v[2], tuple) else 4 if v[0] == "choices" else 1
                 for v in variants)
    if estimate is None or passes <= 1:
        return estimate
    return estimate.scaled(passes, f"forward over {len(variants)} sets of token sequences (about {passes} passes)")


# ---------------------------------------------------------------- one shard


def plan_batches(lengths: np.ndarray, batch_tokens: int, batch_size: int) -> list[np.ndarray]:
    """Positions (into `lengths`) of each batch: longest first, rows x longest <= batch_tokens."""
    order = np.argsort(-lengths, kind="stable")
    batches, i = [], 0
    while i < len(order):
        longest = max(int(lengths[order[i]]), 1)
        rows = max(1, min(batch_size, batch_tokens // longest))
        batches.append(order[i: i + rows])
        i += rows
    return batches


def activation_budget(lm: LoadedModel) -> tuple[int, int]:
    """(bytes, most padded tokens) one batch may take: 256 MiB of activations and 16k tokens on CPU,
    80% of the free memory and 128k tokens on CUDA."""
    from selectkit.planning.estimates import CPU_ACTIVATION_BUDGET, MAX_BATCH_TOKENS_CPU, MAX_BATCH_TOKENS_CUDA

    if str(lm.device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(lm.device))
        return int(free * 0.8), MAX_BATCH_TOKENS_CUDA
    return CPU_ACTIVATION_BUDGET, MAX_BATCH_TOKENS_CPU


def default_batch_tokens(lm: LoadedModel, hidden_states: bool = False) -> int:
    """Padded tokens per forward batch: what the planner's activation estimate fits in the budget."""
    from selectkit.models.loader import facts_from_config
    from selectkit.planning.estimates import batch_tokens_that_fit

    facts = facts_from_config(lm.model.config.to_dict())
    budget, cap = activation_budget(lm)
    fit = batch_tokens_that_fit(facts, budget, lm.spec.dtype, weights_loaded=True, hidden_states=hidden_states,
                                max_length=lm.max_length, logits=lm.spec.kind != "embedding")
    return max(lm.max_length, min(fit, cap))


GRADIENT_ROWS_CPU, GRADIENT_ROWS_CUDA = 16, 256


def gradient_batches(lm: LoadedModel, raw_dim: int) -> tuple[int, int]:
    """(padded tokens, rows) per per-example-gradient batch from the planner's estimate: a third of
    the budget for forward + backward activations, the rest for each row's raw gradient entries
    (float32, with the Adam and float64 norm copies: 16 bytes an entry); 16 rows at most on CPU,
    256 on CUDA, and always at least one example of max_length tokens."""
    from selectkit.models.loader import facts_from_config
    from selectkit.planning.estimates import batch_tokens_that_fit

    facts = facts_from_config(lm.model.config.to_dict())
    budget, cap = activation_budget(lm)
    tokens = batch_tokens_that_fit(facts, budget // 3, lm.spec.dtype, weights_loaded=True, backward=True,
                                   max_length=lm.max_length)
    most = GRADIENT_ROWS_CUDA if str(lm.device).startswith("cuda") else GRADIENT_ROWS_CPU
    rows = int(max(1, min(most, (budget - budget // 3) // max(1, 16 * raw_dim))))
    return max(lm.max_length, min(tokens, cap)), rows


def _variant(request: FeatureRequest) -> tuple:
    """Which token sequences a request reads: the source's texts, a rendered `text`, or a choice list."""
    settings = dict(request.settings)
    if request.kind == "choice_logprobs":
        return ("choices", settings["prompt"], settings["choices"], settings.get("separator", " "),
                bool(settings.get("literal_prompt")))
    return ("text", settings.get("text") if request.kind in TOKEN_KINDS else None)


def _sequences(ds: Any, variant: tuple) -> tuple[list[str], list[str] | None, np.ndarray]:
    """The texts of a variant, their prompts (choices: what precedes each choice), and the owner row of each."""
    from selectkit.models.lm import render

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


def compute_shard(lm: LoadedModel, ds: Any, reqs: Sequence[FeatureRequest], stats: PassStats,
                  batch_tokens: int | None = None, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Every requested feature of the examples of `ds`, packed into the arrays of one shard."""
    from selectkit.models.lm import encode, prompts_of

    n = len(ds)
    tok = lm.tokenizer
    poolings = sorted({_pooling(lm, dict(r.settings)["pooling"]) for r in reqs if r.kind == "embedding"})
    hidden_needed = bool(poolings) and lm.spec.kind != "embedding"
    batch_tokens = batch_tokens or default_batch_tokens(lm, hidden_needed)
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


def _forward(lm: LoadedModel, ids: list[list[int]], stats: PassStats, batch_tokens: int, batch_size: int, *,
             need_lm: bool, el2n: bool, zscores: bool, poolings: list[str]) -> dict[str, Any]:
    """Batched forward passes over token sequences `ids`: per-token log-probs (and EL2N, z-scores)
    for LM features, pooled last hidden states for embeddings."""
    import torch

    from selectkit.models.lm import mixed_precision, token_logprobs

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


def _pooling(lm: LoadedModel, pooling: str) -> str:
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


# ---------------------------------------------------------------- direct use (tests, benchmarks)


class FeatureStore:
    """Features computed by `compute_features`: `get(kind, data, **settings)` and `stats`."""

    def __init__(self, model: str, values: dict[FeatureRequest, Any], stats: PassStats):
        self.model, self.values, self.stats = model, values, stats

    def get(self, kind: str, data: str = "pool", **settings: Any) -> Any:
        request = feature_request(kind, data, **settings)
        if request not in self.values:
            known = ", ".join(describe(r) for r in self.values) or "none"
            raise SelectkitError(f"model {self.model!r}: feature {describe(request)} was not computed "
                                 f"(computed: {known})")
        return self.values[request]


def compute_features(model_spec: Any, base_dir: str | Path, datasets: Mapping[str, Any],
                     requests: Sequence[FeatureRequest], workdir: str | Path, *,
                     batch_tokens: int | None = None, batch_size: int | None = None, shard_size: int = 1024,
                     progress: Callable[[str], None] | None = None, trust_remote_code: bool = False,
                     device: str | None = None, model: LoadedModel | None = None,
                     name: str | None = None, worker: tuple[int, int] = (0, 1)) -> FeatureStore:
    """The forward pass outside a recipe: `requests` over in-memory `datasets`, shards cached
    under `workdir` exactly as a run caches them. `worker=(i, k)` computes only shards i, i+k, ...
    (one of k devices); a later call with the default assembles them without loading the model."""
    from selectkit.models.loader import load_model, model_fingerprint

    started = time.perf_counter()
    label = name or str(model_spec.path)
    reqs = list(dict.fromkeys(feature_request(r.kind, r.data, **dict(r.settings)) for r in requests))
    for r in reqs:
        if r.kind in LM_KINDS and model_spec.kind != "causal-lm":
            raise ModelError(f"model {label!r} is a {model_spec.kind}; {describe(r)} needs a causal-lm")
        if r.data not in datasets:
            raise SelectkitError(f"feature {describe(r)}: no data source {r.data!r} was given to the pass")
    cache = Cache(Path(workdir))
    fingerprint = model_fingerprint(model_spec, base_dir)
    stats = PassStats()
    lm = model
    values: dict[FeatureRequest, Any] = {}
    for data in dict.fromkeys(r.data for r in reqs):
        ds = datasets[data]
        data_reqs = [r for r in reqs if r.data == data]
        shards = max(1, -(-len(ds) // shard_size))
        key = cache_key("forward", VERSION, fingerprint, ds.fingerprint or _texts_identity(ds), len(ds), shard_size,
                        [describe(r) for r in data_reqs])
        entry = cache.sharded("passes", key, shards, label=f"{label} over {data}")
        for i in range(worker[0], shards, worker[1]):
            if entry.open(i) is not None:
                stats.shards_reused += 1
                continue
            if lm is None:
                say = progress or (lambda message: None)
                say(f"loading model {label}")
                lm = load_model(model_spec, base_dir, allow_remote_code=trust_remote_code, device=device, name=name)
                stats.model_loaded = True
            from selectkit.contract.passes import slice_dataset

            part = slice_dataset(ds, i * shard_size, (i + 1) * shard_size)
            write_shard(entry, i, compute_shard(lm, part, data_reqs, stats, batch_tokens, batch_size))
            stats.shards_computed += 1
        if worker == (0, 1):
            parts = entry.read_all()
            values.update({r: unpack(r, f"f{j}", parts) for j, r in enumerate(data_reqs)})
    stats.seconds = time.perf_counter() - started
    return FeatureStore(label, values, stats)


def _texts_identity(ds: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    for text in ds.texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x1f")
    return digest.hexdigest()


@hookimpl
def register_passes(register):
    register(Forward)
