"""Inverse-Hessian influence (Koh & Liang 2017): tau(z_test, z) = g_test^T (H + damping I)^-1 g(z).

Positive = helpful: removing z raises the test loss by about tau / n for a mean-form H (spec
section 0; the paper's I_up,loss is the negation). The damping is always explicit. Three ways
to apply the inverse: an explicit (p x p) solve for small models or final layers, conjugate
gradients, and LiSSA (Agarwal et al. 2017), the last two from Hessian-vector products only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from selectkit.plugin import lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from selectkit_plugins.lib.influence.grads import Batch, LossFn

HVP = Callable[["torch.Tensor"], "torch.Tensor"]  # v (p,) -> H v (p,)


def inverse_hessian_scores(train: np.ndarray, target: np.ndarray, hessian: np.ndarray,
                           damping: float = 0.0) -> np.ndarray:
    """train (N, p) and target (M, p) gradients, H (p, p) -> (N, M) = train (H + damping I)^-1 target^T."""
    h = np.asarray(hessian, np.float64) + damping * np.eye(hessian.shape[0])
    solved = np.linalg.solve(h, np.asarray(target, np.float64).T)  # (p, M)
    return np.asarray(train, np.float64) @ solved


def explicit_hessian(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """The (p, p) Hessian of a scalar loss of a flat parameter vector (torch.func.hessian)."""
    import torch

    h = torch.func.hessian(loss)(theta)
    return (h + h.T) / 2


def conjugate_gradient(hvp: HVP, b: torch.Tensor, *, damping: float, tol: float = 1e-8, max_iter: int = 100,
                       ) -> tuple[torch.Tensor, dict]:
    """Solve (H + damping I) x = b by CG. Stops at relative residual `tol`, after `max_iter`
    steps, or when a direction of non-positive curvature shows up (H + damping I not positive
    definite: raise the damping); `info` says which."""
    import torch

    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = torch.dot(r, r)
    b_norm = float(torch.linalg.vector_norm(b)) or 1.0
    info = {"iterations": 0, "converged": False, "negative_curvature": False}
    for it in range(max_iter):
        if float(rr.sqrt()) <= tol * b_norm:
            info["converged"] = True
            break
        ap = hvp(p) + damping * p
        curv = torch.dot(p, ap)
        if curv <= 0:
            info["negative_curvature"] = True
            break
        alpha = rr / curv
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = torch.dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        info["iterations"] = it + 1
    else:
        info["converged"] = float(rr.sqrt()) <= tol * b_norm
    return x, info


def lissa(hvp: HVP, b: torch.Tensor, *, damping: float, scale: float, depth: int = 1000) -> torch.Tensor:
    """LiSSA: h_t = b + h_{t-1} - ((H + damping I) h_{t-1}) / scale; returns h_depth / scale
    -> (H + damping I)^-1 b when `scale` exceeds the largest eigenvalue of H + damping I."""
    h = b.clone()
    for _ in range(depth):
        h = b + h - (hvp(h) + damping * h) / scale
    return h / scale


def model_hvp(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], params: list[str]) -> HVP:
    """v -> H v for the mean per-example loss over `batches` (exact Hessian by double backward),
    with respect to the named parameters, flattened in that order."""
    import torch

    named = dict(model.named_parameters())
    tensors = [named[p] for p in params]
    batches = list(batches)
    total = sum(next(iter(b.values())).shape[0] for b in batches)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for batch in batches:
            loss = loss_fn(model, batch).sum() / total
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            flat = torch.cat([g.reshape(-1) for g in grads])
            hv = torch.autograd.grad(torch.dot(flat, v.to(flat.dtype)), tensors, allow_unused=True)
            out += torch.cat([(torch.zeros_like(t) if h is None else h).reshape(-1)
                              for t, h in zip(tensors, hv)]).to(v.dtype)
        return out

    return hvp


def lm_ggn_vp(model: nn.Module, batches: Iterable[Batch], params: list[str]) -> HVP:
    """v -> G v, the Gauss-Newton matrix J^T H_logits J of the mean per-example causal-LM loss
    (label-token mean cross-entropy): positive semi-definite, unlike the Hessian of a LoRA
    (whose A-B coupling makes it indefinite). J v comes from the double-vjp trick."""
    import torch

    named = dict(model.named_parameters())
    tensors = [named[p] for p in params]
    batches = list(batches)
    total = sum(next(iter(b.values())).shape[0] for b in batches)

    def gvp(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            valid = (batch["labels"][:, 1:] != -100).to(logits.dtype)
            weight = valid / valid.sum(1, keepdim=True).clamp(min=1) / total  # d loss / d CE_t
            u = torch.zeros_like(logits, requires_grad=True)
            jt_u = torch.autograd.grad(logits, tensors, grad_outputs=u, create_graph=True)
            vs = torch.split(v.to(logits.dtype), [t.numel() for t in tensors])
            dot = sum((g * vi.view_as(g)).sum() for g, vi in zip(jt_u, vs))
            jv = torch.autograd.grad(dot, u)[0]  # (B, T, V)
            p = torch.softmax(logits.detach(), -1)
            h_jv = (p * jv - p * (p * jv).sum(-1, keepdim=True)) * weight[..., None]
            back = torch.autograd.grad(logits, tensors, grad_outputs=h_jv, allow_unused=True)
            out += torch.cat([(torch.zeros_like(t) if b is None else b).reshape(-1) for t, b in zip(tensors, back)]
                             ).to(v.dtype)
        return out

    return gvp
