"""Gradient features of a list of texts: the one loop every gradient pass uses.

`featurize_texts`: texts -> (N, D) features plus exact per-example gradient norms and losses.
Examples are batched by length (less padding) and put back in order; per-example results do
not depend on the batching. The gradients provider calls it once per cached shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selectkit.plugin import counted_tokens, encode, lazy_import, mixed_precision, pad, plan_batches

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


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
    batch_size: int = 16  # rows per batch; 0: batches of at most batch_tokens padded tokens and max_rows rows
    batch_tokens: int = 0
    max_rows: int = 16
    max_length: int = 512  # the loaded model's (selectkit.models.loader.max_length): one truncation rule
    dtype: str = "float32"  # stored features: float32 | float16
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
    from selectkit_plugins.lib.influence.grads import GradientFeaturizer, lm_loss

    loss = lm_loss if settings.method == "hooks" else _unmasked_lm_loss
    return GradientFeaturizer(model, loss, method=settings.method, proj_dim=settings.proj_dim if settings.keep_features
                              else None, proj_kind=settings.proj_kind, seed=settings.seed, layout=settings.layout,
                              factorize_above=settings.factorize_above, factor_dim=settings.factor_dim, adam=adam,
                              adam_mode=adam_mode)


def _unmasked_lm_loss(forward, batch):
    """vmap cannot trace HF's attention-mask construction; right padding comes after every label
    token, so causal attention never sees it and the mask can be dropped."""
    from selectkit_plugins.lib.influence.grads import lm_loss

    return lm_loss(lambda **kw: forward(input_ids=kw["input_ids"]), batch)


def block_layout(featurizer: Any) -> tuple[list[tuple[str, int, int]], list[int]]:
    sizes = {b.name: b.size for b in featurizer.blocks}
    slices = list(featurizer.slices)
    raw = [sizes.get(name, featurizer.raw_dim) for name, _, _ in slices]
    return slices, raw


def featurize_texts(model: Any, tokenizer: Any, texts: Sequence[str], settings: GradientSettings, *,
                    prompts: Sequence[str | None] | None = None, adam: Any = None, adam_mode: str = "less",
                    featurizer: Any = None) -> FeatureSet:
    """Per-example gradient features of `texts`, batched by length and put back in order. An
    example with no counted token (an empty response) has no gradient: its row is NaN."""
    import torch

    feat = featurizer or lm_featurizer(model, settings, adam, adam_mode)
    slices, raw_sizes = block_layout(feat)
    device = next(model.parameters()).device
    width = feat.dim if settings.keep_features else 0
    n = len(texts)
    out_f = np.zeros((n, width), np.float32)
    out_n = np.zeros(n)
    out_l = np.zeros(n)
    counts = np.zeros(n, dtype=np.int64)
    ids, starts = encode(tokenizer, texts, settings.max_length, prompts)
    for rows in _batches(np.array([len(x) for x in ids], dtype=np.int64), settings):
        batch = pad(tokenizer, [ids[i] for i in rows], starts[rows])
        counts[rows] = counted_tokens(batch)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.enable_grad(), mixed_precision(model):
            got = feat(batch)
        if width:
            out_f[rows] = got.features.detach().cpu().numpy()
        out_n[rows] = got.norms.detach().cpu().numpy()
        out_l[rows] = got.losses.detach().cpu().numpy()
    empty = counts == 0
    out_f[empty], out_n[empty], out_l[empty] = np.nan, np.nan, np.nan
    return FeatureSet(out_f.astype(settings.dtype, copy=False), out_n, out_l, slices, raw_sizes)


def _batches(lengths: np.ndarray, settings: GradientSettings) -> list[np.ndarray]:
    """Rows of each batch, longest first: `batch_size` rows at a time, or (batch_size 0) as many as
    fit `batch_tokens` padded tokens and `max_rows` rows (the device's budget, `gradient_batches`)."""
    if settings.batch_size:
        return plan_batches(lengths, settings.batch_size * max(1, int(lengths.max(initial=1))), settings.batch_size)
    return plan_batches(lengths, settings.batch_tokens, settings.max_rows)
