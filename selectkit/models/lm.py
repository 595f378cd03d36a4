"""The causal-LM helpers every pass shares, one copy each: the prompt/response split, the
tokenisation with its response mask, and the per-example loss.

Truncation has one rule: the model's `max_length` as the loader resolved it (the spec's
`max_length`, clamped to the model's position table). Only tokens after the prompt count
(the `response` setting); an example with no counted token has no value: its loss is NaN and
so is every score made from it (the executor excludes NaN rows from selection and says how many).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from selectkit.contract.lazy import lazy_import
from selectkit.errors import DataError

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

_LOGIT_CHUNK = 1 << 23  # float32 logits reduced at once (32 MiB): bounds the reduction's extra memory


def render(ds: Any, template: str) -> list[str]:
    """Each example's rendering of a column name or `{template}` (missing fields render empty)."""
    from selectkit.data.sources import render_texts

    return render_texts(ds.rows, template, ds.name, on_missing="empty").texts


def render_missing(ds: Any, template: str, *, as_list: bool = False) -> tuple[list[str], Any]:
    """Each example's rendering of a column name or `{template}` ("" where a field is missing) and a
    mask of the rows where a field it names is missing or null (a numpy array, or a list of bools
    with `as_list`: validate's checks, on `FirstRows`, import no numpy); a column absent from every row is a
    DataError naming it."""
    from selectkit.data.sources import render_texts

    rendered = render_texts(ds.rows, template, ds.name, on_missing="skip")
    if as_list:
        skipped = rendered.skipped
        return rendered.texts, ([False] * len(rendered.texts) if skipped is None
                                else [bool(x) for x in (skipped if isinstance(skipped, list) else skipped.to_list())])
    missing = np.zeros(len(rendered.texts), dtype=bool) if rendered.skipped is None else \
        rendered.skipped.to_numpy().astype(bool)
    return rendered.texts, missing


def prompts_of(ds: Any, response: str | None, texts: Sequence[str] | None = None) -> list[str] | None:
    """Each example's prompt: its text (or `texts[i]`) minus its rendered `response`, which must
    end the text."""
    if response is None:
        return None
    responses = render(ds, response)
    out = []
    for i, (text, resp) in enumerate(zip(ds.texts if texts is None else texts, responses)):
        if not text.endswith(resp):
            raise DataError(f"{ds.name}: example {ds.ids[i]!r}: the text does not end with its response "
                            f"({response!r}); make the text template end with the response")
        out.append(text[: len(text) - len(resp)])
    return out


def encode(tokenizer: Any, texts: Sequence[str], max_length: int,
           prompts: Sequence[str | None] | None = None) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of each text (truncated to `max_length`) and the number of leading prompt
    tokens, which do not count. The prompt's tokens are the longest common prefix of the text's
    ids and the prompt's own ids (trailing special tokens dropped), as LESS tokenises them."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    starts = np.zeros(len(ids), dtype=np.int64)
    if prompts is None:
        return ids, starts
    todo = [i for i, p in enumerate(prompts) if p]
    if todo:
        for i, p in zip(todo, prompt_ids(tokenizer, [prompts[i] for i in todo], max_length)):
            n, limit = 0, min(len(p), len(ids[i]))
            while n < limit and ids[i][n] == p[n]:
                n += 1
            starts[i] = n
    return ids, starts


