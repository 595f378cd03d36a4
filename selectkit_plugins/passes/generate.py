"""The generation pass provider: `samples` sampled completions of each example's prompt.

Kind `completions` (settings in KINDS): `prompt` (a column or `{template}`), `samples` (K),
`temperature`, `top_p`, `max_new_tokens`. Value: one list of K completion strings per row.

Sampling is keyed by identity, never by batch position: completion j of a row draws its noise
from a generator seeded by (recipe seed, the settings, the row's id, j), and each token is the
Gumbel-max sample argmax(log softmax(logits / T) + G) (the same distribution as multinomial
sampling), so a row's completions do not depend on which rows share its batch, on the batch
size, on sharding or on devices. Batches are greedy `generate` calls (KV cache, left padding)
with the noise added by a logits processor; prompts are length-sorted within a shard.

Truncation: the prompt keeps at most `max_length - max_new_tokens` tokens (the model spec's one
truncation rule, applied with the room generation needs), so prompt and completion always fit the
model. An empty prompt has nothing to continue: its completions are empty strings. Each shard of
rows is a cache entry: a killed run resumes after the last finished shard.
"""

from __future__ import annotations

from typing import Any

from selectkit.plugin import (
    FeatureRequest,
    Model,
    ModelError,
    ModelRef,
    PassContext,
    PassPlan,
    PassWork,
    PlanContext,
    SelectkitError,
    Shard,
    ShardedPass,
    Shards,
    cache_key,
    describe,
    hookimpl,
    label_hash,
    lazy_import,
    mix64,
    prompt_ids,
    render,
    row_keys,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

KINDS: dict[str, dict[str, Any]] = {
    "completions": {"prompt": None, "samples": 8, "temperature": 0.9, "top_p": 1.0, "max_new_tokens": 256},
}
VERSION = "1"
BATCH_ROWS = 64  # sequences (row x sample) per generate call unless the run says otherwise


class Generate(ShardedPass):
    """Sampled completions of each example's prompt (K per row), keyed by row id so batching does not
    change them."""

    name = "generate"
    version = VERSION
    kinds = KINDS

    def canonical(self, request: FeatureRequest) -> FeatureRequest:
        out = super().canonical(request)
        s = dict(out.settings)
        if s.get("prompt") is None:
            raise SelectkitError("completions need a `prompt` (a column or '{template}')")
        if int(s["samples"]) < 1 or int(s["max_new_tokens"]) < 1:
            raise SelectkitError("completions need samples >= 1 and max_new_tokens >= 1")
        if not float(s["temperature"]) > 0 or not 0 < float(s["top_p"]) <= 1:
            raise SelectkitError("completions need temperature > 0 and 0 < top_p <= 1")
        return out

    def plan(self, model: ModelRef, requests: list[FeatureRequest], ctx: PlanContext) -> list[PassPlan]:
        if model.spec.kind != "causal-lm":
            raise ModelError(f"model {model.name!r} is a {model.spec.kind}; generating completions needs a causal-lm")
        out = []
        for r in requests:
            s = dict(r.settings)
            source = ctx.sources[r.data]
            out.append(PassPlan(
                name=f"{r.data}:{cache_key(describe(r))[:8]}",
                label=f"generate with {model.name} over {r.data}: {s['samples']} completions per prompt, "
                      f"up to {s['max_new_tokens']} new tokens, temperature {s['temperature']}",
                requests=[r], data=r.data, shards=ctx.shard_count(r.data), row_shards=ctx.shard_count(r.data),
                key_parts=["completions", VERSION, model.fingerprint, source.fingerprint, source.shard_rows,
                           describe(r), ctx.seed],
                detail={"request": describe(r)}, estimate=_estimate(model, r, ctx)))
        return out

    def compute(self, work: PassWork, shard: Shard, model: Model, ctx: PassContext) -> dict[str, np.ndarray]:
        texts = sample_completions(model, shard.rows, dict(work.requests[0].settings), ctx.seed,
                                   ctx.batch_size or BATCH_ROWS)
        return pack_texts(texts)

    def assemble(self, work: PassWork, shards: Shards, ctx: PassContext) -> dict[FeatureRequest, Any]:
        request = work.requests[0]
        samples = int(dict(request.settings)["samples"])
        flat: list[str] = []
        for part in shards.read_all():
            flat.extend(unpack_texts(part))
        return {request: [flat[i:i + samples] for i in range(0, len(flat), samples)]}


def _estimate(model: ModelRef, request: FeatureRequest, ctx: PlanContext) -> Any:
    s = dict(request.settings)
    estimate = ctx.estimate(model, request.data)
    if estimate is None:
        return None
    # each sample reads its prompt once and decodes up to max_new_tokens tokens, one position per step
    times = int(s["samples"]) * (1 + int(s["max_new_tokens"]) / 32)
    return estimate.scaled(times, f"sampling {s['samples']} completions x up to {s['max_new_tokens']} tokens")


def stream_seeds(seed: int, request_tag: str, keys: np.ndarray, samples: int) -> np.ndarray:
    """(rows, samples) uint64 generator seeds: a hash of (seed, settings, row key, sample index)."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.stack([mix64(keys ^ label_hash(seed, ("completions", request_tag, str(j)))) for j in range(samples)],
                    axis=1)


def sample_completions(lm: Any, ds: Any, settings: dict[str, Any], seed: int, batch_rows: int) -> list[str]:
    """K completions per row of `ds` (row-major: row 0's K, then row 1's ...)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

    samples, max_new = int(settings["samples"]), int(settings["max_new_tokens"])
    temperature, top_p = float(settings["temperature"]), float(settings["top_p"])
    tok = lm.tokenizer
    prompts = prompt_ids(tok, render(ds, settings["prompt"]), max(1, lm.max_length - max_new))
    tag = describe(FeatureRequest("completions", "", tuple(sorted(settings.items()))))
    seeds = stream_seeds(seed, tag, row_keys(ds.ids), samples)
    out = [""] * (len(ds) * samples)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    eos = tok.eos_token_id
    jobs = [(i, j) for i in np.argsort([-len(p) for p in prompts], kind="stable") if prompts[i]
            for j in range(samples)]

    class GumbelMax(LogitsProcessor):
        """Adds each sequence's own Gumbel noise to log softmax(logits / T) (after top-p), so the
        greedy step samples from softmax(logits / T) with noise that belongs to the sequence."""

        def __init__(self, generators: list[Any]):
            self.generators = generators

        def __call__(self, input_ids, scores):
            logp = torch.log_softmax(scores.float() / temperature, dim=-1)
            if top_p < 1.0:
                logp = _top_p(logp, top_p)
            noise = torch.stack([torch.rand(logp.shape[-1], generator=g, device="cpu", dtype=torch.float64)
                                 for g in self.generators]).clamp_(1e-300, 1.0)
            gumbel = (-torch.log(-torch.log(noise))).to(logp.device, logp.dtype)
            return logp + gumbel

    config = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=eos, bos_token_id=None)
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_rows):
            batch = jobs[start:start + batch_rows]
            width = max(len(prompts[i]) for i, _ in batch)
            grid = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (i, _) in enumerate(batch):
                ids = prompts[i]
                grid[b, width - len(ids):] = torch.tensor(ids)
                mask[b, width - len(ids):] = 1
            generators = [torch.Generator(device="cpu").manual_seed(int(seeds[i, j])) for i, j in batch]
            result = lm.model.generate(input_ids=grid.to(lm.device), attention_mask=mask.to(lm.device),
                                       generation_config=config,
                                       logits_processor=LogitsProcessorList([GumbelMax(generators)]))
            new = result[:, width:].cpu().tolist()
            for b, (i, j) in enumerate(batch):
                ids = new[b]
                if eos is not None and eos in ids:
                    ids = ids[:ids.index(eos)]
                out[i * samples + j] = tok.decode(ids, skip_special_tokens=True)
    return out


def _top_p(logp: Any, top_p: float) -> Any:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (nucleus)."""
    import torch

    ordered, index = torch.sort(logp, descending=True, dim=-1)
    before = ordered.exp().cumsum(-1) - ordered.exp()  # mass of the tokens ranked above each one
    drop = before >= top_p
    masked = ordered.masked_fill(drop, float("-inf"))
    return torch.full_like(logp, float("-inf")).scatter(-1, index, masked)


def pack_texts(texts: list[str]) -> dict[str, np.ndarray]:
    data = [t.encode("utf-8", "surrogatepass") for t in texts]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in data])]).astype(np.int64)
    return {"bytes": np.frombuffer(b"".join(data), dtype=np.uint8).copy(), "offsets": offsets}


def unpack_texts(part: dict[str, np.ndarray]) -> list[str]:
    raw, offsets = bytes(part["bytes"]), part["offsets"]
    return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in zip(offsets[:-1], offsets[1:])]


@hookimpl
def register_passes(register):
    register(Generate)
