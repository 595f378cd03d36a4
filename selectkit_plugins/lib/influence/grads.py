"""Vectorised per-example gradients and their projection into features.

Two ways to get per-example gradients of a batch in one forward and one backward pass:

* `hooks` (default; Linear, transformers' Conv1D and Embedding layers, e.g. LoRA's lora_A/lora_B
  leaves; the layer maths is in `hooks.py`): forward hooks keep each tracked layer's inputs a and output tensors; one
  `autograd.grad` of the summed per-example losses gives the output gradients g; both are
  regrouped by example to (B, T, d) whatever the layer saw (OPT's MLP sees (B*T, d)). The
  per-example weight gradient is G_b = sum_t g_bt a_bt^T for Linear, its transpose for Conv1D
  (weight stored (d_in, d_out)), and the g_bt scatter-added by token id for Embedding; layers
  sharing a weight (tied embeddings) add up. Layers above `factorize_above` entries are projected
  LoGra-style (activations and output gradients separately), so their per-example gradients are
  never formed.
* `vmap`: torch.func `vmap(grad(...))` over the batch, for models with other trainable
  parameters (norms) or small test models.

Both are checked against `per_example_grads_loop` (one `backward` per example). The loss is
per example (for causal LMs: the mean over label tokens, prompt and padding masked), so one
backward of the summed losses yields every example's own gradient; this needs a model with
no cross-example coupling (true for transformers in eval mode, not for BatchNorm in train mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from selectkit.plugin import KroneckerProjector, ProjectionKind, make_projector, resolve_kind
from selectkit_plugins.lib.influence.adam import AdamState, adam_transform
from selectkit_plugins.lib.influence.hooks import (
    capture,
    ghost_sq_norm,
    gradient_layers,
    group_rows,
    joined,
    layer_of,
    linear_grad,
    linear_modules,
    weight_grad,
    with_bias_column,
)
from selectkit_plugins.lib.influence.layers import LAYER_TYPES, GradientSupportError, layer_dims, layer_kind, model_type

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["Batch", "Block", "GradientBatch", "GradientFeaturizer", "LossFn", "capture", "ghost_sq_norm",
           "gradient_layers", "group_rows", "linear_grad", "linear_modules", "lm_batch", "lm_loss",
           "per_example_grads_loop", "weight_grad", "with_bias_column"]  # layer helpers re-exported from hooks

Batch = dict[str, Any]
LossFn = Callable[[Callable[..., Any], Batch], "torch.Tensor"]  # (forward, batch) -> per-example losses (B,)


# ---------------------------------------------------------------- causal LM batches and loss


def lm_batch(tokenizer: Any, texts: Sequence[str], prompts: Sequence[str | None] | None = None,
             max_length: int = 512) -> Batch:
    """Tokenise and right-pad texts; labels mask padding and each prompt (see `selectkit.models.lm.batch`)."""
    from selectkit.plugin import batch

    return batch(tokenizer, texts, prompts, max_length)


def lm_loss(forward: Callable[..., Any], batch: Batch) -> torch.Tensor:
    """Per-example causal-LM loss, 0 (and a zero gradient) without label tokens (`selectkit.models.lm.example_loss`)."""
    from selectkit.plugin import example_loss

    return example_loss(forward, batch)


@contextmanager
def _no_padding_check(model: nn.Module) -> Iterator[None]:
    """transformers' one-time "padding without an attention mask" warning reads token values
    (GPT-2 calls it), data-dependent control flow vmap cannot trace: switch it off meanwhile."""
    patched = [m for m in model.modules() if hasattr(type(m), "warn_if_padding_and_no_attention_mask")]
    for m in patched:
        m.warn_if_padding_and_no_attention_mask = _skip
    try:
        yield
    finally:
        for m in patched:
            del m.warn_if_padding_and_no_attention_mask


def _skip(*_args: Any, **_kwargs: Any) -> None:
    return None


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
    d_in: int = 0  # layer blocks: input width of the linear map (+1 with bias; an Embedding's rows)
    d_out: int = 0
    bias: bool = False  # the bias is `name`'s
    factorized: bool = False
    kind: str = "param"  # linear | conv1d | embedding (hooks) | param (vmap)
    tied: tuple[str, ...] = ()  # other layers using the same weight (tied embeddings): their gradients add up


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
                 modules: Sequence[str] | None = None, proj_dim: int | None = None,
                 proj_kind: ProjectionKind = "rademacher", seed: int = 0,
                 layout: Literal["joint", "per_block"] = "joint", factorize_above: int | None = None,
                 factor_dim: int = 32, adam: AdamState | None = None, adam_mode: Literal["less", "paper"] = "less"):
        self.model, self.loss_fn, self.method = model, loss_fn, method
        self.adam, self.adam_mode = adam, adam_mode
        self.proj_dim, self.layout = proj_dim, layout
        if method == "hooks":
            self.modules = gradient_layers(model, modules)
            self.blocks = self._layer_blocks(factorize_above)
        elif method == "vmap":
            self.modules = {}
            self.blocks = [Block(n, (n,), p.numel()) for n, p in model.named_parameters() if p.requires_grad]
        else:
            raise ValueError(f"unknown per-example gradient method {method!r} (hooks or vmap)")
        if not self.blocks:
            raise GradientSupportError(f"{model_type(model)}: the model has no trainable parameters to take "
                                       "gradients of", hint="params: lora needs an adapter; params: linear trains "
                                       f"{LAYER_TYPES} layers")
        self.raw_blocks = [b for b in self.blocks if not b.factorized]
        self.raw_dim = sum(b.size for b in self.raw_blocks)
        if adam is not None and len(self.raw_blocks) != len(self.blocks):
            raise ValueError("Adam preconditioning needs full per-example gradients: turn off factorize_above")
        if adam is not None and adam.exp_avg.numel() != self.raw_dim:
            raise ValueError(f"Adam state has {adam.exp_avg.numel()} entries, the gradient {self.raw_dim}")
        factor_kind = proj_kind if proj_kind in ("rademacher", "gaussian") else "rademacher"  # factors are narrow
        self.kron = {b.name: KroneckerProjector(b.d_in, b.d_out, factor_dim, factor_dim, seed=seed, kind=factor_kind,
                                                label=b.name) for b in self.blocks if b.factorized}
        proj_kind = resolve_kind(proj_kind, proj_dim)
        self.projectors: list[tuple[slice, Any]] = []
        self.slices: list[tuple[str, int, int]] = []
        at = 0
        if proj_dim is None or layout == "per_block":
            start = 0
            for b in self.raw_blocks:
                k = b.size if proj_dim is None or b.size <= proj_dim else proj_dim
                proj = None if k == b.size else make_projector(b.size, k, seed=seed, kind=proj_kind, label=b.name)
                self.projectors.append((slice(start, start + b.size), proj))
                self.slices.append((b.name, at, at + k))
                start, at = start + b.size, at + k
        elif layout == "joint":
            if self.raw_dim:
                self.projectors.append((slice(0, self.raw_dim),
                                        make_projector(self.raw_dim, proj_dim, seed=seed, kind=proj_kind,
                                                       label="joint")))
                self.slices.append(("joint", 0, proj_dim))
                at = proj_dim
        else:
            raise ValueError(f"unknown projection layout {layout!r} (joint or per_block)")
        for name, kp in self.kron.items():
            self.slices.append((name, at, at + kp.dim_out))
            at += kp.dim_out
        self.dim = at

    def _layer_blocks(self, factorize_above: int | None) -> list[Block]:
        """One block per tracked weight; layers sharing a weight (tied input and output embeddings)
        form one block whose gradient is the sum of theirs. Every trainable parameter must be in a block."""
        model, kind_of = self.model, model_type(self.model)
        pname = {id(p): n for n, p in model.named_parameters()}
        owner: dict[int, tuple[str, Any]] = {}
        foreign: dict[int, str] = {}  # weights also held by a layer of another type
        for mname, m in model.named_modules():
            for pn, p in m.named_parameters(recurse=False):
                owner.setdefault(id(p), (mname, m))
                if pn == "weight" and layer_kind(m) is None:
                    foreign[id(p)] = f"{mname} ({type(m).__name__})"
        users: dict[int, list[str]] = {}
        for mname, m in model.named_modules():
            if layer_kind(m) is not None:
                users.setdefault(id(m.weight), []).append(mname)
        every = dict(model.named_modules())
        blocks, seen = [], set()
        for name, module in list(self.modules.items()):
            if id(module.weight) in seen:
                continue
            seen.add(id(module.weight))
            group = users[id(module.weight)]
            if id(module.weight) in foreign:
                raise GradientSupportError(f"{kind_of}: the weight of {name} is shared with "
                                           f"{foreign[id(module.weight)]}, and per-example gradients by hooks "
                                           f"cover {LAYER_TYPES} layers only",
                                           hint="freeze it, or use method: vmap")
            for other in group:
                self.modules.setdefault(other, every[other])
            with_bias = [n for n in group if getattr(every[n], "bias", None) is not None
                         and every[n].bias.requires_grad]
            if len(with_bias) > 1:
                raise GradientSupportError(f"{kind_of}: layers {with_bias} share a weight and each has a trainable "
                                           "bias; freeze the biases")
            head = with_bias[0] if with_bias else (name if name in group else group[0])
            m = every[head]
            kind = layer_kind(m)
            if kind == "embedding" and (m.max_norm is not None or m.scale_grad_by_freq):
                raise GradientSupportError(f"{kind_of}: embedding {head} uses max_norm or scale_grad_by_freq, "
                                           "which per-example gradients by hooks do not model", hint="use method: vmap")
            bias = bool(with_bias)
            params = (pname[id(m.weight)],) + ((pname[id(m.bias)],) if bias else ())
            d_in, d_out = layer_dims(m)
            size = m.weight.numel() + (m.bias.numel() if bias else 0)
            big = factorize_above is not None and size > factorize_above
            tied = tuple(n for n in group if n != head)
            if big and tied:
                raise GradientSupportError(f"{kind_of}: the weight shared by {[head, *tied]} (tied embeddings) has "
                                           f"{size} entries, above factorize_above, and shared weights cannot be "
                                           "factorised", hint="freeze the embeddings or raise factorize_above")
            blocks.append(Block(head, params, size, d_in + int(bias), d_out, bias, big, kind, tied))
        tracked = {p for b in blocks for p in b.params}
        loose = [n for n, p in model.named_parameters() if p.requires_grad and n not in tracked]
        if loose:
            mname, m = owner[id(dict(model.named_parameters())[loose[0]])]
            mname, cls = layer_of(model, mname, m)
            where = mname or "the model itself"
            raise GradientSupportError(
                f"{kind_of}: trainable parameter {loose[0]} belongs to a {cls} layer ({where}), and "
                f"per-example gradients by hooks cover {LAYER_TYPES} layers only"
                + (f" ({len(loose)} such parameters)" if len(loose) > 1 else ""),
                hint="freeze it (params: lora or linear), or use method: vmap")
        return blocks

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
        n = losses.shape[0]
        parts, factored = [], {}
        for b in self.blocks:
            if b.factorized:
                a, g = joined(records[b.name], self.modules[b.name], n)
                factored[b.name] = (with_bias_column(a) if b.bias else a, g)
                continue
            w, g = None, None
            for name in (b.name, *b.tied):
                module = self.modules[name]
                a, g_m = joined(records[name], module, n)
                part = weight_grad(layer_kind(module), a, g_m, module.weight.shape[0])
                w = part if w is None else w + part
                g = g_m if name == b.name else g
            parts.append(torch.cat([w, g.float().sum(1)], dim=1) if b.bias else w)
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
        try:
            with _no_padding_check(self.model):
                grads, losses = vmap(grad(one, has_aux=True), in_dims=(None, 0))(params, tensors)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError) as exc:  # data-dependent control flow, ops without a batch rule
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GradientSupportError(f"{model_type(self.model)}: per-example gradients by vmap failed: {first}",
                                       hint="use method: hooks") from exc
        raw = torch.cat([grads[n].reshape(grads[n].shape[0], -1).float() for n in names], dim=1)
        return raw, {}, losses.detach()

    def __call__(self, batch: Batch) -> GradientBatch:
        import torch

        raw, factored, losses = self.raw(batch)
        sq = (raw.to(torch.float64) ** 2).sum(1)
        for a, g in factored.values():
            sq = sq + ghost_sq_norm(a.to(torch.float64) if a.dtype.is_floating_point else a, g.to(torch.float64))
        x = adam_transform(raw, self.adam, self.adam_mode) if self.adam is not None else raw
        parts = [x[:, s].to(torch.float32) if p is None else p(x[:, s]) for s, p in self.projectors]
        parts += [self.kron[name](a, g) for name, (a, g) in factored.items()]
        feats = torch.cat(parts, dim=1) if parts else raw.new_zeros(raw.shape[0], 0)
        return GradientBatch(feats, sq.sqrt(), losses)

