"""Tiny models built from a config in milliseconds, and in-memory datasets, for the model tests."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from selectkit.data.sources import Dataset

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = ROOT / "recipes" / "data"
TINY_LM = ROOT / "recipes" / "models" / "tiny-lm"


def tiny_causal_lm(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A random byte-level Llama (ByT5 tokenizer) saved with save_pretrained."""
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = ByT5Tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=None, eos_token_id=1, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def dataset(name: str, texts: list[str], **columns: list) -> Dataset:
    rows = pl.DataFrame({"text": texts, **columns})
    return Dataset(name=name, rows=rows, ids=pl.Series("id", list(range(len(texts)))), texts=texts,
                   fingerprint="")  # empty: the pass hashes the texts


def demo_rows(file: str, per_domain: int | None = None) -> list[dict]:
    """Rows of a demo jsonl file, at most `per_domain` of each domain, in file order."""
    rows, seen = [], {}
    for line in (DEMO_DATA / file).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        domain = row.get("domain", "")
        if per_domain is None or seen.get(domain, 0) < per_domain:
            seen[domain] = seen.get(domain, 0) + 1
            rows.append(row)
    return rows


def demo_dataset(name: str, file: str, per_domain: int | None = None) -> Dataset:
    rows = demo_rows(file, per_domain)
    extra = {"domain": [r.get("domain", "") for r in rows]}
    return dataset(name, [r["text"] for r in rows], **extra)
