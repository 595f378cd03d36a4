"""Gradient features of a list of texts, batched and stored in resumable shards.

`featurize_texts` is the one loop every gradient scorer uses: texts -> (N, D) features plus
exact per-example gradient norms and losses. Within a shard, examples are batched by length
(less padding) and put back in order; per-example results do not depend on the batching.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GradientSettings:
    """How per-example gradients become features (see GradientFeaturizer)."""

    proj_dim: int | None = 1024  # None: raw gradients
    proj_kind: str = "rademacher"
    seed: int = 0
    layout: str = "joint"  # joint | per_block
    factorize_above: int | None = 1 << 22  # LoGra-project Linear layers with more weight entries
    factor_dim: int = 32
    method: str = "hooks"  # hooks | vmap
    batch_size: int = 16
    max_length: int = 512
    dtype: str = "float32"  # stored features: float32 | float16
    shard_size: int = 1024
    keep_features: bool = True  # False: norms and losses only (self-influence, GraNd)


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D)
    norms: np.ndarray  # (N,) ||g|| of the raw SGD gradient
    losses: np.ndarray  # (N,)
    slices: list[tuple[str, int, int]] = field(default_factory=list)  # feature column range of each block
    raw_sizes: list[int] = field(default_factory=list)  # unprojected entries of each block


def lm_featurizer(model: Any, settings: GradientSettings, adam: Any = None, adam_mode: str = "less") -> Any:
    """A GradientFeaturizer for a causal LM with the per-example label-token-mean loss."""
    from selectkit_plugins.influence.grads import GradientFeaturizer, lm_loss

    loss = lm_loss if settings.method == "hooks" else _unmasked_lm_loss
    return GradientFeaturizer(model, loss, method=settings.method, proj_dim=settings.proj_dim if settings.keep_features
                              else None, proj_kind=settings.proj_kind, seed=settings.seed, layout=settings.layout,
                              factorize_above=settings.factorize_above, factor_dim=settings.factor_dim, adam=adam,
                              adam_mode=adam_mode)


def _unmasked_lm_loss(forward, batch):
    """vmap cannot trace HF's attention-mask construction; right padding comes after every label
    token, so causal attention never sees it and the mask can be dropped."""
    from selectkit_plugins.influence.grads import lm_loss

    return lm_loss(lambda **kw: forward(input_ids=kw["input_ids"]), batch)


def block_layout(featurizer: Any) -> tuple[list[tuple[str, int, int]], list[int]]:
    sizes = {b.name: b.size for b in featurizer.blocks}
    slices = list(featurizer.slices)
    raw = [sizes.get(name, featurizer.raw_dim) for name, _, _ in slices]
    return slices, raw


def cache_key(*parts: Any) -> str:
    text = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def featurize_texts(model: Any, tokenizer: Any, texts: Sequence[str], settings: GradientSettings, *,
                    prompts: Sequence[str | None] | None = None, adam: Any = None, adam_mode: str = "less",
                    folder: str | Path | None = None, meta: dict | None = None,
                    progress: Callable[[str], None] | None = None) -> FeatureSet:
    """Per-example gradient features of `texts`; with `folder`, computed into resumable shards there."""
    import torch

    from selectkit_plugins.influence.grads import lm_batch
    from selectkit_plugins.influence.store import ShardStore

    feat = lm_featurizer(model, settings, adam, adam_mode)
    slices, raw_sizes = block_layout(feat)
    device = next(model.parameters()).device
    width = feat.dim if settings.keep_features else 0

    def compute(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.arange(start, stop)
        order = idx[np.argsort([-len(texts[i]) for i in idx], kind="stable")]
        out_f = np.zeros((stop - start, width), np.float32)
        out_n = np.zeros(stop - start)
        out_l = np.zeros(stop - start)
        for b in range(0, len(order), settings.batch_size):
            rows = order[b:b + settings.batch_size]
            batch = lm_batch(tokenizer, [texts[i] for i in rows],
                             [prompts[i] for i in rows] if prompts is not None else None, settings.max_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.enable_grad():
                got = feat(batch)
            pos = rows - start
            if width:
                out_f[pos] = got.features.detach().cpu().numpy()
            out_n[pos] = got.norms.detach().cpu().numpy()
            out_l[pos] = got.losses.detach().cpu().numpy()
        return out_f, out_n, out_l

    if folder is None:
        f, n, loss = compute(0, len(texts)) if len(texts) else (np.zeros((0, width), np.float32), np.zeros(0),
                                                                  np.zeros(0))
        return FeatureSet(f.astype(settings.dtype), n, loss, slices, raw_sizes)
    store = ShardStore(folder, {**(meta or {}), "featurizer": feat.key, "settings": asdict(settings)},
                       n=len(texts), shard_size=settings.shard_size, dtype=settings.dtype)
    f, n, loss = store.fill(compute, progress).load()
    return FeatureSet(f, n, loss, slices, raw_sizes)
