"""The causal-LM helpers every pass shares, one copy each: the prompt/response split, the
tokenisation with its response mask, and the per-example loss.

Truncation has one rule: the model's `max_length` as the loader resolved it (the spec's
`max_length`, clamped to the model's position table). Only tokens after the prompt count
(the `response` setting); an example with no counted token has no value: its loss is NaN and
so is every score made from it (the executor excludes NaN rows from selection and says how many).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from selectkit.errors import DataError

_LOGIT_CHUNK = 1 << 23  # float32 logits reduced at once (32 MiB): bounds the reduction's extra memory


def prompts_of(ds: Any, response: str | None) -> list[str] | None:
    """Each example's prompt: its text minus its rendered `response` (which must end the text)."""
    if response is None:
        return None
    from selectkit.data import render_texts

    responses = render_texts(ds.rows, response, ds.name, on_missing="empty").texts
    out = []
    for i, (text, resp) in enumerate(zip(ds.texts, responses)):
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
    special = set(getattr(tokenizer, "all_special_ids", []))
    todo = [i for i, p in enumerate(prompts) if p]
    if todo:
        encoded = tokenizer([prompts[i] for i in todo], truncation=True, max_length=max_length)["input_ids"]
        for i, p in zip(todo, encoded):
            end = len(p)
            while end > 0 and p[end - 1] in special:
                end -= 1
            n, limit = 0, min(end, len(ids[i]))
            while n < limit and ids[i][n] == p[n]:
                n += 1
            starts[i] = n
    return ids, starts


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


def token_logprobs(logits: Any, input_ids: Any, el2n: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Per position t < T-1: log p(x_{t+1} | x_<=t) and, if asked, ||p_t - onehot(x_{t+1})||_2,
    in float32, reduced in row chunks so the upcast and the softmax stay small."""
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


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Positions longest first (stable): batches of similar length waste little padding."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
