"""Curvature-based influence on a causal LM (inverse-Hessian and EK-FAC scorers).

Both use the last checkpoint (influence functions assume a trained model) and the trainable
parameters (LoRA when present). Curvature is estimated on a seeded pool sample: the pool
stands in for the training distribution.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from selectkit_plugins.influence.run import lm_batches, prompts_for, resolve_checkpoints, sample_rows, settings_for


def _load(ctx: Any, params: Any, eager_attention: bool = False):
    from selectkit_plugins.influence.checkpoints import load_model

    ck = resolve_checkpoints(ctx, params)[-1]
    model, tok = load_model(ctx.model, ctx.base, ck.adapter, params.params, eager_attention)
    return model, tok


def _texts(ctx: Any, ds: Any, params: Any, rows: np.ndarray | None = None):
    prompts = prompts_for(ds, params)
    idx = np.arange(len(ds)) if rows is None else rows
    return [ds.texts[i] for i in idx], ([prompts[i] for i in idx] if prompts is not None else None)


def inverse_hessian_lm(ctx: Any, params: Any) -> dict[str, np.ndarray]:
    """(N, R_t) per target: pool gradients times (H + damping I)^-1 of the target's mean gradient
    (aggregate=mean, R_t = 1) or of each target example's gradient (max). H is the Hessian or
    the Gauss-Newton matrix (`curvature`) of the mean loss over a pool sample."""
    import torch

    from selectkit_plugins.influence.grads import lm_loss
    from selectkit_plugins.influence.hessian import conjugate_gradient, lissa, lm_ggn_vp, model_hvp
    from selectkit_plugins.influence.pipeline import lm_featurizer

    model, tok = _load(ctx, params, eager_attention=True)
    settings = settings_for(ctx, params, proj_dim=None, layout="joint", factorize_above=None)
    feat = lm_featurizer(model, settings)
    names = feat.param_names
    device = next(model.parameters()).device
    rows = sample_rows(ctx, len(ctx.pool), params.hessian_examples, "hessian")
    texts, prompts = _texts(ctx, ctx.pool, params, rows)
    batches = lm_batches(tok, texts, prompts, settings.batch_size, settings.max_length, device)
    hvp = lm_ggn_vp(model, batches, names) if params.curvature == "ggn" else model_hvp(model, lm_loss, batches, names)

    def raw_grads(ds) -> torch.Tensor:
        texts, prompts = _texts(ctx, ds, params)
        return torch.cat([feat.raw(b)[0].detach().double()
                          for b in lm_batches(tok, texts, prompts, settings.batch_size, settings.max_length, device)])

    p = feat.raw_dim
    if params.solver == "explicit":
        if p > params.explicit_max_params:
            raise ValueError(f"explicit Hessian of {p} parameters: above explicit_max_params "
                             f"({params.explicit_max_params}); use solver cg or lissa")
        eye = torch.eye(p, dtype=torch.float64, device=device)
        h = torch.stack([hvp(eye[i]) for i in range(p)])
        h = (h + h.T) / 2 + params.damping * eye
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:
            low = float(torch.linalg.eigvalsh(h)[0]) - params.damping
            raise ValueError(f"H + damping I is not positive definite (smallest Hessian eigenvalue {low:.3g}): "
                             f"set damping above {-low:.3g}")

        def solve(b):
            return torch.cholesky_solve(b[:, None], chol)[:, 0]
    elif params.solver == "cg":
        def solve(b):
            x, info = conjugate_gradient(hvp, b, damping=params.damping, tol=params.tol, max_iter=params.max_iter)
            if info["negative_curvature"]:
                raise ValueError("H + damping I has negative curvature (the loss is not convex here): "
                                 "raise damping")
            return x
    else:
        def solve(b):
            return lissa(hvp, b, damping=params.damping, scale=params.lissa_scale, depth=params.max_iter)

    solved = {}
    for name, ds in ctx.targets.items():
        g = raw_grads(ds)
        rhs = g.mean(0, keepdim=True) if params.aggregate == "mean" else g
        solved[name] = torch.stack([solve(b) for b in rhs], dim=1)  # (p, R)
    texts, prompts = _texts(ctx, ctx.pool, params)
    out: dict[str, list[np.ndarray]] = {n: [] for n in solved}
    for b in lm_batches(tok, texts, prompts, settings.batch_size, settings.max_length, device):
        g = feat.raw(b)[0].detach().double()
        for n, x in solved.items():
            out[n].append((g @ x).cpu().numpy())
    return {n: np.concatenate(v) for n, v in out.items()}


def ekfac_lm(ctx: Any, params: Any) -> dict[str, np.ndarray]:
    """(N, M_t) EK-FAC influence per target, factors fit on a pool sample."""
    from selectkit_plugins.influence.ekfac import ekfac_scores, fit_ekfac, sampled_lm_loss
    from selectkit_plugins.influence.grads import linear_modules, lm_loss

    model, tok = _load(ctx, params)
    settings = settings_for(ctx, params)
    device = next(model.parameters()).device
    modules = linear_modules(model)
    if not modules:
        raise ValueError("influence.ekfac needs trainable Linear layers (a LoRA adapter or params: linear)")
    rows = sample_rows(ctx, len(ctx.pool), params.factor_examples, "ekfac")
    texts, prompts = _texts(ctx, ctx.pool, params, rows)
    loss = sampled_lm_loss(ctx.seed) if params.fisher == "sampled" else lm_loss
    layers = fit_ekfac(model, loss, lm_batches(tok, texts, prompts, settings.batch_size, settings.max_length, device),
                       modules)
    texts, prompts = _texts(ctx, ctx.pool, params)
    train = lm_batches(tok, texts, prompts, settings.batch_size, settings.max_length, device)
    out = {}
    for name, ds in ctx.targets.items():
        t_texts, t_prompts = _texts(ctx, ds, params)
        targets = lm_batches(tok, t_texts, t_prompts, settings.batch_size, settings.max_length, device)
        out[name] = ekfac_scores(model, lm_loss, layers, modules, train, targets, damping=params.damping,
                                 kfac=params.kfac)
    return out
