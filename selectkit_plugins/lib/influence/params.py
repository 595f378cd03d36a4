"""Params shared by the gradient scorers (pydantic only: importing this never imports torch).

Truncation is not a param: every pass of a model uses the model spec's `max_length`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from selectkit.plugin import Params


class GradientBase(Params):
    """Which gradients are taken: of which parameters, how, in what batches, on which tokens."""

    params: Literal["auto", "lora", "linear"] = Field(
        "auto", description="parameters differentiated: lora (the adapter's), linear (all nn.Linear), "
        "auto (lora when the model has an adapter or warmup checkpoints)")
    method: Literal["hooks", "vmap"] = Field("hooks", description="per-example gradients by layer hooks or torch.func")
    batch_size: PositiveInt | Literal["auto"] = Field(
        "auto", description="examples per gradient batch; auto: as many as the device's memory fits by the "
        "planner's estimate (padded tokens and per-example gradient entries; at most 16 on CPU, 256 on CUDA)")
    response: str | None = Field(
        None, description="column or '{template}' holding each example's response; its rendered text must end "
        "the example's text, and only the response's tokens enter the loss (default: every token). Applies to "
        "pool and targets")


class NormParams(GradientBase):
    """Exact per-example gradient norms (no projection)."""

    factorize_above: PositiveInt | None = Field(
        1 << 22, description="Linear layers with more weight entries get their norm without forming the gradient "
        "(ghost norm: same value, less memory); null: never")


class ProjectedParams(GradientBase):
    """How per-example gradients are compressed into features."""

    proj_dim: PositiveInt | None = Field(
        1024, description="random projection width (LESS uses 8192 on GPUs); null keeps raw gradients")
    proj_kind: Literal["auto", "rademacher", "gaussian", "sjlt"] = Field(
        "auto", description="rademacher or gaussian (dense, O(D k) per example), sjlt (a sparse JL transform, O(D)); "
        "auto: sjlt from 4096 dims up, rademacher below")
    layout: Literal["joint", "per_block"] = Field(
        "joint", description="joint: one projection of the whole gradient; per_block: one per layer block")
    factorize_above: PositiveInt | None = Field(
        1 << 22, description="Linear layers with more weight entries are projected LoGra-style "
        "(activations and output gradients separately); null: never")
    factor_dim: PositiveInt = Field(32, description="LoGra projection width per side (factor_dim^2 dims per layer)")
    feature_dtype: Literal["auto", "float32", "float16"] = Field(
        "auto", description="stored precision of the gradient store: float16 keeps unit rows and their float32 "
        "norms (half the disk and I/O, products in float32); auto: float16 from 4096 dims up, float32 below")


class Aggregate(Params):
    aggregate: Literal["mean", "max"] = Field(
        "mean", description="reduce each target's examples (or subtasks) to one column: mean or max")


class PairwiseParams(ProjectedParams, Aggregate):
    """Projected gradients of pool and targets, reduced to one column per target."""
