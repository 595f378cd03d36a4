"""The proxy model of `selectkit eval`: a small Llama built from scratch, trained on one arm's texts
packed into fixed-length byte sequences, and scored in bits per byte on held-out texts.

Tokens are UTF-8 bytes (the demo model's ByT5 tokenizer: id = byte + 3, `</s>` = 1 separates
texts), so every arm trains on exactly the same number of tokens and bits per byte is the loss
itself, comparable across arms whatever the texts' lengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from selectkit.recipe.spec import ProxySpec

SEPARATOR = 1  # ByT5's </s>: starts every text, so its first byte is predicted too
VOCAB = 384  # ByT5's vocabulary (256 bytes + 3 specials + 125 extra ids), as the demo model's


def encode_texts(texts: Sequence[str]) -> list[np.ndarray]:
    """Each text's tokens by ByT5's table (byte + 3), `</s>` first; never truncated (long texts are
    split into windows when scored). Text that spells `</s>` stays bytes, unlike the tokenizer."""
    return [np.concatenate([[SEPARATOR], np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 3])
            for t in texts]


def pack(encoded: Sequence[np.ndarray], tokens: int, seq_len: int) -> np.ndarray:
    """The texts' tokens concatenated, cut to `tokens`, as (tokens // seq_len, seq_len) sequences."""
    flat = (np.concatenate(list(encoded)) if len(encoded) else np.zeros(0, np.int64))[:tokens]
    rows = len(flat) // seq_len
    return flat[:rows * seq_len].reshape(rows, seq_len)


def config(spec: ProxySpec) -> dict:
    """The proxy's Llama config (what the manifest records)."""
    return {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": spec.hidden,
            "intermediate_size": 2 * spec.hidden, "num_hidden_layers": spec.layers,
            "num_attention_heads": spec.heads, "num_key_value_heads": spec.heads,
            "max_position_embeddings": spec.seq_len, "pad_token_id": 0, "eos_token_id": SEPARATOR,
            "bos_token_id": SEPARATOR, "tie_word_embeddings": True}


def epochs(spec: ProxySpec, sequences: int) -> int:
    """`spec.epochs`, or more when one pass over `sequences` is under `spec.min_steps` optimizer steps."""
    per_epoch = max(1, -(-sequences // spec.batch_size))
    return max(spec.epochs, -(-spec.min_steps // per_epoch))


def train(spec: ProxySpec, sequences: np.ndarray, seed: int,
          progress: Callable[[int, int], None] | None = None) -> Any:
    """A fresh proxy (initialised from `seed`) trained `epochs(spec, ...)` times over `sequences`, in a
    seeded order per epoch: two arms with the same seed and sequence count see the same schedule."""
    import torch

    from selectkit.models.loader import new_causal_lm
    from selectkit.models.training import linear_schedule, train_epoch

    model = new_causal_lm(config(spec), seed)
    model.train()
    data = torch.from_numpy(sequences)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay,
                            betas=(0.9, 0.999), eps=1e-8)
    steps = -(-len(data) // spec.batch_size)
    passes = epochs(spec, len(data))
    total = steps * passes
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total, int(np.ceil(spec.warmup_ratio * total))))

    def make_batch(rows):
        ids = data[torch.as_tensor(np.asarray(rows))]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    for epoch in range(passes):
        order = np.random.default_rng([seed, epoch]).permutation(len(data))
        train_epoch(model, opt, sched, order, batch_size=spec.batch_size, micro_batch_size=spec.batch_size,
                    make_batch=make_batch, clip=spec.clip,
                    progress=(lambda s, n, loss, e=epoch: progress(e * steps + s, total)) if progress else None)
    model.eval()
    return model


def bits(model: Any, encoded: Sequence[Sequence[int]], seq_len: int, batch: int = 64) -> np.ndarray:
    """Each text's total negative log2-likelihood of its bytes under `model`: windows of `seq_len`
    tokens overlapping by one, so every byte is predicted exactly once."""
    import torch

    from selectkit.models.lm import token_logprobs

    windows, owner = [], []
    for i, e in enumerate(encoded):
        for start in range(0, max(1, len(e) - 1), seq_len - 1):
            piece = e[start:start + seq_len]
            if len(piece) > 1:
                windows.append(piece)
                owner.append(i)
    out = np.zeros(len(encoded), dtype=np.float64)
    order = np.argsort([-len(w) for w in windows], kind="stable")
    with torch.no_grad():
        for a in range(0, len(order), batch):
            part = [windows[j] for j in order[a:a + batch]]
            width = max(len(w) for w in part)
            ids = torch.zeros((len(part), width), dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for r, w in enumerate(part):
                ids[r, :len(w)] = torch.from_numpy(np.asarray(w, dtype=np.int64))
                mask[r, :len(w)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            lp, _, _ = token_logprobs(logits, ids)
            lp = np.where(mask[:, 1:].numpy() > 0, lp, 0.0)
            np.add.at(out, np.asarray(owner)[order[a:a + batch]], -lp.sum(1) / math.log(2))
    return out


def threads(n: int):
    """A context that runs torch with `n` CPU threads and restores the previous count."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def scope():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)
    return scope()
