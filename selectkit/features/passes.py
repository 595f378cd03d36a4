"""The shared model pass: one forward per batch yields every requested feature of a data source.

Each data source is cut into shards of `shard_size` consecutive rows. Inside a shard the
examples are sorted by token length (longest first) and packed into batches of at most
`batch_tokens` padded tokens, so padding stays small and memory is bounded by the batch.
A finished shard is written atomically; a rerun reuses every complete shard and computes
the rest in the same order, so a killed run resumes and gives the same numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectkit.components import FeatureRequest
from selectkit.data import Dataset, render_texts
from selectkit.errors import DataError, SelectkitError
from selectkit.features.store import (
    FEATURES_VERSION,
    LM_KINDS,
    DataPart,
    FeatureStore,
    PassStats,
    canonical,
    clean_temp_files,
    describe,
    pack,
    shard_complete,
    shard_path,
    write_meta,
    write_shard,
)
from selectkit.models import LoadedModel, ModelError, load_model, model_fingerprint
from selectkit.recipe import ModelSpec

MAX_BATCH_ROWS = 256
_LOGIT_CHUNK = 1 << 23  # float32 logits processed at once (32 MiB): bounds the reduction's extra memory


def compute_features(model_spec: ModelSpec, base_dir: str | Path, datasets: Mapping[str, Dataset],
                     requests: Sequence[FeatureRequest], workdir: str | Path, *,
                     batch_tokens: int | None = None, batch_size: int | None = None, shard_size: int = 1024,
                     progress: Callable[[str], None] | None = None, trust_remote_code: bool = False,
                     device: str | None = None, model: LoadedModel | None = None,
                     name: str | None = None, worker: tuple[int, int] = (0, 1)) -> FeatureStore:
    """Run the model once over each data source named by `requests` and return their features.

    All requested kinds of one data source come from one forward per batch. Shards land in
    `workdir/<data>-<key>/`, keyed by the model's files, the data and the requests; complete
    shards are reused. The model is loaded only when some shard is missing (or `model` is given).
    `worker=(i, k)` computes only shards i, i+k, i+2k... (one of k devices sharing the pass);
    a last call with the default (0, 1) then finds every shard complete and assembles them.
    """
    started = time.perf_counter()
    say = progress or (lambda message: None)
    label = name or model_spec.path
    reqs = list(dict.fromkeys(canonical(r) for r in requests))
    for r in reqs:
        if r.kind in LM_KINDS and model_spec.kind != "causal-lm":
            raise ModelError(f"model {label!r} is a {model_spec.kind}; {describe(r)} needs a causal-lm")
        if r.data not in datasets:
            raise SelectkitError(f"feature {describe(r)}: no data source {r.data!r} was given to the pass")
    workdir = Path(workdir)
    fingerprint = model_fingerprint(model_spec, base_dir)
    stats = PassStats()
    lm = model
    parts: dict[str, DataPart] = {}
    for data in dict.fromkeys(r.data for r in reqs):
        ds = datasets[data]
        data_reqs = [r for r in reqs if r.data == data]
        key = hashlib.sha256(json.dumps([FEATURES_VERSION, fingerprint, _data_identity(ds), len(ds), shard_size,
                                         [repr(r) for r in data_reqs]]).encode()).hexdigest()[:16]
        folder = workdir / f"{_safe(data)}-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        clean_temp_files(folder)
        part = DataPart(data, folder, len(ds), shard_size, {r: f"f{i}" for i, r in enumerate(data_reqs)})
        write_meta(folder, {"model": model_spec.model_dump(mode="json"), "model_fingerprint": fingerprint,
                            "data": data, "rows": len(ds), "shard_size": shard_size,
                            "features": {slot: describe(r) for r, slot in part.slots.items()}})
        for index in range(worker[0], part.shards, worker[1]):
            path = shard_path(folder, index)
            if shard_complete(path):
                stats.shards_reused += 1
                continue
            if lm is None:
                say(f"loading model {label}")
                lm = load_model(model_spec, base_dir, allow_remote_code=trust_remote_code, device=device, name=name)
                stats.model_loaded = True
            lo, hi = index * shard_size, min(len(ds), (index + 1) * shard_size)
            t0, tokens0 = time.perf_counter(), stats.tokens
            values = _compute_shard(lm, ds, lo, hi, data_reqs, stats,
                                    batch_tokens or default_batch_tokens(lm, base_dir, _needs_hidden(lm, data_reqs)),
                                    batch_size or MAX_BATCH_ROWS)
            arrays: dict[str, np.ndarray] = {}
            for request, slot in part.slots.items():
                arrays.update(pack(request, values[request], slot))
            write_shard(path, arrays)
            stats.shards_computed += 1
            rate = (stats.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
            say(f"{label} {data}: shard {index + 1}/{part.shards} ({hi - lo} examples, {rate:,.0f} tokens/s)")
        parts[data] = part
    stats.seconds = time.perf_counter() - started
    return FeatureStore(label, parts, stats)


def default_batch_tokens(lm: LoadedModel, base_dir: str | Path, hidden_states: bool = False) -> int:
    """Padded tokens per batch: what fits in 256 MiB of activations on CPU (at most 16k tokens),
    or in 80% of the free memory on CUDA (at most 128k tokens)."""
    from selectkit.estimates import (
        CPU_ACTIVATION_BUDGET,
        MAX_BATCH_TOKENS_CPU,
        MAX_BATCH_TOKENS_CUDA,
        batch_tokens_that_fit,
    )
    from selectkit.models import facts_from_config

    facts = facts_from_config(lm.model.config.to_dict())
    if str(lm.device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(lm.device))
        budget, cap = int(free * 0.8), MAX_BATCH_TOKENS_CUDA
    else:
        budget, cap = CPU_ACTIVATION_BUDGET, MAX_BATCH_TOKENS_CPU
    fit = batch_tokens_that_fit(facts, budget, lm.spec.dtype, weights_loaded=True, hidden_states=hidden_states,
                                max_length=lm.max_length, logits=lm.spec.kind != "embedding")
    return max(lm.max_length, min(fit, cap))


def _needs_hidden(lm: LoadedModel, reqs: list[FeatureRequest]) -> bool:
    return lm.spec.kind != "embedding" and any(r.kind == "embedding" for r in reqs)


def _data_identity(ds: Dataset) -> str:
    if ds.fingerprint:
        return ds.fingerprint
    digest = hashlib.sha256()
    for text in ds.texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x1f")
    return digest.hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]


# ---------------------------------------------------------------- one shard


def _prompt_lengths(lm: LoadedModel, ds: Dataset, lo: int, hi: int, response: str,
                    full: list[list[int]]) -> np.ndarray:
    """Tokens before the response, per example: the longest common prefix of the full ids and
    the ids of the text with its response cut off (trailing special tokens dropped)."""
    texts = ds.texts[lo:hi]
    responses = render_texts(ds.rows.slice(lo, hi - lo), response, ds.name)
    prompts = []
    for i, (text, resp) in enumerate(zip(texts, responses)):
        if not text.endswith(resp):
            raise DataError(f"{ds.name}: example {ds.ids[lo + i]!r}: the text does not end with its response "
                            f"({response!r}); make the text template end with the response")
        prompts.append(text[: len(text) - len(resp)])
    tok = lm.tokenizer
    special = set(tok.all_special_ids)
    encoded = tok(prompts, truncation=True, max_length=lm.max_length, add_special_tokens=True)["input_ids"]
    out = np.zeros(len(prompts), dtype=np.int64)
    for i, (ids, p) in enumerate(zip(full, encoded)):
        end = len(p)
        while end > 0 and p[end - 1] in special:
            end -= 1
        n = 0
        limit = min(end, len(ids))
        while n < limit and ids[n] == p[n]:
            n += 1
        out[i] = n
    return out


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


def _compute_shard(lm: LoadedModel, ds: Dataset, lo: int, hi: int, reqs: list[FeatureRequest],
                   stats: PassStats, batch_tokens: int, batch_size: int) -> dict[FeatureRequest, Any]:
    import torch

    tok = lm.tokenizer
    ids = tok(ds.texts[lo:hi], truncation=True, max_length=lm.max_length, add_special_tokens=True)["input_ids"]
    n = hi - lo
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    need_lm = any(r.kind in LM_KINDS for r in reqs)
    need_el2n = any(r.kind == "el2n" for r in reqs)
    poolings = sorted({_pooling(lm, dict(r.settings)["pooling"]) for r in reqs if r.kind == "embedding"})
    token_lp: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    token_el2n: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    pooled: dict[str, np.ndarray] = {}
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    autocast = (torch.autocast("cuda", dtype=getattr(torch, lm.spec.dtype))
                if str(lm.device).startswith("cuda") and lm.spec.dtype != "float32" else contextlib.nullcontext())
    body = lm.model if lm.spec.kind == "embedding" else lm.model.base_model
    real = np.flatnonzero(lengths > 0)  # an empty tokenization has nothing to score
    with torch.inference_mode(), autocast:
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
                lp, el2n = _token_stats(out.logits, input_ids, need_el2n)
                for j, r in enumerate(rows):
                    token_lp[r] = lp[j, : lengths[r] - 1]
                    if el2n is not None:
                        token_el2n[r] = el2n[j, : lengths[r] - 1]
            if poolings:
                for mode in poolings:
                    vec = _pool(hidden, torch.from_numpy(mask).to(hidden.device), mode)
                    block = pooled.setdefault(mode, np.zeros((n, vec.shape[1]), np.float32))
                    block[rows] = vec.float().cpu().numpy()
    starts = {None: np.zeros(n, dtype=np.int64)}
    for r in reqs:
        resp = dict(r.settings).get("response")
        if r.kind in LM_KINDS and resp not in starts:
            starts[resp] = _prompt_lengths(lm, ds, lo, hi, resp, ids)
    result: dict[FeatureRequest, Any] = {}
    for r in reqs:
        settings = dict(r.settings)
        if r.kind == "embedding":
            width = lm.model.config.hidden_size if not pooled else next(iter(pooled.values())).shape[1]
            vec = pooled.get(_pooling(lm, settings["pooling"]), np.zeros((n, width), np.float32))
            if settings.get("normalize"):
                norms = np.linalg.norm(vec, axis=1, keepdims=True)
                vec = vec / np.where(norms > 0, norms, 1.0)
            result[r] = vec.astype(np.float32)
            continue
        first = np.maximum(starts[settings.get("response")] - 1, 0)  # logprob j predicts token j + 1
        source = token_el2n if r.kind == "el2n" else token_lp
        counted = [source[i][first[i]:] for i in range(n)]
        if r.kind == "token_logprobs":
            result[r] = counted
        elif r.kind == "loss":
            result[r] = np.array([-c.astype(np.float64).mean() if len(c) else np.nan for c in counted])
        else:
            result[r] = np.array([c.astype(np.float64).mean() if len(c) else np.nan for c in counted])
    return result


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


def _token_stats(logits: Any, input_ids: Any, el2n: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per position t < T-1: log p(x_{t+1} | x_<=t) and, if asked, ||p_t - onehot(x_{t+1})||_2,
    in float32, processed in row chunks so the upcast and the softmax stay small."""
    import torch

    rows, width, vocab = logits.shape
    step = max(1, _LOGIT_CHUNK // max(1, (width - 1) * vocab))
    lps, norms = [], []
    for a in range(0, rows, step):
        z = logits[a: a + step, :-1].float()
        y = input_ids[a: a + step, 1:].unsqueeze(-1)
        lse = torch.logsumexp(z, dim=-1)
        lp = z.gather(-1, y).squeeze(-1) - lse
        lps.append(lp)
        if el2n:
            # ||p - e_y||^2 = sum p^2 - 2 p_y + 1, with sum p^2 = exp(lse(2z) - 2 lse(z))
            sum_sq = torch.exp(torch.logsumexp(2 * z, dim=-1) - 2 * lse)
            norms.append((sum_sq - 2 * lp.exp() + 1).clamp_min(0).sqrt())
    lp_all = torch.cat(lps).cpu().numpy()
    return lp_all, (torch.cat(norms).cpu().numpy() if el2n else None)