def weights_dtype(model: Any) -> Any:
    """The dtype the model's weights were loaded in (`models.<name>.dtype`): its input embedding's,
    so float32 LoRA adapters on a bfloat16 base do not count."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    if weight is None:
        weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    return None if weight is None else weight.dtype


def mixed_precision(model: Any) -> Any:
    """The autocast every pass runs its forward under: the weights' half dtype (bfloat16, float16)
    for the matmuls, float32 where autocast keeps it (softmax, norms, losses); nothing for float32
    weights. CPU autocast has bfloat16 only. Losses, log-probs and gradient products are
    reduced in float32 (float64 for projections) by the code that reduces them, whatever this says."""
    import torch

    dtype = weights_dtype(model)
    if dtype not in (torch.bfloat16, torch.float16):
        return nullcontext()
    device = next(model.parameters()).device.type
    if device == "cuda" or (device == "cpu" and dtype == torch.bfloat16):
        return torch.autocast(device, dtype=dtype)
    return nullcontext()


def prompt_ids(tokenizer: Any, prompts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of texts that something follows (a response, a generated completion): truncated
    to `max_length`, trailing special tokens (an end-of-sequence marker) dropped."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    out = []
    for p in tokenizer(list(prompts), truncation=True, max_length=max_length)["input_ids"]:
        end = len(p)
        while end > 0 and p[end - 1] in special:
            end -= 1
        out.append(list(p[:end]))
    return out


def pad(tokenizer: Any, ids: Sequence[Sequence[int]], starts: np.ndarray | None = None) -> dict:
    """Right-padded torch batch: input_ids, attention_mask, and labels (-100 on padding and prompt)."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(1, max((len(e) for e in ids), default=1))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    labels = torch.full((len(ids), width), -100, dtype=torch.long)
    for i, e in enumerate(ids):
        if not e:
            continue
        row = torch.tensor(e)
        input_ids[i, :len(e)] = row
        mask[i, :len(e)] = 1
        labels[i, :len(e)] = row
        if starts is not None and starts[i]:
            labels[i, :int(starts[i])] = -100
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batch(tokenizer: Any, texts: Sequence[str], prompts: Sequence[str | None] | None = None,
          max_length: int = 512) -> dict:
    """`encode` + `pad`: the batch every training and gradient pass feeds the model."""
    ids, starts = encode(tokenizer, texts, max_length, prompts)
    return pad(tokenizer, ids, starts)


def example_loss(forward: Callable[..., Any], batch: dict, *, empty: float = 0.0) -> Any:
    """Per-example causal-LM loss (B,): mean cross-entropy over label tokens (HF's default per
    example). An example without label tokens gets `empty`: 0 where a backward pass follows (no
    gradient), NaN where the value is reported."""
    import torch

    logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    valid = labels != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    count = valid.sum(1)
    loss = (ce * valid).sum(1) / count.clamp(min=1)
    if empty != 0.0:
        loss = torch.where(count > 0, loss, torch.full_like(loss, empty))
    return loss


def counted_tokens(batch: dict) -> np.ndarray:
    """Tokens each example's loss counts (predicted label tokens)."""
    return (batch["labels"][:, 1:] != -100).sum(1).cpu().numpy()


def token_logprobs(logits: Any, input_ids: Any, el2n: bool = False, zscores: bool = False,
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per position t < T-1: log p(x_{t+1} | x_<=t), and if asked ||p_t - onehot(x_{t+1})||_2 (EL2N)
    and the Min-K%++ z-score (log p(x_{t+1}) - mu_t) / sigma_t with mu_t = E_{z~p_t}[log p_t(z)] and
    sigma_t^2 = Var_{z~p_t}[log p_t(z)] over the whole vocabulary (0 where sigma_t = 0: a uniform or
    one-hot distribution). Float32, reduced in row chunks so the upcast and the softmax stay small;
    no logits leave this function."""
    import torch

    rows, width, vocab = logits.shape
    step = max(1, _LOGIT_CHUNK // max(1, (width - 1) * vocab))
    lps, norms, zs = [], [], []
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
        if zscores:
            logp = z - lse.unsqueeze(-1)
            p = logp.exp()
            live = p > 0  # masked (-inf) logits carry no mass: 0 * inf is not NaN here
            mu = torch.where(live, p * logp, 0.0).sum(-1)
            var = torch.where(live, p * (logp - mu.unsqueeze(-1)).square(), 0.0).sum(-1)  # two-pass: >= 0
            sigma = var.sqrt()
            ok = sigma > 1e-6 * mu.abs().clamp_min(1.0)
            zs.append(torch.where(ok, (lp - mu) / torch.where(ok, sigma, torch.ones_like(sigma)),
                                  torch.zeros_like(lp)))
    lp_all = torch.cat(lps).cpu().numpy()
    return (lp_all, torch.cat(norms).cpu().numpy() if el2n else None,
            torch.cat(zs).cpu().numpy() if zscores else None)


def plan_batches(lengths: np.ndarray, batch_tokens: int, batch_size: int) -> list[np.ndarray]:
    """Positions (into `lengths`) of each batch, longest first (batches of similar length waste
    little padding): at most `batch_size` rows, and rows x longest <= batch_tokens (at least one row)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, i = [], 0
    while i < len(order):
        longest = max(int(lengths[order[i]]), 1)
        rows = max(1, min(batch_size, batch_tokens // longest))
        batches.append(order[i: i + rows])
        i += rows
    return batches
