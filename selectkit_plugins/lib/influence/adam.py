"""LESS's Adam-preconditioned training gradients (Xia et al. 2024, "LESS: Selecting
Influential Data for Targeted Instruction Tuning", `obtain_gradients_with_adam`).

    m' = b1 m + (1-b1) g ;  v' = b2 v + (1-b2) g^2 ;  Gamma = m' / sqrt(v' + eps)

`mode="less"` is the reference code: eps inside the sqrt, no bias correction (with m = v = 0
this is ~3.162 sign(g)). `mode="paper"` is the paper's formula: bias-corrected
m'/(1-b1^t), v'/(1-b2^t) and eps outside the sqrt, with t the optimizer step after the update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class AdamState:
    """Adam moments flattened in the gradient-feature order (see `GradientFeaturizer.param_names`)."""

    exp_avg: torch.Tensor  # (D,)
    exp_avg_sq: torch.Tensor  # (D,)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    step: int = 0  # optimizer steps taken when the state was saved (paper mode's bias correction)

    @classmethod
    def zeros(cls, dim: int, **kw) -> AdamState:
        import torch

        return cls(torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64), **kw)


def adam_transform(g: torch.Tensor, state: AdamState, mode: Literal["less", "paper"] = "less") -> torch.Tensor:
    """Per-example Adam update direction Gamma(g) for g (B, D); computed in float64."""
    import torch

    g64 = g.to(torch.float64)
    m = state.exp_avg.to(g.device, torch.float64)
    v = state.exp_avg_sq.to(g.device, torch.float64)
    m1 = state.beta1 * m + (1 - state.beta1) * g64
    v1 = state.beta2 * v + (1 - state.beta2) * g64 * g64
    if mode == "less":
        out = m1 / torch.sqrt(v1 + state.eps)
    elif mode == "paper":
        t = state.step + 1
        out = (m1 / (1 - state.beta1**t)) / (torch.sqrt(v1 / (1 - state.beta2**t)) + state.eps)
    else:
        raise ValueError(f"unknown Adam feature mode {mode!r} (less or paper)")
    return out.to(g.dtype)
