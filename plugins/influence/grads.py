"""Vectorised per-example gradients and their projection into features.

Two ways to get per-example gradients of a batch in one forward and one backward pass:

* `hooks` (default, Linear layers only, e.g. LoRA's lora_A/lora_B leaves): forward hooks keep
  each tracked layer's input activations a (B, T, d_in) and output tensors; one
  `autograd.grad` of the summed per-example losses gives the output gradients g (B, T, d_out);
  the per-example weight gradient is G_b = sum_t g_bt a_bt^T (a batched matmul). Layers above
  `factorize_above` entries are projected LoGra-style (activations and output gradients
  separately), so their per-example gradients are never formed.
* `vmap`: torch.func `vmap(grad(...))` over the batch, for models with non-Linear trainable
  parameters (embeddings, norms) or small test models.

Both are checked against `per_example_grads_loop` (one `backward` per example). The loss is
per example (for causal LMs: the mean over label tokens, prompt and padding masked), so one
backward of the summed losses yields every example's own gradient; this needs a model with
no cross-example coupling (true for transformers in eval mode, not for BatchNorm in train mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from selectkit_plugins.influence.adam import AdamState, adam_transform
from selectkit_plugins.influence.projection import Kind, KroneckerProjector, Projector

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

Batch = dict[str, Any]
LossFn = Callable[[Callable[..., Any], Batch], "torch.Tensor"]  # (forward, batch) -> per-example losses (B,)


# ---------------------------------------------------------------- causal LM batches and loss


def lm_batch(tokenizer: Any, texts: Sequence[str], prompts: Sequence[str | None] | None = None,
             max_length: int = 512) -> Batch:
    """Tokenise and right-pad texts; labels mask padding and each prompt (see `selectkit.lm.batch`)."""
    from selectkit.lm import batch

    return batch(tokenizer, texts, prompts, max_length)


def lm_loss(forward: Callable[..., Any], batch: Batch) -> torch.Tensor:
    """Per-example causal-LM loss, 0 (and a zero gradient) without label tokens (`selectkit.lm.example_loss`)."""
    from selectkit.lm import example_loss

    return example_loss(forward, batch)


# ---------------------------------------------------------------- capturing Linear layers


def linear_modules(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Linear]:
    """Linear layers to track: the given names, or every nn.Linear whose weight is trainable
    (for a peft model that is exactly the lora_A/lora_B leaves)."""
    from torch import nn

    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise ValueError(f"not Linear layers of the model: {missing[:3]}")
        return {n: found[n] for n in names}
    return {n: m for n, m in found.items() if m.weight.requires_grad}


def capture(model: nn.Module, modules: dict[str, nn.Linear], loss_fn: LossFn, batch: Batch,
            ) -> tuple[torch.Tensor, dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """One forward + backward; returns per-example losses (B,) and, per tracked layer, a list
    (one item per call) of (input activations (B, T, d_in), output gradients (B, T, d_out))."""
    import torch

    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in modules}

    def hook(name):
        def fn(_module, args, out):
            inputs[name].append(args[0].detach())
            outputs[name].append(out)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        losses = loss_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    flat = [(n, i, o) for n in modules for i, o in enumerate(outputs[n]) if o.requires_grad]
    grads = torch.autograd.grad(losses.sum(), [o for _, _, o in flat], allow_unused=True) if flat else []
    got = {(n, i): g for (n, i, _), g in zip(flat, grads)}
    records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for n in modules:
        pairs = []
        for i, (a, o) in enumerate(zip(inputs[n], outputs[n])):
            g = got.get((n, i))
            g = torch.zeros_like(o) if g is None else g.detach()
            pairs.append((_as_3d(a), _as_3d(g)))
        records[n] = pairs
    return losses.detach(), records


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    """(B, d) -> (B, 1, d); (B, ..., d) -> (B, T, d)."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def with_bias_column(a: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


def linear_grad(a: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    """Per-example gradient of a Linear layer, flattened as [W.view(-1), b]: (B, d_out*d_in [+ d_out])."""
    import torch

    w = torch.bmm(g.transpose(1, 2), a)  # (B, d_out, d_in)
    flat = w.reshape(w.shape[0], -1)
    return torch.cat([flat, g.sum(1)], dim=1) if bias else flat


def ghost_sq_norm(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """||sum_t g_t a_t^T||_F^2 = sum_{t,t'} (a_t.a_t')(g_t.g_t') without forming the gradient
    (Goodfellow 2015 / "ghost norm"); O(B T^2 (d_in + d_out))."""
    import torch

    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))


