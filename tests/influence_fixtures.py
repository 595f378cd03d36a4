"""A tiny byte-level Llama briefly trained on a mixture of synthetic tasks, and pools/targets
drawn from those tasks, for the influence tests and benchmark (CPU, seconds)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

TASKS = ("reverse", "add", "upper")


def example(task: str, rng: random.Random) -> tuple[str, str]:
    """(prompt, response) of one synthetic example."""
    if task == "reverse":
        word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 7)))
        return f"reverse: {word} -> ", word[::-1]
    if task == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"add: {a}+{b} -> ", str(a + b)
    word = "".join(rng.choice("klmnopqrst") for _ in range(rng.randint(3, 7)))
    return f"upper: {word} -> ", word.upper()


def rows(per_task: int, seed: int, tasks: tuple[str, ...] = TASKS) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(per_task):
        for task in tasks:
            prompt, response = example(task, rng)
            out.append({"text": prompt + response, "prompt": prompt, "response": response, "task": task, "i": i})
    return out


def dataset(name: str, data: list[dict]) -> Any:
    import polars as pl

    from selectkit.data.sources import Dataset

    frame = pl.DataFrame(data)
    texts = frame["text"].to_list()
    digest = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()
    return Dataset(name=name, rows=frame, ids=pl.Series("id", list(range(len(texts)))), texts=texts,
                   fingerprint=digest)


def pretrained_lm(folder: Path, steps: int = 60, hidden: int = 32, seed: int = 0, layers: int = 2) -> Path:
    """Save a tiny Llama trained for a few full-parameter steps on the task mixture."""
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    from selectkit_plugins.lib.influence.grads import lm_batch, lm_loss

    torch.manual_seed(seed)
    tok = ByT5Tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=None, eos_token_id=1, pad_token_id=0)
    model = LlamaForCausalLM(config)
    data = rows(100, seed + 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    for _ in range(steps):
        batch = rng.sample(data, 16)
        loss = lm_loss(model, lm_batch(tok, [r["text"] for r in batch], [r["prompt"] for r in batch])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
