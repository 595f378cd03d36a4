"""Curvature-based influence on a causal LM (inverse-Hessian and EK-FAC), as the gradients
provider runs them: on the trainable parameters (LoRA when present) of a loaded model.

Curvature is estimated on a keyed sample of the pool (the pool stands in for the training
distribution); the pool's gradients are then taken shard by shard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from selectkit.plugin import SelectkitError, batch, canonical_order, lazy_import, prompts_of, uniform

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


def sample_rows(pool: Any, limit: int | None, seed: int, label: str) -> np.ndarray:
    """A keyed sample of pool rows (all when `limit` is None or >= the pool), in key order."""

    n = len(pool)
    if limit is None or limit >= n:
        return np.arange(n)
    draw = uniform(seed, (label,), pool.keys)
    chosen = np.argpartition(draw, limit - 1)[:limit]
    return chosen[canonical_order(pool.keys[chosen])]


def fixed_rows(batch_size: int | str) -> int:
    """Rows per batch of the second-order solvers: they keep every batch of their sample, so the
    device budget (`batch_size: auto`) does not size them; auto is 16."""
    return 16 if batch_size == "auto" else int(batch_size)


def batches(lm: Any, ds: Any, response: str | None, batch_size: int | str) -> list[dict]:
    """Batches of `batch_size` rows (`fixed_rows`) in order on the model's device."""

    batch_size = fixed_rows(batch_size)
    prompts = prompts_of(ds, response)
    device = next(lm.model.parameters()).device
    out = []
    for i in range(0, len(ds), batch_size):
        b = batch(lm.tokenizer, ds.texts[i:i + batch_size], prompts[i:i + batch_size] if prompts else None,
                  lm.max_length)
        out.append({k: v.to(device) for k, v in b.items()})
    return out


def _pool_shards(pool: Any, progress: Callable[[int, int], None] | None):
    shards = len(pool.shard_ranges)
    for i in range(shards):
        yield pool.shard(i)
        if progress:
            progress(i + 1, shards)


def inverse_hessian_lm(lm: Any, pool: Any, targets: dict[str, Any], p: dict[str, Any], *, seed: int,
                       progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """(N, R_t) per target: pool gradients times (H + damping I)^-1 of the target's mean gradient
    (aggregate=mean, R_t = 1) or of each target example's gradient (max). H is the Hessian or
    the Gauss-Newton matrix (`curvature`) of the mean loss over a pool sample."""
    import torch

    from selectkit_plugins.lib.influence.grads import lm_loss
    from selectkit_plugins.lib.influence.hessian import conjugate_gradient, lissa, lm_ggn_vp, model_hvp
    from selectkit_plugins.lib.influence.pipeline import GradientSettings, lm_featurizer

    model = lm.model
    settings = GradientSettings(proj_dim=None, layout="joint", factorize_above=None, seed=seed,
                                batch_size=fixed_rows(p["batch_size"]), max_length=lm.max_length)
    feat = lm_featurizer(model, settings)
    names = feat.param_names
    device = next(model.parameters()).device
    sample = pool.take(sample_rows(pool, p.get("hessian_examples"), seed, "hessian"))
    hessian_batches = batches(lm, sample, p.get("response"), p["batch_size"])
    hvp = lm_ggn_vp(model, hessian_batches, names) if p["curvature"] == "ggn" else \
        model_hvp(model, lm_loss, hessian_batches, names)

    def raw_grads(ds) -> torch.Tensor:
        return torch.cat([feat.raw(b)[0].detach().double() for b in batches(lm, ds, p.get("response"),
                                                                             p["batch_size"])])

    size = feat.raw_dim
    damping = p["damping"]
    if p["solver"] == "explicit":
        if size > p["explicit_max_params"]:
            raise SelectkitError(f"explicit Hessian of {size} parameters: above explicit_max_params "
                                 f"({p['explicit_max_params']}); use solver cg or lissa")
        eye = torch.eye(size, dtype=torch.float64, device=device)
        h = torch.stack([hvp(eye[i]) for i in range(size)])
        h = (h + h.T) / 2 + damping * eye
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:
            low = float(torch.linalg.eigvalsh(h)[0]) - damping
            raise SelectkitError(f"H + damping I is not positive definite (smallest Hessian eigenvalue {low:.3g}): "
                                 f"set damping above {-low:.3g}")

        def solve(b):
            return torch.cholesky_solve(b[:, None], chol)[:, 0]
    elif p["solver"] == "cg":
        def solve(b):
            x, info = conjugate_gradient(hvp, b, damping=damping, tol=p["tol"], max_iter=p["max_iter"])
            if info["negative_curvature"]:
                raise SelectkitError("H + damping I has negative curvature (the loss is not convex here): "
                                     "raise damping")
            return x
    else:
        def solve(b):
            return lissa(hvp, b, damping=damping, scale=p["lissa_scale"], depth=p["max_iter"])

    solved = {}
    for name, ds in targets.items():
        g = raw_grads(ds)
        rhs = g.mean(0, keepdim=True) if p.get("aggregate", "mean") == "mean" else g
        solved[name] = torch.stack([solve(b) for b in rhs], dim=1)  # (p, R)
    out: dict[str, list[np.ndarray]] = {n: [] for n in solved}
    for ds in _pool_shards(pool, progress):
        g = raw_grads(ds)
        for n, x in solved.items():
            out[n].append((g @ x).cpu().numpy())
    return {n: np.concatenate(v) for n, v in out.items()}


def ekfac_lm(lm: Any, pool: Any, targets: dict[str, Any], p: dict[str, Any], *, seed: int,
             progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """(N, M_t) EK-FAC influence per target, factors fit on a keyed pool sample."""
    import torch

    from selectkit_plugins.lib.influence.ekfac import (
        fit_ekfac,
        fit_rows_scores,
        precondition_queries,
        sampled_lm_loss,
        train_scores,
    )
    from selectkit_plugins.lib.influence.grads import linear_modules, lm_loss

    model = lm.model
    modules = linear_modules(model)
    if not modules:
        raise SelectkitError("influence.ekfac needs trainable Linear or Conv1D layers (a LoRA adapter or "
                             "params: linear)")
    rows = sample_rows(pool, p.get("factor_examples"), seed, "ekfac")
    loss = sampled_lm_loss(seed) if p["fisher"] == "sampled" else lm_loss

    def batched(ds):
        return batches(lm, ds, p.get("response"), p["batch_size"])

    with torch.enable_grad():
        fit = batched(pool.take(rows))
        layers = fit_ekfac(model, loss, fit, modules)
        per_target = {name: precondition_queries(model, lm_loss, layers, modules, batched(ds),
                                                 damping=p.get("damping"), kfac=p["kfac"])
                      for name, ds in targets.items()}
        queries = {n: torch.cat([q[n] for q in per_target.values()]) for n in modules}
        if len(rows) == len(pool) and loss is lm_loss:  # the fit's rows and gradients are the pool's
            scores = fit_rows_scores(model, lm_loss, layers, modules, fit, queries)
            if progress:
                progress(len(pool.shard_ranges), len(pool.shard_ranges))
        else:  # one pass over the pool scores every target
            scores = np.concatenate([train_scores(model, lm_loss, modules, batched(ds), queries)
                                     for ds in _pool_shards(pool, progress)])
    widths = {name: next(iter(q.values())).shape[0] for name, q in per_target.items()}
    out, at = {}, 0
    for name, width in widths.items():
        out[name], at = scores[:, at:at + width], at + width
    return out