def per_example_grads_loop(model: nn.Module, loss_fn: LossFn, batch: Batch, params: Sequence[str]) -> torch.Tensor:
    """Reference: one backward per example; (B, D) in the order of `params` (each flattened)."""
    import torch

    named = dict(model.named_parameters())
    n = next(iter(batch.values())).shape[0]
    rows = []
    for i in range(n):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(loss_fn(model, one).sum(), [named[p] for p in params], allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(named[p]) if gr is None else gr).reshape(-1)
                               for p, gr in zip(params, grads)]))
    return torch.stack(rows)


# ---------------------------------------------------------------- featurizer


@dataclass(frozen=True)
class Block:
    """A group of parameters whose gradients form one contiguous slice of the raw gradient."""

    name: str
    params: tuple[str, ...]
    size: int
    d_in: int = 0  # Linear blocks: input width (+1 with bias)
    d_out: int = 0
    bias: bool = False
    factorized: bool = False


@dataclass
class GradientBatch:
    features: torch.Tensor  # (B, dim) float32
    norms: torch.Tensor  # (B,) float64: ||g|| of the raw (SGD, unprojected) gradient
    losses: torch.Tensor  # (B,)


class GradientFeaturizer:
    """Per-example gradient features of a model: raw, or projected to `proj_dim` dims.

    layout "joint": one projection of the whole (optionally Adam-transformed) raw gradient;
    "per_block": each block projected on its own (kept raw when it has <= proj_dim entries),
    so block-wise methods (DataInf) can use the features. Factorised (LoGra) layers always
    add `factor_dim**2` dims each, after the projected part. `slices` names each part.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, method: Literal["hooks", "vmap"] = "hooks",
                 modules: Sequence[str] | None = None, proj_dim: int | None = None, proj_kind: Kind = "rademacher",
                 seed: int = 0, layout: Literal["joint", "per_block"] = "joint", factorize_above: int | None = None,
                 factor_dim: int = 32, adam: AdamState | None = None, adam_mode: Literal["less", "paper"] = "less"):
        self.model, self.loss_fn, self.method = model, loss_fn, method
        self.adam, self.adam_mode = adam, adam_mode
        self.proj_dim, self.layout = proj_dim, layout
        if method == "hooks":
            self.modules = linear_modules(model, modules)
            self.blocks = [self._linear_block(n, m, factorize_above) for n, m in self.modules.items()]
            tracked = {p for b in self.blocks for p in b.params}
            loose = [n for n, p in model.named_parameters() if p.requires_grad and n not in tracked]
            if loose:
                raise ValueError(f"trainable parameters outside tracked Linear layers ({loose[:3]}...): "
                                 "use method='vmap' or freeze them")
        elif method == "vmap":
            self.modules = {}
            self.blocks = [Block(n, (n,), p.numel()) for n, p in model.named_parameters() if p.requires_grad]
        else:
            raise ValueError(f"unknown per-example gradient method {method!r} (hooks or vmap)")
        if not self.blocks:
            raise ValueError("the model has no trainable parameters to take gradients of")
        self.raw_blocks = [b for b in self.blocks if not b.factorized]
        self.raw_dim = sum(b.size for b in self.raw_blocks)
        if adam is not None and len(self.raw_blocks) != len(self.blocks):
            raise ValueError("Adam preconditioning needs full per-example gradients: turn off factorize_above")
        if adam is not None and adam.exp_avg.numel() != self.raw_dim:
            raise ValueError(f"Adam state has {adam.exp_avg.numel()} entries, the gradient {self.raw_dim}")
        self.kron = {b.name: KroneckerProjector(b.d_in, b.d_out, factor_dim, factor_dim, seed=seed, kind=proj_kind,
                                                label=b.name) for b in self.blocks if b.factorized}
        self.projectors: list[tuple[slice, Projector | None]] = []
        self.slices: list[tuple[str, int, int]] = []
        at = 0
        if proj_dim is None or layout == "per_block":
            start = 0
            for b in self.raw_blocks:
                k = b.size if proj_dim is None or b.size <= proj_dim else proj_dim
                proj = None if k == b.size else Projector(b.size, k, seed=seed, kind=proj_kind, label=b.name)
                self.projectors.append((slice(start, start + b.size), proj))
                self.slices.append((b.name, at, at + k))
                start, at = start + b.size, at + k
        elif layout == "joint":
            if self.raw_dim:
                self.projectors.append((slice(0, self.raw_dim),
                                        Projector(self.raw_dim, proj_dim, seed=seed, kind=proj_kind, label="joint")))
                self.slices.append(("joint", 0, proj_dim))
                at = proj_dim
        else:
            raise ValueError(f"unknown projection layout {layout!r} (joint or per_block)")
        for name, kp in self.kron.items():
            self.slices.append((name, at, at + kp.dim_out))
            at += kp.dim_out
        self.dim = at

    def _linear_block(self, name: str, module: nn.Linear, factorize_above: int | None) -> Block:
        bias = module.bias is not None and module.bias.requires_grad
        params = (f"{name}.weight",) + ((f"{name}.bias",) if bias else ())
        d_in = module.in_features + int(bias)
        size = module.weight.numel() + (module.bias.numel() if bias else 0)
        big = factorize_above is not None and size > factorize_above
        return Block(name, params, size, d_in, module.out_features, bias, big)

    @property
    def param_names(self) -> list[str]:
        """Parameter names in raw-gradient order (aligns Adam moments with the gradient)."""
        return [p for b in self.raw_blocks for p in b.params]

    @property
    def key(self) -> str:
        """Identity of the feature map (projection matrices and layout) for cache keys."""
        parts = [f"{s.start}:{s.stop}:{p.key if p else 'raw'}" for s, p in self.projectors]
        parts += [kp.key for kp in self.kron.values()]
        adam = f"adam-{self.adam_mode}" if self.adam is not None else "sgd"
        return f"{self.method}|{self.layout}|{adam}|" + "|".join(parts)

    def raw(self, batch: Batch) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Raw flat gradients of the non-factorised blocks (B, raw_dim), the (a, g) of factorised
        layers, and the per-example losses."""
        import torch

        if self.method == "vmap":
            return self._vmap(batch)
        losses, records = capture(self.model, self.modules, self.loss_fn, batch)
        parts, factored = [], {}
        for b in self.blocks:
            pairs = records[b.name]
            a = torch.cat([x for x, _ in pairs], dim=1)
            g = torch.cat([y for _, y in pairs], dim=1)
            if b.factorized:
                factored[b.name] = (with_bias_column(a) if b.bias else a, g)
            else:
                parts.append(linear_grad(a, g, b.bias))
        n = losses.shape[0]
        raw = torch.cat(parts, dim=1) if parts else torch.zeros(n, 0, dtype=losses.dtype, device=losses.device)
        return raw, factored, losses

    def _vmap(self, batch: Batch):
        import torch
        from torch.func import functional_call, grad, vmap

        names = [b.name for b in self.blocks]
        named = dict(self.model.named_parameters())
        params = {n: named[n].detach() for n in names}

        def one(p, example):
            ex = {k: v.unsqueeze(0) for k, v in example.items()}
            loss = self.loss_fn(lambda *a, **k: functional_call(self.model, p, a, k), ex).sum()
            return loss, loss

        tensors = {k: v for k, v in batch.items() if hasattr(v, "shape")}
        grads, losses = vmap(grad(one, has_aux=True), in_dims=(None, 0))(params, tensors)
        raw = torch.cat([grads[n].reshape(grads[n].shape[0], -1) for n in names], dim=1)
        return raw, {}, losses.detach()

    def __call__(self, batch: Batch) -> GradientBatch:
        import torch

        raw, factored, losses = self.raw(batch)
        sq = (raw.to(torch.float64) ** 2).sum(1)
        for a, g in factored.values():
            sq = sq + ghost_sq_norm(a.to(torch.float64), g.to(torch.float64))
        x = adam_transform(raw, self.adam, self.adam_mode) if self.adam is not None else raw
        parts = [x[:, s].to(torch.float32) if p is None else p(x[:, s]) for s, p in self.projectors]
        parts += [self.kron[name](a, g) for name, (a, g) in factored.items()]
        feats = torch.cat(parts, dim=1) if parts else raw.new_zeros(raw.shape[0], 0)
        return GradientBatch(feats, sq.sqrt(), losses)

